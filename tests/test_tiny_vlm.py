"""Tiny VLM builders, HF save/reload, training through the collator, LoRA placement and QLoRA on CPU."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaProcessor

easy_vqa = pytest.importorskip("easy_vqa")

from hf_budgetcl.data.vlm_collator import (  # noqa: E402
    Qwen2VLPadExpandingProcessor,
    VLMInstructionCollator,
)
from hf_budgetcl.data.vqa import load_easy_vqa  # noqa: E402
from hf_budgetcl.models.lora import LM_DECODER_LORA_REGEX, apply_lora  # noqa: E402
from hf_budgetcl.models.tiny_vlm import (  # noqa: E402
    build_tiny_qwen2vl,
    load_vlm,
    make_tiny_llava,
    make_tiny_qwen2vl,
    train_bpe_tokenizer,
)

CORPUS = sorted(set(easy_vqa.get_train_questions()[0])) + easy_vqa.get_answers()
VISION_PARTS = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "lm_head")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Models this small gain nothing from intra-op threads; on a shared 2-core machine two OpenMP threads per
    process made these tests 20-50x slower (25 s vs 0.5 s for 20 steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    ds = load_easy_vqa("train", max_images=4, seed=0)
    return [ds[k] for k in range(8)]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """(directory, in-memory model, processor) of a tiny LLaVA saved with save_pretrained."""
    model, processor = make_tiny_llava(CORPUS)
    d = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return str(d), model.eval(), processor


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_bpe_tokenizer_specials_and_roundtrip():
    tok = train_bpe_tokenizer(CORPUS, vocab_size=300)
    assert len(tok) <= 300
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<image>")] == [0, 1, 2, 3]
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.image_token) == ("<pad>", "<s>", "</s>", "<image>")
    ids = tok("what color is the shape?")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == "what color is the shape?"
    assert tok("<image>", add_special_tokens=False)["input_ids"] == [3]


def test_llava_save_reload_identical_logits(llava, rows):
    d, model, processor = llava
    assert model.config.vision_feature_layer == -1
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    auto_processor = AutoProcessor.from_pretrained(d)
    reloaded = AutoModelForImageTextToText.from_pretrained(d).eval()
    assert isinstance(auto_processor, LlavaProcessor) and type(reloaded) is type(model)
    batch = VLMInstructionCollator(processor)(rows)
    batch_reloaded = VLMInstructionCollator(auto_processor)(rows)
    for key in batch:
        assert torch.equal(batch[key], batch_reloaded[key]), key
    assert torch.equal(_logits(model, batch), _logits(reloaded, batch))
    via_load_vlm, proc = load_vlm(d)
    assert isinstance(proc, LlavaProcessor)
    assert torch.equal(_logits(via_load_vlm.eval(), batch), _logits(model, batch))


def test_llava_training_lowers_loss_and_generates_text(llava, rows):
    d, _, _ = llava
    model, processor = load_vlm(d)
    collator = VLMInstructionCollator(processor)
    batch = collator(rows)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # Every vision layer is used (vision_feature_layer=-1), so every parameter but CLIP's pooled-output norm
    # (which LLaVA never reads) got a gradient.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == ["model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"]
    gen = collator.build_generation_inputs(rows[:3])
    out = model.eval().generate(**gen, max_new_tokens=4, do_sample=False)
    answers = collator.decode_answers(out, gen["input_ids"].shape[1])
    assert out.shape[1] > gen["input_ids"].shape[1]
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_lora_regex_targets_only_the_language_decoder(llava, rows):
    pattern = re.compile(LM_DECODER_LORA_REGEX)
    assert pattern.fullmatch("model.layers.3.mlp.down_proj")  # plain Llama
    assert pattern.fullmatch("model.text_model.layers.0.self_attn.k_proj")  # Idefics3
    assert not pattern.fullmatch("model.vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not pattern.fullmatch("model.vision_model.encoder.layers.0.self_attn.q_proj")
    assert not pattern.fullmatch("model.language_model.layers.0.self_attn.q_proj.lora_A")
    d, _, _ = llava
    model, processor = load_vlm(d)
    n_layers = model.config.text_config.num_hidden_layers
    peft_model = apply_lora(model, r=4, alpha=8)
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == 7 * n_layers
    assert not any(part in n for n in wrapped for part in VISION_PARTS)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model.layers." in n for n in trainable)
    # lora_B starts at zero, so lora_A's first gradient is exactly zero: take one step, then check all.
    batch = VLMInstructionCollator(processor)(rows)
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


def test_qlora_4bit_training_step_on_cpu(llava, rows):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    d, _, _ = llava
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, processor = load_vlm(d, quantization="4bit")
        assert isinstance(model.model.language_model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
        peft_model = apply_lora(model, quantized=True)
        batch = VLMInstructionCollator(processor)(rows)
        with torch.no_grad(), peft_model.disable_adapter():
            base_before = peft_model(**batch).logits
        trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        adapters_before = {n: p.detach().clone() for n, p in trainable.items()}
        optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
        for _ in range(2):
            loss = peft_model(**batch).loss
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad(), peft_model.disable_adapter():
            base_after = peft_model(**batch).logits
    assert all(not torch.equal(adapters_before[n], p.detach()) for n, p in trainable.items())
    assert torch.equal(base_before, base_after)  # the quantised base did not move


def test_8bit_loading_is_close_to_fp32(llava, rows):
    pytest.importorskip("bitsandbytes")
    d, model, processor = llava
    quantized, _ = load_vlm(d, quantization="8bit")
    batch = VLMInstructionCollator(processor)(rows[:2])
    assert (_logits(quantized, batch) - _logits(model, batch)).abs().max() < 0.1
    with pytest.raises(ValueError, match="quantization"):
        load_vlm(d, quantization="2bit")


def test_qwen2vl_build_reload_and_train_through_the_collator(tmp_path, rows):
    model, processor = make_tiny_qwen2vl(CORPUS)
    model.eval()
    d = build_tiny_qwen2vl(tmp_path / "qwen", CORPUS)
    reloaded, reloaded_processor = load_vlm(d)
    assert type(reloaded).__name__ == "Qwen2VLForConditionalGeneration"
    assert isinstance(reloaded_processor, Qwen2VLPadExpandingProcessor)
    assert reloaded_processor.chat_template == processor.chat_template
    collator = VLMInstructionCollator(reloaded_processor)
    assert collator.family == "qwen2_vl"
    batch = collator(rows)
    assert batch["mm_token_type_ids"].sum() == (batch["input_ids"] == collator.image_token_id).sum()
    # 32×32 images, 8-pixel patches, 2×2 merge: 16 patches and 4 image pads per image.
    assert batch["pixel_values"].shape[0] == 16 * len(rows)
    assert (batch["input_ids"] == collator.image_token_id).sum() == 4 * len(rows)
    assert torch.equal(_logits(reloaded.eval(), batch), _logits(model, batch))
    reloaded.train()
    loss = reloaded(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert reloaded.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    peft_model = apply_lora(reloaded, r=4, alpha=8)
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == 7 * reloaded.config.text_config.num_hidden_layers
    assert not any(part in n for n in wrapped for part in VISION_PARTS)
    gen = collator.build_generation_inputs(rows[:2])
    out = peft_model.eval().generate(**gen, max_new_tokens=3, do_sample=False)
    assert len(collator.decode_answers(out, gen["input_ids"].shape[1])) == 2
