"""The continual-learning state of a run, gathered from its stateful parts under one protocol.

Every part that the rest of a run depends on (stream sampler with memory and method, ledger, freezing policy,
evaluation schedule, the trainer's own progress, stateful callbacks) has ``state_dict()`` and
``load_state_dict(state)``. :class:`RunState` writes them by name into one JSON-serialisable dict, which
:class:`~hf_budgetcl.training.checkpointing.ContinualStateCheckpoint` stores next to Trainer's own checkpoint.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..evaluation.anytime import CurvePoint
from ..utils.errors import ConfigError


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


@dataclass
class RunProgress:
    """What the trainer itself accumulates along the stream."""

    curve: list[CurvePoint] = field(default_factory=list)
    frozen_counts: Counter[int] = field(default_factory=Counter)  # iterations per number of frozen blocks
    stop_reason: str = "stream_end"
    skipped_nonfinite: int = 0
    rows_trained: int = 0  # batch rows over all iterations (all processes)
    eval_time_s: float = 0.0
    last_step_flops: float = 0.0
    max_charged_step_flops: float = 0.0  # the dearest iteration so far, method and freezing extras included
    elapsed_before_resume_s: float = 0.0  # training time spent by the run(s) this one resumed
    started_at: float | None = None  # perf_counter() when this process's train() began (not saved)

    def elapsed_s(self) -> float:
        """Training time so far, the resumed runs' included."""
        now = time.perf_counter()
        return self.elapsed_before_resume_s + (now - self.started_at if self.started_at is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "curve": [p.to_dict() for p in self.curve],
            "frozen_counts": {str(k): v for k, v in self.frozen_counts.items()},
            "stop_reason": self.stop_reason,
            "skipped_nonfinite": self.skipped_nonfinite,
            "rows_trained": self.rows_trained,
            "eval_time_s": self.eval_time_s,
            "last_step_flops": self.last_step_flops,
            "max_charged_step_flops": self.max_charged_step_flops,
            "elapsed_s": self.elapsed_s(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = [
            CurvePoint(**{**p, "per_class": {int(k): v for k, v in p["per_class"].items()}}) for p in state["curve"]
        ]
        self.frozen_counts = Counter({int(k): v for k, v in state["frozen_counts"].items()})
        for name in ("stop_reason", "skipped_nonfinite", "eval_time_s", "last_step_flops", "max_charged_step_flops"):
            setattr(self, name, state[name])
        self.elapsed_before_resume_s = state["elapsed_s"]
        self.rows_trained = state.get("rows_trained", 0)


class RunState:
    """The named stateful parts of a run; ``fingerprint`` ties a saved state to the stream it was written for."""

    def __init__(self, fingerprint: Callable[[], str], parts: Callable[[], Mapping[str, Stateful]]):
        self.fingerprint = fingerprint
        self.parts = parts  # a callable: callbacks may be added after the trainer is built

    def state_dict(self) -> dict[str, Any]:
        return {"stream_fingerprint": self.fingerprint(), **{k: p.state_dict() for k, p in self.parts().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("stream_fingerprint") != self.fingerprint():
            raise ConfigError(
                "resume_from_checkpoint: the checkpoint was written for a different stream "
                "(stream, seed, dataset or stream_file changed)"
            )
        parts = self.parts()
        missing = sorted(set(parts) - set(state))
        if missing:
            raise ConfigError(f"resume_from_checkpoint: the checkpoint has no state for {', '.join(missing)}")
        for name, part in parts.items():
            part.load_state_dict(state[name])
