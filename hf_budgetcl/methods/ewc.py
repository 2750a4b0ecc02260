"""Online EWC++ (Chaudhry et al., ECCV 2018; Schwarz et al., 2018) on top of ER, task-free.

State: a running diagonal Fisher ``F`` and anchor parameters ``theta*``, one value each per trainable parameter.

* Fisher: after every backward (``on_pre_optimizer_step``), ``F <- (1 - a) F + a g^2`` on the parameters that
  received a gradient (``a`` = ``ewc_fisher_ema``; :func:`fisher_update`). ``g`` is the gradient of the task loss:
  the penalty's own gradient ``lambda F (theta - theta*)`` is known in closed form and taken off the gradient of the
  whole loss (:func:`task_gradient`), so no second backward is needed; exact for float32 gradients without clipping
  (``max_grad_norm`` must be 0; with bf16 gradients about 2^-9 of the penalty's share remains). The online EWC++
  implementations of the online-CL code bases use the whole loss's gradient (``ewc_fisher_of=total_loss``). That
  feeds the penalty back into ``F``: ``F_new ~ a lambda^2 F^2 (theta - theta*)^2`` grows faster than exponentially
  once ``a lambda^2 F (theta - theta*)^2 > 1``, and the loss overflows (it did with LoRA on both stage-1 VLM bases).
* Anchor: the stream has no task boundaries, so the first arrival of a new class stands in for one: when a stream row
  of an unseen class is trained (after the first class), ``theta*`` is set to the current parameters. Before the
  first anchor the penalty is 0.
* Penalty (:func:`ewc_penalty`): ``lambda / 2 * sum_j F_j (theta_j - theta*_j)^2`` (``lambda`` = ``ewc_lambda``).

Accounting: ``F`` and ``theta*`` are two copies of the trainable parameters (extra state ``ewc_fisher_and_anchor``;
the paper counts "EWC: - 2 models"). Their work is element-wise, not counted by FlopCounterMode, and charged by hand
(:func:`ewc_flops`): penalty forward 4 and backward 3 per element, Fisher update 4 per updated element, plus 4 per
element whose penalty gradient is taken off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import TrainerCallback

from ..utils.errors import ConfigError
from .er import ER
from .options import MethodOptions


def fisher_update(fisher: torch.Tensor, grad: torch.Tensor, ema: float) -> torch.Tensor:
    """``(1 - ema) * fisher + ema * grad^2``."""
    return (1.0 - ema) * fisher + ema * grad.detach().float() ** 2


def task_gradient(
    grad: torch.Tensor, fisher: torch.Tensor, param: torch.Tensor, anchor: torch.Tensor, lam: float
) -> torch.Tensor:
    """The gradient of the whole loss minus the penalty's, ``grad - lam * fisher * (param - anchor)`` (float32)."""
    return grad.detach().float() - lam * fisher * (param.detach().float() - anchor)


def ewc_penalty(
    params: list[torch.Tensor], fisher: list[torch.Tensor], anchor: list[torch.Tensor], lam: float
) -> torch.Tensor:
    """``lam / 2 * sum_k sum_j F_kj (p_kj - anchor_kj)^2``."""
    total = torch.zeros((), device=params[0].device if params else "cpu")
    for p, f, a in zip(params, fisher, anchor):
        total = total + (f * (p.float() - a) ** 2).sum()
    return 0.5 * lam * total


def ewc_flops(penalty_elements: int, fisher_elements: int, task_gradient_elements: int = 0) -> float:
    """Penalty forward (subtract, square, multiply by F, sum: 4) and backward (``lam F (p - anchor)``: 3) per element,
    Fisher update (square, two scalings, add: 4) per element that received a gradient, and taking the penalty's
    gradient off (subtract, two products, subtract: 4) per element where that was done."""
    return float(7 * penalty_elements + 4 * fisher_elements + 4 * task_gradient_elements)


