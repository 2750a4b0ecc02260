"""The memory budget in bytes: the model, the optimizer state, the method's extra state and the replay samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..utils.errors import ConfigError


def tensor_bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers (e.g. BatchNorm statistics): everything the stored model keeps."""
    seen: set[int] = set()
    unique = [t for t in [*model.parameters(), *model.buffers()] if not (id(t) in seen or seen.add(id(t)))]
    return tensor_bytes(unique)


# Optimizer state per trainable parameter, in parameter-sized tensors (Adam: two moments).
OPTIMIZER_STATE_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1, "adafactor": 1, "adagrad": 1, "rmsprop": 1}


def optimizer_state_bytes(model: nn.Module, optim_name: str) -> int:
    slots = next((v for k, v in OPTIMIZER_STATE_SLOTS.items() if k in optim_name.lower()), 2)
    return slots * tensor_bytes(p for p in model.parameters() if p.requires_grad)


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

    @property
    def sample_bytes_available(self) -> int:
        return self.total_bytes - self.model_bytes - self.optimizer_state_bytes - sum(self.extra_state_bytes.values())

    def validate(self, field_name: str = "memory_budget_bytes") -> None:
        fixed = self.total_bytes - self.sample_bytes_available
        if self.sample_bytes_available <= 0:
            raise ConfigError(
                f"{field_name}={self.total_bytes:,} is smaller than what the method must keep besides replay "
                f"samples ({fixed:,} bytes: model {self.model_bytes:,}, optimizer state {self.optimizer_state_bytes:,}, "
                f"extra state {sum(self.extra_state_bytes.values()):,})"
            )

    def itemise(self, replay_bytes: int) -> dict[str, int]:
        items = {"model": self.model_bytes}
        if self.optimizer_state_bytes:
            items["optimizer_state"] = self.optimizer_state_bytes
        items.update({f"extra:{k}": v for k, v in self.extra_state_bytes.items()})
        items["replay_samples"] = int(replay_bytes)
        items["total"] = int(sum(items.values()))
        return items
