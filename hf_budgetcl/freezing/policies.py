"""Freezing policies: the protocol, no freezing, a static prefix, and the factory that builds one from ``freeze``."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Protocol

from torch import nn

from ..accounting.flops import StepCost
from ..models.blocks import BlockPartition
from ..utils.errors import ConfigError
from .adaptive import FREEZE_PRESETS, AdaptiveFreezingCallback, AdaptiveFreezingSettings


class FreezingPolicy(Protocol):
    def decide(self, model: nn.Module, inputs: dict, outputs: Any, cost: StepCost) -> int: ...
    def extra_flops(self, cost: StepCost) -> dict[str, float]: ...
    def extra_state_bytes(self) -> dict[str, int]: ...
    def describe(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoFreezing:
    def decide(self, model, inputs, outputs, cost) -> int:
        return 0

    def extra_flops(self, cost) -> dict[str, float]:
        return {}

    def extra_state_bytes(self) -> dict[str, int]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"mode": "none"}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StaticFreezing(NoFreezing):
    """Always freeze the first ``n`` blocks; at least one block must still train."""

    def __init__(self, n: int, blocks: BlockPartition):
        if n > blocks.max_frozen:
            raise ConfigError(f"freeze: static:{n} leaves nothing to train; at most {blocks.max_frozen} can be frozen")
        self.n = n

    def decide(self, model, inputs, outputs, cost) -> int:
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
        # the preset's values, then every config field that differs from the library default (an explicit
        # --fisher_ema 0.01 under freeze_preset authors is indistinguishable from the default, so it keeps 0.001)
        defaults = AdaptiveFreezingSettings()
        preset_name = getattr(args, "freeze_preset", "default")
        if preset_name not in FREEZE_PRESETS:
            raise ConfigError(f"freeze_preset: expected one of {', '.join(FREEZE_PRESETS)}, got '{preset_name}'")
        preset = FREEZE_PRESETS[preset_name]
        given = {
            f.name: getattr(args, f.name)
            for f in fields(defaults)
            if hasattr(args, f.name) and getattr(args, f.name) != getattr(defaults, f.name)
        }
        return AdaptiveFreezingCallback(blocks, replace(preset, **given), seed=getattr(args, "seed", 0))
    if mode == "lisa" or mode.startswith("lisa:"):
        from .lisa import LisaFreezing

        n_active = int(mode.split(":", 1)[1]) if ":" in mode else None
        return LisaFreezing(blocks, n_active, args.lisa_interval, seed=args.seed)
    raise ConfigError(f"freeze: expected none, adaptive, static:<n> or lisa[:<n>], got '{mode}'")
