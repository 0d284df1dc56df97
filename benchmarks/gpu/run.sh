#!/usr/bin/env bash
# The one command of the fifth device call (benchmarks/gpu/prepare.sh prints all five). In order:
#   1. $OUT/env.txt: the GPU and the machine's own versions (benchmarks/gpu/envcheck.py), first thing;
#   2. into ~/site, ahead on PYTHONPATH: the carried transformers 5.24.0 set unless the machine's transformers is
#      known to export right (5.2, or >= 5.9; envcheck.py says why), huggingface_hub 1.33.0 where the machine's is
#      too old for it, pytest where the machine has none; then onnxruntime-gpu, from the four parts the first
#      calls left in ~/ortgpu (sha256 checked, unpacked with tarfile: benchmarks/gpu/unpack.py); the versions the
#      steps run with go into env.txt too;
#   3. all-MiniLM-L6-v2 rebuilt from its fp16 parts;
#   4. the steps, each under its own time limit, logged to $OUT/NAME.log: the GPU tests (the transformers canary
#      test first; ST_ONNX_REQUIRE_GPU=1 makes a machine without usable CUDA fail them, not skip them; their
#      numbers go to $OUT/gpu_correctness.jsonl), the GPU benchmark, STSb through every backend on CUDA.
# A step at its limit gets SIGINT (pytest then prints its failures and summary; the benchmark and STSb keep the
# JSON written after every run/row), and SIGKILL 15 s later. Each limit is also cut to what is left before a
# deadline 555 s after the start (the call has 600 s); a step with under 20 s left is skipped. A failing step does
# not stop the next; the exit status is the number of failed steps, or 100 when the set-up failed.
# $OUT gets at most 8 files (what a call brings back): steps.txt, env.txt, pytest-gpu.log, bench-gpu.log,
# stsb-gpu.log, gpu_results.json, stsb_gpu.json, gpu_correctness.jsonl.
set -uo pipefail
: "${OUT:?run on the device machine, where \$OUT is set}"
cd "$(dirname "$0")/../.." || exit 100
start=$SECONDS
deadline=${GPU_RUN_DEADLINE_S:-555}
grace=15
failed=0
mkdir -p "$OUT" ~/ortgpu ~/gpuwork
: > "$OUT/steps.txt"
note() { echo "$*" | tee -a "$OUT/steps.txt"; }
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, count failures
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - (SECONDS - start) - grace))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    note "$name: skipped, ${left} s left before the deadline"
    failed=$((failed + 1))
    return 0
  fi
  local t=$SECONDS
  timeout -s INT -k "$grace" "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local why=""
  [ "$rc" -eq 124 ] && why=" (hit its ${limit} s limit: SIGINT)"
  [ "$rc" -eq 137 ] && why=" (hit its ${limit} s limit, killed ${grace} s later)"
  note "$name: rc $rc in $((SECONDS - t)) s$why"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return 0
}
fail_setup() { note "set-up failed after $((SECONDS - start)) s: $* (see env.txt)"; cat "$OUT/env.txt"; exit 100; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
machine_path=${PYTHONPATH:-}

# 1. the machine as found
rm -rf ~/site ~/benchwork ~/benchout ~/gpuwork/needs && mkdir -p ~/site
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 benchmarks/gpu/envcheck.py versions --label "the machine's own" --needs ~/gpuwork/needs 2>&1
} > "$OUT/env.txt"
if [ ! -f ~/gpuwork/needs ]; then
  echo "envcheck.py failed: installing the whole carried set" >> "$OUT/env.txt"
  printf 'transformers\nhuggingface_hub\n' > ~/gpuwork/needs
fi

# 2. the carried wheels, then onnxruntime-gpu
wheels=()
grep -qx transformers ~/gpuwork/needs && wheels+=(.gpuwork/pins/transformers-*.whl .gpuwork/pins/tokenizers-*.whl
                                                  .gpuwork/pins/safetensors-*.whl .gpuwork/pins/regex-*.whl)
