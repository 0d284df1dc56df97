"""Parity: does the exported graph compute what the torch modules compute?

The reference is always the fp32 torch ``ModuleStack``; the graph runs on ONNX Runtime's CPU provider (or CUDA
for fp16, where a CUDA provider exists). Texts of mixed lengths are run in padded batches, so a graph that lets
padding leak into pooling fails here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Minimum (per text) and mean cosine between graph and torch embeddings, per precision.
#  fp32: same maths, only kernel order differs -> 1e-5 is generous (measured 2.6e-7 max|diff| on all-MiniLM-L6-v2).
#  int8: dynamic quantization of every MatMul/Attention. Measured on all-MiniLM-L6-v2 (per-channel weights):
#        mean cosine 0.994 over 1,000 STSb sentences and STSb Spearman 0.8187 vs 0.8203 fp32, but texts of 1-3
#        tokens ('ok.', '', 'hi') fall to 0.970-0.980, because the per-tensor activation range of a tiny batch is
#        set by the [CLS]/[SEP] outliers. So: min >= 0.96 (honest rounding noise passes) and mean >= 0.985, which
#        fails the broken settings measured (per-tensor weights: mean 0.966; + reduce_range: mean 0.877).
#  fp16: tensor-core fp16 keeps ~3 decimal digits; 0.999 / 0.9995 are the usual fp16 bounds for encoders.
COSINE_THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.96}
MEAN_COSINE_THRESHOLDS = {"fp32": 0.99999, "fp16": 0.9995, "int8": 0.985}
# Cosine is blind to length: a graph that scales embeddings (a wrong pooling divisor, a lost Dense scale, a
# Normalize that should not be there) keeps cosine 1. So each text's |graph| / |torch| must also stay within
# 1 +- this. Measured on all-MiniLM-L6-v2 without Normalize, 313 texts: fp32 within 4e-7, int8 0.955-1.049.
NORM_TOLERANCES = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.2}
# left_padding_shift above this: the torch embeddings depend on the batch (fp32 batching noise is ~1e-7)
LEFT_PADDING_TOLERANCE = 1e-5

DEFAULT_SENTENCES = (
    "A man is playing a guitar.",
    "hi",
    "",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill.",
    "Two dogs run through the park.",
    "A woman is slicing an onion in the kitchen, and a child is reading a very old book about rivers, "
    "mountains, cities and the long history of trains that crossed the continent in the nineteenth century.",
    "Stocks fell sharply on Monday.",
    "A plane is taking off.",
    "Who wrote this?",
    "Several people are sitting at a table outside a cafe and drinking coffee in the afternoon sun.",
    "red",
    "The committee will meet again next week to discuss the budget, the schedule and the new hiring plan.",
) + (" ".join(["the long text that is truncated at the maximum sequence length"] * 80),)


@dataclasses.dataclass
class ParityReport:
    """How far a graph's sentence embeddings are from the torch modules' on the same texts."""

    precision: str
    n_texts: int
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    worst_index: int
    worst_text: str
    threshold: float
    passed: bool
    provider: str = "CPUExecutionProvider"
    token_max_abs_diff: float | None = None
    mean_threshold: float = 0.0
    max_norm_deviation: float = 0.0  # max over texts of | |graph| / |torch| - 1 |
    norm_tolerance: float = 0.0

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        text = self.worst_text if len(self.worst_text) <= 60 else self.worst_text[:57] + "..."
        tokens = "" if self.token_max_abs_diff is None else f", token_embeddings max|diff| {self.token_max_abs_diff:.3g}"
        return (
            f"parity {verdict} ({self.precision} graph on {self.provider} vs torch fp32, {self.n_texts} texts): "
            f"max|diff| {self.max_abs_diff:.3g}, cosine min {self.min_cosine:.7f} / mean {self.mean_cosine:.7f} "
            f"(thresholds: min >= {self.threshold}, mean >= {self.mean_threshold}), length ratio off by at most "
            f"{self.max_norm_deviation:.3g} (allowed {self.norm_tolerance}){tokens}; "
            f"worst text #{self.worst_index}: {text!r}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParityReport":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def compare(reference: np.ndarray, actual: np.ndarray, texts: Sequence[str], precision: str,
            provider: str = "CPUExecutionProvider", token_max_abs_diff: float | None = None) -> ParityReport:
    """Row-wise comparison of two (n, dim) embedding matrices."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    diff = np.abs(reference - actual)
    ref_norm, act_norm = np.linalg.norm(reference, axis=1), np.linalg.norm(actual, axis=1)
    dots = (reference * actual).sum(axis=1)
    both_zero = (ref_norm == 0) & (act_norm == 0)
    cos = np.where(both_zero, 1.0, dots / np.maximum(ref_norm * act_norm, 1e-30))
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero reference: off by inf unless both are zero
        norm_dev = np.where(both_zero, 0.0, np.abs(act_norm / ref_norm - 1.0))
    norm_dev = np.nan_to_num(norm_dev, nan=np.inf)
    worst = int(np.argmin(cos)) if len(cos) else 0
    threshold, mean_threshold = COSINE_THRESHOLDS[precision], MEAN_COSINE_THRESHOLDS[precision]
    norm_tolerance = NORM_TOLERANCES[precision]
    finite = bool(np.isfinite(actual).all())
    min_cos = float(cos.min()) if len(cos) else 1.0
    mean_cos = float(cos.mean()) if len(cos) else 1.0
    max_norm_dev = float(norm_dev.max()) if len(norm_dev) else 0.0
    return ParityReport(
        precision=precision, n_texts=len(texts), max_abs_diff=float(diff.max()) if diff.size else 0.0,
        min_cosine=min_cos, mean_cosine=mean_cos, worst_index=worst,
        worst_text=str(texts[worst]) if texts else "", threshold=threshold,
        passed=finite and min_cos >= threshold and mean_cos >= mean_threshold and max_norm_dev <= norm_tolerance,
        provider=provider, token_max_abs_diff=token_max_abs_diff, mean_threshold=mean_threshold,
        max_norm_deviation=max_norm_dev, norm_tolerance=norm_tolerance,
    )


