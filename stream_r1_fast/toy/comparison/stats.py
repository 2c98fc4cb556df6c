"""What the toy comparison compares (generators, metrics, pairs) and its summary over seeds:
mean +- std per generator and metric, the long rollouts per window, and the paired per-seed
differences (the same captions and noise within a seed)."""

from __future__ import annotations

import statistics

# The distillation recipes (configs/toy_<name>.yaml): the three methods, then Stream-R1's two
# levels alone (its ablation: W_intra = 1, and W_inter = 1).
METHODS = ("dmd", "re_dmd", "stream_r1", "stream_r1_inter", "stream_r1_intra")
LABELS = {"teacher": "teacher (24 steps)", "ode": "ODE init", "dmd": "DMD", "re_dmd": "Re-DMD",
          "stream_r1": "Stream-R1", "stream_r1_inter": "Stream-R1, inter only", "stream_r1_intra": "Stream-R1, intra only"}
# Paired comparisons (same captions and noise within a seed): generator a - generator b, and for
# the long rollouts cache a - cache b on the mean of the windows after the first.
PAIRS = (("dmd", "ode"), ("dmd", "teacher"), ("re_dmd", "dmd"), ("stream_r1", "dmd"), ("stream_r1", "re_dmd"),
         ("stream_r1_inter", "dmd"), ("stream_r1_intra", "dmd"), ("stream_r1", "stream_r1_inter"),
         ("stream_r1", "stream_r1_intra"))
CACHE_PAIRS = (("EMA-Sink", "no sink"), ("EMA-Sink", "static sink"), ("EMA-Sink", "EMA-Sink a=0.99"))
PAIRED_METRICS = ("count", "color", "shape", "direction", "speed", "smoothness", "dynamic_degree", "background_error",
                  "reward_VQ", "reward_MQ", "reward_TA")
# The metrics shown, and whether higher is better.
METRICS = {"count": True, "color": True, "shape": True, "direction": True, "speed": True, "smoothness": True,
           "dynamic_degree": True, "frame_copy_rate": False, "background_error": False, "drift": False,
           "reward_VQ": True, "reward_MQ": True, "reward_TA": True}


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _later(run: dict, key: str) -> float:
    """One seed's long rollout: the mean of ``key`` over every window after the first (all past
    the first eviction; 7 windows of the captions instead of one window's)."""
    return statistics.fmean(w[key] for w in run["windows"][1:])


def summarise(results: list[dict]) -> dict:
    names = list(results[0]["generators"])
    table = {n: {k: _stats([r["generators"][n][k] for r in results]) for k in METRICS} for n in names}
    fps = {n: _stats([r["fps"][n] for r in results]) for n in names}
    long = {}
    for label in results[0]["long"]:
        windows = len(results[0]["long"][label]["windows"])
        long[label] = {
            "starts": results[0]["long"][label]["starts"],
            "windows": [{k: _stats([r["long"][label]["windows"][w][k] for r in results]) for k in METRICS}
                        for w in range(windows)],
            "later": {k: _stats([_later(r["long"][label], k) for r in results]) for k in METRICS},
            "drift": _stats([r["long"][label]["drift"] for r in results]),
            "frame_copy_rate": _stats([r["long"][label]["frame_copy_rate"] for r in results]),
        }
    paired = {f"{a} - {b}": {k: [r["generators"][a][k] - r["generators"][b][k] for r in results]
                             for k in PAIRED_METRICS}
              for a, b in PAIRS if a in names and b in names}
    paired_long = {f"{a} - {b}": {k: [_later(r["long"][a], k) - _later(r["long"][b], k) for r in results]
                                  for k in PAIRED_METRICS}
                   for a, b in CACHE_PAIRS if a in long and b in long}
    return {"table": table, "fps": fps, "long": long, "paired": paired, "paired_long": paired_long}


__all__ = ["CACHE_PAIRS", "LABELS", "METHODS", "METRICS", "PAIRED_METRICS", "PAIRS", "summarise"]
