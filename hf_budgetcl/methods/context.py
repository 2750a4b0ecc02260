"""What a method sees of the run: the narrow view the trainer hands to every method hook.

A method reads the model, its blocks, the stream, the replay memory and the batch being trained; it can collate
dataset rows, gather tensors over processes, measure FLOPs, run a forward without side effects and charge work to the
FLOPs ledger. It never reaches into the trainer itself, so the trainer's internals can change without breaking
plug-ins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..accounting.flops import side_effect_free

if TYPE_CHECKING:
    from ..models.blocks import BlockPartition
    from ..stream.memory import EpisodicMemory
    from ..stream.orders import StreamOrder
    from ..stream.sampler import BatchRecord


class MethodContext:
    """The run as a method sees it; built by :class:`~hf_budgetcl.training.trainer.BudgetedCLTrainer`."""

    def __init__(self, trainer: Any):
        self._trainer = trainer
        self._charges: dict[str, float] = {}
        self.in_training_pass = False  # True only inside the trainer's real training forward

    # ---- what the method reads ------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def blocks(self) -> BlockPartition:
        return self._trainer.blocks

    @property
    def stream(self) -> StreamOrder:
        return self._trainer.stream

    @property
    def memory(self) -> EpisodicMemory:
        return self._trainer.memory

    @property
    def record(self) -> BatchRecord | None:
        """The batch being trained: its stream position, dataset rows and memory slots (global, all ranks)."""
        return self._trainer.current_record

    @property
    def batch_size(self) -> int:
        """Rows of one global batch (all processes together)."""
        return self._trainer.global_batch_size

    @property
    def num_classes(self) -> int:
        """The model's ``num_labels`` if its config has one, else the number of classes in the stream."""
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        return int(num_labels or len(np.unique(self.stream.labels)))

    @property
    def rank(self) -> int:
        return self._trainer.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self._trainer.world_size

    @property
    def loss_scale(self) -> float:
        """The factor by which the backward's loss exceeds the model's loss: the AMP grad scaler's (1 without)."""
        scaler = getattr(self._trainer.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def local_positions(self, local_rows: int) -> np.ndarray:
        """Positions in the global batch of this process's ``local_rows`` rows (each rank holds a contiguous shard)."""
        start = self.rank * len(self.record.indices) // self.world_size
        return np.arange(start, start + local_rows)

    # ---- what the method can do -----------------------------------------------------------------------------
    def collate(self, indices: Iterable[int]) -> dict:
        """Model inputs of dataset rows ``indices``, collated and on the training device."""
        return self._trainer.collate_rows(indices)

    def gather(self, tensors: Any) -> Any:
        """Concatenate ``tensors`` (a tensor or a tuple of them) over processes, in rank order."""
        return self._trainer.accelerator.gather(tensors)

    def forward_flops(self, inputs: dict) -> float:
        """Measured FLOPs of one forward on ``inputs``."""
        return self._trainer.profiler.forward_flops(inputs)

    def train_flops(self, inputs: dict) -> float:
        """Measured FLOPs of one forward and full backward on ``inputs``."""
        return self._trainer.profiler.cost(inputs).train_flops(0)

    @contextlib.contextmanager
    def side_effect_free(self) -> Iterator[None]:
        """Run extra forwards that leave BatchNorm statistics and the training RNG stream as they were."""
        with side_effect_free(self.model):
            yield

    def add_callback(self, callback: Any) -> None:
        self._trainer.add_callback(callback)

    def charge(self, item: str, flops: float, on_every_rank: bool = False) -> None:
        """Charge ``flops`` to ledger item ``item`` when the current step closes. ``on_every_rank``: the work is
        replicated on every process (e.g. it runs in the sampler), so it is charged ``world_size`` times."""
        self._charges[item] = self._charges.get(item, 0.0) + float(flops) * (self.world_size if on_every_rank else 1)

    def take_charges(self) -> dict[str, float]:
        """The charges since the last call (the trainer books them on the ledger once per step)."""
        charges, self._charges = self._charges, {}
        return charges