def check_parity(stack, session, input_names: Sequence[str], precision: str,
                 sentences: Sequence[str] | None = None, batch_size: int = 8,
                 prompt_length: int | None = None) -> ParityReport:
    """Encode ``sentences`` with the torch stack and the ORT session in the same padded batches and compare;
    ``prompt_length`` goes to both (the graph's optional input, the pooling's feature) when given."""
    import torch

    texts = list(sentences) if sentences else list(DEFAULT_SENTENCES)
    if prompt_length is not None:  # texts with no token after the "prompt" would pool nothing (max: -inf, NaN)
        counts = stack.transformer.tokenize(texts)["attention_mask"].sum(dim=1).tolist()
        texts = [t for t, n in zip(texts, counts) if n > prompt_length + 1]
    # Interleave long and short texts so that every batch is padded.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    order = [order[i // 2] if i % 2 == 0 else order[-1 - i // 2] for i in range(len(order))]
    ref_rows, out_rows, token_diff = {}, {}, 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        features = dict(stack.transformer.tokenize([texts[i] for i in idx]))
        feed = {name: features[name].cpu().numpy().astype(np.int64) for name in input_names}
        if prompt_length is not None:
            features["prompt_length"] = prompt_length
            feed["prompt_length"] = np.array([prompt_length], dtype=np.int64)
        with torch.no_grad():
            try:
                ref = stack({k: (v.to(_device(stack)) if isinstance(v, torch.Tensor) else v)
                             for k, v in features.items()})
            except (RuntimeError, IndexError) as e:  # torch's own message does not say which setting is wrong
                raise _reference_failed(stack, feed["input_ids"].shape[1], e) from e
        sentence, tokens = session.run(["sentence_embedding", "token_embeddings"], feed)
        mask = feed["attention_mask"].astype(bool)
        ref_tokens = ref["token_embeddings"].float().cpu().numpy()
        token_diff = max(token_diff, float(np.abs(ref_tokens[mask] - tokens.astype(np.float32)[mask]).max()))
        for row, i in enumerate(idx):
            ref_rows[i] = ref["sentence_embedding"][row].float().cpu().numpy()
            out_rows[i] = sentence[row].astype(np.float32)
    provider = session.get_providers()[0]
    n = len(texts)
    return compare(np.stack([ref_rows[i] for i in range(n)]), np.stack([out_rows[i] for i in range(n)]), texts,
                   precision, provider, token_diff)


