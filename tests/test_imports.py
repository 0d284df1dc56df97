"""The layers hold: `import st_onnx` loads nothing heavy, and an ONNX-only encode needs neither torch nor onnx."""

from __future__ import annotations

import json
import subprocess
import sys

from test_onnx_backend import onnx_bundle

HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "sentence_transformers")


def loaded_after(code: str) -> dict:
    script = code + f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_st_onnx_loads_nothing_heavy():
    loaded = loaded_after("import st_onnx\nst_onnx.errors")
    assert not any(loaded.values()), loaded


def test_onnx_only_encode_imports_neither_torch_nor_transformers_nor_onnx(tiny_model_dir, tmp_path):
    from st_onnx import SentenceTransformer

    folder = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    SentenceTransformer(str(folder), backend="onnx", device="cpu")  # exports the graph (needs torch, here)
    bundle = onnx_bundle(folder, tmp_path / "bundle")
    loaded = loaded_after(
        "from st_onnx import SentenceTransformer\n"
        f"m = SentenceTransformer({str(bundle)!r}, backend='onnx', device='cpu')\n"
        "e = m.encode(['a cat', 'the dog runs'], normalize_embeddings=True)\n"
        "assert e.shape == (2, 32), e.shape\n"
        "m.encode(['a cat'], output_value='token_embeddings')\n"
    )
    assert loaded["onnxruntime"]
    assert not loaded["torch"] and not loaded["transformers"] and not loaded["onnx"], loaded
