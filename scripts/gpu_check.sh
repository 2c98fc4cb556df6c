#!/usr/bin/env bash
# One run on a GPU machine (torch preinstalled, no network): build the extension for the local
# GPU, run the whole test suite with the larger hypothesis profile, then every benchmark.
# Logs and JSON go to ${OUT:-gpu_out}/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi | tee "$OUT/nvidia_smi.txt"
# Pure-Python dependencies missing there, fetched beforehand by scripts/fetch_gpu_wheels.sh.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$OUT/build.log"
python3 -c "import stream_r1_fast; print(stream_r1_fast.backend_info())" | tee -a "$OUT/build.log"
HYPOTHESIS_PROFILE=gpu python3 -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30
python3 bench/run_all.py --device cuda 2>&1 | tee "$OUT/bench.log"
python3 bench/e2e_streaming.py --keep-output 2>&1 | tee "$OUT/e2e.log"
cp bench/results/*_cuda.json "$OUT/" 2>/dev/null || true
