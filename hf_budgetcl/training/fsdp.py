"""Layer freezing under FSDP2 (``torch.distributed.fsdp.fully_shard``, through accelerate's ``fsdp_version: 2``).

What FSDP2 needs beyond accelerate's own path, so that a frozen prefix does no backward compute and no gradient
reduce-scatter:

- every block is its own ``fully_shard`` unit (:func:`shard_blocks_as_units` names the block classes in the
  plugin's wrap policy; the stem and the head stay in the root unit);
- after sharding, a module's parameters are DTensor shards, while the autograd graph holds the unsharded
  parameters FSDP all-gathers for each forward. :class:`FSDPBackward` records those on every forward (a forward
  pre-hook on each unit, run after FSDP's own), so the backward is restricted to the unsharded parameters of the
  unfrozen suffix (``backward(inputs=...)``). A frozen unit then gets no gradient: FSDP's post-backward finds
  nothing to reduce-scatter for it, its sharded ``grad`` stays None and the optimizer skips it;
- FSDP's default backward prefetch all-gathers the previous unit when a unit's backward starts, so the lowest
  trainable unit would fetch a frozen one for nothing; :meth:`FSDPBackward.set_prefetch` gives each unit an
  explicit prefetch list that stops at the frozen boundary;
- every FLOPs measurement on the sharded model runs FSDP collectives, so all ranks measure together
  (:func:`measure_in_step`);
- accelerate turns FSDP on only on accelerator devices (``AcceleratorState`` keeps ``MULTI_CPU`` under
  ``use_cpu``), but ``fully_shard`` runs on CPU with gloo: :func:`enable_fsdp_on_cpu` promotes the CPU state to
  FSDP with the plugin accelerate would have used, so CPU runs and the tests go through accelerate's own
  ``fsdp2_prepare_model`` and FSDP checkpointing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..accounting.flops import FlopsProfiler, StepCost, shape_key
from ..models.blocks import BlockPartition
from ..utils.errors import ConfigError


def fsdp_requested(args: Any) -> bool:
    """FSDP asked for by the launch config (``accelerate launch``'s environment) or by ``TrainingArguments.fsdp``."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(args.fsdp_plugin_args)


def enable_fsdp_on_cpu(accelerator: Any, args: Any) -> bool:
    """On a CPU process group, turn the accelerator's state into FSDP when FSDP was asked for; True if it did."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or getattr(state, "fsdp_plugin", None) is not None:
        return False
    if not fsdp_requested(args):
        return False
    # The same plugin accelerate builds: from TrainingArguments.fsdp_config, else from the launch environment.
    plugin = FullyShardedDataParallelPlugin(**(args.fsdp_plugin_args or {}))
    if plugin.fsdp_version != 2:
        raise ConfigError("fsdp_version: on CPU (gloo) only FSDP2 runs (fully_shard); set fsdp_version: 2")
    # PartialState too: every later AcceleratorState() copies PartialState's distributed_type back over its own.
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True


def fsdp_version(accelerator: Any) -> int:
    return int(getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1))


def shard_blocks_as_units(accelerator: Any, blocks: BlockPartition) -> None:
    """Make accelerate's FSDP2 wrap policy give every block its own unit (the blocks' classes, by name)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    names = sorted({type(m).__name__ for m in blocks.modules if m is not None})
    plugin.auto_wrap_policy = transformer_auto_wrap_policy  # the plugin binds the classes at prepare time
    plugin.transformer_cls_names_to_wrap = names


