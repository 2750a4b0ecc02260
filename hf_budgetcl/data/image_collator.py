"""Collate uint8 image rows into a model batch: scale, pad, resize and normalise per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.errors import ConfigError


# --------------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class ImageCollator:
    """Turn rows ``{"pixel_values": uint8 (C,H,W), "label": int}`` into a model batch.

    Steps, in order: scale to [0, 1] (integer input is divided by 255; floating input is taken as already scaled),
    zero ``pad`` on each side (FM-D5: 2, 28 -> 32), bilinear ``resize`` to (S, S), repeat a single channel to
    ``channels``, then ``(x - mean) / std``, computed in float32 and cast to ``dtype`` last (the model's: a conv net
    in bfloat16 takes no float32 input). Returns ``{"pixel_values": dtype (B,C,H,W), "labels": int64 (B,)}``.
    """

    pad: int = 0
    resize: int | None = None
    channels: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: torch.dtype = torch.float32

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = [r["pixel_values"] for r in rows]
        if all(isinstance(p, torch.Tensor) for p in pixels):
            batch = torch.stack(pixels)
        else:
            batch = torch.from_numpy(np.stack([np.asarray(p) for p in pixels]))
        labels = torch.tensor([int(r["label"] if "label" in r else r["labels"]) for r in rows], dtype=torch.long)
        return {"pixel_values": self.process(batch), "labels": labels}

    def process(self, batch: torch.Tensor) -> torch.Tensor:
        """Apply the collator's transforms to an already stacked ``(B, C, H, W)`` tensor (e.g. a replay batch)."""
        x = batch.float() / 255.0 if not batch.is_floating_point() else batch.float()
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ConfigError(f"cannot turn {x.shape[1]} channels into {self.channels}; only 1 -> N is supported")
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        if self.mean is not None or self.std is not None:
            c = x.shape[1]
            mean = torch.as_tensor(self.mean if self.mean is not None else [0.0] * c, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.as_tensor(self.std if self.std is not None else [1.0] * c, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.to(self.dtype)
