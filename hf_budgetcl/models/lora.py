"""LoRA on the language model's decoder only (never on the vision tower), optionally over a k-bit base (QLoRA)."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

# A regex, not a name list: CLIP/SigLIP attention also calls its layers q_proj/k_proj/v_proj, so the seven names
# alone would put adapters on the vision tower too. Matches `…language_model.layers.N…` (LLaVA, Qwen2-VL,
# PaliGemma), `…text_model.layers.N…` (Idefics3/SmolVLM) and a plain decoder's `model.layers.N…` (Llama).
LM_DECODER_LORA_REGEX = (
    r"^(.*\.)?((language_model|text_model)\.layers|model\.layers)\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))$"
)


def apply_lora(
    model: PreTrainedModel, r: int = 8, alpha: int = 16, dropout: float = 0.0, quantized: bool = False
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on the decoder's attention and MLP projections.

    ``quantized=True`` (a bitsandbytes 4/8-bit base) first runs ``prepare_model_for_kbit_training`` (frozen base,
    fp32 norms, input gradients enabled); gradient checkpointing is left off, which is faster for tiny models.
    """
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LM_DECODER_LORA_REGEX)
    return get_peft_model(model, config)
