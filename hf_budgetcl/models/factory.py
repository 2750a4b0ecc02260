"""Build an image classifier from a preset name (random init, from config) or a local/Hub checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from ..utils.errors import ConfigError
from .cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification
from .loading import resolve_dtype

__all__ = ["PRESETS", "build_image_classifier"]


def _cifar(**preset: Any) -> Callable[..., tuple[type[PreTrainedModel], PreTrainedConfig]]:
    def make(num_labels: int, num_channels: int, image_size: int, **overrides: Any):
        cfg = CifarResNetConfig(**{"num_channels": num_channels, "num_labels": num_labels, **preset, **overrides})
        return CifarResNetForImageClassification, cfg

    return make


def _tiny_vit(num_labels: int, num_channels: int, image_size: int, **overrides: Any):
    kw = dict(
        image_size=image_size,
        patch_size=4,
        num_channels=num_channels,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=num_labels,
    )
    return ViTForImageClassification, ViTConfig(**{**kw, **overrides})


def _tiny_resnet(num_labels: int, num_channels: int, image_size: int, **overrides: Any):
    kw = dict(
        num_channels=num_channels,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        num_labels=num_labels,
    )
    return ResNetForImageClassification, ResNetConfig(**{**kw, **overrides})


#: name -> builder(num_labels, num_channels, image_size, **overrides) -> (model class, config)
PRESETS: dict[str, Callable[..., tuple[type[PreTrainedModel], PreTrainedConfig]]] = {
    "cifar_resnet32": _cifar(),  # CifarResNetConfig defaults: ResNet-32, ~0.46M parameters
    "fmd5_resnet": _cifar(stem_width=32, widths=(32, 64, 128), strides=(1, 2, 2), depths=(1, 1, 1)),
    "digits_resnet": _cifar(stem_width=16, widths=(16, 32), strides=(1, 2), depths=(1, 1)),
    "tiny_vit": _tiny_vit,
    "tiny_resnet": _tiny_resnet,
}
_CIFAR_PRESETS = tuple(PRESETS[name] for name in ("cifar_resnet32", "fmd5_resnet", "digits_resnet"))


def build_image_classifier(
    model_name_or_path: str,
    num_labels: int,
    num_channels: int,
    image_size: int,
    label_names: Sequence[str] | None = None,
    conv_init: str | None = None,
    dtype: str | torch.dtype | None = None,
    **overrides: Any,
) -> PreTrainedModel:
    """Return an image classification ``PreTrainedModel``.

    * A name in :data:`PRESETS` builds that architecture from its config with random weights; ``overrides`` are
      config fields (e.g. ``depths=(3, 3, 3)`` for ResNet-20). ``image_size`` only matters for ``tiny_vit``.
    * Anything else is loaded with ``AutoModelForImageClassification.from_pretrained`` (local directory or Hub name;
      never ``trust_remote_code``), with the head re-sized to ``num_labels``; ``overrides`` are config fields.
      A checkpoint whose ``num_channels`` differs from ``num_channels`` is rejected rather than silently mis-fed.
    * ``label_names`` (the dataset's class names, in label order) become ``id2label``/``label2id``.
    * ``conv_init`` (``default`` | ``kaiming_fan_out``, see :class:`CifarResNetConfig`) picks the convolutions' random
      init of the CIFAR ResNet presets; ``None`` keeps the config's default. Other models have no such choice.
    * ``dtype`` (``auto`` | ``bfloat16`` | ``float16`` | ``float32`` or a torch dtype): a checkpoint loads in it
      (``auto``/None: its own); a preset is initialised in float32, as always, then cast, so one seed gives the same
      weights, rounded, in every dtype.
    """
    dtype = resolve_dtype(dtype)
    if label_names is not None:
        if len(label_names) != num_labels:
            raise ConfigError(f"label names: {len(label_names)} names for {num_labels} labels")
        overrides = {**overrides, "id2label": dict(enumerate(map(str, label_names)))}
        overrides["label2id"] = {name: i for i, name in overrides["id2label"].items()}
    if conv_init is not None:
        if model_name_or_path not in PRESETS or PRESETS[model_name_or_path] not in _CIFAR_PRESETS:
            cifar = ", ".join(name for name, make in PRESETS.items() if make in _CIFAR_PRESETS)
            raise ConfigError(
                f"conv_init: only the CIFAR ResNet presets ({cifar}) take it, not {model_name_or_path!r}"
            )
        overrides["conv_init"] = conv_init
    if model_name_or_path in PRESETS:
        model_cls, config = PRESETS[model_name_or_path](num_labels, num_channels, image_size, **overrides)
        model = model_cls(config)
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model

    from . import register_auto_classes

    register_auto_classes()  # a saved cifar_resnet checkpoint must resolve through the Auto classes
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=False, **overrides)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(model_name_or_path, err) from err
    have = getattr(config, "num_channels", num_channels)
    if have != num_channels:
        raise ConfigError(
            f"{model_name_or_path!r} expects {have} input channels, data has {num_channels}; "
            f"use ImageCollator(channels={have}) and num_channels={have}"
        )
    if config.num_labels != num_labels and label_names is None:  # fresh maps, not the checkpoint's names
        config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    try:
        return AutoModelForImageClassification.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=True, trust_remote_code=False, dtype=dtype
        )
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(model_name_or_path, err) from err


def _load_error(name: str, err: Exception) -> Exception:
    """One-line error naming the checkpoint; keeps OSError (missing/offline) apart from ValueError (unsupported)."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    where = "local directory" if os.path.isdir(name) else "Hub name (offline?) or missing path"
    msg = (
        f"cannot build image classifier {name!r}: not a preset ({', '.join(PRESETS)});"
        f" loading it as a {where} failed: {first}"
    )
    return OSError(msg) if isinstance(err, OSError) else ValueError(msg)
