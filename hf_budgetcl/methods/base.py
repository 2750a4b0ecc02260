"""The plug-in contract of a continual-learning method.

A method says how a training batch is composed (how much comes from the latest stream arrivals, and which memory
slots are retrieved), what it adds to the loss, what it learns from each training forward, which extra state it keeps
(charged to the memory budget in bytes) and which extra work it does (charged to the FLOPs ledger through
:meth:`MethodContext.charge <hf_budgetcl.methods.context.MethodContext.charge>`).

Every hook that needs the run receives a :class:`~hf_budgetcl.methods.context.MethodContext`, never the trainer.
The hooks, in the order they run:

* :meth:`ContinualMethod.setup`: once, before the memory budget is computed (hook modules, add callbacks);
* :meth:`ContinualMethod.slot_bytes`: what one memory slot costs, so a method that stores more per slot (logits,
  compressed features) gets fewer slots under the same byte budget;
* :meth:`ContinualMethod.retrieve` / :meth:`ContinualMethod.on_retrieved`: in the stream sampler, identically on
  every rank, when a batch is composed;
* :meth:`ContinualMethod.refine_batch`: in the training step, before the forward; may replace the batch's memory
  rows with a choice that needs the model (MIR);
* :meth:`ContinualMethod.observe` then :meth:`ContinualMethod.extra_loss`: after the forward of a real training
  pass only (not the profiler's measurement pass, not evaluation).
* :meth:`ContinualMethod.after_backward`: after that pass's backward (the trained suffix has its gradients), before
  the step's FLOPs are booked.

Hyper-parameters are an ``Options`` dataclass (:mod:`hf_budgetcl.methods.options`); ``self.options`` holds the
filled instance. ``freeze`` is the method's default freezing mode; ``required_freeze``, when set (by the class or in
``setup``), is the only mode the method can run with, and a different ``--freeze`` is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .options import MethodOptions, build_options

if TYPE_CHECKING:
    from ..stream.memory import EpisodicMemory
    from ..stream.sampler import BatchRecord
    from .context import MethodContext


class ContinualMethod:
    """Base class: uniform replay from memory, no extra loss, state or FLOPs."""

    name: ClassVar[str] = "base"
    stream_fraction: ClassVar[float] = 0.0  # share of each batch taken from the latest arrivals
    freeze: str = "none"  # default freezing mode: "none" | "adaptive" | "static:<n>" | "lisa[:<n>]"
    required_freeze: str | None = None  # the only freezing mode the method can run with, if any
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, config: Any = None, **options: Any):
        self.config = config
        self.options = build_options(self.Options, self.name, config, options)

    def setup(self, ctx: MethodContext) -> None:
        """Called once by the trainer before the memory budget is computed (model, blocks and data are set)."""

    def slot_bytes(self, sample_nbytes: int) -> int:
        """Bytes one memory slot takes: the stored sample (here) plus any per-slot side information."""
        return int(sample_nbytes)

    def stream_batch_size(self, batch_size: int) -> int:
        return int(round(self.stream_fraction * batch_size))

    def min_arrivals(self, batch_size: int) -> int:
        """Arrivals needed before the first iteration (a full stream part, or a full batch in memory)."""
        return max(self.stream_batch_size(batch_size), 1) if self.stream_fraction > 0 else batch_size

    def retrieve(self, memory: EpisodicMemory, n: int, rng: np.random.Generator, samples_seen: int) -> np.ndarray:
        """Memory slots for the replay part of the batch: uniform, without replacement."""
        n = min(n, len(memory))
        return rng.choice(len(memory), size=n, replace=False) if n > 0 else np.empty(0, dtype=np.int64)

    def on_retrieved(self, memory: EpisodicMemory, slots: np.ndarray) -> None:
        """Bookkeeping after a draw: every retrieved slot's use count grows by one."""
        for s in slots:
            memory.use_counts[int(s)] += 1.0

    def refine_batch(self, ctx: MethodContext, record: BatchRecord) -> BatchRecord | None:
        """A replacement for the batch about to be trained, or None to train it as composed."""
        return None

    def observe(self, ctx: MethodContext, inputs: dict, outputs: Any) -> None:
        """Learn from the forward of a real training pass (statistics, stored logits), before the loss is final."""

    def extra_loss(self, ctx: MethodContext, inputs: dict, outputs: Any) -> torch.Tensor | None:
        """A term added to the model's loss on a real training pass."""
        return None

    def after_backward(self, ctx: MethodContext) -> None:
        """Learn from the backward of a real training pass (e.g. gradients caught by hooks)."""

    def extra_state_bytes(self, model: torch.nn.Module, num_classes: int) -> dict[str, int]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
