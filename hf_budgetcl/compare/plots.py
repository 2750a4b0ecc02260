"""The ``hf-budgetcl compare`` plots (matplotlib is the optional ``plots`` extra: without it nothing is drawn)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..evaluation.metrics import frozen_blocks_per_interval


def plot(runs: list[dict[str, Any]], output_dir: str) -> list[str]:
    """Accuracy vs training FLOPs per method; for freezing methods, frozen blocks over the stream and their histogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in runs if "error" not in r):
        ok = [r for r in runs if r["method"] == method and "error" not in r]
        flops = np.mean([[p["train_flops"] for p in r["curve"]] for r in ok], axis=0) / 1e12
        acc = np.mean([[p["accuracy"] for p in r["curve"]] for r in ok], axis=0) * 100
        ax.plot(flops, acc, marker="o", ms=3, label=method)
    ax.set(xlabel="training TFLOPs", ylabel="anytime accuracy (%)", title="accuracy vs training FLOPs")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(output_dir, "accuracy_vs_flops.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    freezers = [r for r in runs if "error" not in r and r.get("frozen_blocks_histogram", {}).keys() - {"0"}]
    if freezers:
        fig, (over_stream, shares) = plt.subplots(1, 2, figsize=(11, 4))
        methods = list(dict.fromkeys(r["method"] for r in freezers))
        width = 0.8 / len(methods)  # the methods' bars side by side within each integer bin
        for i, method in enumerate(methods):
            mine = [r for r in freezers if r["method"] == method]
            curves = [r["curve"] for r in mine if r["curve"] and all("frozen_blocks" in p for p in r["curve"])]
            if curves and len({len(c) for c in curves}) == 1:
                per_interval = [
                    frozen_blocks_per_interval([p["iterations"] for p in c], [p["frozen_blocks"] for p in c])
                    for c in curves
                ]
                over_stream.plot(
                    [p["samples"] for p in curves[0]],
                    np.nanmean(per_interval, axis=0),
                    marker="o",
                    ms=3,
                    linestyle=("-", "--", ":", "-.")[i % 4],
                    label=method,
                )  # styles: overlaps show
            hist: dict[int, float] = {}
            for r in mine:
                for k, v in r["frozen_blocks_histogram"].items():
                    hist[int(k)] = hist.get(int(k), 0) + v / r["iterations"]
            keys = sorted(hist)
            shares.bar(
                [k - 0.4 + width * (i + 0.5) for k in keys],
                [100 * hist[k] / len(mine) for k in keys],
                width=width,
                label=method,
            )
        over_stream.set(
            xlabel="stream samples seen",
            ylabel="mean frozen blocks per iteration",
            title="frozen blocks over the stream (per evaluation interval)",
        )
        shares.set(xlabel="frozen blocks", ylabel="share of iterations (%)", title="adaptive freezing decisions")
        for ax in (over_stream, shares):
            ax.legend()
        fig.tight_layout()
        written.append(os.path.join(output_dir, "freezing.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
