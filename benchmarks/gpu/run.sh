#!/usr/bin/env bash
# The one command of the fifth device call (benchmarks/gpu/prepare.sh prints all five): installs onnxruntime-gpu
# and pytest into ~/site, rebuilds all-MiniLM-L6-v2, then runs, each step under its own time limit and logged to
# $OUT: the GPU tests, STSb through every backend on CUDA, and the GPU benchmark. A failing step does not stop the
# next; the exit status is the number of failed steps. At most 450 s of steps plus the install (~30 s).
set -uo pipefail
: "${OUT:?run on the device machine, where \$OUT is set}"
cd "$(dirname "$0")/../.."
failed=0
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, count failures
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc $rc in $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return 0
}

mkdir -p ~/ortgpu ~/gpuwork "$OUT"
cp .ortgpu/p4 ~/ortgpu/
wheel=~/$(cat .ortgpu/NAME)
cat ~/ortgpu/p? > "$wheel"
[ "$(sha256sum "$wheel" | cut -d' ' -f1)" = "$(cat .ortgpu/SHA256)" ] || { echo "onnxruntime-gpu wheel: bad sha256" | tee "$OUT/steps.txt"; exit 100; }
python3 -m pip install -q --no-index --no-deps --target "$HOME/site" "$wheel" .gpuwork/wheels/*.whl > "$OUT/install.log" 2>&1 \
  || { echo "install failed" | tee "$OUT/steps.txt"; exit 100; }
export PYTHONPATH=$HOME/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 --version
  python3 -c "import onnxruntime as o, torch, transformers, sentence_transformers as s, onnx; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); print('transformers', transformers.__version__, 'sentence-transformers', s.__version__, 'onnx', onnx.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# all-MiniLM-L6-v2: the fp16 parts cast back to fp32 beside the folder's other files
cat ~/gpuwork/m? > ~/gpuwork/minilm.fp16.safetensors
[ "$(sha256sum ~/gpuwork/minilm.fp16.safetensors | cut -d' ' -f1)" = "$(cat .gpuwork/minilm/FP16_SHA256)" ] \
  || echo "MiniLM parts: bad sha256" | tee -a "$OUT/steps.txt"
rm -rf ~/minilm && cp -r .gpuwork/minilm ~/minilm && rm -f ~/minilm/FP16_SHA256
python3 -c "
import numpy as np
from safetensors.numpy import load_file, save_file
w = load_file('$HOME/gpuwork/minilm.fp16.safetensors')
save_file({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in w.items()}, '$HOME/minilm/model.safetensors')
" >> "$OUT/steps.txt" 2>&1
export ST_ONNX_MINILM=$HOME/minilm

# the order is the issue's: correctness, then speed, then STSb (each result is written as soon as it exists)
# the GPU tests, and the packing tests (on a GPU their packed graphs get the CUDA parity check); only these files:
# the others import test-only packages (psutil) the machine may lack
step pytest-gpu 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_packing.py \
  tests/test_export.py::test_fp16_graph_on_cuda_matches_torch
tail -n 25 "$OUT/pytest-gpu.log"
step bench-gpu 240 python3 benchmarks/bench_gpu.py --minilm "$HOME/minilm" --data .gpuwork/bench --out "$OUT" \
  --work "$HOME/benchwork" --repeat 3 --limit 4000
tail -n 40 "$OUT/bench-gpu.log"
step stsb-gpu 60 python3 benchmarks/eval_stsb_gpu.py "$HOME/minilm" --device cuda --json "$OUT/stsb_gpu.json"
tail -n 9 "$OUT/stsb-gpu.log"
cat "$OUT/steps.txt"
exit "$failed"
