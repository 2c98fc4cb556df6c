#!/usr/bin/env bash
# One run on a GPU machine (torch preinstalled, no network), bounded to ~10 minutes:
#   1. build the extension for the local GPU (make SYSTEM=1's install)
#   2. every CUDA op against its PyTorch reference on fresh random data (scripts/gpu_ops_smoke.py)
#   3. compute-sanitizer memcheck and racecheck on one small call of each op (fail fast: the
#      sandbox may refuse the tool; the rest goes on)
#   4. the GPU tests (pytest -m cuda, larger hypothesis budget)
#   5. the kernel benchmarks and the end-to-end streaming benchmark, eager and with CUDA graphs
#      (JSON naming the device)
# Logs and JSON go to ${OUT:-gpu_out}/; a summary of every phase's exit status at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -A STATUS

phase() {  # phase NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  STATUS[$name]=$?
  tail -25 "$OUT/$name.log"
}

nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1; head -15 "$OUT/nvidia_smi.txt"
# Pure-Python dependencies missing there, fetched beforehand by scripts/fetch_gpu_wheels.sh.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
phase build 300 python3 -m pip install --no-index --no-build-isolation --no-deps -e .
phase backend 60 python3 -c "import stream_r1_fast; print(stream_r1_fast.backend_info())"
phase ops_smoke 90 python3 scripts/gpu_ops_smoke.py
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    phase "sanitizer_$tool" 150 compute-sanitizer --tool "$tool" --error-exitcode 3 python3 scripts/gpu_ops_smoke.py
  done
else
  echo "compute-sanitizer not found"; STATUS[sanitizer]=127
fi
HYPOTHESIS_PROFILE=gpu phase gpu_tests 180 python3 -m pytest -q -p no:cacheprovider -m cuda
phase bench_kernels 150 python3 bench/run_all.py --device cuda
phase bench_e2e 240 python3 bench/e2e_streaming.py --keep-output --chunks 10 --warmup 3 --repeats 3 --modes ours rotated baseline
# The CUDA-graph columns apart (compilation of the 1.3B step may be slow; an overrun loses only
# this phase): the baseline again in the same run, 5 warm-up chunks (recording per fill shape).
phase bench_e2e_graphs 240 python3 bench/e2e_streaming.py --keep-output --chunks 10 --warmup 5 --repeats 2 \
  --modes ours rotated baseline --cuda-graphs --out "$OUT/e2e_graphs"
cp bench/results/*_cuda.json "$OUT/" 2>/dev/null || true
echo "=== summary (exit status per phase; 124 = time limit)"
for name in "${!STATUS[@]}"; do echo "$name: ${STATUS[$name]}"; done | sort | tee "$OUT/summary.txt"
