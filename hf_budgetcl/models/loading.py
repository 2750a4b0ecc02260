"""How a checkpoint is loaded: dtype, attention implementation, bitsandbytes quantisation and device map.

The keyword arguments handed to ``from_pretrained`` are built in one place (:func:`from_pretrained_kwargs`) so that
the recipes, ``BudgetedCLTrainer(model="id")`` and the tests all see the same ones.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    BitsAndBytesConfig,
    PreTrainedModel,
)

from ..utils.errors import ConfigError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)
QUANTIZATIONS = ("4bit", "8bit")


def resolve_dtype(name: str | torch.dtype | None, field: str = "torch_dtype") -> str | torch.dtype | None:
    """``"auto"`` (the checkpoint's own dtype), a torch dtype, or None (transformers' default, which is "auto")."""
    if name is None or isinstance(name, torch.dtype) or name == "auto":
        return name
    if name not in DTYPES:
        raise ConfigError(f"{field}: expected one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]


def kbit_compute_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype bitsandbytes computes in: the one asked for, else bf16 on a GPU that has it (fp16 on an older one),
    float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def kbit_device_map() -> dict[str, int] | str:
    """The whole k-bit model on this process's GPU (accelerate's local process index: one GPU per rank under DDP),
    on the CPU only when there is no GPU (bitsandbytes ≥ 0.50 runs there)."""
    if torch.cuda.is_available():
        return {"": PartialState().local_process_index}
    return "cpu"


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """NF4 with double quantisation (QLoRA's recipe), or LLM.int8()."""
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(f"quantization: expected none, 4bit or 8bit, got {quantization!r}")


def from_pretrained_kwargs(
    dtype: str | torch.dtype | None = None, attn_implementation: str | None = None, quantization: str | None = None
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a dtype, an attention implementation and a bitsandbytes base."""
    dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization not in (None, "none"):
        compute = kbit_compute_dtype(dtype)
        # The layers bitsandbytes leaves alone (norms, embeddings, the head) load in the compute dtype too.
        kwargs.update(dtype=compute, quantization_config=quantization_config(quantization, compute))
        kwargs["device_map"] = kbit_device_map()
    elif dtype is not None:
        kwargs["dtype"] = dtype
    return kwargs


def auto_model_class(model_name_or_path: str | os.PathLike) -> type:
    """The Auto class that builds this checkpoint: image-text-to-text, image classification or causal LM."""
    try:
        config = AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"model: cannot load {str(model_name_or_path)!r}: {first}") from None
    for auto in (AutoModelForImageTextToText, AutoModelForImageClassification, AutoModelForCausalLM):
        if type(config) in auto._model_mapping:
            return auto
    raise ConfigError(
        f"model: {type(config).__name__} of {str(model_name_or_path)!r} is no VLM, image classifier or LM"
    )


def load_pretrained(model_name_or_path: str | os.PathLike, **model_init_kwargs: Any) -> PreTrainedModel:
    """``BudgetedCLTrainer(model="id or path")``: the checkpoint through its Auto class (never trust_remote_code).

    ``model_init_kwargs`` go to ``from_pretrained``; ``dtype``/``torch_dtype`` may be a name ("bfloat16", "auto").
    """
    kwargs = dict(model_init_kwargs)
    if "torch_dtype" in kwargs:  # TRL's older spelling
        kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
    if "dtype" in kwargs:
        kwargs["dtype"] = resolve_dtype(kwargs["dtype"], field="model_init_kwargs.dtype")
    from . import register_auto_classes

    register_auto_classes()  # a saved cifar_resnet checkpoint resolves through the Auto classes
    return auto_model_class(model_name_or_path).from_pretrained(model_name_or_path, trust_remote_code=False, **kwargs)


def prepare_model(model: Any, peft_config: Any = None, model_init_kwargs: dict[str, Any] | None = None) -> Any:
    """The trainer's model, TRL-style: a string is loaded (with ``model_init_kwargs``), a ``peft_config`` wraps it."""
    if isinstance(model, (str, os.PathLike)):
        model = load_pretrained(model, **(model_init_kwargs or {}))
    elif model_init_kwargs:
        raise ConfigError("model_init_kwargs: only used when model is a Hub id or a path, not a loaded model")
    if peft_config is not None:
        from .lora import apply_peft

        model = apply_peft(model, peft_config)
    return model
