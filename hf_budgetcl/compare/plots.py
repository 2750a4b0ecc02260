"""The ``hf-budgetcl compare`` plots (matplotlib is the optional ``plots`` extra: without it nothing is drawn)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..evaluation.metrics import frozen_blocks_per_interval
from ..evaluation.per_class import final_class_accuracies
from .summary import succeeded


def per_class_means(
    runs: list[dict[str, Any]], class_names: Mapping[int, str] | None = None
) -> tuple[list[str], dict[str, list[float]]]:
    """The classes (named by ``class_names``, else their ids) and each method's final accuracy on them, mean over its
    seeds. Classes come in the stream's order when every run streamed them in one order, else by id."""
    finals = [(r["method"], final_class_accuracies(r)) for r in runs if "error" not in r]
    finals = [(method, final) for method, final in finals if final]
    orders = {tuple(final) for _, final in finals}
    classes = list(orders.pop()) if len(orders) == 1 else sorted({c for _, final in finals for c in final})

    def mean(method: str, c: int) -> float:
        values = [final[c] for m, final in finals if m == method and c in final]
        return float(np.mean(values)) if values else float("nan")

    means = {method: [mean(method, c) for c in classes] for method in dict.fromkeys(m for m, _ in finals)}
    names = class_names or {}
    return [str(names.get(c, c)) for c in classes], means


def _plot_per_class(plt, runs: list[dict[str, Any]], class_names: Mapping[int, str] | None, path: str) -> bool:
    """Grouped bars: each method's final accuracy per class; False (nothing drawn) without per-class accuracies."""
    labels, means = per_class_means(runs, class_names)
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.3 * len(labels) * len(means) + 2)), 4))
    width = 0.8 / len(means)
    x = np.arange(len(labels))
    for i, (method, values) in enumerate(means.items()):
        ax.bar(x - 0.4 + width * (i + 0.5), 100 * np.asarray(values), width=width, label=method)
    ax.set_xticks(x, labels, rotation=90 if len(labels) > 12 else 0)
    ax.set(ylabel="final accuracy (%)", title="accuracy per class at the last evaluation (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot(runs: list[dict[str, Any]], output_dir: str, class_names: Mapping[int, str] | None = None) -> list[str]:
    """Accuracy vs training FLOPs per method; each method's final accuracy per class, named by ``class_names``
    (a run's ``id2label``); for freezing methods, frozen blocks over the stream and their histogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in runs if "error" not in r):
        ok = succeeded(runs, method)
        flops = np.mean([[p["train_flops"] for p in r["curve"]] for r in ok], axis=0) / 1e12
        acc = np.mean([[p["accuracy"] for p in r["curve"]] for r in ok], axis=0) * 100
        ax.plot(flops, acc, marker="o", ms=3, label=method)
    ax.set(xlabel="training TFLOPs", ylabel="anytime accuracy (%)", title="accuracy vs training FLOPs")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(output_dir, "accuracy_vs_flops.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    if _plot_per_class(plt, runs, class_names, os.path.join(output_dir, "per_class_accuracy.png")):
        written.append(os.path.join(output_dir, "per_class_accuracy.png"))
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
