"""Aggregation over seeds: mean ± sample std (ddof 1), the paired difference per seed, a method's summary row."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof 1); the std is 0 for a single value."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def mean_std(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std, ddof 1) of ``values * scale``; only the mean for a single value."""
    v = np.asarray(list(values), dtype=float) * scale
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def paired(runs: Sequence[dict], baseline: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(run, baseline run) of the same seed, for the seeds both have (in ``runs``' order); runs without a seed are
    paired by position."""
    if all("seed" in r for r in (*runs, *baseline)):
        by_seed = {b["seed"]: b for b in baseline}
        return [(a, by_seed[a["seed"]]) for a in runs if a["seed"] in by_seed]
    return list(zip(runs, baseline))


def paired_difference(
    runs: Sequence[dict], baseline: Sequence[dict] | None, key: str = "A_auc", scale: float = 100.0
) -> str:
    """Mean ± std over seeds of ``run[key] - baseline[key]``, paired by seed: the seed's stream order and
    initialisation are shared, so the spread is the method's own, not the seeds'. "–" without a baseline, for the
    baseline itself, or without a seed in common."""
    pairs = paired(runs, baseline) if baseline and runs is not baseline else []
    return mean_std([a[key] - b[key] for a, b in pairs], scale) if pairs else "–"


def group(results: Iterable[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    """Results grouped by ``key(result)``, groups and members in first-seen order."""
    groups: dict[Any, list[dict]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups


def succeeded(runs: Iterable[dict], method: str) -> list[dict]:
    """The runs of ``method`` that finished (no ``error``)."""
    return [r for r in runs if r["method"] == method and "error" not in r]


def paired_deltas(pairs: Sequence[tuple[dict, dict]], prefix: str) -> dict[str, float]:
    """``{prefix}A_auc``, ``{prefix}A_last`` and their ``_std``: mean and std over ``pairs`` of run minus baseline."""
    out: dict[str, float] = {}
    for key in ("A_auc", "A_last"):
        out[f"{prefix}{key}"], out[f"{prefix}{key}_std"] = mean_and_std([a[key] - b[key] for a, b in pairs])
    return out


def summarize(runs: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: mean and std of the headline metrics over its successful runs, or the errors of its failed ones.
    Every other method is also paired by seed with the first one listed (``delta_A_auc``, ``delta_A_last``: mean and
    std over the seeds both have), and a variant ``name:key=value,...`` with its method ``name`` where that is listed
    too and is not the first (``variant_of``, ``variant_delta_A_auc``, ``variant_delta_A_last``, and
    ``variant_flops_ratio``: mean training FLOPs over the paired seeds, variant over method, nan if the method's is
    0). A variant whose method failed or shares no seed with it is not paired."""
    summary: dict[str, Any] = {}
    reference = succeeded(runs, methods[0]) if methods else []
    for method in methods:
        ok = succeeded(runs, method)
        if not ok:
            summary[method] = {"errors": [r.get("error") for r in runs if r["method"] == method]}
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in ok]}
        for key in ("A_auc", "A_last", "F_last", "train_flops", "wall_time_s", "backward_flops_saved_fraction"):
            row[key], row[f"{key}_std"] = mean_and_std([r[key] for r in ok])
        row["memory_bytes"] = float(np.mean([r["memory_bytes"]["total"] for r in ok]))
        row["memory_budget_bytes"] = ok[0]["memory_budget_bytes"]
        row["flops_budget"] = ok[0]["flops_budget"]
        row["memory_slots"] = float(np.mean([r["memory_slots"] for r in ok]))
        row["iterations"] = float(np.mean([r["iterations"] for r in ok]))
        pairs = paired(ok, reference) if method != methods[0] else []
        if pairs:
            row["paired_with"] = methods[0]
            row.update(paired_deltas(pairs, "delta_"))
        base = method.partition(":")[0]
        base_runs = succeeded(runs, base) if base != method else []
        variant_pairs = paired(ok, base_runs) if base != methods[0] else []
        if variant_pairs:
            row["variant_of"] = base
            row.update(paired_deltas(variant_pairs, "variant_delta_"))
            base_flops = float(np.mean([b["train_flops"] for _, b in variant_pairs]))
            row["variant_flops_ratio"] = (
                float(np.mean([a["train_flops"] for a, _ in variant_pairs])) / base_flops if base_flops > 0 else np.nan
            )
            row["variant_seeds"] = [a["seed"] for a, _ in variant_pairs]
        row["train_samples_per_s"] = float(
            np.mean([r["samples_seen"] / max(r["train_time_s"] - r.get("eval_time_s", 0.0), 1e-9) for r in ok])
        )
        summary[method] = row
    mark_best(summary, runs)
    return summary


def _same_budget(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9))


def mark_best(summary: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    """Mark the row with the highest mean A_AUC (over its own seeds; the first listed wins a tie) among the rows at the
    FLOPs and byte budgets of the first listed method that has results (a variant with a budget of its own is not in
    the contest; a row without a finite A_AUC neither) with ``best_A_auc``, and pair it by seed with each other such
    row that shares a seed with it: ``best_versus[other]`` holds ``seeds``, the deltas (best minus other) and
    ``higher_A_auc_seeds``, the number of seeds on which the best is strictly higher. Whether it leads beyond the
    spread is read from these."""
    rows = {m: row for m, row in summary.items() if "errors" not in row and np.isfinite(row["A_auc"])}
    if not rows:
        return
    first = next(iter(rows.values()))
    contest = [
        m
        for m, row in rows.items()
        if _same_budget(row["flops_budget"], first["flops_budget"])
        and _same_budget(row["memory_budget_bytes"], first["memory_budget_bytes"])
    ]
    best = max(contest, key=lambda m: rows[m]["A_auc"])
    ok = {m: succeeded(runs, m) for m in contest}
    versus: dict[str, Any] = {}
    for other in contest:
        pairs = paired(ok[best], ok[other]) if other != best else []
        if pairs:
            versus[other] = {
                "seeds": [a["seed"] for a, _ in pairs],
                **paired_deltas(pairs, "delta_"),
                "higher_A_auc_seeds": sum(a["A_auc"] > b["A_auc"] for a, b in pairs),
            }
    rows[best]["best_A_auc"] = True
    rows[best]["best_versus"] = versus
