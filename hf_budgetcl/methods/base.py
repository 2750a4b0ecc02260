"""The plug-in shape of a continual-learning method.

A method says how a training batch is composed (how much comes from the latest stream arrivals, and which memory
slots are retrieved), what it adds to the loss, which extra state it keeps (charged to the memory budget in bytes)
and which extra work it does per iteration (charged to the FLOPs ledger). Freezing is chosen by ``freeze``.

Two hooks make room for methods with side information (DER++/X-DER logits, REMIND features, MEMO extractors, OCS or
LiDER statistics) without reshaping the trainer:

* :meth:`ContinualMethod.setup` runs once, before the memory budget is computed, with the trainer at hand (model,
  blocks, dataset, collator): a method hooks modules or adds callbacks there;
* :meth:`ContinualMethod.slot_bytes` says what one memory slot costs: the stored sample plus per-slot side
  information, or a compressed replacement of the sample. The replay memory's byte capacity is filled with these, so
  a method that stores more per slot gets fewer slots under the same total byte budget.

Hyper-parameters come from :meth:`ContinualMethod.option`: an explicit keyword, else the config's ``method_options``
("key=value,key=value"), else a config field of that name, else the method's default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from ..stream.memory import EpisodicMemory


def parse_method_options(text: str | None) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (values are cast by :meth:`ContinualMethod.option`)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method_options: expected key=value pairs separated by commas, got {item.strip()!r}")
        out[key.strip()] = value.strip()
    return out


class ContinualMethod:
    """Base class: uniform replay from memory, no extra loss, state or FLOPs."""

    name: ClassVar[str] = "base"
    stream_fraction: ClassVar[float] = 0.0  # share of each batch taken from the latest arrivals
    freeze: ClassVar[str] = "none"  # "none" | "adaptive" | "static:<n>"; the config may override it

    def __init__(self, config: Any = None, **options: Any):
        self.config = config
        self.options = {**parse_method_options(getattr(config, "method_options", None)), **options}

    def option(self, key: str, default: Any) -> Any:
        """Explicit option > ``method_options`` > config field > ``default``, cast to the default's type."""
        value = self.options.get(key, getattr(self.config, key, default))
        if default is None or value is None or isinstance(value, type(default)):
            return value
        if isinstance(default, bool):
            return str(value).lower() in ("1", "true", "yes")
        try:
            return type(default)(value)
        except (TypeError, ValueError):
            raise ValueError(f"method_options: {key} expects {type(default).__name__}, got {value!r}") from None

    def setup(self, trainer: Any) -> None:
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

    def extra_loss(self, trainer: Any, model: torch.nn.Module, inputs: dict, outputs: Any) -> torch.Tensor | None:
        return None

    def extra_state_bytes(self, model: torch.nn.Module, num_classes: int) -> dict[str, int]:
        return {}

    def extra_flops_per_iteration(self, trainer: Any, batch_size: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def collate_rows(trainer: Any, indices: Any) -> dict:
    """The model inputs of dataset rows ``indices``, collated and on the training device."""
    rows = [trainer.train_dataset[int(i)] for i in indices]
    return {k: v.to(trainer.args.device) if hasattr(v, "to") else v for k, v in trainer.data_collator(rows).items()}


def local_positions(trainer: Any, batch_rows: int, local_rows: int) -> np.ndarray:
    """Positions in the global batch of this process's ``local_rows`` rows (each rank holds a contiguous shard)."""
    rank = getattr(getattr(trainer, "accelerator", None), "process_index", 0)
    world = getattr(trainer, "world_size", 1)
    start = rank * batch_rows // world
    return np.arange(start, start + local_rows)


def is_training_pass(trainer: Any, model: torch.nn.Module) -> bool:
    """A real training forward (not the profiler's measurement pass, nor evaluation) with a batch record."""
    profiler = getattr(trainer, "profiler", None)
    return (
        model.training
        and not getattr(profiler, "measuring", False)
        and getattr(trainer, "current_record", None) is not None
    )
