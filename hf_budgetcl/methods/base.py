"""The plug-in shape of a continual-learning method.

A method says how a training batch is composed (how much comes from the latest stream arrivals, and which memory
slots are retrieved), what it adds to the loss, which extra state it keeps (charged to the memory budget in bytes)
and which extra work it does per iteration (charged to the FLOPs ledger). Freezing is chosen by ``freeze``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from ..memory import EpisodicMemory


class ContinualMethod:
    """Base class: uniform replay from memory, no extra loss, state or FLOPs."""

    name: ClassVar[str] = "base"
    stream_fraction: ClassVar[float] = 0.0  # share of each batch taken from the latest arrivals
    freeze: ClassVar[str] = "none"  # "none" | "adaptive" | "static:<n>"; the config may override it

    def __init__(self, **options: Any):
        self.options = options

    def stream_batch_size(self, batch_size: int) -> int:
        return int(round(self.stream_fraction * batch_size))

    def min_arrivals(self, batch_size: int) -> int:
        """Arrivals needed before the first iteration (a full stream part, or a full batch in memory)."""
        return max(self.stream_batch_size(batch_size), 1) if self.stream_fraction > 0 else batch_size

    def retrieve(self, memory: EpisodicMemory, n: int, rng: np.random.Generator, samples_seen: int) -> np.ndarray:
        """Memory slots for the replay part of the batch: uniform, without replacement."""
        n = min(n, len(memory))
        return rng.choice(len(memory), size=n, replace=False) if n > 0 else np.empty(0, dtype=np.int64)

    def on_retrieved(self, memory: EpisodicMemory, slots: np.ndarray) -> None:
        """Bookkeeping after a draw: every retrieved slot's use count grows by one."""
        for s in slots:
            memory.use_counts[int(s)] += 1.0

    def extra_loss(self, trainer: Any, model: torch.nn.Module, inputs: dict, outputs: Any) -> torch.Tensor | None:
        return None

    def extra_state_bytes(self, model: torch.nn.Module, num_classes: int) -> dict[str, int]:
        return {}

    def extra_flops_per_iteration(self, trainer: Any, batch_size: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