grep -qx huggingface_hub ~/gpuwork/needs && wheels+=(.gpuwork/pins/huggingface_hub-*.whl)
grep -qx pytest ~/gpuwork/needs && wheels+=(.gpuwork/wheels/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
  echo "== installing into ~/site: ${wheels[*]##*/}" >> "$OUT/env.txt"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOME/site" "${wheels[@]}" \
    >> "$OUT/env.txt" 2>&1 || fail_setup "installing the carried wheels"
fi
cp .gpuwork/m4 ~/gpuwork/ 2>/dev/null || fail_setup "no .gpuwork/m4 (carry it in this call)"
python3 benchmarks/gpu/unpack.py ~/ortgpu .ortgpu/SHA256 "$HOME/site" >> "$OUT/env.txt" 2>&1 \
  || fail_setup "onnxruntime-gpu's parts in ~/ortgpu are missing or do not add up: make calls 1-4 again"
export PYTHONPATH=$HOME/site:$PWD${machine_path:+:$machine_path}
python3 benchmarks/gpu/envcheck.py versions --label "as the steps run them" >> "$OUT/env.txt" 2>&1
note "set-up: $((SECONDS - start)) s"
cat "$OUT/env.txt"

# 3. all-MiniLM-L6-v2: the fp16 parts cast back to fp32 beside the folder's other files
cat ~/gpuwork/m? > ~/gpuwork/minilm.fp16.safetensors
[ "$(sha256sum ~/gpuwork/minilm.fp16.safetensors | cut -d' ' -f1)" = "$(cat .gpuwork/minilm/FP16_SHA256)" ] \
  || fail_setup "MiniLM's parts in ~/gpuwork do not add up: make calls 1-4 again"
rm -rf ~/minilm && cp -r .gpuwork/minilm ~/minilm && rm -f ~/minilm/FP16_SHA256
python3 -c "
import numpy as np
from safetensors.numpy import load_file, save_file
w = load_file('$HOME/gpuwork/minilm.fp16.safetensors')
save_file({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in w.items()}, '$HOME/minilm/model.safetensors')
" >> "$OUT/steps.txt" 2>&1 || fail_setup "rebuilding MiniLM"
export ST_ONNX_MINILM=$HOME/minilm ST_ONNX_REQUIRE_GPU=1 ST_ONNX_GPU_REPORT=$OUT/gpu_correctness.jsonl
: > "$ST_ONNX_GPU_REPORT"

# 4. correctness, then speed, then STSb (each result is written as soon as it exists). pytest: the canary for the
# transformers version first, the GPU tests, the packing tests (on a GPU their packed graphs get the CUDA parity
# check); only these files: the others import test-only packages the machine may lack
step pytest-gpu 170 python3 -m pytest -v -ra -p no:cacheprovider --durations=15 \
  tests/test_export.py::test_fp16_export_keeps_fp32_io_and_is_checked tests/test_gpu.py tests/test_packing.py \
  tests/test_export.py::test_fp16_graph_on_cuda_matches_torch
tail -n 30 "$OUT/pytest-gpu.log"
step bench-gpu 240 python3 benchmarks/bench_gpu.py --minilm "$HOME/minilm" --data .gpuwork/bench --out "$HOME/benchout" \
  --work "$HOME/benchwork" --repeat 3 --limit 4000
cp "$HOME/benchout/gpu_results.json" "$OUT/" 2>/dev/null || note "bench-gpu: no gpu_results.json"
tail -n 40 "$OUT/bench-gpu.log"
step stsb-gpu 100 python3 benchmarks/eval_stsb_gpu.py "$HOME/minilm" --device cuda --json "$OUT/stsb_gpu.json"
tail -n 9 "$OUT/stsb-gpu.log"
note "total: $((SECONDS - start)) s, $failed failed step(s); \$OUT holds $(find "$OUT" -type f | wc -l) files (8 come back)"
cat "$OUT/steps.txt"
exit "$failed"
