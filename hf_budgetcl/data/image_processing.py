"""A saved HF image processor equivalent to :class:`~hf_budgetcl.data.image_collator.ImageCollator`.

Checkpoints of the image recipe are reloaded with ``AutoImageProcessor.from_pretrained``, so the collator's
preprocessing is written next to the model as a ``ViTImageProcessor`` config (loaded as ``ViTImageProcessorPil``
without torchvision). The collator's steps map onto the processor's as follows:

* scale by 1/255            -> ``do_rescale`` with ``rescale_factor=1/255`` (exact);
* zero ``pad`` on each side -> ``do_center_crop`` to ``(H + 2 pad, W + 2 pad)``: HF's center crop pads an image
  smaller than the crop with zeros, symmetrically (exact);
* repeat 1 channel to 3     -> ``do_convert_rgb`` (exact);
* ``(x - mean) / std``      -> ``do_normalize`` (exact);
* bilinear ``resize``       -> ``do_resize`` (PIL bilinear on uint8 before rescaling: equal up to one grey level,
  1/255). With both ``pad`` and ``resize`` the processor resizes first, to the size that padding then brings to
  ``resize``; again equal up to interpolation rounding at the borders.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from ..utils.errors import ConfigError
from .image_collator import ImageCollator

__all__ = ["checkpoint_image_processor", "collator_for_processor", "image_processor_for"]


def image_processor_for(collator: ImageCollator, input_shape: Sequence[int]) -> ViTImageProcessorPil:
    """The image processor that reproduces ``collator`` on raw uint8 images of shape ``input_shape`` (C, H, W)."""
    channels, height, width = (int(v) for v in input_shape)
    if collator.channels not in (None, channels) and (channels, collator.channels) != (1, 3):
        raise ConfigError(
            f"channels: an image processor can only turn 1 channel into 3, not {channels} into {collator.channels}"
        )
    pad, size = collator.pad, collator.resize
    if size is not None and pad:
        warnings.warn("image processor: pad + resize is reproduced approximately (border pixels differ)", stacklevel=2)
    # resize first, to the size that the padding (a center crop) then brings to `size`: the collator pads, then resizes
    resized = (
        (height, width)
        if size is None
        else (round(size * height / (height + 2 * pad)), round(size * width / (width + 2 * pad)))
    )
    out_channels = collator.channels or channels
    return ViTImageProcessorPil(
        do_resize=size is not None,
        size={"height": resized[0], "width": resized[1]},  # ViT's default 224 would mislead a reader of the config
        resample=2,  # PIL bilinear, like the collator's interpolation
        do_center_crop=bool(pad),
        crop_size={"height": size, "width": size} if size else {"height": height + 2 * pad, "width": width + 2 * pad},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=collator.mean is not None or collator.std is not None,
        image_mean=list(collator.mean) if collator.mean is not None else [0.0] * out_channels,
        image_std=list(collator.std) if collator.std is not None else [1.0] * out_channels,
        do_convert_rgb=out_channels != channels,
    )


def _square_side(size: dict | int | None, what: str) -> int | None:
    if size is None or isinstance(size, int):
        return size
    if "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise ConfigError(f"image processor: only square {what} are supported, got {size}")
        return int(size["height"])
    if "shortest_edge" in size:  # square inputs (every loader here gives one size): the same square
        return int(size["shortest_edge"])
    raise ConfigError(f"image processor: unsupported {what} {size}")


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(set(values)) == 1:  # e.g. ViT's [0.5, 0.5, 0.5] on a 1-channel model: the same value per channel
        return values[:1] * channels
    raise ConfigError(f"image processor: {what} has {len(values)} values, the model takes {channels} channels")


def collator_for_processor(
    processor, input_shape: Sequence[int], model_channels: int, pad: int = 0, dtype: torch.dtype = torch.float32
) -> ImageCollator:
    """The :class:`ImageCollator` that does what a checkpoint's image processor does, on uint8 images of
    ``input_shape`` (C, H, W): its rescale (1/255), resize (to the crop size when it center-crops; inputs are square),
    channel conversion to ``model_channels`` and normalisation (its own mean/std), in the model's ``dtype``."""
    get = lambda key, default=None: getattr(processor, key, default)
    if get("do_rescale", True) and abs(float(get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ConfigError(f"image processor: rescale_factor {get('rescale_factor')} is not 1/255")
    if not get("do_rescale", True):
        raise ConfigError("image processor: do_rescale false (inputs in 0..255) is not supported; images are uint8")
    side = None
    if get("do_center_crop", False):
        side = _square_side(get("crop_size"), "crop sizes")
    if side is None and get("do_resize", True):
        side = _square_side(get("size"), "sizes")
    height = int(input_shape[1]) + 2 * pad
    normalize = bool(get("do_normalize", False))
    return ImageCollator(
        pad=pad,
        resize=side if side is not None and side != height else None,
        channels=model_channels if model_channels != int(input_shape[0]) else None,
        mean=_per_channel(get("image_mean"), model_channels, "image_mean") if normalize else None,
        std=_per_channel(get("image_std"), model_channels, "image_std") if normalize else None,
        dtype=dtype,
    )


def checkpoint_image_processor(model_name_or_path: str):
    """The checkpoint's own ``AutoImageProcessor`` and the path of its ``preprocessor_config.json``, or (None, None)
    when it saved none (a preset name, a bare model folder)."""
    from transformers import AutoImageProcessor
    from transformers.utils import cached_file

    try:
        path = cached_file(model_name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None, None
    if path is None:
        return None, None
    return AutoImageProcessor.from_pretrained(model_name_or_path), path
