"""Episodic replay memory whose capacity is a number of bytes, not samples.

Slots hold dataset row indices; the bytes of each stored sample are counted as they would be stored
(uint8 image bytes, encoded text), so a memory budget in bytes translates into the exact number of samples
that fit. Replacement is class-balanced: when a new sample does not fit, a random slot of the largest class
is evicted (the newcomer counted in, first class on ties), as in the aL-SAR reference code.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..utils.errors import ConfigError


class EpisodicMemory:
    """Class-balanced replay memory bounded by ``capacity_bytes`` (and optionally ``max_slots``).

    Each slot keeps the dataset index, its label, its stored size in bytes and a (discounted) use count.
    The memory owns its random generator so that its decisions are reproducible and identical on every rank.
    """

    def __init__(self, capacity_bytes: int, max_slots: int | None = None, seed: int = 0):
        if capacity_bytes <= 0:
            raise ConfigError(f"memory capacity must be positive, got {capacity_bytes} bytes")
        self.capacity_bytes = int(capacity_bytes)
        self.max_slots = max_slots
        self.rng = np.random.default_rng(seed)
        self.indices: list[int] = []
        self.labels: list[int] = []
        self.nbytes: list[int] = []
        self.use_counts: list[float] = []
        self.bytes_used = 0
        self.num_evicted = 0

    def __len__(self) -> int:
        return len(self.indices)

    def class_counts(self) -> Counter:
        return Counter(self.labels)

    def slots_of_class(self, label: int) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.labels) == label)

    def _fits(self, extra_bytes: int, extra_slots: int = 1) -> bool:
        if self.max_slots is not None and len(self.indices) + extra_slots > self.max_slots:
            return False
        return self.bytes_used + extra_bytes <= self.capacity_bytes

    def add(self, index: int, label: int, nbytes: int) -> bool:
        """Insert a stream sample, evicting class-balanced until it fits; False if it can never fit."""
        if nbytes > self.capacity_bytes:
            return False
        while not self._fits(nbytes):
            counts = self.class_counts()
            counts[label] += 1  # the newcomer counts towards its class
            largest = max(sorted(counts), key=lambda c: counts[c])  # sorted: first class wins ties
            candidates = self.slots_of_class(largest)
            if len(candidates) == 0:  # every stored class has fewer samples than the newcomer's (1)
                candidates = np.arange(len(self.indices))
            self._remove(int(self.rng.choice(candidates)))
            self.num_evicted += 1
        self._append(index, label, nbytes)
        return True

    def _append(self, index: int, label: int, nbytes: int) -> None:
        self.indices.append(int(index))
        self.labels.append(int(label))
        self.nbytes.append(int(nbytes))
        self.use_counts.append(0.0)
        self.bytes_used += int(nbytes)

    def _remove(self, slot: int) -> None:
        self.bytes_used -= self.nbytes[slot]
        for column in (self.indices, self.labels, self.nbytes, self.use_counts):
            del column[slot]

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity_bytes": self.capacity_bytes,
            "max_slots": self.max_slots,
            "indices": list(self.indices),
            "labels": list(self.labels),
            "nbytes": list(self.nbytes),
            "use_counts": list(self.use_counts),
            "num_evicted": self.num_evicted,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity_bytes = state["capacity_bytes"]
        self.max_slots = state["max_slots"]
        self.indices = list(state["indices"])
        self.labels = list(state["labels"])
        self.nbytes = list(state["nbytes"])
        self.use_counts = list(state["use_counts"])
        self.bytes_used = sum(self.nbytes)
        self.num_evicted = state["num_evicted"]
        self.rng.bit_generator.state = state["rng"]
