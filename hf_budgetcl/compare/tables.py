"""Markdown tables: the ``hf-budgetcl compare`` summary and the generic table the benchmark scripts build theirs with."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "---") -> list[str]:
    """The lines of a markdown table; ``align`` is every column's separator cell (``---:`` right-aligns)."""

    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(header), "|" + f"{align}|" * len(header), *(line(row) for row in rows)]


def _pm(row: dict[str, Any], key: str, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of a summary entry; ``–`` when undefined (F_last of a single evaluation), no ``±`` for one seed."""
    mean, std = row[key] * scale, row[f"{key}_std"] * scale
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(row["seeds"]) > 1 else "")


def _budgets(row: dict[str, Any]) -> str:
    flops = "no FLOPs budget" if row["flops_budget"] is None else f"{row['flops_budget'] / 1e12:.3f} TFLOPs"
    memory = "no byte budget" if row["memory_budget_bytes"] is None else f"{row['memory_budget_bytes']:,} bytes"
    return f"{flops} and {memory}"


def to_markdown(summary: dict[str, Any]) -> str:
    """The ``summary.md`` table of ``hf-budgetcl compare``."""
    reference = next(iter(summary), "")
    lines = [
        f"| method | seeds | A_AUC | A_last | Δ A_AUC vs {reference}, paired | Δ A_last vs {reference}, paired | F_last "
        "| TFLOPs | bwd saved | memory MB | slots | iterations | train samples/s | wall-clock s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in summary.items():
        if "errors" in row:
            lines.append(f"| {method} | failed: {row['errors'][0]} |" + " |" * 12)
            continue
        deltas = [_pm(row, f"delta_{key}") if "paired_with" in row else "–" for key in ("A_auc", "A_last")]
        lines.append(
            f"| {method} | {','.join(map(str, row['seeds']))} "
            f"| {_pm(row, 'A_auc')} | {_pm(row, 'A_last')} | {deltas[0]} | {deltas[1]} | {_pm(row, 'F_last')} "
            f"| {row['train_flops'] / 1e12:.3f} | {100 * row['backward_flops_saved_fraction']:.1f}% "
            f"| {row['memory_bytes'] / 1e6:.2f} | {row['memory_slots']:.0f} | {row['iterations']:.0f} "
            f"| {row['train_samples_per_s']:.1f} "
            f"| {_pm(row, 'wall_time_s', 1.0, 0)} |"
        )
    variants = [(method, row) for method, row in summary.items() if "variant_of" in row]
    if variants:
        lines += [
            "",
            "Variants paired by seed with their own method (points; FLOPs as a ratio):",
            "",
            "| variant | method | seeds | Δ A_AUC, paired | Δ A_last, paired | FLOPs / method |",
            "|---|---|---|---|---|---|",
        ]
        for method, row in variants:
            seeds = {**row, "seeds": row["variant_seeds"]}
            ratio = row["variant_flops_ratio"]
            lines.append(
                f"| {method} | {row['variant_of']} | {','.join(map(str, row['variant_seeds']))} "
                f"| {_pm(seeds, 'variant_delta_A_auc')} | {_pm(seeds, 'variant_delta_A_last')} "
                f"| {f'{ratio:.2f}' if np.isfinite(ratio) else '–'} |"
            )
    best = next((method for method, row in summary.items() if row.get("best_A_auc")), None)
    if best is not None and summary[best]["best_versus"]:
        lines += [
            "",
            f"Best A_AUC at {_budgets(summary[best])}: {best}, paired by seed with each other row at those budgets "
            "that shares a seed with it (points; best minus other):",
            "",
            "| versus | seeds | Δ A_AUC, paired | Δ A_last, paired | A_AUC higher on |",
            "|---|---|---|---|---|",
        ]
        for other, pair in summary[best]["best_versus"].items():
            lines.append(
                f"| {other} | {','.join(map(str, pair['seeds']))} | {_pm(pair, 'delta_A_auc')} "
                f"| {_pm(pair, 'delta_A_last')} | {pair['higher_A_auc_seeds']}/{len(pair['seeds'])} seeds |"
            )
    return "\n".join(lines) + "\n"