def left_padding_shift(stack) -> float:
    """1 - cosine between a short text's torch embedding alone and in a batch beside a long one, padded as the
    model's tokenizer pads (0 unless it pads on the left). Rotary, ALiBi or mask-derived positions (left-padded
    decoders) do not move; an encoder with absolute positions told to pad left does: its torch embeddings
    then depend on the batch, where the runtime, which pads on the right, embeds each text as if alone."""
    import torch

    transformer = stack.transformer
    if getattr(transformer.tokenizer, "padding_side", "right") != "left":
        return 0.0
    short, long = DEFAULT_SENTENCES[1], DEFAULT_SENTENCES[5]
    device = _device(stack)
    rows = []
    with torch.no_grad():
        for texts in ([short], [short, long]):
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                        for k, v in transformer.tokenize(texts).items()}
            rows.append(stack(features)["sentence_embedding"][0].double())
    return float(1 - torch.nn.functional.cosine_similarity(rows[0], rows[1], dim=0))


def _device(stack):
    return next(stack.parameters()).device


def _reference_failed(stack, width: int, error: BaseException) -> Exception:
    """The torch modules failed on a parity batch: most often a max_seq_length beyond the position embeddings."""
    from ..errors import ModelFolderError

    transformer = stack.transformer
    positions = getattr(getattr(transformer.auto_model, "config", None), "max_position_embeddings", None)
    hint = ""
    if isinstance(positions, int) and transformer.max_seq_length >= positions:
        hint = (f" max_seq_length is {transformer.max_seq_length} and the model has {positions} position embeddings: "
                f"set a max_seq_length within them (sentence_bert_config.json, or model.max_seq_length);")
    return ModelFolderError(f"the torch modules failed on a parity batch {width} tokens wide, so no graph can be "
                            f"checked against them:{hint} {type(error).__name__}: {str(error)[:300]}")


# Texts where tokenizers built from other settings part ways: case, accents, CJK characters, a special token
# written in the text, and one text longer than any max_seq_length (its start and end differ: truncation side).
TOKENIZER_PROBES = DEFAULT_SENTENCES[:-1] + (
    "THE Café NAÏVE Ünïcödé résumé Ångström", "北京欢迎你 and 東京", "a [MASK] in the text",
    " ".join(DEFAULT_SENTENCES[:-1]) * 12,
    # what a tokenizer.json can do otherwise than the pipeline transformers 5 rebuilds from tokenizer_config.json
    # (its normalizer, pre-tokenizer and model options), each of which a fuzz of 8,800 strings found on some
    # folder: trailing space or newline (a transformers 4 XLM-R file's bare Metaspace), control and zero-width
    # characters (clean_text), punctuation runs (another pre-tokenizer), decomposed accents (an NFC normalizer),
    # words over WordPiece's max_input_chars_per_word, emoji sequences
    "the cat ", "the cat\n", "\ttabs\tand  double  spaces ", "\x00the dog\x7f and a\u200b cat",
    "what?! </b> (x) «y» ... --", "cafe\u0301 e\u0301te\u0301", "ﬁne ＦＵＬＬ width İstanbul straße ΣΊΣΥΦΟΣ",
    "a" * 60, "b" * 150, "👍🏽 👨‍👩‍👧 🇫🇷",
)


def check_tokenizer(folder, stack) -> None:
    """Raise ParityError when the onnx backend's tokenizer (``tokenizer.json`` with the folder's settings, run by
    ``tokenizers`` alone) gives other token ids than the torch Transformer's (transformers') for the folder: the
    graph would be right and its embeddings silently wrong."""
    from ..encode.tokenize import TextTokenizer
    from ..errors import ParityError

    runtime = TextTokenizer.from_folder(folder)
    runtime.max_seq_length = stack.transformer.max_seq_length
    texts = list(TOKENIZER_PROBES)
    features = stack.transformer.tokenize(texts)
    for text, ids, mask, got in zip(texts, features["input_ids"].tolist(), features["attention_mask"].tolist(),
                                    runtime.encode(texts)):
        want = [i for i, m in zip(ids, mask) if m]
        if want != got.ids.tolist():
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ParityError(
                f"{folder}: the onnx backend's tokenizer (tokenizer.json and the folder's tokenizer settings, run "
                f"without transformers) gives other token ids than transformers' for {shown!r}: "
                f"{_brief(got.ids.tolist())} vs {_brief(want)}; write tokenizer.json as transformers builds the "
                "tokenizer (AutoTokenizer.from_pretrained(folder).save_pretrained(folder)) and export again"
            )


def _brief(ids: list[int]) -> str:
    if len(ids) <= 12:
        return str(ids)
    return f"[{', '.join(map(str, ids[:6]))}, ..., {', '.join(map(str, ids[-4:]))}] ({len(ids)} ids)"
