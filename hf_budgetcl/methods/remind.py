"""REMIND (Hayes et al., ECCV 2020): a frozen prefix G and replay of compressed mid-network features, on top of ER.

The first ``remind_frozen_blocks`` blocks (default: half of them, at least one) form G and never train (static
freezing; their BatchNorm layers run in eval mode, so G is a fixed function). Memory slots hold G's features,
compressed, instead of the samples. Replayed rows enter the trainable rest F as reconstructed features.

Simplifications, stated plainly:

* **uint8 scalar quantisation instead of product quantisation.** Each slot stores its feature map as uint8 codes
  with one float32 offset and one float32 scale (:func:`quantise_uint8` / :func:`dequantise_uint8`), so
  ``slot_bytes = numel(G(x)) + 8`` whatever the sample's own size. On small images a feature map can be larger than
  the image: REMIND then keeps *fewer* slots than ER under the same byte budget -- the accounting says so.
* **Features are recomputed, not looked up.** Because G is frozen, ``G(x)`` is the same whenever it is computed, so
  replayed rows pass through G again and their features are quantised and reconstructed on the fly (a forward
  pre-hook on the first trainable block). REMIND proper skips G for replayed rows; the measured forward includes
  that G pass, so it is credited back: item ``remind_replay_prefix_skipped`` = ``-(replayed rows) * G forward per
  row``, with G's forward FLOPs measured once by FlopCounterMode on a forward stopped at the block boundary.
* **No base initialisation.** REMIND trains G offline on the first classes before streaming; here G is the model's
  initial prefix -- random unless a pretrained model is given (``model_name_or_path``).

Codec work is charged by hand (item ``remind_codec``): quantisation 3 FLOPs per element per arrival, reconstruction
2 per element per replayed row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..utils.errors import ConfigError
from .er import ER
from .options import MethodOptions

CODEC_BYTES_PER_SLOT = 8  # float32 offset and scale


def quantise_uint8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row ``i``: ``lo_i = min x_i``, ``s_i = (max x_i - lo_i) / 255`` (1 if constant),
    ``codes = round((x_i - lo_i) / s_i)`` as uint8. Returns ``(codes, lo, s)``; ``lo`` and ``s`` have shape (N, 1...)."""
    flat = x.detach().float().reshape(x.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    scale = (flat.max(dim=1, keepdim=True).values - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((flat - lo) / scale).clamp_(0, 255).to(torch.uint8)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return codes.reshape(x.shape), lo.reshape(shape), scale.reshape(shape)


def dequantise_uint8(codes: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``codes * s + lo``: error at most ``s / 2`` per element."""
    return codes.float() * scale + lo


class _StopForward(Exception):
    pass


@dataclass
class REMINDOptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {"remind_frozen_blocks": ">= 1"}
    remind_frozen_blocks: int | None = field(
        default=None, metadata={"help": "Blocks of the frozen prefix G (default: half of them, at least one)."}
    )


class REMIND(ER):
    """Its prefix G must stay frozen, so the freezing mode is pinned: ``required_freeze = "static:<k>"``."""

    name = "remind"
    Options = REMINDOptions

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        self.frozen_blocks: int | None = None
        self.feature_numel = 0
        self.prefix_forward_per_row = 0.0
        self._probing = False
        self._last_cursor = 0
        self._ctx: Any = None

    def setup(self, ctx) -> None:
        blocks, model = ctx.blocks, ctx.model
        k = self.options.remind_frozen_blocks
        k = max(len(blocks) // 2, 1) if k is None else k
        if not 1 <= k < len(blocks) or blocks.modules[k] is None:
            raise ConfigError(f"method_options: remind_frozen_blocks must be in [1, {len(blocks) - 1}], got {k}")
        self.frozen_blocks, self._ctx = k, ctx
        self.freeze = self.required_freeze = f"static:{k}"
        frozen = {id(p) for block in blocks.params[:k] for p in block}
        prefix = [m for m in model.modules() if any(id(p) in frozen for p in m.parameters(recurse=False))]

        # G is a fixed function: its BatchNorm layers use their running statistics, and never update them.
        def prefix_in_eval_mode(module: torch.nn.Module, args: tuple) -> None:
            for m in prefix:
                m.eval()

        model.register_forward_pre_hook(prefix_in_eval_mode)
        blocks.modules[k].register_forward_pre_hook(self._replace_replayed)
        self._measure_prefix(ctx)

    def _measure_prefix(self, ctx) -> None:
        """Feature size and G's forward FLOPs per row, from one row whose forward stops at the block boundary."""
        inputs = ctx.collate([ctx.stream.indices[0]])
        self._probing = True
        try:
            with ctx.side_effect_free(), torch.no_grad(), FlopCounterMode(display=False) as counter:
                ctx.model(**inputs)
        except _StopForward:
            pass
        finally:
            self._probing = False
        self.prefix_forward_per_row = float(counter.get_total_flops())

    def _replace_replayed(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if self._probing:
            self.feature_numel = int(x[0].numel())
            raise _StopForward
        ctx = self._ctx
        if not ctx.in_training_pass:
            return None
        slots = np.asarray(ctx.record.slots)
        replay = slots[ctx.local_positions(x.shape[0])] != -1
        if not replay.any():
            return None
        rows = torch.as_tensor(np.flatnonzero(replay), device=x.device)
        x = x.clone()
        x[rows] = dequantise_uint8(*quantise_uint8(x[rows])).to(x.dtype)
        return (x, *args[1:])

    def slot_bytes(self, sample_nbytes: int) -> int:
        return self.feature_numel + CODEC_BYTES_PER_SLOT

    def observe(self, ctx, inputs: dict, outputs: Any) -> None:
        """Credit G's forward for the replayed rows (REMIND proper skips it) and charge the codec."""
        replayed = int(np.sum(np.asarray(ctx.record.slots) != -1))
        cursor = ctx.record.samples_seen
        arrivals, self._last_cursor = cursor - self._last_cursor, cursor
        ctx.charge("remind_replay_prefix_skipped", -replayed * self.prefix_forward_per_row)
        ctx.charge("remind_codec", float(self.feature_numel * (3 * arrivals + 2 * replayed)))

    def state_dict(self) -> dict[str, Any]:
        return {"last_cursor": self._last_cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_cursor = int(state.get("last_cursor", 0))