def sync_module_states(accelerator: Any, model: nn.Module) -> None:
    """Every rank starts from rank 0's weights and buffers, as DDP does when it wraps a model. accelerate's FSDP2
    path shards each rank's own copy as it is (it broadcasts only with ``cpu_ram_efficient_loading``), so a model
    initialised differently per rank (a random-init preset without a common seed) would train a mix of inits.
    One broadcast of the model, before it is sharded."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


class FSDPBackward:
    """The unfrozen suffix of a sharded model, as the tensors the autograd graph holds (see the module docstring).

    Built before sharding (parameter names are taken then); :meth:`bind` after accelerate's ``prepare``.
    Exposes ``len()`` and ``trainable_from(n)`` like a :class:`BlockPartition`, so the FLOPs profiler prunes
    its measurement backward the same way.
    """

    def __init__(self, model: nn.Module, blocks: BlockPartition):
        names = {id(p): n for n, p in model.named_parameters()}
        self.blocks = blocks
        self.block_names = [[names[id(p)] for p in ps] for ps in blocks.params]
        self.head_names = [names[id(p)] for p in blocks.head_params]
        self.unsharded: dict[str, nn.Parameter] = {}
        self.root: nn.Module | None = None
        self._prefetch_for: int | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def bind(self, model: nn.Module) -> None:
        """After sharding: point the block partition at the DTensor shards (in place, so the freezing policy, the
        method context and the profiler see them) and record the unsharded parameters on every forward."""
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):
            raise RuntimeError("FSDPBackward.bind: the model is not sharded (fully_shard) yet")
        params = dict(model.named_parameters())
        self.blocks.params[:] = [[params[n] for n in ns] for ns in self.block_names]
        self.blocks.head_params[:] = [params[n] for n in self.head_names]
        not_units = [
            name
            for name, m in zip(self.blocks.names, self.blocks.modules)
            if m is not None and not isinstance(m, FSDPModule)
        ]
        if not_units:
            raise ConfigError(
                f"fsdp_transformer_layer_cls_to_wrap: blocks {not_units[:3]} are not their own FSDP unit; "
                "name their class (or leave the field unset for the trainer's choice)"
            )
        self.root = model
        for name, module in model.named_modules():
            if isinstance(module, FSDPModule):
                # a unit without gradients must not be reduce-scattered as zeros (torch's default, kept explicit)
                module.set_reduce_scatter_unused_params(False, recurse=False)
                module.register_forward_pre_hook(self._recorder(name))

    def _recorder(self, prefix: str):
        from torch.distributed.tensor import DTensor

        def record(module: nn.Module, args: Any) -> None:
            # FSDP's own pre-hook (prepended) has just all-gathered this unit: its parameters are the unsharded
            # ones; a nested unit's are still shards and are recorded by that unit's hook.
            for name, p in module.named_parameters(prefix=prefix):
                if not isinstance(p, DTensor):
                    self.unsharded[name] = p

        return record

    def trainable_from(self, n_frozen: int) -> list[nn.Parameter]:
        """The unsharded parameters of blocks ``n_frozen..`` and of the head, as used by the last forward."""
        names = [k for ns in self.block_names[n_frozen:] for k in ns] + self.head_names
        return [self.unsharded[k] for k in names]

    def set_prefetch(self, n_frozen: int) -> None:
        """Backward prefetch as FSDP's default (each unit fetches the one before it), except across the frozen
        boundary: a unit whose predecessor is frozen "prefetches" itself, which is already unsharded (a no-op)."""
        if n_frozen == self._prefetch_for:
            return
        self._prefetch_for = n_frozen
        units = [m if m is not None else self.root for m in self.blocks.modules]
        for i, unit in enumerate(units):
            if unit is self.root:
                continue
            before = units[i - 1] if i > 0 else self.root
            unit.set_modules_to_backward_prefetch([unit if i - 1 < n_frozen else before])
        last = units[-1] if units else self.root
        self.root.set_modules_to_backward_prefetch([self.root if len(units) - 1 < n_frozen else last])


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters a forward without backward (an evaluation) leaves in the units that do not
    reshard after forward (the root): a checkpoint's state dict and the per-rank bytes expect shards only."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def measure_in_step(profiler: FlopsProfiler, inputs: dict) -> StepCost:
    """The step's cost, measured on every rank when any rank meets a new shape: a measurement runs FSDP's
    all-gathers, so it must happen on all ranks at once (each measures its own shard's shape)."""
    key = shape_key(inputs)
    need = torch.tensor([int(key not in profiler.cache)], dtype=torch.long)
    dist.all_reduce(need, op=dist.ReduceOp.MAX)
    if int(need.item()):
        profiler.cache[key] = profiler.measure(inputs)
    return profiler.cache[key]
