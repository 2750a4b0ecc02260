"""How much the anytime accuracy swings within a task: the fall a checkpoint published at the wrong moment shows.

A task is a run of consecutive evaluations with the same classes seen (the keys of their per-class accuracies), so a
task switch's drop, which new classes cause, is never counted. Points are ``results.json`` curve entries (dicts
with ``accuracy`` and ``per_class``) or :class:`~hf_budgetcl.evaluation.anytime.CurvePoint` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FallByClass:
    """The largest within-task fall, split over the classes seen: ``change[c]`` is class c's accuracy change
    between the two evaluations; ``new`` are the classes of the task being trained (those first seen at its
    start; all of them in the first task)."""

    fall: float
    samples: int | None
    change: dict[str, float]
    new: frozenset[str]

    @property
    def old_share(self) -> float:
        """The part of the fall of the class-mean accuracy that old classes' losses make up, net of their gains
        (can exceed 1 when the new classes rise meanwhile); nan when nothing fell."""
        if self.fall <= 0:
            return float("nan")
        old = sum(-x for c, x in self.change.items() if c not in self.new)
        return old / len(self.change) / self.fall

    @property
    def worst(self) -> str:
        """The class whose accuracy fell most."""
        return min(self.change, key=self.change.get)


def largest_fall_by_class(curve: Sequence[Any]) -> FallByClass | None:
    """The largest fall of accuracy between two consecutive evaluations of the same task, class by class (None if
    the accuracy never falls within a task). The fall is of the recorded accuracy; the per-class changes add up to
    the fall of the class-mean accuracy, which is the same on a class-balanced test set."""
    best: FallByClass | None = None
    new: frozenset[str] = frozenset()
    for k, point in enumerate(curve):
        seen = frozenset(str(c) for c in _field(point, "per_class"))
        if k == 0:
            new = seen
            continue
        before = curve[k - 1]
        seen_before = frozenset(str(c) for c in _field(before, "per_class"))
        if seen != seen_before:
            new = seen - seen_before
            continue
        fall = float(_field(before, "accuracy")) - float(_field(point, "accuracy"))
        if fall > 0 and (best is None or fall > best.fall):
            pc, pc_before = _field(point, "per_class"), _field(before, "per_class")
            change = {str(c): float(pc[c]) - float(pc_before[c]) for c in pc}
            samples = point.get("samples") if isinstance(point, dict) else getattr(point, "samples", None)
            best = FallByClass(fall, samples, change, new)
    return best
