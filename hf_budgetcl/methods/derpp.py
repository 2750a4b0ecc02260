"""DER++: dark experience replay with labels (Buzzega et al., NeurIPS 2020) on top of ER.

Every stored sample keeps the logits the model gave it when it was trained as a stream sample. On replayed rows the
loss adds a logit-matching and a label term (:func:`derpp_loss`):

    L = CE(batch) + alpha * mean_{replayed i with logits, c} (z_ic - z*_ic)^2 + beta * mean_{replayed i} CE(z_i, y_i)

(the original draws two separate buffer batches for the two terms; here both use the replay half of the one batch,
so no extra forward is needed, as in the aL-SAR code's DER++). Logits are stored when a stream row is trained and
its sample is in memory; a replayed slot without stored logits (evicted and re-stored, or never trained from the
stream) only gets the label term.

Accounting: each slot stores ``C`` float32 logits next to its sample, ``slot_bytes = sample + 4 C``, so under one
byte budget DER++ keeps fewer samples than ER. The extra loss terms are element-wise (not counted by
FlopCounterMode) and charged by hand as item ``derpp_loss`` (:func:`derpp_loss_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..models.heads import logits_of
from ..utils.errors import ConfigError
from .er import ER
from .options import MethodOptions

LOGIT_BYTES = 4  # float32


def derpp_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stored: torch.Tensor,
    has_stored: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``alpha * mean((z - z*)^2)`` over the rows with stored logits (all classes) plus ``beta * mean CE(z, y)`` over
    all given (replayed) rows; an empty set contributes 0."""
    zero = logits.sum() * 0.0
    mse = F.mse_loss(logits[has_stored].float(), stored[has_stored].float()) if has_stored.any() else zero
    ce = F.cross_entropy(logits.float(), labels) if logits.shape[0] else zero
    return alpha * mse + beta * ce


def derpp_loss_flops(rows_with_logits: int, rows: int, num_classes: int) -> float:
    """Hand count: MSE forward 3 per element (subtract, square, sum) and backward 2; CE forward ~4 per logit
    (max-shift, exp, sum, log) and backward 2 (softmax minus one-hot, scale)."""
    return float(5 * rows_with_logits * num_classes + 6 * rows * num_classes)


@dataclass
class DERPPOptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {"derpp_alpha": ">= 0", "derpp_beta": ">= 0"}
    derpp_alpha: float = field(default=0.1, metadata={"help": "Weight of the logit-matching term."})
    derpp_beta: float = field(default=0.5, metadata={"help": "Weight of the replayed-label term."})


class DERPP(ER):
    name = "derpp"
    Options = DERPPOptions

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        self.alpha, self.beta = self.options.derpp_alpha, self.options.derpp_beta
        self.num_classes = 0  # logits per slot, set in setup
        self.stored: dict[int, np.ndarray] = {}  # dataset index -> float32 logits

    def setup(self, ctx) -> None:
        self.num_classes = ctx.num_classes

    def slot_bytes(self, sample_nbytes: int) -> int:
        return int(sample_nbytes) + LOGIT_BYTES * self.num_classes

    def observe(self, ctx, inputs: dict, outputs: Any) -> None:
        """Store the logits of every trained stream row whose sample is in memory (gathered: every rank keeps the
        same store), and forget those of evicted samples."""
        logits = logits_of(outputs)
        if logits.dim() != 2:
            raise ConfigError("derpp: needs classification logits (N, C)")
        record = ctx.record
        slots, indices = np.asarray(record.slots), np.asarray(record.indices)
        all_logits = ctx.gather(logits.detach()).float().cpu().numpy()
        in_memory = set(ctx.memory.indices)
        for pos in np.flatnonzero(slots == -1):
            if int(indices[pos]) in in_memory:
                self.stored[int(indices[pos])] = all_logits[pos].copy()
        self.stored = {k: v for k, v in self.stored.items() if k in in_memory}

    def extra_loss(self, ctx, inputs: dict, outputs: Any) -> torch.Tensor | None:
        """The logit and label terms on this process's replayed rows."""
        logits = logits_of(outputs)
        record = ctx.record
        slots, indices = np.asarray(record.slots), np.asarray(record.indices)
        positions = ctx.local_positions(logits.shape[0])
        replay = np.flatnonzero(slots[positions] != -1)
        if replay.size == 0:
            return None
        rows = [int(indices[positions[j]]) for j in replay]
        has = torch.tensor([r in self.stored for r in rows], device=logits.device)
        target = torch.from_numpy(np.stack([self.stored.get(r, np.zeros(logits.shape[1], np.float32)) for r in rows]))
        labels = inputs["labels"][torch.as_tensor(replay, device=logits.device)]
        flops = derpp_loss_flops(int(has.sum()), replay.size, logits.shape[1])
        ctx.charge("derpp_loss", flops, on_every_rank=True)
        return derpp_loss(
            logits[torch.as_tensor(replay, device=logits.device)],
            labels,
            target.to(logits.device),
            has,
            self.alpha,
            self.beta,
        )

    def state_dict(self) -> dict[str, Any]:
        keys = sorted(self.stored)
        logits = np.stack([self.stored[k] for k in keys]) if keys else np.zeros((0, self.num_classes), np.float32)
        return {"indices": np.asarray(keys, dtype=np.int64), "logits": logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stored = {
            int(k): np.asarray(v, dtype=np.float32) for k, v in zip(state.get("indices", []), state.get("logits", []))
        }
