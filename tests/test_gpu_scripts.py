"""The GPU machine's one-shot script stays runnable: its op smoke check runs (on the CPU here,
on CUDA there) and the shell script parses."""

import os
import subprocess
import sys
from pathlib import Path

from stream_r1_fast._op_table import NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_ops_smoke_script_runs_and_checks_every_op():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_ops_smoke.py"), "--device", "cpu", "--seed", "0"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if "max |op - reference|" in line]
    assert sorted(line.split(":")[0].strip() for line in lines) == sorted(NAMES), res.stdout  # every op of the table
    assert all(line.endswith("OK") for line in lines), res.stdout


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)
