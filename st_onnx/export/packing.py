"""Packing mode: a CUDA fused graph that drops the padding tokens between the embeddings and the last layer.

ONNX Runtime's ``convert_to_packing_mode`` rewrites a graph with fused ``Attention`` nodes: a ``RemovePadding``
after the embeddings turns the (batch, seq, hidden) activations into (tokens, hidden) rows of real tokens only,
``PackedAttention`` attends within each text by its offsets, and a ``RestorePadding`` after the last layer norm
puts the rows back into (batch, seq, hidden) with zeros at the padded positions. Everything between them is
row-wise (MatMul, Add, SkipLayerNormalization, BiasGelu), so a batch costs its real tokens, not batch x longest.

What this module adds to ORT's pass, because a fused st-onnx graph goes on past the encoder (pooling, Dense,
Normalize, the ``token_embeddings`` output): it checks that the packed region holds only row-wise operators, that
every graph output is computed from the restored (padded) tensor, and that the tokens are counted from the
attention mask (``EmbedLayerNormalization``'s mask index), so the pooling downstream still sees the mask and the
padded shape it was exported with. A graph that fails a check is not written.

The three operators have CUDA kernels only (ORT 1.31's CPU provider: "Failed to find kernel for
com.microsoft.RemovePadding"): a packed graph runs on CUDA, and its parity with the padded graph it came from is
checked on CUDA where one is usable (else the manifest says it was not checked). Only graphs exported for the
CUDA target (fp16) have fused Attention; CPU-layout graphs (fp32, int8) cannot be packed.

onnx + onnxruntime only (no torch): a bundle without weights can be packed where it runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import folders, layout
from ..errors import GraphFileError, InvalidInputError, ParityError
from . import manifest as manifest_mod
from . import optimize as passes
from .graph_files import place_graph, remove_graph, save_graph

logger = logging.getLogger(__name__)

PACKED_OPS = ("RemovePadding", "PackedAttention", "RestorePadding")
# Operators that act on each token's row alone (plus the casts fp16 conversion inserts): the only ones allowed
# between RemovePadding and RestorePadding, where a "row" is a real token and the batch shape is gone.
ROW_WISE_OPS = frozenset({
    "PackedAttention", "MatMul", "Add", "Mul", "SkipLayerNormalization", "LayerNormalization", "BiasGelu", "Gelu",
    "FastGelu", "Cast", "RestorePadding",
})


def pack_graph(src: str | os.PathLike, dst: str | os.PathLike | None = None, *,
               model_folder: str | os.PathLike | None = None, texts: Sequence[str] | None = None) -> Path:
    """Write the packing-mode version of the fused graph ``src`` (with its manifest) and return its path.

    ``dst`` defaults to ``layout.packed_graph_path`` beside ``src``; ``model_folder`` (whose tokenizer feeds the
    CUDA parity check) defaults to the folder ``src`` lies in (``<folder>/onnx/st_onnx/``). Raises GraphFileError
    when ``src`` has no fused Attention (a CPU-layout graph) or the packed graph fails the structure checks, and
    ParityError when it runs on CUDA but does not compute what ``src`` computes; nothing is written then.
    """
    import onnx
    from onnxruntime.transformers.convert_to_packing_mode import PackingMode
    from onnxruntime.transformers.onnx_model import OnnxModel

    src = Path(src)
    source_manifest = manifest_mod.check_graph(src)
    if source_manifest.get("packing"):
        raise InvalidInputError(f"{src} is already a packed graph; pass the padded graph it was made from")
    dst = Path(dst) if dst is not None else layout.packed_graph_path(src)
    model = OnnxModel(onnx.load(str(src)))
    attentions = len(model.get_nodes_by_op_type("Attention"))
    if attentions == 0:
        exported_with = (source_manifest.get("versions") or {}).get("onnxruntime")
        older = (f"; it was exported with onnxruntime {exported_with}, which fuses no attention into fp16 graphs: "
                 f"export it again with onnxruntime-gpu {passes.CUDA_ATTENTION_RELEASE} or newer" if exported_with
                 and not passes.fuses_cuda_attention(str(exported_with)) else
                 ", for a model whose attention ONNX Runtime's optimizer recognises (BERT's)")
        raise GraphFileError(
            f"{src} has no fused Attention nodes (fusion target {source_manifest.get('fusion_target', '?')!r}), so "
            f"it cannot be packed; packing mode needs a graph exported for CUDA (precision 'fp16'){older}"
        )
    PackingMode(model).convert(use_symbolic_shape_infer=False)
    check_packed(model.model, attentions)
    layout.manifest_path(dst).unlink(missing_ok=True)  # never a manifest describing other bytes, even after a crash
    with folders.work_folder(dst.parent, "pack") as work:
        place_graph(save_graph(model.model, work / dst.name), dst)
    try:
        parity = _parity(src, dst, source_manifest, Path(model_folder) if model_folder else _model_folder(src), texts)
        manifest = manifest_mod.with_file_fields({
            **source_manifest,
            # (the key keeps its name; for a graph over 2 GB it holds the graph's and its data file's sha256)
            "packing": {"ops": list(PACKED_OPS), "attention_nodes": attentions, "source_graph": src.name,
                        "source_sha256": manifest_mod.content_digest(source_manifest)},
            "parity": parity,
        }, dst)
        manifest_mod.write_manifest(dst, manifest)
    except BaseException:
        remove_graph(dst)
        raise
    logger.info("packed %s -> %s (%d PackedAttention)", src.name, dst, attentions)
    return dst


def check_packed(model: Any, attentions: int) -> dict[str, int]:
    """Structure checks of a packed graph (a ModelProto); raise GraphFileError naming what is wrong."""
    nodes = list(model.graph.node)
    counts = {op: sum(n.op_type == op for n in nodes) for op in (*PACKED_OPS, "Attention")}
    expected = {"RemovePadding": 1, "RestorePadding": 1, "PackedAttention": attentions, "Attention": 0}
    if counts != expected:
        raise GraphFileError(f"packing mode left operator counts {counts}; expected {expected}")
    remove = next(n for n in nodes if n.op_type == "RemovePadding")
    producers = {out: n for n in nodes for out in n.output}
    counter = producers.get(remove.input[1])
    if counter is None or counter.op_type != "EmbedLayerNormalization" or counter.output[1] != remove.input[1]:
        found = counter.op_type if counter is not None else f"graph input {remove.input[1]!r}"
        raise GraphFileError(
            "packing mode must count each text's tokens from the attention mask (EmbedLayerNormalization's mask "
            f"index); RemovePadding reads them from {found}"
        )
    consumers: dict[str, list] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in model.graph.output}
    packed, frontier = set(), [remove.output[0]]
    while frontier:  # every tensor computed from the packed rows, up to RestorePadding
        name = frontier.pop()
        if name in packed:
            continue
        packed.add(name)
        if name in outputs:
            raise GraphFileError(f"the graph output {name!r} would hold packed rows: RestorePadding is misplaced")
        for n in consumers.get(name, []):
            if n.op_type not in ROW_WISE_OPS:
                raise GraphFileError(
                    f"the packed region holds a {n.op_type} node ({n.name}); only row-wise operators may run on "
                    f"packed tokens: {', '.join(sorted(ROW_WISE_OPS))}"
                )
            if n.op_type != "RestorePadding":
                frontier.extend(n.output)
    return counts


def _parity(src: Path, dst: Path, source_manifest: dict[str, Any], folder: Path,
            texts: Sequence[str] | None) -> dict[str, Any]:
    """Packed vs padded graph on CUDA, both fed the same padded batches of mixed lengths."""
    import onnxruntime as ort

    from ..runtime.providers import CUDA, cuda_usable

    if not cuda_usable():
        return {"checked": False, "reason": "packed graphs run on CUDA only and no usable CUDA GPU is here"}
    sessions = []
    for path in (src, dst):
        session = ort.InferenceSession(str(path), providers=[CUDA, "CPUExecutionProvider"])
        if session.get_providers()[0] != CUDA:
            return {"checked": False, "reason": f"ONNX Runtime bound {session.get_providers()[0]}, not CUDA"}
        sessions.append(session)
    from ..encode.tokenize import TextTokenizer
    from .verify import DEFAULT_SENTENCES, compare

    tokenizer = TextTokenizer.from_folder(folder)
    texts = list(texts or DEFAULT_SENTENCES)
    names = list(source_manifest.get("inputs") or manifest_mod.INPUT_NAMES)
    padded, packed, token_diff = [], [], 0.0
    for start in range(0, len(texts), 8):
        features = tokenizer(texts[start:start + 8])
        feed = {name: features[name].astype(np.int64) for name in names}
        (a, ta), (b, tb) = (s.run(["sentence_embedding", "token_embeddings"], feed) for s in sessions)
        mask = feed["attention_mask"].astype(bool)
        token_diff = max(token_diff, float(np.abs(ta[mask] - tb[mask]).max()))
        padded.append(a)
        packed.append(b)
    report = compare(np.concatenate(padded), np.concatenate(packed), texts, "fp16", CUDA, token_diff)
    if not report.passed:
        raise ParityError(f"the packed graph does not compute what {src.name} computes: {report}")
    return {"checked": True, "against": src.name, **report.to_dict()}


def _model_folder(graph: Path) -> Path:
    """The model folder of a graph at <folder>/onnx/st_onnx/<name>.onnx."""
    folder = graph.parent
    for _ in layout.FUSED_DIR.split("/"):
        folder = folder.parent
    return folder
