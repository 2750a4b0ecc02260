"""Anytime evaluation: when to evaluate along the stream, what to evaluate on, and the resulting curve.

Every ``eval_period`` arrivals (and once at the end of the stream) the model is evaluated on the test samples of
the classes seen so far. A_AUC is the mean of these accuracies, A_last the final one, and F_last the forgetting
between the per-class accuracies at task boundaries (or at every earlier evaluation for boundary-free streams) and
the final ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..stream.orders import StreamOrder
from .metrics import a_auc, a_last, f_last


@dataclass
class CurvePoint:
    samples: int
    train_flops: float
    accuracy: float
    iterations: int
    memory_bytes: int
    per_class: dict[int, float] = field(default_factory=dict)
    frozen_blocks: int = 0  # sum over the iterations so far of the blocks frozen (0 in curves written before it)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_class"] = {str(k): v for k, v in self.per_class.items()}
        return out


def eval_points(stream_length: int, eval_period: int) -> list[int]:
    """Arrival counts at which to evaluate: every ``eval_period`` arrivals, plus the end of the stream."""
    points = list(range(eval_period, stream_length + 1, eval_period))
    if not points or points[-1] != stream_length:
        points.append(stream_length)
    return points


class AnytimeSchedule:
    """Tracks which evaluation points are due as the stream advances."""

    def __init__(self, stream: StreamOrder, eval_period: int):
        self.stream = stream
        self.points = eval_points(len(stream), eval_period)
        self.next = 0  # index into points

    def due(self, samples_seen: int) -> list[int]:
        out = []
        while self.next < len(self.points) and self.points[self.next] <= samples_seen:
            out.append(self.points[self.next])
            self.next += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next = int(state["next"])


def summarize_curve(curve: list[CurvePoint], stream: StreamOrder) -> dict[str, float]:
    """A_AUC, A_last and F_last of an anytime-evaluation curve."""
    accuracies = [p.accuracy for p in curve]
    summary = {"A_auc": a_auc(accuracies), "A_last": a_last(accuracies), "F_last": float("nan")}
    if len(curve) >= 2:
        earlier = curve[:-1]
        boundaries = set(stream.task_boundaries)
        history = [p.per_class for p in earlier if p.samples in boundaries] or [p.per_class for p in earlier]
        summary["F_last"] = f_last(history, curve[-1].per_class)
    return {k: float(v) for k, v in summary.items()}
