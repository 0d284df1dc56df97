"""What `pip install st-onnx` gives a user who installs it from a wheel or the sdist rather than a clone."""

import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_build_backend_reads_the_licence_expression():
    # setuptools 68-76 refuse `license = "Apache-2.0"` (PEP 639): builds without isolation (distros, offline) failed
    setuptools = next(Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    assert isinstance(PYPROJECT["project"]["license"], str)
    assert not setuptools.specifier.contains("76.1.0") and setuptools.specifier.contains("77.0.3")


@pytest.mark.parametrize("system, machine", [("Linux", "x86_64"), ("Windows", "AMD64"), ("Darwin", "arm64"),
                                             ("Linux", "aarch64")])
def test_every_python_the_project_accepts_has_an_onnx_runtime_to_install(system, machine):
    # onnxruntime and onnxruntime-gpu publish no cp310 wheels after 1.23.2: accepting 3.10 with an ORT floor above
    # that made `pip install st-onnx` fail to resolve on Python 3.10
    python = Requirement(f"python{PYPROJECT['project']['requires-python']}").specifier
    newest_for = {"3.10": "1.23.2", "3.11": "1.31.1"}
    for version, newest in newest_for.items():
        if not python.contains(f"{version}.0"):
            continue
        env = {"python_version": version, "python_full_version": f"{version}.0", "platform_system": system,
               "platform_machine": machine}
        runtimes = [req for line in PYPROJECT["project"]["dependencies"]
                    if (req := Requirement(line)).name.startswith("onnxruntime")
                    and (req.marker is None or req.marker.evaluate(env))]
        assert len(runtimes) == 1, (version, system, machine)  # one ONNX Runtime package, never both
        assert runtimes[0].specifier.contains(newest), (version, str(runtimes[0]))
    assert not python.contains("3.10.0")


def test_the_python_versions_named_are_those_requires_python_allows_from_its_floor():
    python = Requirement(f"python{PYPROJECT['project']['requires-python']}").specifier
    named = [c.rsplit(" :: ", 1)[1] for c in PYPROJECT["project"]["classifiers"]
             if c.startswith("Programming Language :: Python :: 3.")]
    assert named and all(python.contains(f"{v}.0") for v in named), named
    assert min(named, key=Version) == min(s.version for s in python if s.operator == ">="), named


def _floor(requirement: Requirement) -> Version:
    return min(Version(s.version) for s in requirement.specifier if s.operator in (">=", "=="))


@pytest.mark.parametrize("name, lowest", [
    ("torch", "2.6"),  # transformers >= 5.23 disable PyTorch below 2.6 (pip keeps an older torch: it is an extra)
    ("transformers", "5.23"),  # <= 5.17 pin huggingface-hub<2.0; 5.18 rotary graphs fail in ORT; 5.19-5.22 If nodes
    ("tokenizers", "0.23.3"),  # <= 0.23.2 pin huggingface-hub<2.0
    ("safetensors", "0.8"),  # transformers >= 5.13 need it
    ("onnx", "1.19"),  # 1.17/1.18 bring no ml_dtypes, which onnxruntime.quantization imports
    ("onnxruntime-gpu", "1.31"),  # older releases fuse no Attention into fp16 graphs
    ("sentence-transformers", "6.2"),  # the test extra: older ones pin transformers<5 or huggingface-hub<2.0
])
def test_each_declared_floor_installs_beside_the_others_and_exports(name, lowest):
    """Floors are promises: these are the lowest versions measured to install beside huggingface_hub 2 and pass
    the architecture, export and onnx backend tests (2026-11-30; `pip install --dry-run` at the old floors fails)."""
    lines = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    requirement = next(r for line in lines if (r := Requirement(line)).name.lower().replace("_", "-") == name)
    assert _floor(requirement) >= Version(lowest), str(requirement)


def _build(tmp_path, kind):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "build", "dist",
                                                             "out"))
    # in a process of its own: setuptools' build_meta rewrites sys.argv and sets the root logger to INFO for good
    # (every later encode in the suite then showed progress bars)
    code = f"import sys; from setuptools import build_meta; print(build_meta.build_{kind}(sys.argv[1]))"
    built = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    return tmp_path / "dist" / built.stdout.strip().splitlines()[-1]


def test_the_wheel_holds_the_package_its_typing_marker_and_the_licence(tmp_path):
    names = set(zipfile.ZipFile(_build(tmp_path, "wheel")).namelist())
    version = PYPROJECT["project"]["version"]
    assert {"st_onnx/py.typed", "st_onnx/export/exporter.py", "st_onnx/runtime/session.py"} <= names
    assert {name.split("/")[0] for name in names} == {"st_onnx", f"st_onnx-{version}.dist-info"}
    assert f"st_onnx-{version}.dist-info/licenses/LICENSE" in names


def test_the_sdist_holds_the_licence_and_the_kit_and_no_test_data(tmp_path):
    with tarfile.open(_build(tmp_path, "sdist")) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "export/make_bundle.py", "export/README.md"} <= names
    # the suite's data slices (one CC BY-NC) stay in the repository; half a test suite (test files without
    # conftest.py and helpers.py) failed to import
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_st_onnx_bench_finds_the_checkout_it_runs_in_when_the_package_is_installed_elsewhere(tmp_path, monkeypatch,
                                                                                               capsys):
    import st_onnx
    from st_onnx import cli

    site = tmp_path / "site-packages" / "st_onnx"
    site.mkdir(parents=True)
    monkeypatch.setattr(st_onnx, "__file__", str(site / "__init__.py"))  # `pip install .`, not editable
    monkeypatch.chdir(ROOT)
    assert cli.bench_script() == ROOT / "benchmarks" / "bench_encode.py"
    other = tmp_path / "other"
    (other / "benchmarks").mkdir(parents=True)
    (other / "benchmarks" / "bench_encode.py").write_text("raise SystemExit(7)")
    monkeypatch.chdir(other)  # another project's script of that name is not run
    assert cli.main(["bench"]) == 2
    assert "run it in the clone's top folder" in capsys.readouterr().err
