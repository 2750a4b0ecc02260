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

from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from ..utils.errors import ConfigError
from .image_collator import ImageCollator

__all__ = ["image_processor_for"]


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
