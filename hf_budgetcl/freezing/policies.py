"""Freezing policies: the protocol, no freezing, a static prefix, and the factory that builds one from ``freeze``."""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from ..accounting.flops import StepCost
from ..models.blocks import BlockPartition
from .adaptive import AdaptiveFreezingCallback


class FreezingPolicy(Protocol):
    def decide(self, trainer: Any, model: nn.Module, inputs: dict, outputs: Any, cost: StepCost) -> int: ...
    def extra_flops(self, trainer: Any, cost: StepCost) -> dict[str, float]: ...
    def extra_state_bytes(self) -> dict[str, int]: ...
    def describe(self) -> dict[str, Any]: ...


class NoFreezing:
    def decide(self, trainer, model, inputs, outputs, cost) -> int:
        return 0

    def extra_flops(self, trainer, cost) -> dict[str, float]:
        return {}

    def extra_state_bytes(self) -> dict[str, int]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"mode": "none"}


class StaticFreezing(NoFreezing):
    """Always freeze the first ``n`` blocks (clamped so that something still trains)."""

    def __init__(self, n: int, blocks: BlockPartition):
        self.n = min(n, blocks.max_frozen)

    def decide(self, trainer, model, inputs, outputs, cost) -> int:
        return self.n

    def describe(self) -> dict[str, Any]:
        return {"mode": f"static:{self.n}"}


def make_freezing_policy(mode: str, blocks: BlockPartition, args: Any) -> Any:
    """Build the policy named by ``freeze`` (none | static:<n> | adaptive | lisa[:<n>]) from the config."""
    if mode == "none":
        return NoFreezing()
    if mode.startswith("static:"):
        return StaticFreezing(int(mode.split(":", 1)[1]), blocks)
    if mode == "adaptive":
        return AdaptiveFreezingCallback(
            blocks,
            fisher_ema=getattr(args, "fisher_ema", 0.01),
            informativeness_ema=getattr(args, "informativeness_ema", 0.01),
            fisher_update_every=getattr(args, "fisher_update_every", 4),
            freeze_warmup_steps=getattr(args, "freeze_warmup_steps", 50),
        )
    if mode == "lisa" or mode.startswith("lisa:"):
        from .lisa import LisaFreezing

        n_active = int(mode.split(":", 1)[1]) if ":" in mode else None
        return LisaFreezing(blocks, n_active, int(getattr(args, "lisa_interval", 20)), seed=getattr(args, "seed", 0))
    raise ValueError(f"freeze: expected none, adaptive, static:<n> or lisa[:<n>], got '{mode}'")
