"""SAR's conv features (the authors'): per-sample gradients of every residual block's ``conv2`` weight at fixed
coordinates, read from forward/backward hooks on those convolutions (algorithm reference section 8.3).

Per target layer ``max(1, floor(1e-4 numel))`` flat weight indices are drawn once (seeded). On a real training pass
the forward hook keeps the layer's input and hooks its output; the output's gradient arrives only when the backward
runs through the layer, so the trainer's pruned backward (frozen prefix: no gradient at all) leaves the frozen blocks
out by itself. From input and output gradient the per-sample gradient at a coordinate is the dot product over the
output positions of the output gradient with one row of ``unfold(input)``: ``2 P`` FLOPs per sample and coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from ..utils.errors import ConfigError

#: coordinates per target layer: max(1, floor(COORD_FRACTION * numel)) (the authors' rho; they allow 0)
COORD_FRACTION = 1e-4


def conv_gradient_features(
    inputs: torch.Tensor, grad_output: torch.Tensor, conv: nn.Conv2d, coords: torch.Tensor
) -> torch.Tensor:
    """Per-sample gradients of ``conv.weight`` at flat weight indices ``coords`` (K,), as (N, K), from the layer's
    input (N, C_in, H, W) and the gradient of the loss at its output (N, C_out, H', W'): the reference's features.

    ``dL_n / dW[o, r] = sum_pos grad_out[n, o, pos] * unfold(x)[n, r, pos]`` with ``r`` the (c_in, kh, kw) index,
    unfold's row order; the weight's flat index is ``o * C_in kh kw + r``. Costs ``2 N K P`` FLOPs (P output
    positions) beyond the unfold. Groups are not supported (every block conv of the presets has one).
    """
    if conv.groups != 1:
        raise ValueError("conv_gradient_features: grouped convolutions are not supported")
    cols = torch.nn.functional.unfold(
        inputs, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride
    )  # (N, C_in kh kw, P)
    per_out = cols.shape[1]
    out_rows, in_rows = coords // per_out, coords % per_out
    return (grad_output.flatten(2)[:, out_rows, :] * cols[:, in_rows, :]).sum(-1)


def residual_conv2s(model: nn.Module) -> list[nn.Conv2d]:
    """The ``conv2`` convolutions of the model's residual blocks, in registration (= forward) order."""
    return [m.conv2 for m in model.modules() if isinstance(getattr(m, "conv2", None), nn.Conv2d)]


def coords_per_layer(convs: list[nn.Conv2d]) -> list[int]:
    return [max(1, math.floor(COORD_FRACTION * conv.weight.numel())) for conv in convs]


class ConvGradientFeatures:
    """Hooks on the target convolutions; :meth:`take` returns the features of the last backward and forgets it."""

    def __init__(self, model: nn.Module, is_training_pass: Callable[[], bool]):
        self.convs = residual_conv2s(model)
        if not self.convs:
            raise ConfigError(
                f"similarity_features: 'conv' needs residual blocks with a conv2 convolution and "
                f"{type(model).__name__} has none; use similarity_features=head"
            )
        if any(conv.groups != 1 for conv in self.convs):
            raise ConfigError("similarity_features: 'conv' does not support grouped conv2 convolutions; use head")
        self.is_training_pass = is_training_pass
        self._inputs: dict[int, torch.Tensor] = {}
        self._grads: dict[int, torch.Tensor] = {}
        for i, conv in enumerate(self.convs):
            conv.register_forward_hook(partial(self._forward, i))

    @property
    def num_coords(self) -> int:
        return sum(coords_per_layer(self.convs))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """(K, 2) rows ``(layer, flat weight index)``, sorted per layer."""
        rows = []
        for layer, (conv, k) in enumerate(zip(self.convs, coords_per_layer(self.convs))):
            flat = np.sort(rng.choice(conv.weight.numel(), size=k, replace=False))
            rows.append(np.stack([np.full(k, layer), flat], axis=1))
        return np.concatenate(rows).astype(np.int64)

    def _forward(self, layer: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self.is_training_pass() or not output.requires_grad:
            return  # the profiler's measurement, an evaluation, a no-grad forward
        self._inputs[layer] = args[0].detach()
        output.register_hook(partial(self._backward, layer))

    def _backward(self, layer: int, grad: torch.Tensor) -> None:
        self._grads[layer] = grad.detach()

    def take(self, coords: np.ndarray) -> tuple[torch.Tensor, np.ndarray, float] | None:
        """``(features (N, K'), their columns among the K coordinates, FLOPs per sample)`` for the layers the last
        backward ran through (K' <= K), or None when it ran through none."""
        inputs, grads, self._inputs, self._grads = self._inputs, self._grads, {}, {}
        layers = sorted(set(inputs) & set(grads))
        if not layers:
            return None
        feats, cols, flops = [], [], 0.0
        for layer in layers:
            col = np.flatnonzero(coords[:, 0] == layer)
            x, g = inputs[layer].float(), grads[layer].float()  # bf16 autocast activations: read in fp32
            index = torch.as_tensor(coords[col, 1], device=x.device)
            feats.append(conv_gradient_features(x, g, self.convs[layer], index))
            cols.append(col)
            flops += 2.0 * g[0, 0].numel() * col.size  # one dot product over the P output positions each
        return torch.cat(feats, dim=1), np.concatenate(cols), flops
