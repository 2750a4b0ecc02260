"""The trainer's own callbacks: anytime-evaluation triggers and budget stop, and the stream progress bar."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

if TYPE_CHECKING:
    from .trainer import BudgetedCLTrainer


class StreamControlCallback(TrainerCallback):
    """Triggers anytime evaluations at their stream positions and stops when the budget is spent."""

    def __init__(self, trainer: BudgetedCLTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        record = trainer.current_record
        if record is not None and record.last_for_arrival:
            due = trainer.schedule.due(record.samples_seen)
            if due:
                trainer._pending_eval = due
                control.should_evaluate = True
        next_step = max(trainer.ledger.max_step_flops * trainer.world_size, trainer.progress.max_charged_step_flops)
        if math.isfinite(trainer.ledger.remaining) and not trainer.ledger.can_afford(next_step):
            trainer.progress.stop_reason = "flops_budget"
            trainer.stream_sampler.stopped = True  # a run resumed from this step must not train further
            control.should_training_stop = True
        return control


class StreamProgressCallback(ProgressCallback):
    """Trainer's progress bar, annotated with stream samples seen and training FLOPs spent."""

    def __init__(self, trainer: BudgetedCLTrainer):
        super().__init__()
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.training_bar is not None:
            t = self.trainer
            self.training_bar.set_postfix(
                samples=f"{t.stream_sampler.cursor}/{len(t.stream)}",
                TFLOPs=f"{t.ledger.total / 1e12:.3f}",
                refresh=False,
            )
