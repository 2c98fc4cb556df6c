#!/usr/bin/env bash
# One run on a GPU machine (torch preinstalled, no network), bounded to ~10 minutes in all:
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
# Our own attention kernel takes part in the measured backend choice (tests, benchmarks): this
# run is where it is first validated on a GPU.
export STREAM_R1_FAST_ATTENTION_OURS=1
declare -A STATUS

# The whole run fits one device call: every phase's limit is cut to what is left of
# ${GPU_CHECK_SECONDS:-560} s, and a phase with under 20 s left is skipped (status "skipped").
# Phases run most important first, so a short budget loses the least.
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-560} ))
phase() {  # phase NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2 left
  shift 2
  left=$(( DEADLINE - $(date +%s) ))
  if (( left < 20 )); then
    echo "=== $name: skipped, ${left}s left of the run's budget"; STATUS[$name]=skipped; return
  fi
  (( limit > left - 10 )) && limit=$(( left - 10 ))
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  STATUS[$name]=$?
  tail -25 "$OUT/$name.log"
}

nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1; head -15 "$OUT/nvidia_smi.txt"
# Pure-Python dependencies missing there, fetched beforehand by scripts/fetch_gpu_wheels.sh.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
phase build 240 python3 -m pip install --no-index --no-build-isolation --no-deps -e .
phase backend 30 python3 -c "import stream_r1_fast; print(stream_r1_fast.backend_info())"
phase ops_smoke 60 python3 scripts/gpu_ops_smoke.py
HYPOTHESIS_PROFILE=gpu phase gpu_tests 120 python3 -m pytest -q -p no:cacheprovider -m cuda
if command -v compute-sanitizer >/dev/null; then
  phase sanitizer_memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 3 python3 scripts/gpu_ops_smoke.py
else
  echo "compute-sanitizer not found"; STATUS[sanitizer]=127
fi
phase bench_kernels 100 python3 bench/run_all.py --device cuda
phase bench_e2e 120 python3 bench/e2e_streaming.py --keep-output --chunks 10 --warmup 3 --repeats 3 --modes ours rotated baseline
# The CUDA-graph columns apart (compilation of the 1.3B step may be slow; an overrun loses only
# this phase): the baseline again in the same run, 5 warm-up chunks (recording per fill shape).
phase bench_e2e_graphs 150 python3 bench/e2e_streaming.py --keep-output --chunks 10 --warmup 5 --repeats 2 \
  --modes ours rotated baseline --cuda-graphs --out "$OUT/e2e_graphs"
if command -v compute-sanitizer >/dev/null; then
  phase sanitizer_racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/gpu_ops_smoke.py
fi
cp bench/results/*_cuda.json "$OUT/" 2>/dev/null || true
echo "=== summary (exit status per phase; 124 = time limit)"
for name in "${!STATUS[@]}"; do echo "$name: ${STATUS[$name]}"; done | sort | tee "$OUT/summary.txt"
