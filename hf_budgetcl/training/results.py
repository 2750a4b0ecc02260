"""The results of a run: JSON encoding of numpy values and the one-screen summary table."""

from __future__ import annotations

from typing import Any

import numpy as np


def json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_summary(results: dict[str, Any]) -> str:
    """One-screen summary table of a run."""
    from tabulate import tabulate

    mem = results["memory_bytes"]
    budget = results["flops_budget"]
    rows = [
        ("method / freeze", f"{results['method']} / {results['freeze']['mode']}"),
        ("stream", f"{results['stream']['kind']} ({results['samples_seen']}/{results['stream']['length']} samples)"),
        (
            "A_AUC / A_last / F_last",
            f"{100 * results['A_auc']:.2f} / {100 * results['A_last']:.2f} / {100 * results['F_last']:.2f}",
        ),
        (
            "training FLOPs",
            f"{results['train_flops'] / 1e12:.4f} T" + (f" of {budget / 1e12:.4f} T" if budget else ""),
        ),
        ("backward FLOPs saved", f"{100 * results['backward_flops_saved_fraction']:.1f}%"),
        (
            "memory",
            f"{mem['total'] / 2**20:.2f} MiB of {results['memory_budget_bytes'] / 2**20:.2f} MiB "
            f"(model {mem['model'] / 2**20:.2f}, replay {mem['replay_samples'] / 2**20:.2f}, "
            f"{results['memory_slots']} samples)",
        ),
        (
            "iterations",
            f"{results['iterations']} ({results['iterations_per_s']:.1f}/s), stopped by {results['stopped_by']}",
        ),
        ("wall time", f"{results['wall_time_s']:.1f} s"),
    ]
    return tabulate(rows, tablefmt="simple_outline")
