"""TorchBackend: encode with the torch modules, batch by batch, as sentence-transformers does."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..encode.options import EncodeOptions, length_order, restore_order, text_length
from ..errors import InvalidInputError
from ..modules import ModuleStack


def batch_to_device(features: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}


class TorchBackend:
    name = "torch"

    def __init__(self, stack: ModuleStack, device: str) -> None:
        self.stack = stack
        self.device = torch.device(device)
        self.stack.to(self.device)

    def to(self, device: str) -> None:
        self.device = torch.device(device)
        self.stack.to(self.device)

    def sentence_embedding_dimension(self) -> int | None:
        return self.stack.sentence_embedding_dimension()

    # -- tokenizer ------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.stack.transformer.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.stack.transformer.tokenizer = value

    @property
    def max_seq_length(self) -> int:
        return self.stack.transformer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.stack.transformer.max_seq_length = value

    def tokenize(self, texts: list) -> dict[str, torch.Tensor]:
        return self.stack.transformer.tokenize(texts)

    # -- prompts --------------------------------------------------------------------------------------
    def pooling_include_prompt(self) -> bool:
        return self.stack.includes_prompt

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        for module in self.stack:
            if hasattr(module, "include_prompt"):
                module.include_prompt = include_prompt
                return

    def prompt_length(self, prompt: str) -> int:
        return self.stack.transformer.prompt_length(prompt)

    # -- encode ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, inputs: list, opts: EncodeOptions) -> Any:
        device = torch.device(opts.device) if opts.device else self.device
        if device != self.device:
            self.stack.to(device)
            self.device = device
        self.stack.eval()
        order = length_order([text_length(x) for x in inputs])
        ordered = [inputs[i] for i in order]
        results: list = []
        starts = range(0, len(ordered), opts.batch_size)
        for start in tqdm(starts, desc="Batches", disable=not opts.show_progress_bar):
            batch = ordered[start : start + opts.batch_size]
            features = batch_to_device(self.tokenize(batch), device)
            if opts.prompt_length is not None:
                features["prompt_length"] = opts.prompt_length
            try:
                out = self.stack(features)
            except (RuntimeError, IndexError) as e:
                named = _too_long_error(e, features, self.stack.transformer)
                if named is None:
                    raise
                raise named from e
            results.extend(split_outputs(out, len(batch), opts.output_value, to_cpu=opts.convert_to_numpy))
        results = restore_order(results, order)
        if opts.output_value == "sentence_embedding":
            if not results:
                dim = self.stack.sentence_embedding_dimension() or 0
                return torch.zeros((0, dim), dtype=torch.float32)
            return torch.stack(results)
        return results


def _too_long_error(error: Exception, features: dict[str, Any], transformer: Any) -> InvalidInputError | None:
    """A batch wider than the model's position embeddings (max_seq_length raised past them) fails deep in torch
    ('The size of tensor a (302) must match the size of tensor b (128)'): the error that names the cause."""
    if isinstance(error, torch.OutOfMemoryError):  # memory, not positions: the caller's OOM handling sees it
        return None
    width = features["input_ids"].shape[-1] if "input_ids" in features else None
    embeddings = getattr(transformer.auto_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(width, int) or not isinstance(getattr(table, "num_embeddings", None), int):
        return None  # no absolute position table (rotary, relative): the width is not what failed
    limit = table.num_embeddings
    # RoBERTa-style embeddings number positions from padding_idx + 1; BERT's from 0
    padding_idx = getattr(embeddings, "padding_idx", None)
    room = limit - (padding_idx + 1 if isinstance(padding_idx, int) else 0)
    if width <= room:
        return None
    return InvalidInputError(f"texts of {width} tokens are more than the model's {limit} position embeddings take "
                             f"(max_seq_length is {transformer.max_seq_length}): lower max_seq_length to the "
                             f"model's limit ({type(error).__name__}: {str(error).strip()[:200]})")


def split_outputs(out: dict[str, Any], n: int, output_value: str | None, to_cpu: bool) -> list:
    """Split a batch's outputs into per-text items, trimming token embeddings to each text's length."""
    if output_value == "sentence_embedding":
        emb = out["sentence_embedding"].detach()
        return list(emb.cpu() if to_cpu else emb)
    if output_value == "token_embeddings":
        items = []
        for tokens, mask in zip(out["token_embeddings"], out["attention_mask"]):
            nonzero = torch.nonzero(mask).flatten()
            last = int(nonzero[-1]) if len(nonzero) else 0
            items.append(tokens[: last + 1].detach())
        return items
    items = []
    for i in range(n):
        items.append({
            k: (v[i] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n else v)
            for k, v in out.items()
        })
    return items
