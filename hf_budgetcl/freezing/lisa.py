"""LISA-style random layer sampling (after Pan et al., 2024, "LISA: Layerwise Importance Sampling"), as a freezing policy.

Every ``interval`` steps, ``n_active`` of the freezable blocks are drawn uniformly without replacement (seeded, so
every rank draws the same); until the next draw only those blocks and the head train (:func:`draw_active_blocks`).
LISA always trains its embedding layer; here the stem group is one of the sampled blocks, otherwise no backward could
ever be saved. When the model has no separate head, the last block is always active.

What the trainer can prune is a prefix: the backward stops below the lowest active block (``decide`` returns that
block's index, so those FLOPs are really saved and charged as such). Active or not, the blocks above it lie on the
backward path; their weight gradients are computed (and charged, ``backward_by_prefix``) and the inactive ones are
dropped before the optimizer step (``grad = None``: AdamW leaves them and their moments untouched). An implementation
that also skipped those weight gradients would save more; this one charges what it runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import TrainerCallback

from ..accounting.flops import StepCost
from ..models.blocks import BlockPartition
from ..utils.errors import ConfigError


def draw_active_blocks(n_blocks: int, n_active: int, rng: np.random.Generator, always_last: bool) -> np.ndarray:
    """Sorted indices of ``n_active`` blocks drawn without replacement (the last one always in if ``always_last``)."""
    n_active = min(max(n_active, 1), n_blocks)
    if always_last:
        rest = rng.choice(n_blocks - 1, size=n_active - 1, replace=False) if n_active > 1 else np.zeros(0, int)
        return np.sort(np.append(rest, n_blocks - 1)).astype(np.int64)
    return np.sort(rng.choice(n_blocks, size=n_active, replace=False)).astype(np.int64)


class LisaFreezing(TrainerCallback):
    def __init__(self, blocks: BlockPartition, n_active: int | None = None, interval: int = 20, seed: int = 0):
        if interval < 1:
            raise ConfigError(f"lisa_interval must be >= 1, got {interval}")
        self.blocks = blocks
        self.n_active = min(n_active or max(len(blocks) // 2, 1), len(blocks))
        self.interval = interval
        self.rng = np.random.default_rng(seed)
        self.always_last = not blocks.head_params
        self.active = np.arange(len(blocks))
        self.steps = 0
        self.last_frozen = 0

    def decide(self, model: Any, inputs: dict, outputs: Any, cost: StepCost) -> int:
        if self.steps % self.interval == 0:
            self.active = draw_active_blocks(len(self.blocks), self.n_active, self.rng, self.always_last)
        self.steps += 1
        self.last_frozen = min(int(self.active[0]), self.blocks.max_frozen)
        return self.last_frozen

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """Inactive blocks above the pruned prefix got gradients on the way down: drop them."""
        for i in range(self.last_frozen, len(self.blocks)):
            if i not in self.active:
                for p in self.blocks.params[i]:
                    p.grad = None
        return control

    def extra_flops(self, cost: StepCost) -> dict[str, float]:
        return {}

    def extra_state_bytes(self) -> dict[str, int]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"mode": f"lisa:{self.n_active}", "interval": self.interval, "active": self.active.tolist()}

    # ---- checkpointing (cl_state.json, see hf_budgetcl.training.checkpointing) ----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "active": self.active.tolist(),
            "steps": self.steps,
            "last_frozen": self.last_frozen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.active = np.asarray(state["active"], dtype=np.int64)
        self.steps, self.last_frozen = int(state["steps"]), int(state["last_frozen"])
