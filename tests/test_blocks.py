import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_budgetcl.models import build_image_classifier
from hf_budgetcl.models.blocks import find_blocks


def _llama(layers=3):
    return LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
    )


def _llava():
    return LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=16,
                patch_size=8,
            ),
            text_config=_llama(),
            image_token_id=63,
        )
    )


def _all_trainable_assigned_once(model, part):
    ids = [id(p) for ps in part.params for p in ps] + [id(p) for p in part.head_params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_hf_resnet_blocks_are_residual_layers_with_their_shortcuts():
    model = ResNetForImageClassification(
        ResNetConfig(
            num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], layer_type="basic", num_labels=10
        )
    )
    part = find_blocks(model)
    assert part.names == ["stem"] + [f"resnet.encoder.stages.{s}.layers.{i}" for s in (0, 1) for i in (0, 1)]
    shortcut = model.resnet.encoder.stages[1].layers[0].shortcut.convolution.weight
    assert any(p is shortcut for p in part.params[3])
    assert [n.split(".")[0] for n in part.head_names] == ["classifier", "classifier"]
    _all_trainable_assigned_once(model, part)


def test_vit_stem_holds_embeddings_cls_and_position():
    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=4,
            num_labels=5,
        )
    )
    part = find_blocks(model)
    assert len(part) == 4 and part.names[0] == "stem"
    stem_ids = {id(p) for p in part.params[0]}
    assert id(model.vit.embeddings.cls_token) in stem_ids and id(model.vit.embeddings.position_embeddings) in stem_ids
    _all_trainable_assigned_once(model, part)


def test_llama_blocks_match_by_identity_not_substring():
    model = LlamaForCausalLM(_llama(layers=12))  # layers.1 must not swallow layers.10 and layers.11
    part = find_blocks(model)
    assert part.names[1:] == [f"model.layers.{i}" for i in range(12)]
    assert all(len(ps) == len(part.params[1]) for ps in part.params[1:])
    _all_trainable_assigned_once(model, part)


def test_llava_blocks_are_the_language_model_decoder_layers():
    model = _llava()
    part = find_blocks(model)
    assert part.names[1:] == [f"model.language_model.layers.{i}" for i in range(3)]
    stem_ids = {id(p) for p in part.params[0]}
    assert all(id(p) in stem_ids for p in model.model.vision_tower.parameters())  # vision tower: one group
    _all_trainable_assigned_once(model, part)


def test_lora_blocks_hold_only_the_adapters_of_each_decoder_layer():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _llava(), LoraConfig(r=2, target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    )
    part = find_blocks(model)
    assert part.names == [f"model.language_model.layers.{i}" for i in range(3)]
    assert all(len(ps) == 4 for ps in part.params)  # lora_A, lora_B for q and v
    assert part.head_params == [] and part.max_frozen == 2  # nothing trains above the last layer
    _all_trainable_assigned_once(model, part)


def test_cifar_resnet32_has_stem_and_15_blocks():
    model = build_image_classifier("cifar_resnet32", num_labels=10, num_channels=3, image_size=32)
    part = find_blocks(model)
    assert len(part) == 16 and part.names[0] == "stem" and part.names[1] == "blocks.0"
    _all_trainable_assigned_once(model, part)


def test_no_repeated_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="could not find repeated blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
