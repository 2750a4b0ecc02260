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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from .blocks import BlockPartition

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
    block_forward: tuple[float, ...]  # forward FLOPs inside each block (stem group and head not itemised)

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
def _side_effect_free(model: nn.Module):
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
        self._block_names = [f"{type(model).__name__}.{name}" for name in blocks.names]

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
                with _side_effect_free(self.model), torch.no_grad(), FlopCounterMode(display=False) as counter:
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
        with _side_effect_free(self.model), torch.enable_grad():
            with FlopCounterMode(display=False) as counter:
                loss = self.loss_fn(self.model, dict(inputs))
            forward = float(counter.get_total_flops())
            counts = counter.get_flop_counts()
            block_forward = tuple(float(sum(counts.get(name, {}).values())) for name in self._block_names)
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
        self.measuring = False
        self.model.train(was_training)
        return StepCost(forward, tuple(backward), block_forward)


@dataclass
class FlopsLedger:
    """Cumulative training FLOPs, itemised; ``budget`` is the total allowed (None: unbounded)."""

    budget: float | None = None
    items: dict[str, float] = field(default_factory=dict)
    backward_full: float = 0.0  # what the backward would have cost with nothing frozen
    steps: int = 0
    max_step_flops: float = 0.0

    @property
    def total(self) -> float:
        return float(sum(self.items.values()))

    @property
    def remaining(self) -> float:
        return float("inf") if self.budget is None else self.budget - self.total

    @property
    def backward_saved_fraction(self) -> float:
        spent = self.items.get("train_backward", 0.0)
        return 0.0 if self.backward_full <= 0 else 1.0 - spent / self.backward_full

    def charge(self, item: str, flops: float) -> None:
        self.items[item] = self.items.get(item, 0.0) + float(flops)

    def charge_step(self, cost: StepCost, n_frozen: int = 0, scale: int = 1) -> float:
        """Charge one iteration; ``scale`` = number of processes that each ran ``cost`` on their shard."""
        self.charge("train_forward", scale * cost.forward)
        self.charge("train_backward", scale * cost.backward_by_prefix[n_frozen])
        self.backward_full += scale * cost.backward_by_prefix[0]
        self.steps += 1
        self.max_step_flops = max(self.max_step_flops, cost.train_flops(0))
        return scale * cost.train_flops(n_frozen)

    def can_afford(self, flops: float) -> bool:
        return flops <= self.remaining

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("budget", "items", "backward_full", "steps", "max_step_flops")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, dict(v) if k == "items" else v)


def tensor_bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers (e.g. BatchNorm statistics): everything the stored model keeps."""
    seen: set[int] = set()
    unique = [t for t in [*model.parameters(), *model.buffers()] if not (id(t) in seen or seen.add(id(t)))]
    return tensor_bytes(unique)


# Optimizer state per trainable parameter, in parameter-sized tensors (Adam: two moments).
OPTIMIZER_STATE_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1, "adafactor": 1, "adagrad": 1, "rmsprop": 1}


def optimizer_state_bytes(model: nn.Module, optim_name: str) -> int:
    slots = next((v for k, v in OPTIMIZER_STATE_SLOTS.items() if k in optim_name.lower()), 2)
    return slots * tensor_bytes(p for p in model.parameters() if p.requires_grad)


@dataclass
class MemoryBudget:
    """Total memory budget in bytes and what it must hold besides replay samples.

    ``sample_bytes_available = total - model - optimizer_state - sum(extra_state)``: the replay memory gets the
    rest, so a method with more state (stored logits, a model copy, a Fisher) gets a smaller replay memory.
    """

    total_bytes: int
    model_bytes: int
    optimizer_state_bytes: int = 0
    extra_state_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def sample_bytes_available(self) -> int:
        return self.total_bytes - self.model_bytes - self.optimizer_state_bytes - sum(self.extra_state_bytes.values())

    def validate(self, field_name: str = "memory_budget_bytes") -> None:
        fixed = self.total_bytes - self.sample_bytes_available
        if self.sample_bytes_available <= 0:
            raise ValueError(
                f"{field_name}={self.total_bytes:,} is smaller than what the method must keep besides replay "
                f"samples ({fixed:,} bytes: model {self.model_bytes:,}, optimizer state {self.optimizer_state_bytes:,}, "
                f"extra state {sum(self.extra_state_bytes.values()):,})"
            )

    def itemise(self, replay_bytes: int) -> dict[str, int]:
        items = {"model": self.model_bytes}
        if self.optimizer_state_bytes:
            items["optimizer_state"] = self.optimizer_state_bytes
        items.update({f"extra:{k}": v for k, v in self.extra_state_bytes.items()})
        items["replay_samples"] = int(replay_bytes)
        items["total"] = int(sum(items.values()))
        return items
