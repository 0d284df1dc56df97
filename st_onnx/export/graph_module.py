"""The torch module that is traced into the fused graph: token ids in, (sentence_embedding, token_embeddings) out."""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)




class FusedModule(nn.Module):
    """Runs every module of a ``ModuleStack`` on positional int64 tensors, as ``torch.onnx.export`` needs.

    ``input_names`` are the tokenizer's features, then ``prompt_length`` where the stack's pooling leaves the
    prompt's tokens out (``include_prompt=False``): a one-element int64 tensor, the prompt's token count.
    """

    def __init__(self, stack, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.stack = stack
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = dict(zip(self.input_names, inputs))
        features = self.stack(features)
        return features["sentence_embedding"], features["token_embeddings"]


def graph_input_names(stack) -> tuple[str, ...]:
    """``input_ids``, ``attention_mask``, and ``token_type_ids`` only where tokenizer and model both use them."""
    transformer = stack.transformer
    names = ["input_ids", "attention_mask"]
    accepts = "token_type_ids" in inspect.signature(transformer.auto_model.forward).parameters
    if accepts and transformer.uses_token_type_ids:
        names.append("token_type_ids")
    return tuple(names)


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Switch a transformers model to the eager attention implementation while exporting, then restore it.

    transformers 5 defaults to SDPA; its traced pattern (one ScaledDotProductAttention-style subgraph with a
    boolean mask built by the masking utilities) is not matched by ORT's FusionAttention, so no Attention node
    is fused. Measured on all-MiniLM-L6-v2 (torch 2.13, transformers 5.24, ORT 1.31.1): SDPA -> 0 Attention,
    0 EmbedLayerNormalization; eager -> 6 Attention, 1 EmbedLayerNormalization, 12 SkipLayerNormalization,
    6 BiasGelu.
    """
    setter = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if setter is None or previous in (None, "eager"):
        yield
        return
    try:
        setter("eager")
    except (ValueError, NotImplementedError) as e:  # an architecture without an eager path: export as it is
        logger.warning("cannot switch %s to eager attention (%s); ORT may not fuse its attention",
                       type(model).__name__, e)
        yield
        return
    try:
        yield
    finally:
        setter(previous)


@contextlib.contextmanager
def index_based_masks() -> Iterator[None]:
    """Build transformers' attention masks by broadcasting, not ``torch.vmap``, while tracing.

    A model that widens the causal mask (EmbeddingGemma's ``use_bidirectional_attention`` passes an
    ``or_mask_function``) makes transformers build it with vmap, which ``torch.onnx.export(dynamo=False)`` cannot
    trace (``RuntimeError: unordered_map::at``). Such functions written as comparisons of index tensors broadcast
    as well; one that does not computes another mask, which the parity check after the export refuses.
    """
    try:
        from transformers import masking_utils
    except ImportError:  # transformers 4: no masking utilities
        yield
        return
    original = getattr(masking_utils, "sdpa_mask", None)
    if original is None or "use_vmap" not in inspect.signature(original).parameters:  # other releases: as they are
        yield
        return

    def without_vmap(*args, **kwargs):
        kwargs["use_vmap"] = False
        return original(*args, **kwargs)

    masking_utils.sdpa_mask = without_vmap  # eager_mask (the attention the export switches to) calls this name
    try:
        yield
    finally:
        masking_utils.sdpa_mask = original
