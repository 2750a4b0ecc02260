"""Budget matching: derive ``online_iter`` from the FLOPs budget and each method's measured cost per iteration.

Methods differ in what one iteration costs (MIR adds a virtual update and candidate forwards, freezing removes part of
the backward), so one FLOPs budget per stream sample means a different number of iterations per sample for each.
Instead of tuning ``online_iter`` by hand per method (as the aL-SAR scripts do), a controller sets it from what the
ledger has measured, at every step:

    online_iter = (remaining budget - cost of the batches already queued) / (remaining arrivals * cost per iteration)

(:func:`paced_online_iter`), where the cost per iteration is an exponential moving average of the charged cost of the
last steps (:func:`ema_update`), method and freezing extras included. Two modes (config ``budget_matching``):

* ``auto``: spend and cost count the backward as if nothing were frozen, so freezing does *not* buy extra
  iterations: a freezing method runs the iterations its unfrozen twin runs and finishes below the budget (the paper's
  protocol: aL-SAR uses ER's ``online_iter``);
* ``spend_savings``: the cost is what was actually charged, so what freezing saves is spent on further iterations and
  the method learns more within the same budget.

The trainer's DataLoader length must be known when training starts, so it is computed with ``online_iter_cap``, the
``online_iter`` that the cheapest possible iteration (all freezable blocks frozen, no extras) would get, doubled; the
controller never exceeds it. The run still ends when the stream ends or the budget cannot pay another iteration.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..utils.errors import ConfigError


def paced_online_iter(
    remaining_flops: float, remaining_arrivals: int, flops_per_iteration: float, cap: float
) -> float:
    """``online_iter = remaining_flops / (remaining_arrivals * flops_per_iteration)``, clipped to ``[0, cap]``.

    With no arrival left (or an unknown cost) the answer is ``cap``: it no longer matters how many iterations an
    arrival earns, the budget check stops training.
    """
    if remaining_arrivals <= 0 or flops_per_iteration <= 0:
        return cap
    return float(min(max(remaining_flops, 0.0) / (remaining_arrivals * flops_per_iteration), cap))


def ema_update(mean: float | None, value: float, ratio: float) -> float:
    """``mean + ratio * (value - mean)``; the first value replaces the empty (None) mean."""
    return float(value) if mean is None else float(mean + ratio * (value - mean))


class BudgetMatchingCallback(TrainerCallback):
    """Sets the stream sampler's ``online_iter`` from the remaining FLOPs budget after every step."""

    def __init__(self, trainer: Any, spend_savings: bool = False, cost_ema: float = 0.1):
        if trainer.ledger.budget is None:
            raise ConfigError("budget_matching: needs a FLOPs budget (flops_budget or flops_budget_per_sample)")
        self.trainer = trainer
        self.spend_savings = spend_savings
        self.cost_ema = cost_ema
        self.cost_per_iteration: float | None = None
        self._previous = self._ledger_totals()
        sampler, stream, world = trainer.stream_sampler, trainer.stream, trainer.world_size
        cost = trainer.profiler.cost(trainer.first_batch())
        cheapest = (cost.forward + cost.backward_by_prefix[trainer.blocks.max_frozen]) * world
        per_sample = trainer.ledger.budget / len(stream)
        self.cap = 2.0 * per_sample / cheapest
        sampler.online_iter_cap = self.cap
        # Before any step: the unfrozen training cost, spread over the arrivals that earn iterations.
        earning = max(len(stream) - sampler.min_arrivals + 1, 1)
        sampler.online_iter = paced_online_iter(trainer.ledger.budget, earning, cost.train_flops(0) * world, self.cap)
        self.initial_online_iter = sampler.online_iter

    # ---- checkpointing (cl_state.json, see hf_budgetcl.training.checkpointing; online_iter is in the sampler's state) ---
    def state_dict(self) -> dict[str, Any]:
        return {"cost_per_iteration": self.cost_per_iteration, "previous": list(self._previous)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cost_per_iteration = state["cost_per_iteration"]
        self._previous = tuple(state["previous"])

    def _ledger_totals(self) -> tuple[float, float, float]:
        ledger = self.trainer.ledger
        return ledger.total, ledger.backward_full, ledger.items.get("train_backward", 0.0)

    def on_evaluate(self, args, state, control, **kwargs):
        # What an evaluation charged (bn_recalibration) lowers the remaining budget, not a step's cost.
        self._previous = self._ledger_totals()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        total, backward_full, backward = self._ledger_totals()
        previous, self._previous = self._previous, (total, backward_full, backward)
        charged, remaining = total - previous[0], t.ledger.remaining
        if not self.spend_savings:  # count the backward as if nothing had been frozen
            charged += (backward_full - previous[1]) - (backward - previous[2])
            remaining -= backward_full - backward
        self.cost_per_iteration = ema_update(self.cost_per_iteration, charged, self.cost_ema)
        sampler = t.stream_sampler
        arrivals_left = len(t.stream) - sampler.cursor
        if arrivals_left > 0:  # else online_iter no longer matters: keep the last value for the results
            queued = len(sampler.records) * self.cost_per_iteration  # composed but not yet trained
            sampler.online_iter = paced_online_iter(
                remaining - queued, arrivals_left, self.cost_per_iteration, self.cap
            )
        return control
