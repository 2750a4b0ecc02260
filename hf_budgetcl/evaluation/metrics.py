"""Online continual-learning metrics (aL-SAR reference, section 10) and VQA answer matching."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "a_auc",
    "a_last",
    "f_last",
    "accuracy_by_class",
    "normalize_answer",
    "exact_match",
    "majority_baseline",
    "frozen_blocks_per_interval",
]


def a_auc(accuracies: Sequence[float]) -> float:
    """Anytime accuracy ``A_AUC = (1/K) sum_k acc_k`` over the K periodic evaluations (nan if K = 0).

    With evaluations every ``eval_period`` samples this is the normalised area under the
    accuracy-vs-samples curve.
    """
    acc = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    return float(acc.mean()) if acc.size else float("nan")


def a_last(accuracies: Sequence[float]) -> float:
    """``A_last = acc_K``, the accuracy at the final evaluation (nan if there is none)."""
    acc = list(accuracies)
    return float(acc[-1]) if acc else float("nan")


def f_last(per_class_history: Sequence[Mapping[Hashable, float]], final: Mapping[Hashable, float]) -> float:
    """Final forgetting ``F_last = mean_c (max_t acc_{t,c} - acc_{final,c})``.

    ``per_class_history`` holds the per-class accuracies at the earlier evaluation points (task
    boundaries), excluding the final one. The mean runs over classes whose maximum is > 0 and that
    appear in ``final`` (a class absent from the final evaluation cannot be scored). nan if none.
    """
    best: dict[Hashable, float] = {}
    for record in per_class_history:
        for c, acc in record.items():
            best[c] = max(best.get(c, float("-inf")), float(acc))
    drops = [best[c] - float(final[c]) for c in best if best[c] > 0 and c in final]
    return float(np.mean(drops)) if drops else float("nan")


def accuracy_by_class(
    preds: Sequence[Hashable] | np.ndarray, labels: Sequence[Hashable] | np.ndarray
) -> tuple[float, dict[Hashable, float]]:
    """Overall accuracy ``#correct / #samples`` and per-class accuracy ``#correct_c / #samples_c``.

    Classes are the distinct ``labels`` (Python scalars as keys). Empty input -> ``(nan, {})``.
    """
    p = np.asarray(preds).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels")
    if y.size == 0:
        return float("nan"), {}
    correct = p == y
    per_class = {(c.item() if hasattr(c, "item") else c): float(correct[y == c].mean()) for c in np.unique(y)}
    return float(correct.mean()), per_class


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, delete punctuation, drop articles a/an/the, collapse spaces."""
    text = str(text).lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> bool:
    """``normalize_answer(pred) == normalize_answer(ref)``."""
    return normalize_answer(pred) == normalize_answer(ref)


def majority_baseline(train_answers_seen: Iterable[str], test_answers: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent (normalised) answer seen in training.

    Ties go to the lexicographically first normalised answer; matching uses :func:`exact_match`.
    nan when there are no test answers or no training answers (the baseline is undefined).
    """
    counts = Counter(normalize_answer(a) for a in train_answers_seen)
    if not counts or len(test_answers) == 0:
        return float("nan")
    top = max(counts.values())
    answer = min(a for a, k in counts.items() if k == top)
    return float(np.mean([normalize_answer(t) == answer for t in test_answers]))


def frozen_blocks_per_interval(iterations: Sequence[int], frozen_blocks: Sequence[int]) -> np.ndarray:
    """Mean number of frozen blocks per iteration between consecutive points of an anytime curve.

    With cumulative counts at point j, ``N_j`` iterations and ``Z_j = sum over those iterations of the blocks frozen``
    (``N_{-1} = Z_{-1} = 0``): ``m_j = (Z_j - Z_{j-1}) / (N_j - N_{j-1})``, and ``nan`` for an interval without
    iterations.
    """
    n = np.diff(np.asarray(iterations, dtype=np.float64), prepend=0.0)
    z = np.diff(np.asarray(frozen_blocks, dtype=np.float64), prepend=0.0)
    if np.any(n < 0) or np.any(z < 0):
        raise ValueError("iterations and frozen_blocks must be cumulative (non-decreasing)")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, z / np.where(n > 0, n, 1.0), np.nan)
