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

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..accounting.flops import StepCost
from ..models.blocks import BlockPartition
from ..models.heads import find_head, logits_of
from .criterion import (
    batch_informativeness,
    fisher_ema_update,
    grad_sq_sum,
    select_frozen_prefix,
)


@dataclass(frozen=True)
class AdaptiveFreezingSettings:
    """aL's settings; the config's fields of the same names take their defaults from here."""

    fisher_ema: float = field(default=0.01, metadata={"help": "EMA ratio of the per-block Fisher traces."})
    informativeness_ema: float = field(default=0.01, metadata={"help": "EMA ratio of the batch informativeness."})
    fisher_update_every: int = field(
        default=4, metadata={"help": "Every this many steps nothing is frozen, refreshing every Fisher trace."}
    )
    freeze_warmup_steps: int = field(default=50, metadata={"help": "Steps without freezing at the start."})
    # > 0: instead of every fisher_update_every-th step, each step is left unfrozen with this probability (a seeded,
    # checkpointed coin), as the authors' launcher does with 0.5
    unfreeze_probability: float = 0.0
    # the running mean m of the informativeness bias-corrected as in Adam; False: m starts at 0 uncorrected, which
    # inflates s_b by 1 / (1 - (1 - ema)^t) and so blocks freezing for about 1 / ema steps (the authors' warm-up)
    informativeness_bias_correction: bool = True
    # update the Fisher traces only on steps where nothing was frozen (the authors'); False: every trained block's
    # trace on every step, which biases the suffix (frozen steps are the low-informativeness batches)
    fisher_on_unfrozen_steps_only: bool = False
    # False: a stem block (the partition's "stem") is left out of the criterion and frozen together with the first
    # block whenever anything is frozen, as the authors' get_freeze_idx does
    stem_in_criterion: bool = True


#: named aL settings (``freeze_preset``); "authors" follows the authors' ours_new.py (commit 2e5ecc1) and launcher:
#: EMAs 0.001, the uncorrected informativeness mean (their implicit warm-up; explicit warm-up 3 steps,
#: ``train_count > 2``), unfrozen with probability 0.5, Fisher from fully unfrozen steps only, stem outside.
FREEZE_PRESETS: dict[str, AdaptiveFreezingSettings] = {
    "default": AdaptiveFreezingSettings(),
    "authors": AdaptiveFreezingSettings(
        fisher_ema=0.001,
        informativeness_ema=0.001,
        freeze_warmup_steps=3,
        unfreeze_probability=0.5,
        informativeness_bias_correction=False,
        fisher_on_unfrozen_steps_only=True,
        stem_in_criterion=False,
    ),
}