@dataclass
class EWCOptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {"ewc_lambda": ">= 0", "ewc_fisher_ema": "(0, 1]"}
    ewc_lambda: float = field(default=100.0, metadata={"help": "Weight lambda of the quadratic penalty."})
    ewc_fisher_ema: float = field(default=0.1, metadata={"help": "EMA ratio of the running diagonal Fisher."})
    ewc_fisher_of: str = field(
        default="task_loss",
        metadata={
            "help": "Gradient the Fisher squares: task_loss (the penalty's gradient taken off) or total_loss (as the "
            "online-CL code bases do; the penalty feeds back into the Fisher and can overflow)."
        },
    )

    def validate(self) -> None:
        super().validate()
        if self.ewc_fisher_of not in ("task_loss", "total_loss"):
            raise ConfigError(f"ewc_fisher_of must be task_loss or total_loss (got {self.ewc_fisher_of!r})")


class _FisherCallback(TrainerCallback):
    def __init__(self, method: EWC, ctx: Any):
        self.method = method
        self.ctx = ctx

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.method.update_fisher(self.ctx)
        return control


class EWC(ER):
    name = "ewc"
    Options = EWCOptions

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        if self.options.ewc_fisher_of == "task_loss" and float(getattr(config, "max_grad_norm", 0.0) or 0.0) > 0:
            # Clipping scales p.grad before on_pre_optimizer_step; the unscaled penalty gradient would then be taken
            # off a scaled total, and the penalty's share would come back into F.
            raise ConfigError(
                "ewc_fisher_of=task_loss needs max_grad_norm 0 (clipping rescales the gradient the penalty's share is "
                "taken from); use ewc_fisher_of=total_loss or no clipping"
            )
        self.lam, self.fisher_ema = self.options.ewc_lambda, self.options.ewc_fisher_ema
        self.params: list[torch.nn.Parameter] = []
        self.fisher: list[torch.Tensor] = []
        self.anchor: list[torch.Tensor] | None = None
        self.seen_classes: set[int] = set()
        self.anchors_taken = 0

    def setup(self, ctx) -> None:
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]
        self.fisher = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        ctx.add_callback(_FisherCallback(self, ctx))

    def observe(self, ctx, inputs: dict, outputs: Any) -> None:
        """A stream row of a class not seen before: what was learnt so far becomes the anchor."""
        record = ctx.record
        new = {int(y) for y, s in zip(record.labels, record.slots) if s == -1} - self.seen_classes
        if new and self.seen_classes:
            self.anchor = [p.detach().float().clone() for p in self.params]
            self.anchors_taken += 1
        self.seen_classes |= new

    def extra_loss(self, ctx, inputs: dict, outputs: Any) -> torch.Tensor | None:
        if self.anchor is None:
            return None
        # Replicated on every rank. The Fisher update of a step runs after the step's charge (in
        # on_pre_optimizer_step) and is booked with the next one.
        ctx.charge("ewc", ewc_flops(sum(p.numel() for p in self.params), 0), on_every_rank=True)
        return ewc_penalty(self.params, self.fisher, self.anchor, self.lam)

    def update_fisher(self, ctx) -> None:
        updated = 0
        take_penalty_off = self.anchor is not None and self.options.ewc_fisher_of == "task_loss"
        for k, p in enumerate(self.params):
            if p.grad is not None and torch.isfinite(p.grad).all():
                grad = p.grad
                if take_penalty_off:  # F is still the one the penalty of this step used
                    grad = task_gradient(grad, self.fisher[k], p, self.anchor[k], self.lam)
                self.fisher[k] = fisher_update(self.fisher[k], grad, self.fisher_ema)
                updated += p.numel()
        ctx.charge("ewc", ewc_flops(0, updated, updated if take_penalty_off else 0), on_every_rank=True)

    def extra_state_bytes(self, model: torch.nn.Module, num_classes: int) -> dict[str, int]:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"ewc_fisher_and_anchor": 2 * 4 * int(n)}  # float32 F and theta*

    def state_dict(self) -> dict[str, Any]:
        return {
            "fisher": [f.cpu().numpy() for f in self.fisher],
            "anchor": None if self.anchor is None else [a.cpu().numpy() for a in self.anchor],
            "seen_classes": sorted(self.seen_classes),
            "anchors_taken": self.anchors_taken,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.params[0].device if self.params else "cpu"
        if state.get("fisher") is not None:
            self.fisher = [torch.as_tensor(np.asarray(f), device=device) for f in state["fisher"]]
        if state.get("anchor") is not None:
            self.anchor = [torch.as_tensor(np.asarray(a), device=device) for a in state["anchor"]]
        self.seen_classes = set(state.get("seen_classes", []))
        self.anchors_taken = int(state.get("anchors_taken", 0))
