"""Layer freezing policies: none, a static prefix, and aL's adaptive Fisher-per-FLOP prefix.

A policy answers one question per batch, after the forward and before the backward: how many leading blocks to
freeze. The trainer then runs the backward only for the rest (graph pruning), so the frozen prefix really costs no
backward compute, and its parameters get no gradient (so the optimizer leaves them, and their moments, untouched).

:class:`AdaptiveFreezingCallback` implements the batch freezing criterion of aL-SAR (Seo et al., ICLR 2025, Sec. 3.1;
see :func:`~hf_budgetcl.freezing.criterion.select_frozen_prefix`): per-block Fisher traces ``F_i`` (EMA of squared
gradients, updated on the steps where block ``i`` trained), measured per-block backward FLOPs ``BF_i``, and the batch
informativeness ``s_b`` from the logits and the head weight (no extra backward). Every ``fisher_update_every`` steps,
and during the first ``freeze_warmup_steps``, nothing is frozen so that ``F`` stays fresh. In multi-process runs
rank 0 decides and broadcasts, so every rank freezes the same prefix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..accounting.flops import StepCost
from ..models.blocks import BlockPartition
from .criterion import (
    batch_informativeness,
    fisher_ema_update,
    grad_sq_sum,
    select_frozen_prefix,
)


def _head_weight(model: nn.Module, num_outputs: int) -> torch.Tensor:
    """The weight that maps penultimate features to logits: output embeddings, else the last matching Linear."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if isinstance(out, nn.Linear) and out.out_features == num_outputs:
        return out.weight
    linears = [m for m in base.modules() if isinstance(m, nn.Linear) and m.out_features == num_outputs]
    if not linears:
        raise ValueError(f"adaptive freezing: no output layer with {num_outputs} outputs found")
    return linears[-1].weight


def _logits_and_targets(inputs: dict, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    labels = inputs["labels"]
    if logits.dim() == 3:  # causal LM: token t predicts label t+1
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits.detach(), labels


class AdaptiveFreezingCallback(TrainerCallback, ExportableState):
    """aL: freeze, per batch, the prefix of blocks that would gain the least Fisher information per FLOP."""

    def __init__(
        self,
        blocks: BlockPartition,
        fisher_ema: float = 0.01,
        informativeness_ema: float = 0.01,
        fisher_update_every: int = 4,
        freeze_warmup_steps: int = 50,
        exclude_first: bool = False,
    ):
        self.blocks = blocks
        self.fisher_ema = fisher_ema
        self.informativeness_ema = informativeness_ema
        self.fisher_update_every = fisher_update_every
        self.freeze_warmup_steps = freeze_warmup_steps
        self.exclude_first = exclude_first
        self.fisher = np.zeros(len(blocks))
        self.fisher_seen = np.zeros(len(blocks), dtype=bool)
        self.info_mean = 0.0
        self.steps = 0
        self.last_frozen = 0
        self.nonfinite_grads = 0
        self._head_weight: torch.Tensor | None = None
        self._last_decision_flops = 0.0

    # ---- the decision (called by the trainer between forward and backward) -----------------------------------
    def decide(self, trainer, model, inputs, outputs, cost: StepCost) -> int:
        self.steps += 1
        logits, labels = _logits_and_targets(inputs, outputs)
        if self._head_weight is None:
            self._head_weight = _head_weight(model, logits.shape[-1])
        s_b, self.info_mean = batch_informativeness(
            logits,
            labels,
            self._head_weight.detach(),
            self.info_mean,
            ema=self.informativeness_ema,
            updates=self.steps - 1,
        )
        rows = int((labels != -100).sum())
        dim, classes = self._head_weight.shape[1], logits.shape[-1]
        self._last_decision_flops = rows * dim * (2 * classes - 1) + rows * dim  # (p - Y) W and its squares
        n = 0
        refresh = self.steps <= self.freeze_warmup_steps or self.steps % self.fisher_update_every == 0
        if not refresh and self.fisher_seen.all():
            saved = cost.backward_saved_per_block
            n = select_frozen_prefix(
                self.fisher,
                np.zeros(len(self.blocks)),
                saved,
                s_b,
                head_fwd=cost.forward,
                head_bwd=cost.backward_by_prefix[-1],
                exclude_first=self.exclude_first,
            )
            n = min(n, self.blocks.max_frozen)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            decision = torch.tensor([n], dtype=torch.long)
            dist.broadcast(decision, src=0)  # rank 0 decides: every rank prunes the same graph
            n = int(decision.item())
        self.last_frozen = n
        return n

    def extra_flops(self, trainer, cost: StepCost) -> dict[str, float]:
        fisher = 2.0 * sum(p.numel() for p in self.blocks.trainable_from(self.last_frozen))
        return {"freeze_decision": float(self._last_decision_flops), "fisher": fisher}

    def extra_state_bytes(self) -> dict[str, int]:
        return {"fisher": int(self.fisher.nbytes + self.fisher_seen.nbytes + 8)}

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "adaptive",
            "fisher_ema": self.fisher_ema,
            "informativeness_ema": self.informativeness_ema,
            "fisher_update_every": self.fisher_update_every,
            "freeze_warmup_steps": self.freeze_warmup_steps,
            "fisher": self.fisher.tolist(),
        }

    # ---- Fisher EMA from the (already synchronised, unscaled) gradients ---------------------------------------
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trained = np.arange(len(self.blocks)) >= self.last_frozen
        # A block without any gradient did not train (e.g. a batch skipped for a non-finite loss): a zero there would
        # drag its EMA down, so it keeps its value.
        trained &= np.array([any(p.grad is not None for p in params) for params in self.blocks.params], dtype=bool)
        new = np.zeros(len(self.blocks))
        for i in np.flatnonzero(trained):
            new[i], bad = grad_sq_sum(p.grad for p in self.blocks.params[i])
            self.nonfinite_grads += bad
        # A block's first measurement replaces the zero start instead of being shrunk by the EMA.
        first = trained & ~self.fisher_seen
        self.fisher = fisher_ema_update(self.fisher, new, self.fisher_ema, mask=trained & self.fisher_seen)
        self.fisher[first] = new[first]
        self.fisher_seen |= trained
        return control

    # ---- checkpointing ----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "args": {
                "fisher_ema": self.fisher_ema,
                "informativeness_ema": self.informativeness_ema,
                "fisher_update_every": self.fisher_update_every,
                "freeze_warmup_steps": self.freeze_warmup_steps,
                "exclude_first": self.exclude_first,
            },
            "attributes": {
                "fisher": self.fisher.tolist(),
                "fisher_seen": self.fisher_seen.tolist(),
                "info_mean": self.info_mean,
                "steps": self.steps,
                "last_frozen": self.last_frozen,
                "nonfinite_grads": self.nonfinite_grads,
            },
        }

    def load_state(self, attributes: dict) -> None:
        """Restore the ``attributes`` of :meth:`state` in place (the trainer keeps this very instance)."""
        self.fisher = np.asarray(attributes["fisher"], dtype=np.float64)
        self.fisher_seen = np.asarray(attributes["fisher_seen"], dtype=bool)
        self.info_mean = float(attributes["info_mean"])
        for name in ("steps", "last_frozen", "nonfinite_grads"):
            setattr(self, name, int(attributes[name]))
