"""The training-FLOPs ledger: what every step and every method extra charged, against the budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .flops import StepCost


@dataclass
class FlopsLedger:
    """Cumulative training FLOPs, itemised; ``budget`` is the total allowed (None: unbounded)."""

    budget: float | None = None
    items: dict[str, float] = field(default_factory=dict)
    backward_full: float = 0.0  # what the backward would have cost with nothing frozen
    steps: int = 0
    max_step_flops: float = 0.0

    @property
    def total(self) -> float:
        return float(sum(self.items.values()))

    @property
    def remaining(self) -> float:
        return float("inf") if self.budget is None else self.budget - self.total

    @property
    def backward_saved_fraction(self) -> float:
        spent = self.items.get("train_backward", 0.0)
        return 0.0 if self.backward_full <= 0 else 1.0 - spent / self.backward_full

    def charge(self, item: str, flops: float) -> None:
        self.items[item] = self.items.get(item, 0.0) + float(flops)

    def charge_step(self, cost: StepCost, n_frozen: int = 0, scale: int = 1) -> float:
        """Charge one iteration; ``scale`` = number of processes that each ran ``cost`` on their shard."""
        self.charge("train_forward", scale * cost.forward)
        self.charge("train_backward", scale * cost.backward_by_prefix[n_frozen])
        self.backward_full += scale * cost.backward_by_prefix[0]
        self.steps += 1
        self.max_step_flops = max(self.max_step_flops, cost.train_flops(0))
        return scale * cost.train_flops(n_frozen)

    def can_afford(self, flops: float) -> bool:
        return flops <= self.remaining

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("budget", "items", "backward_full", "steps", "max_step_flops")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, dict(v) if k == "items" else v)
