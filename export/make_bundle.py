"""Export a sentence-transformers model folder into a self-contained deployment bundle.

    python export/make_bundle.py MODEL_DIR BUNDLE_DIR [--precision fp32|int8|fp16]

The bundle holds everything a plain ONNX Runtime + tokenizers program needs (see export/README.md):

    model.onnx       the fused graph: token ids -> finished sentence embedding (pooling, dense, normalize inside)
    model.onnx.data  only for a graph over 2 GB (protobuf's limit): its weights, which ONNX Runtime reads itself
    manifest.json    st-onnx's manifest of that graph (fingerprint, versions, fusions, parity report)
    tokenizer.json   the model's tokenizer with fixed-length padding switched off (pads to the batch's longest
                     text), truncation at max_seq_length, and lower-casing built in when do_lower_case
    bundle.json      max_seq_length, do_lower_case (for information: tokenizer.json applies it), inputs, optional_inputs, outputs, embedding_dimension,
                     precision, and the model's prompts (prepended to texts at encode time; default_prompt_name
                     applies to all) with pooling_include_prompt, and truncate_dim (null: all dimensions)

The bundle is written atomically: BUNDLE_DIR appears complete or not at all. BUNDLE_DIR must be a new or empty
folder, or an earlier bundle (its files replaced, what the user added there kept); anything else, and a folder
overlapping MODEL_DIR, is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from st_onnx import folders, layout
from st_onnx.encode.prompts import ModelSettings
from st_onnx.errors import StOnnxError
from st_onnx.encode.tokenize import (TextTokenizer, configured_normalizer, configured_pad_token, lowercase_first,
                                     tokenizer_settings)
from st_onnx.export import ParityReport, export_fused_graph, read_manifest
from st_onnx.export.graph_files import place_graph
from st_onnx.export.manifest import with_file_fields
from st_onnx.export.verify import check_tokenizer
from st_onnx.fingerprint import folder_fingerprint
from st_onnx.modules import load_stack
from st_onnx.saving import keep_foreign_entries

GRAPH, MANIFEST, TOKENIZER, BUNDLE = "model.onnx", "manifest.json", "tokenizer.json", "bundle.json"


def bundle_tokenizer(model_dir: Path, max_seq_length: int, do_lower_case: bool):
    """The folder's tokenizer.json as the bundle carries it: no fixed padding (a batch pads to its longest text)
    with the pad token the tokenizer config names, truncation at ``max_seq_length``, and the model's
    ``do_lower_case`` built in as a Lowercase normalizer (what st-onnx and sentence-transformers 6 do); the
    tokenizer config's normalizer settings and truncation side applied, as transformers applies them."""
    from tokenizers import Tokenizer

    settings = tokenizer_settings(model_dir)
    tok = configured_normalizer(Tokenizer.from_file(str(model_dir / TOKENIZER)), settings)
    pad_id = TextTokenizer(tok, max_seq_length, pad_token=configured_pad_token(model_dir)).pad_id  # as st-onnx pads
    pad_token = tok.id_to_token(pad_id)
    if do_lower_case:
        tok.normalizer = lowercase_first(tok.normalizer)
    tok.no_padding()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)  # length=None: pad to the longest text of a batch
    strategy = (tok.truncation or {}).get("strategy", "longest_first")
    tok.enable_truncation(max_length=max_seq_length, strategy=strategy,
                          direction=settings.get("truncation_side", "right"))
    return tok, pad_id


def check_bundle_dir(model_dir: Path, bundle_dir: Path) -> None:
    """Refuse a bundle path that would overwrite anything but an earlier bundle: the bundle replaces its folder."""
    model, bundle = model_dir.resolve(), bundle_dir.resolve()
    if bundle == model or model in bundle.parents or bundle in model.parents:
        raise SystemExit(f"BUNDLE_DIR {bundle_dir} and MODEL_DIR {model_dir} overlap; the bundle replaces its "
                         "folder: give a separate new folder")
    if bundle_dir.is_dir() and any(bundle_dir.iterdir()) and not (bundle_dir / BUNDLE).is_file():
        raise SystemExit(f"BUNDLE_DIR {bundle_dir} exists and is not a bundle (no {BUNDLE}); allowed: a new or "
                         "empty folder, or an earlier bundle (replaced)")
    if bundle_dir.exists() and not bundle_dir.is_dir():
        raise SystemExit(f"BUNDLE_DIR {bundle_dir} is a file; give a folder path")


def make_bundle(model_dir: Path, bundle_dir: Path, precision: str = "fp32") -> Path:
    check_bundle_dir(model_dir, bundle_dir)
    stack = load_stack(model_dir)
    transformer = stack.transformer
    tokenizer_dir = layout.transformer_folder(model_dir)  # 0_Transformer/ in older sentence-transformers folders
    if not (tokenizer_dir / TOKENIZER).is_file():
        raise SystemExit(f"{tokenizer_dir} has no {TOKENIZER}; save the model with a fast tokenizer first")
    check_tokenizer(model_dir, stack)  # the bundle's tokenizer.json must feed the ids transformers feeds
    with folders.atomic_folder(bundle_dir) as tmp:
        graph = export_fused_graph(stack, tmp / "export", precision, fingerprint=folder_fingerprint(model_dir))
        place_graph(graph, tmp / GRAPH)  # with model.onnx.data, the weights of a graph over 2 GB
        manifest = with_file_fields(read_manifest(graph), tmp / GRAPH)  # the files as named here
        layout.write_json(tmp / MANIFEST, manifest)
        shutil.rmtree(tmp / "export")
        tok, pad_id = bundle_tokenizer(tokenizer_dir, transformer.max_seq_length, transformer.do_lower_case)
        tok.save(str(tmp / TOKENIZER))
        info = {
            "graph": GRAPH, "tokenizer": TOKENIZER, "precision": precision,
            "max_seq_length": int(transformer.max_seq_length), "do_lower_case": bool(transformer.do_lower_case),
            "pad_id": pad_id, "outputs": manifest["outputs"],
            # required inputs, then the optional ones with their defaults (prompt_length: include_prompt=False)
            "inputs": [n for n in manifest["inputs"] if n not in manifest.get("optional_inputs", {})],
            "optional_inputs": manifest.get("optional_inputs", {}),
            "embedding_dimension": manifest["embedding_dimension"],
            **ModelSettings.load(model_dir).to_config(),
            "pooling_include_prompt": manifest.get("pooling_include_prompt", True),
        }
        (tmp / BUNDLE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if bundle_dir.is_dir():  # what the user put in an earlier bundle (a Dockerfile, serve.py) stays; the
            # bundle's own files, an older graph's weights file among them, are the new bundle's
            owned = {GRAPH, GRAPH + ".data", MANIFEST, TOKENIZER, BUNDLE}
            keep_foreign_entries(bundle_dir, tmp, owned=owned.__contains__)
    return bundle_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="export a model folder into a self-contained ONNX bundle")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--precision", choices=layout.PRECISIONS, default="fp32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        bundle = make_bundle(args.model_dir, args.bundle_dir, args.precision)
    except (StOnnxError, OSError) as e:  # a bad model folder, an unwritable place: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    parity = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))["parity"]
    print(f"wrote {bundle}: {', '.join(sorted(p.name for p in bundle.iterdir()))}")
    print(ParityReport.from_dict(parity) if "min_cosine" in parity else f"parity not checked: {parity.get('reason')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
