"""Tiny vision-language models built from config (random weights), saved in HF format, and a generic loader.

The tiny builders exist because no VLM weights are reachable offline: tests and CPU recipes build a ≤ 1 M-parameter
model plus a byte-level BPE tokenizer trained on the task's own text, ``save_pretrained`` them, and from then on
use exactly the same loading path (``load_vlm``) as for a real Hub checkpoint.

Two families:

* **LLaVA** (CLIP vision tower + Llama): ``LlavaProcessor`` works without torchvision, so the saved directory reloads
  with ``AutoProcessor`` / ``AutoModelForImageTextToText``.
* **Qwen2-VL**: ``Qwen2VLProcessor`` cannot be instantiated without torchvision (its video processor needs it).
  The directory therefore holds the tokenizer (with the chat template) and a ``Qwen2VLImageProcessorPil`` config;
  ``load_vlm`` falls back to :class:`~hf_budgetcl.data.vlm_collator.Qwen2VLPadExpandingProcessor`, which expands
  each ``<|image_pad|>`` to ``grid_t*grid_h*grid_w // merge_size**2`` copies and builds ``mm_token_type_ids``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.utils import find_adapter_config_file

from ..data.vlm_collator import Qwen2VLPadExpandingProcessor
from ..utils.errors import ConfigError
from .tiny_vlm_size import TinyVLMSize

BASE_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")
QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")

# The assistant turn ends with the eos token and nothing after it, so the supervised completion is exactly
# "answer + eos"; with add_generation_prompt the prompt is a string prefix of the full conversation.
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% else %} ASSISTANT: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}"
    "{% endif %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
QWEN2VL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>{% if m['role'] == 'user' %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)


def train_bpe_tokenizer(
    corpus: Iterable[str], vocab_size: int = 512, extra_special_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (< 0.2 s) with ``<pad>``, ``<s>``, ``</s>``, ``<image>`` (+ extras).

    Sequences get a leading ``<s>``; ``<image>`` is registered as the tokenizer's ``image_token``.
    """
    specials = list(BASE_SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in BASE_SPECIAL_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _lm_config(tok: PreTrainedTokenizerFast, size: TinyVLMSize) -> dict[str, Any]:
    heads = max(size.lm_hidden // 16, 1)
    return dict(
        vocab_size=len(tok),
        hidden_size=size.lm_hidden,
        intermediate_size=2 * size.lm_hidden,
        num_hidden_layers=size.lm_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=size.init_std,
    )


def make_tiny_llava(
    corpus: Iterable[str], size: TinyVLMSize | None = None, vision_feature_layer: int = -1, seed: int = 0
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random-weight LLaVA (CLIP + Llama, ~0.3 M parameters by default) and its processor, in memory.

    The tokenizer is a byte-level BPE trained on ``corpus``. ``vision_feature_layer=-1`` (not LLaVA's default -2)
    so the last vision layer is used and gets gradients. Image tokens per image = (image_size / patch_size)².
    ``size.init_std``: std of the random weights (``initializer_range``). With the usual 0.02 a 64-wide frozen head
    yields logits within about ±1, so LoRA over a frozen random base cannot express an answer; ~0.2 can.
    """
    size = size or TinyVLMSize()
    tok = train_bpe_tokenizer([*corpus, "USER: ASSISTANT:"], vocab_size=size.vocab_size)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size}
        ),
        tokenizer=tok,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision_hidden = size.lm_hidden
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=max(vision_hidden // 16, 1),
            image_size=size.image_size,
            patch_size=size.patch_size,
        ),
        text_config=LlamaConfig(**_lm_config(tok, size)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), processor


def build_tiny_llava(save_dir: str | os.PathLike, corpus: Iterable[str], **kwargs: Any) -> str:
    """:func:`make_tiny_llava` saved into ``save_dir`` (reloads with ``AutoProcessor`` /
    ``AutoModelForImageTextToText`` or :func:`load_vlm`). Returns ``save_dir``."""
    save_vlm(*make_tiny_llava(corpus, **kwargs), save_dir)
    return str(save_dir)


def make_tiny_qwen2vl(
    corpus: Iterable[str], size: TinyVLMSize | None = None, vision_hidden: int = 32, seed: int = 0
) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLPadExpandingProcessor]:
    """A random-weight Qwen2-VL (~0.25 M parameters by default) and its torchvision-free processor, in memory.

    Images are resized to exactly ``image_size``² pixels (a multiple of ``2 * patch_size``), giving
    (image_size / patch_size)² patches and a quarter as many ``<|image_pad|>`` tokens after the 2×2 merge.
    ``init_std`` as in :func:`make_tiny_llava`.
    """
    size = size or TinyVLMSize()
    merge = 2
    if size.image_size % (size.patch_size * merge):
        raise ConfigError(
            f"image_size {size.image_size} must be a multiple of 2 * patch_size = {size.patch_size * merge}"
        )
    tok = train_bpe_tokenizer(
        [*corpus, "user assistant"], vocab_size=size.vocab_size, extra_special_tokens=QWEN_SPECIAL_TOKENS
    )
    tok.eos_token = "<|im_end|>"  # end of turn = end of generation
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    pixels = size.image_size * size.image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=size.patch_size,
        temporal_patch_size=2,
        merge_size=merge,
    )
    text = _lm_config(tok, size)
    head_dim = size.lm_hidden // text["num_attention_heads"]
    # M-RoPE splits head_dim / 2 rotary frequencies into (temporal, height, width) sections.
    quarter = head_dim // 2 // 4
    text["rope_parameters"] = dict(
        rope_type="default", mrope_section=[head_dim // 2 - 2 * quarter, quarter, quarter], rope_theta=1e4
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=size.vision_layers,
            embed_dim=vision_hidden,
            hidden_size=size.lm_hidden,
            num_heads=max(vision_hidden // 16, 1),
            mlp_ratio=2,
            patch_size=size.patch_size,
            spatial_merge_size=merge,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|image_pad|>"],  # no video: reuse an in-vocabulary id
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config), Qwen2VLPadExpandingProcessor(image_processor, tok)


def build_tiny_qwen2vl(save_dir: str | os.PathLike, corpus: Iterable[str], **kwargs: Any) -> str:
    """:func:`make_tiny_qwen2vl` saved into ``save_dir``: model, tokenizer (with chat template) and image processor.

    Reload with :func:`load_vlm`: ``AutoProcessor`` fails without torchvision, so it falls back to
    :class:`Qwen2VLPadExpandingProcessor`. Returns ``save_dir``.
    """
    save_vlm(*make_tiny_qwen2vl(corpus, **kwargs), save_dir)
    return str(save_dir)


TINY_FAMILIES = {"llava": make_tiny_llava, "qwen2vl": make_tiny_qwen2vl}


def make_tiny_vlm(family: str, corpus: Iterable[str], **kwargs: Any) -> tuple[PreTrainedModel, Any]:
    """:func:`make_tiny_llava` (``family="llava"``) or :func:`make_tiny_qwen2vl` (``"qwen2vl"``), same keywords
    (``vision_hidden`` is Qwen2-VL's only: LLaVA's tower is as wide as its decoder)."""
    if family not in TINY_FAMILIES:
        raise ConfigError(f"family must be one of {sorted(TINY_FAMILIES)}, got {family!r}")
    return TINY_FAMILIES[family](corpus, **kwargs)


def save_vlm(model: PreTrainedModel, processor: Any, save_dir: str | os.PathLike) -> None:
    """``save_pretrained`` model and processor into ``save_dir`` (generation pads with the decoder's pad id)."""
    os.makedirs(save_dir, exist_ok=True)
    model.generation_config.pad_token_id = model.config.get_text_config().pad_token_id
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)


def _model_type(model_name_or_path: str | os.PathLike) -> str:
    """The checkpoint's ``model_type``; for a PEFT adapter directory (no config.json), its base model's."""
    try:
        return AutoConfig.from_pretrained(model_name_or_path).model_type
    except (OSError, ValueError):
        adapter = find_adapter_config_file(str(model_name_or_path))
        if adapter is None:
            raise
        with open(adapter) as f:
            return AutoConfig.from_pretrained(json.load(f)["base_model_name_or_path"]).model_type


def load_processor(model_name_or_path: str | os.PathLike) -> Any:
    """``AutoProcessor``, or the pad-expanding Qwen2-VL processor where the official one needs torchvision.
    Also for an adapter directory saved by the recipe (it holds the processor, the base model holds the config)."""
    model_type = _model_type(model_name_or_path)
    if model_type in Qwen2VLPadExpandingProcessor.MODEL_TYPES:
        try:
            return AutoProcessor.from_pretrained(model_name_or_path)
        except (AttributeError, ImportError):  # the video processor needs torchvision
            return Qwen2VLPadExpandingProcessor.from_pretrained(model_name_or_path)
    return AutoProcessor.from_pretrained(model_name_or_path)


def _drop_matmul8bit_cast(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _silence_matmul8bit_cast_warning() -> None:
    """bnb logs (logging, not warnings) that fp32 inputs are cast to fp16 on *every* 8-bit matmul."""
    for name in ("bitsandbytes.autograd._functions", "py.warnings"):
        log = logging.getLogger(name)
        if _drop_matmul8bit_cast not in log.filters:
            log.addFilter(_drop_matmul8bit_cast)
    warnings.filterwarnings("ignore", message="MatMul8bitLt")  # older bnb versions used warnings.warn


def load_vlm(
    model_name_or_path: str | os.PathLike,
    quantization: str | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, Any]:
    """Load ``(model, processor)`` from a local directory or Hub name (never ``trust_remote_code``).

    ``dtype``: "auto" | "bfloat16" | "float16" | "float32" or a torch dtype. ``quantization``: None, ``"4bit"`` (NF4,
    double quantisation) or ``"8bit"``, through ``BitsAndBytesConfig`` with a compute dtype that follows ``dtype``
    and the whole model on this process's GPU (CPU when there is none; bitsandbytes ≥ 0.50 runs there), see
    :func:`~hf_budgetcl.models.loading.from_pretrained_kwargs`. Every linear layer but ``lm_head`` is quantised, the
    vision tower's included. ``FlopCounterMode`` does not see bitsandbytes matmuls: count those analytically.
    """
    from .loading import from_pretrained_kwargs

    if quantization == "8bit":
        _silence_matmul8bit_cast_warning()
    kwargs = from_pretrained_kwargs(dtype, attn_implementation, quantization)
    model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, **kwargs)
    return model, load_processor(model_name_or_path)
