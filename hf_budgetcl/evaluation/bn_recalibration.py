"""BatchNorm running statistics recomputed from the replay memory, for the evaluation and the saved model (#18).

A BatchNorm layer evaluates with running statistics, an exponential average (momentum 0.1) of the last training
batches. After a task switch on a class-incremental stream those batches are half new-task rows, so the statistics
an evaluation uses follow the newest task. ``bn_recalibration: memory`` recomputes them, before each anytime
evaluation and before the final save, from the replay memory, which holds every class seen so far
(``torch.optim.swa_utils.update_bn``'s recipe): reset the running statistics, momentum ``None`` (a cumulative
average over batches), and forward the memory in batches of nearly equal size under ``no_grad`` with only the
BatchNorm layers in train mode (dropout stays off and draws nothing from the RNG).

An evaluation puts the previous statistics back afterwards (:meth:`BatchNormRecalibration.for_evaluation`), so the
training trajectory is exactly the one without recalibration; the final save keeps them (:meth:`recalibrate`).
A layer the memory's forward does not run in train mode (never reached, or put in eval mode by a hook, as REMIND does
with its frozen prefix) keeps its statistics.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

STATS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def snapshot(layers: list[_BatchNorm]) -> list[dict[str, torch.Tensor]]:
    """A copy of every layer's running statistics."""
    return [{name: getattr(m, name).detach().clone() for name in STATS} for m in layers]


def restore(layers: list[_BatchNorm], saved: list[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for m, stats in zip(layers, saved):
            for name, value in stats.items():
                getattr(m, name).copy_(value)


def even_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``indices`` in ceil(n / batch_size) consecutive chunks of nearly equal size: the cumulative average weighs
    every batch alike, so no small last batch (of one row, say) counts as much as a full one."""
    if len(indices) == 0:
        return []
    return np.array_split(np.asarray(indices), math.ceil(len(indices) / batch_size))


@contextlib.contextmanager
def batchnorm_in_train_mode(model: nn.Module, layers: list[_BatchNorm]) -> Iterator[None]:
    """Everything in eval mode except ``layers``, whose momentum is ``None`` (cumulative average); all restored."""
    was_training = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.train()
        m.momentum = None
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in was_training.items():
            m.training = training


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[dict]) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers from ``batches`` (model keyword inputs).

    Each layer ends with the mean over batches of the per-batch mean and of the per-batch unbiased variance (one
    batch: that batch's statistics exactly). Returns the number of batches; with none the statistics are unchanged.
    """
    layers = batchnorm_layers(model)
    before = snapshot(layers)
    for m in layers:
        m.reset_running_stats()
    n = 0
    with batchnorm_in_train_mode(model, layers), torch.no_grad(), torch.random.fork_rng(devices=[]):
        for batch in batches:
            model(**batch)
            n += 1
    # A layer no batch reached in train mode still has its reset statistics: put its own back.
    untouched = [i for i, m in enumerate(layers) if n == 0 or int(m.num_batches_tracked) == 0]
    restore([layers[i] for i in untouched], [before[i] for i in untouched])
    return n


class BatchNormRecalibration:
    """``bn_recalibration: memory`` for a trainer: the model, the memory's batches and what their forward costs.

    Args:
        model: returns the model to recalibrate (called each time: a wrapper may change along the run).
        batches: returns the replay memory as model inputs, in batches on the model's device.
        forward_flops: measured FLOPs of one forward on a batch (the trainer's profiler, cached per shape).
        charge: books FLOPs on the ledger (item ``bn_recalibration``).
        replicas: processes that each forward the whole memory (every rank keeps the same memory).
    """

    item = "bn_recalibration"

    def __init__(
        self,
        model: Callable[[], nn.Module],
        batches: Callable[[], list[dict]],
        forward_flops: Callable[[dict], float],
        charge: Callable[[str, float], None],
        replicas: int = 1,
    ):
        self.model = model
        self.batches = batches
        self.forward_flops = forward_flops
        self.charge = charge
        self.replicas = replicas
        self._key: Any = None  # what the last recalibration was made from, and its statistics
        self._stats: list[dict[str, torch.Tensor]] = []

    def recalibrate(self, key: Any = None) -> float:
        """Recompute the statistics from the memory and keep them; returns the FLOPs charged. With the ``key`` (the
        training step and the memory's content) of the last recalibration, nothing has changed since: its statistics
        are put back without a second pass or charge."""
        layers = batchnorm_layers(self.model())
        if key is not None and key == self._key:
            restore(layers, self._stats)
            return 0.0
        batches = self.batches()
        flops = self.replicas * sum(self.forward_flops(b) for b in batches)  # measured before: no stats moved
        recalibrate_batchnorm(self.model(), batches)
        if batches:
            self.charge(self.item, flops)
        self._key, self._stats = key, snapshot(layers)
        return flops

    @contextlib.contextmanager
    def for_evaluation(self, key: Any = None) -> Iterator[None]:
        """Recalibrated statistics inside, the previous ones back afterwards (training continues as it would have)."""
        layers = batchnorm_layers(self.model())
        before = snapshot(layers)
        self.recalibrate(key)
        try:
            yield
        finally:
            restore(layers, before)