def _logits_and_targets(inputs: dict, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = logits_of(outputs), inputs["labels"]
    if logits.dim() == 3:  # causal LM: token t predicts label t+1
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits.detach(), labels


def _full(weight: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (an all-gather every rank runs), else the tensor itself."""
    return weight.full_tensor() if hasattr(weight, "full_tensor") else weight


def _local(grad: torch.Tensor | None) -> torch.Tensor | None:
    return grad.to_local() if grad is not None and hasattr(grad, "to_local") else grad


def _is_sharded(blocks: BlockPartition) -> bool:
    first = next((p for ps in blocks.params for p in ps), None)
    return first is not None and hasattr(first, "to_local")


class AdaptiveFreezingCallback(TrainerCallback):
    """aL: freeze, per batch, the prefix of blocks that would gain the least Fisher information per FLOP."""

    def __init__(self, blocks: BlockPartition, settings: AdaptiveFreezingSettings | None = None, seed: int = 0):
        self.blocks = blocks
        self.settings = settings or AdaptiveFreezingSettings()
        self._coin = np.random.default_rng(seed)  # the unfreeze draw; rank 0's decides under DDP
        # the stem rides with the first block when the criterion leaves it out
        self._skip = int(not self.settings.stem_in_criterion and len(blocks) > 1 and blocks.names[0] == "stem")
        self.fisher = np.zeros(len(blocks))
        self.fisher_seen = np.zeros(len(blocks), dtype=bool)
        self.info_mean = 0.0
        self.steps = 0
        self.last_frozen = 0
        self.nonfinite_grads = 0
        self._head: torch.nn.Module | None = None
        self._last_decision_flops = 0.0

    # ---- the decision (called by the trainer between forward and backward) -----------------------------------
    def decide(self, model, inputs, outputs, cost: StepCost) -> int:
        self.steps += 1
        logits, labels = _logits_and_targets(inputs, outputs)
        if self._head is None:
            try:
                self._head = find_head(model, logits.shape[-1])
            except ValueError as err:
                raise ValueError(f"adaptive freezing: {err}") from None
        head_weight = _full(self._head.weight.detach())
        s_b, self.info_mean = batch_informativeness(
            logits,
            labels,
            head_weight,
            self.info_mean,
            ema=self.settings.informativeness_ema,
            updates=self.steps - 1 if self.settings.informativeness_bias_correction else None,
        )
        rows = int((labels != -100).sum())
        dim, classes = head_weight.shape[1], logits.shape[-1]
        self._last_decision_flops = rows * dim * (2 * classes - 1) + rows * dim  # (p - Y) W and its squares
        n = 0
        if self.settings.unfreeze_probability > 0:
            unfreeze = bool(self._coin.random() < self.settings.unfreeze_probability)  # drawn every step: resumable
        else:
            unfreeze = self.steps % self.settings.fisher_update_every == 0
        refresh = self.steps <= self.settings.freeze_warmup_steps or unfreeze
        k = self._skip
        if not refresh and self.fisher_seen[k:].all():
            # The whole forward (cost.forward) is paid whatever is frozen, so C_n = forward + BWD(n) needs no per-block
            # split of it: a zero FF per block with the total as head_fwd gives the same C_n (docs/findings.md).
            saved = np.array(cost.backward_saved_per_block[k:])
            if k:  # a riding stem is frozen with the first block: that choice saves both backwards
                saved[0] += sum(cost.backward_saved_per_block[:k])
            n = select_frozen_prefix(
                self.fisher[k:],
                np.zeros(len(self.blocks) - k),
                saved,
                s_b,
                head_fwd=cost.forward,
                head_bwd=cost.backward_by_prefix[-1],
                max_frozen=self.blocks.max_frozen - k,
            )
            n = n + k if n else 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            decision = torch.tensor([n], dtype=torch.long)
            dist.broadcast(decision, src=0)  # rank 0 decides: every rank prunes the same graph
            n = int(decision.item())
        self.last_frozen = n
        return n

    def extra_flops(self, cost: StepCost) -> dict[str, float]:
        if self.settings.fisher_on_unfrozen_steps_only and self.last_frozen > 0:
            return {"freeze_decision": float(self._last_decision_flops)}  # no Fisher update on this step
        fisher = 2.0 * sum(p.numel() for p in self.blocks.trainable_from(self.last_frozen))
        return {"freeze_decision": float(self._last_decision_flops), "fisher": fisher}

    def extra_state_bytes(self) -> dict[str, int]:
        return {"fisher": int(self.fisher.nbytes + self.fisher_seen.nbytes + 8)}

    def describe(self) -> dict[str, Any]:
        return {"mode": "adaptive", **asdict(self.settings), "fisher": self.fisher.tolist()}

    # ---- Fisher EMA from the (already synchronised, unscaled) gradients ---------------------------------------
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trained = np.arange(len(self.blocks)) >= self.last_frozen
        # A block without any gradient did not train (e.g. a batch skipped for a non-finite loss): a zero there would
        # drag its EMA down, so it keeps its value.
        trained &= np.array([any(p.grad is not None for p in params) for params in self.blocks.params], dtype=bool)
        if self.settings.fisher_on_unfrozen_steps_only and self.last_frozen > 0:
            trained[:] = False
        new = np.zeros(len(self.blocks))
        bad = np.zeros(len(self.blocks))
        for i in np.flatnonzero(trained):
            new[i], bad[i] = grad_sq_sum(_local(p.grad) for p in self.blocks.params[i])
        if _is_sharded(self.blocks):  # FSDP: each rank holds one shard of every gradient; sum the squares
            sums = torch.tensor(np.concatenate([new, bad]), dtype=torch.float64)
            dist.all_reduce(sums)
            new, bad = sums[: len(new)].numpy(), sums[len(new) :].numpy()
        self.nonfinite_grads += int(bad.sum())
        # A block's first measurement replaces the zero start instead of being shrunk by the EMA.
        first = trained & ~self.fisher_seen
        self.fisher = fisher_ema_update(self.fisher, new, self.settings.fisher_ema, mask=trained & self.fisher_seen)
        self.fisher[first] = new[first]
        self.fisher_seen |= trained
        return control

    # ---- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fisher": self.fisher.tolist(),
            "fisher_seen": self.fisher_seen.tolist(),
            "info_mean": self.info_mean,
            "steps": self.steps,
            "last_frozen": self.last_frozen,
            "nonfinite_grads": self.nonfinite_grads,
            "coin": self._coin.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` in place (the trainer keeps this very instance)."""
        self.fisher = np.asarray(state["fisher"], dtype=np.float64)
        self.fisher_seen = np.asarray(state["fisher_seen"], dtype=bool)
        self.info_mean = float(state["info_mean"])
        for name in ("steps", "last_frozen", "nonfinite_grads"):
            setattr(self, name, int(state[name]))
        if "coin" in state:  # checkpoints written before the coin existed have none
            self._coin.bit_generator.state = state["coin"]
