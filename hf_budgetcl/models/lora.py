"""LoRA (and DoRA, rsLoRA, ``modules_to_save``) through peft's own ``LoraConfig``, optionally over a k-bit base (QLoRA).

The recipes put adapters on the language model's decoder only (never on the vision tower); ``BudgetedCLTrainer``
takes any ``peft_config`` as TRL's SFTTrainer does and wraps the model with :func:`apply_peft`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from ..utils.errors import ConfigError

DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Matches `…language_model.layers.N…` (LLaVA, Qwen2-VL, PaliGemma), `…text_model.layers.N…` (Idefics3/SmolVLM) and a
# plain decoder's `model.layers.N…` (Llama); the vision tower's layers live under other names.
_DECODER_LAYER = r"^(.*\.)?((language_model|text_model)\.layers|model\.layers)\.\d+\."


def decoder_lora_regex(names: Sequence[str] = DECODER_PROJECTIONS) -> str:
    """A regex for modules called ``names`` inside the language decoder's layers only.

    A regex, not a name list: CLIP/SigLIP attention also calls its layers q_proj/k_proj/v_proj, so the names
    alone would put adapters on the vision tower too.
    """
    return _DECODER_LAYER + r"(.*\.)?(" + "|".join(re.escape(n) for n in names) + r")$"


LM_DECODER_LORA_REGEX = decoder_lora_regex()


def lora_config(
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = None,
    use_dora: bool = False,
    use_rslora: bool = False,
    task_type: str | None = None,
) -> LoraConfig:
    """peft's ``LoraConfig`` for the language decoder.

    ``target_modules``: module names (default: the attention and MLP projections), matched inside the decoder's
    layers only; ``["all-linear"]`` is peft's own choice (every linear layer but the output head, the vision tower's
    included). ``modules_to_save``: module names trained in full and saved with the adapter (e.g. ``lm_head``).
    ``task_type``: a peft ``TaskType`` name (e.g. ``CAUSAL_LM``) or None for a plain ``PeftModel``.
    """
    if target_modules is not None and not target_modules:
        raise ConfigError("lora_target_modules: give at least one module name (or leave it unset)")
    if target_modules is not None and list(target_modules) == ["all-linear"]:
        targets: str | list[str] = "all-linear"
    else:
        targets = decoder_lora_regex(target_modules or DECODER_PROJECTIONS)
    if task_type is not None and task_type not in TaskType.__members__:
        raise ConfigError(f"lora_task_type: expected one of {', '.join(TaskType.__members__)}, got {task_type!r}")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        use_dora=use_dora,
        use_rslora=use_rslora,
        task_type=task_type,
    )


def is_kbit(model: nn.Module) -> bool:
    """A bitsandbytes 4/8-bit base (what ``prepare_model_for_kbit_training`` is for)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_peft(model: nn.Module, peft_config: PeftConfig, gradient_checkpointing: bool = False) -> PeftModel:
    """Wrap ``model`` with ``peft_config``'s adapters, as TRL's SFTTrainer does.

    A k-bit base first goes through ``prepare_model_for_kbit_training`` (frozen base, fp32 norms, input gradients
    enabled); gradient checkpointing stays off unless asked for, which is faster for small models.
    """
    if isinstance(model, PeftModel):
        raise ConfigError("peft_config: the model already carries PEFT adapters; pass the base model instead")
    if is_kbit(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. target modules not found: names the config field, one line
        raise ConfigError(f"peft_config: {str(err).strip().splitlines()[0]}") from None


def apply_lora(
    model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0, quantized: bool = False, **options
) -> PeftModel:
    """Wrap ``model`` with LoRA on the decoder's projections (``options``: the rest of :func:`lora_config`).

    ``quantized`` is kept for older callers; a k-bit base is recognised by :func:`apply_peft` itself.
    """
    return apply_peft(model, lora_config(r=r, alpha=alpha, dropout=dropout, **options))
