"""Metrics of multimodal continual instruction tuning (MCIT), as CoIN and MCITlib report them.

All are pure functions of the accuracy matrix ``R`` (T x T, 0-based): ``R[i][j]`` is the exact match on task j's
test set after training task i, every task evaluated at every task boundary, so the matrix is full (the entries
above the diagonal are the zero-shot accuracy on tasks not trained yet). With ``L = T - 1`` the last row:

* ``A_last = mean_j R[L][j]``;
* average forgetting ``F = mean_{j < L} (max_{i < L} R[i][j] - R[L][j])`` (Chaudhry et al., 2018);
* backward transfer ``BWT = mean_{j < L} (R[L][j] - R[j][j])`` (Lopez-Paz & Ranzato, 2017);

and the majority baseline of each task: the exact match on its test set of always answering its most frequent
training answer. (A_AUC over the anytime curve is :func:`~hf_budgetcl.evaluation.metrics.a_auc`.)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .metrics import majority_baseline

__all__ = ["a_last_matrix", "average_forgetting", "backward_transfer", "majority_baseline_per_task", "mcit_summary"]


def _matrix(R: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square T x T with T >= 1, got shape {m.shape}")
    return m


def a_last_matrix(R: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean of the last row: the accuracy over all tasks, each weighted equally, after the last task."""
    return float(_matrix(R)[-1].mean())


def average_forgetting(R: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean over the tasks before the last of the drop from their best earlier accuracy to the final one
    (nan for a single task)."""
    m = _matrix(R)
    if len(m) < 2:
        return float("nan")
    return float((m[:-1, :-1].max(axis=0) - m[-1, :-1]).mean())


def backward_transfer(R: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean over the tasks before the last of final accuracy minus the accuracy just after learning them
    (negative: forgetting; nan for a single task)."""
    m = _matrix(R)
    if len(m) < 2:
        return float("nan")
    return float((m[-1, :-1] - np.diag(m)[:-1]).mean())


def majority_baseline_per_task(
    train_answers: Sequence[str],
    train_tasks: Sequence[Hashable],
    test_answers: Sequence[str],
    test_tasks: Sequence[Hashable],
) -> dict[Hashable, float]:
    """Per task of the test set: the exact match of always giving the task's most frequent training answer
    (nan for a task without training rows)."""
    if len(train_answers) != len(train_tasks) or len(test_answers) != len(test_tasks):
        raise ValueError("each answer needs its task: answers and tasks differ in length")
    train_tasks, test_tasks = list(train_tasks), list(test_tasks)
    out: dict[Hashable, float] = {}
    for task in dict.fromkeys(test_tasks):  # first-seen order
        train = [a for a, t in zip(train_answers, train_tasks) if t == task]
        test = [a for a, t in zip(test_answers, test_tasks) if t == task]
        out[task] = majority_baseline(train, test)
    return out


def mcit_summary(R: Sequence[Sequence[float]] | np.ndarray) -> dict[str, float]:
    """A_last, average forgetting and BWT of one accuracy matrix."""
    return {
        "A_last_tasks": a_last_matrix(R),
        "forgetting": average_forgetting(R),
        "BWT": backward_transfer(R),
    }
