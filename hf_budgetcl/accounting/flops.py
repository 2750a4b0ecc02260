"""Training-FLOPs ledger and memory budget in bytes.

FLOPs are measured, never estimated by hand: for every new input shape the model runs one forward and, for
each possible frozen prefix ``n = 0..L``, one backward restricted to the parameters that would train
(``torch.autograd.grad(loss, inputs=...)``, the same graph pruning the trainer uses), all under
``torch.utils.flop_counter.FlopCounterMode``. So ``backward_by_prefix[n]`` is exactly what a step with ``n``
frozen blocks runs, including the saving that the first unfrozen block needs no input gradient. The results are
cached per shape. Units are FlopCounterMode's: 2 FLOPs per multiply-accumulate, matmuls and convolutions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from ..models.blocks import BlockPartition

_aten = torch.ops.aten


def _register_cpu_sdpa_formulas() -> None:
    """torch has no formula for the CPU flash-attention kernels; without one, attention counts as zero."""
    from torch.utils.flop_counter import flop_registry

    fwd_op = _aten._scaled_dot_product_flash_attention_for_cpu
    if fwd_op in flop_registry or fwd_op.default in flop_registry:
        return

    @register_flop_formula(fwd_op, get_raw=True)
    def _sdpa_cpu_forward(query, key, value, *args, out_val=None, **kwargs):
        return sdpa_flop_count(query.shape, key.shape, value.shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_val=None, **kwargs):
        return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_register_cpu_sdpa_formulas()


@dataclass(frozen=True)
class StepCost:
    """Measured FLOPs of one training step on one batch shape."""

    forward: float
    backward_by_prefix: tuple[float, ...]  # index n: backward FLOPs with the first n blocks frozen

    @property
    def backward_saved_per_block(self) -> tuple[float, ...]:
        """BF_i = BWD(i) - BWD(i+1): the backward saved by also freezing block i."""
        b = self.backward_by_prefix
        return tuple(max(b[i] - b[i + 1], 0.0) for i in range(len(b) - 1))

    def train_flops(self, n_frozen: int = 0) -> float:
        return self.forward + self.backward_by_prefix[n_frozen]


def shape_key(inputs: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v.shape)) for k, v in inputs.items() if isinstance(v, torch.Tensor)))


@contextlib.contextmanager
def side_effect_free(model: nn.Module):
    """Measurement must not move BatchNorm statistics or consume the training RNG stream."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])


class FlopsProfiler:
    """Measures and caches a :class:`StepCost` per input shape."""

    def __init__(self, model: nn.Module, blocks: BlockPartition, loss_fn: Callable[[nn.Module, dict], torch.Tensor]):
        self.model = model
        self.blocks = blocks
        self.loss_fn = loss_fn
        self.cache: dict[tuple, StepCost] = {}
        self.forward_cache: dict[tuple, float] = {}
        self.measuring = False  # True while a measurement pass runs: method hooks must not update statistics

    def cost(self, inputs: Mapping[str, Any]) -> StepCost:
        key = shape_key(inputs)
        if key not in self.cache:
            self.cache[key] = self.measure(inputs)
        return self.cache[key]

    def forward_flops(self, inputs: Mapping[str, Any]) -> float:
        """Measured FLOPs of one forward (loss included, no backward) on this input shape, cached: the extra
        forwards a method runs (e.g. MIR's candidate scoring)."""
        key = ("forward_only", *shape_key(inputs))
        if key not in self.forward_cache:
            was_training = self.model.training
            self.model.train()
            self.measuring = True
            try:
                with side_effect_free(self.model), torch.no_grad(), FlopCounterMode(display=False) as counter:
                    self.loss_fn(self.model, dict(inputs))
            finally:
                self.measuring = False
                self.model.train(was_training)
            self.forward_cache[key] = float(counter.get_total_flops())
        return self.forward_cache[key]

    def measure(self, inputs: Mapping[str, Any]) -> StepCost:
        was_training = self.model.training
        self.model.train()
        self.measuring = True
        try:
            with side_effect_free(self.model), torch.enable_grad():
                with FlopCounterMode(display=False) as counter:
                    loss = self.loss_fn(self.model, dict(inputs))
                forward = float(counter.get_total_flops())
                backward = []
                for n in range(len(self.blocks) + 1):
                    params = self.blocks.trainable_from(n)
                    if not params:  # nothing left to train: no backward at all
                        backward.append(0.0)
                        continue
                    with FlopCounterMode(display=False) as counter:
                        torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                    backward.append(float(counter.get_total_flops()))
                del loss
        finally:  # a failing forward must not leave method hooks believing a measurement still runs
            self.measuring = False
            self.model.train(was_training)
        return StepCost(forward, tuple(backward))
