"""How much the anytime accuracy swings within a task: the fall a checkpoint published at the wrong moment shows.

A task is a run of consecutive evaluations with the same classes seen (the keys of their per-class accuracies), so a
task switch's drop, which new classes cause, is never counted. Points are ``results.json`` curve entries (dicts
with ``accuracy`` and ``per_class``) or :class:`~hf_budgetcl.evaluation.anytime.CurvePoint` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _field(point: Any, name: str) -> Any:
    return point[name] if isinstance(point, dict) else getattr(point, name)


def split_by_task(accuracies: Sequence[float], tasks: Sequence[Any]) -> list[list[float]]:
    """``accuracies`` split where ``tasks`` (one label per evaluation) changes."""
    runs: list[list[float]] = []
    for k, (accuracy, task) in enumerate(zip(accuracies, tasks)):
        if k == 0 or task != tasks[k - 1]:
            runs.append([])
        runs[-1].append(float(accuracy))
    return runs


def within_task_runs(curve: Sequence[Any]) -> list[list[float]]:
    """The accuracies of the curve, split where the set of classes seen changes."""
    tasks = [frozenset(str(c) for c in _field(point, "per_class")) for point in curve]
    return split_by_task([_field(point, "accuracy") for point in curve], tasks)


def largest_drop(runs: Sequence[Sequence[float]]) -> float:
    """The largest fall between two consecutive accuracies of one run (0 if none falls)."""
    return max([0.0, *(a - b for run in runs for a, b in zip(run, run[1:]))])


def largest_within_task_drop(curve: Sequence[Any]) -> float:
    """The largest fall of accuracy between two consecutive evaluations of the same task (0 if it never falls)."""
    return largest_drop(within_task_runs(curve))


def within_task_std(curve: Sequence[Any]) -> float:
    """The standard deviation (ddof 0) of the accuracy within each task, averaged over the tasks evaluated at least
    twice (nan if none is)."""
    stds = [float(np.std(run)) for run in within_task_runs(curve) if len(run) >= 2]
    return float(np.mean(stds)) if stds else float("nan")
