"""The memory budget in bytes: the model, the optimizer state, the method's extra state and the replay samples.

Under FSDP the figures are per rank: each rank stores one shard of every parameter, of its gradient and of its
optimizer state (``shards`` = world size), while buffers and the replay memory are replicated on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from ..utils.errors import ConfigError


def shard_numel(shape, shards: int = 1) -> int:
    """Elements of one rank's FSDP2 shard: dim 0 split in ``shards`` chunks, padded to equal size."""
    if shards == 1 or len(shape) == 0:
        return math.prod(shape)
    return math.ceil(shape[0] / shards) * math.prod(shape[1:])


def tensor_bytes(tensors, shards: int = 1) -> int:
    return int(sum(shard_numel(t.shape, shards) * t.element_size() for t in tensors))


def model_bytes(model: nn.Module, shards: int = 1) -> int:
    """Parameters (one shard of each under FSDP) and buffers (e.g. BatchNorm statistics, never sharded)."""
    seen: set[int] = set()
    params = [t for t in model.parameters() if not (id(t) in seen or seen.add(id(t)))]
    buffers = [t for t in model.buffers() if not (id(t) in seen or seen.add(id(t)))]
    return tensor_bytes(params, shards) + tensor_bytes(buffers)


def gradient_bytes(model: nn.Module, shards: int = 1) -> int:
    """The gradients of the trainable parameters (FSDP keeps one shard of each between steps)."""
    return tensor_bytes((p for p in model.parameters() if p.requires_grad), shards)


# Optimizer state per trainable parameter, in parameter-sized tensors (Adam: two moments).
OPTIMIZER_STATE_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1, "adafactor": 1, "adagrad": 1, "rmsprop": 1}


def optimizer_state_bytes(model: nn.Module, optim_name: str, shards: int = 1) -> int:
    slots = next((v for k, v in OPTIMIZER_STATE_SLOTS.items() if k in optim_name.lower()), 2)
    return slots * tensor_bytes((p for p in model.parameters() if p.requires_grad), shards)


@dataclass
class MemoryBudget:
    """Total memory budget in bytes and what it must hold besides replay samples.

    ``sample_bytes_available = total - model - optimizer_state - sum(extra_state)``: the replay memory gets the
    rest, so a method with more state (stored logits, a model copy, a Fisher) gets a smaller replay memory.
    """

    total_bytes: int
    model_bytes: int
    optimizer_state_bytes: int = 0
    extra_state_bytes: dict[str, int] = field(default_factory=dict)
    gradient_bytes: int = 0  # counted under FSDP only (per-rank gradient shards)

    @property
    def sample_bytes_available(self) -> int:
        fixed = self.model_bytes + self.optimizer_state_bytes + self.gradient_bytes
        return self.total_bytes - fixed - sum(self.extra_state_bytes.values())

    def validate(self, field_name: str = "memory_budget_bytes") -> None:
        fixed = self.total_bytes - self.sample_bytes_available
        if self.sample_bytes_available <= 0:
            grads = f"gradients {self.gradient_bytes:,}, " if self.gradient_bytes else ""
            raise ConfigError(
                f"{field_name}={self.total_bytes:,} is smaller than what the method must keep besides replay "
                f"samples ({fixed:,} bytes: model {self.model_bytes:,}, optimizer state {self.optimizer_state_bytes:,}, "
                f"{grads}extra state {sum(self.extra_state_bytes.values()):,})"
            )

    def itemise(self, replay_bytes: int) -> dict[str, int]:
        items = {"model": self.model_bytes}
        if self.optimizer_state_bytes:
            items["optimizer_state"] = self.optimizer_state_bytes
        if self.gradient_bytes:
            items["gradients"] = self.gradient_bytes
        items.update({f"extra:{k}": v for k, v in self.extra_state_bytes.items()})
        items["replay_samples"] = int(replay_bytes)
        items["total"] = int(sum(items.values()))
        return items
