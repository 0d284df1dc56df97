"""The dependency direction, read from the source (imports at module level and inside functions alike): the ONNX
Runtime path imports no torch, transformers or onnx and nothing of the layers above it; the torch modules and
training import no ONNX Runtime. A test that loads a model and looks at sys.modules sees only the paths it runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "st_onnx"
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "sentence_transformers")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved (``from .. import layout`` -> st_onnx.layout)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                names.add(node.module or "")
                continue
            base = ".".join(package[:len(package) - node.level + 1])
            if node.module:
                names.add(f"{base}.{node.module}")
            else:
                names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def files(*parts: str) -> list[Path]:
    found = []
    for part in parts:
        path = PACKAGE / part
        found += sorted(path.glob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return found


def heavy(names: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in HEAVY and n.split(".")[0] not in allowed)


# what the runtime may import of st-onnx: itself, the encode helpers and the torch-free layers under them
RUNTIME_MAY_USE = ("st_onnx.runtime", "st_onnx.encode", "st_onnx.errors", "st_onnx.layout", "st_onnx.folders",
                   "st_onnx.fingerprint", "st_onnx.devices", "st_onnx.quantization")


# what the folder format and the files under the runtime may import of st-onnx
FOLDER_FORMAT = ("st_onnx.errors", "st_onnx.layout", "st_onnx.folders", "st_onnx.quantization")


@pytest.mark.parametrize("path", files("runtime", "encode", "layout", "folders", "errors", "fingerprint", "quantization"),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_onnx_runtime_path_imports_nothing_above_it(path):
    names = imported(path)
    # encode/output.py imports torch for convert_to_tensor only, which asks for torch tensors
    allowed = ("onnxruntime",) + (("torch",) if path.name == "output.py" else ())
    assert heavy(names, allowed) == []
    may_use = RUNTIME_MAY_USE if path.parent.name in ("runtime", "encode") else FOLDER_FORMAT
    above = sorted(n for n in names if n.startswith("st_onnx") and not n.startswith(may_use))
    assert above == [], f"{path.name} imports {above}"


@pytest.mark.parametrize("path", files("modules", "training", "losses", "fit"),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_torch_modules_and_training_import_no_onnx_runtime(path):
    names = imported(path)
    assert heavy(names, ("torch", "transformers")) == []
    below = ("st_onnx.runtime", "st_onnx.backends", "st_onnx.export", "st_onnx.pool")
    assert sorted(n for n in names if n.startswith(below)) == []


def test_the_import_reader_sees_lazy_and_relative_imports():
    """The reader the two tests rely on finds an import inside a function, and resolves a relative one."""
    path = PACKAGE / "runtime" / "graphs.py"
    names = imported(path)
    assert "st_onnx.runtime.manifest" in names and "st_onnx.layout" in names
    assert "st_onnx.fingerprint" in names  # imported inside functions only
