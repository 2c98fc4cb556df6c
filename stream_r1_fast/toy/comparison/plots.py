"""The toy comparison's figures (matplotlib, Agg): methods.png (every generator on every
metric) and long_rollouts.png (each cache policy along the long rollouts)."""

from __future__ import annotations

import math
from pathlib import Path

from stream_r1_fast.toy.comparison.stats import LABELS, METRICS


def plot(summary: dict, meta: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(summary["table"])
    keys = list(METRICS)
    fig, axes = plt.subplots(2, math.ceil(len(keys) / 2), figsize=(3.0 * math.ceil(len(keys) / 2), 6.4))
    colors = ["#777777", "#bbbbbb", "#4c72b0", "#dd8452", "#55a868", "#8fd19e", "#2f6b3b"]
    for ax, k in zip(axes.flat, keys):
        means = [summary["table"][n][k][0] for n in names]
        stds = [summary["table"][n][k][1] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors[: len(names)], capsize=3)
        ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{k} ({'higher' if METRICS[k] else 'lower'} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"Toy world: teacher vs students (mean ± std over seeds {meta['seeds']})", fontsize=10)
    fig.tight_layout()
    paths.append(out / "methods.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    long_keys = ("color", "count", "shape", "dynamic_degree", "background_error", "reward_MQ")
    fig, axes = plt.subplots(2, len(long_keys), figsize=(3.0 * len(long_keys), 6.2))
    labels = list(summary["long"])
    for ax, bar, k in zip(axes[0], axes[1], long_keys):
        for i, (label, data) in enumerate(summary["long"].items()):
            x = [s / 33 for s in data["starts"]]
            m = [w[k][0] for w in data["windows"]]
            s = [w[k][1] for w in data["windows"]]
            ax.plot(x, m, marker="o", ms=3, label=label, color=f"C{i}")
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.15, color=f"C{i}")
        ax.set_title(f"{k} per window", fontsize=9)
        ax.set_xlabel("window start (x training length)", fontsize=7)
        ax.tick_params(labelsize=7)
        bar.bar(range(len(labels)), [summary["long"][n]["later"][k][0] for n in labels],
                yerr=[summary["long"][n]["later"][k][1] for n in labels], color=[f"C{i}" for i in range(len(labels))],
                capsize=3)
        bar.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        bar.set_title(f"{k}, later windows", fontsize=8)
        bar.tick_params(axis="y", labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Long rollouts ({meta['long_factor']}x training length), {LABELS[meta['long_student']]} student, "
                 "33-frame windows (bottom: mean of the windows after the first), mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    paths.append(out / "long_rollouts.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


__all__ = ["plot"]
