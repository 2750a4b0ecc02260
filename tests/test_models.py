"""HF-native image classifiers: presets, CIFAR ResNet structure, init, save/load through the Auto classes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention
from transformers.utils import ModelOutput

from hf_budgetcl.models import (
    PRESETS,
    BasicBlock,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    build_image_classifier,
    register_auto_classes,
)
from hf_budgetcl.utils.errors import ConfigError

# (preset, channels, image size) as the recipes use them
CASES = [
    ("cifar_resnet32", 3, 32),
    ("fmd5_resnet", 1, 28),
    ("digits_resnet", 1, 8),
    ("tiny_vit", 1, 8),
    ("tiny_resnet", 3, 16),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from intra-op threads; on a busy 2-core box OpenMP spinning made one test 20x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,channels,size", CASES)
def test_presets_forward_backward_and_auto_round_trip(tmp_path, name, channels, size):
    torch.manual_seed(0)
    model = build_image_classifier(name, num_labels=5, num_channels=channels, image_size=size)
    x, y = torch.rand(4, channels, size, size), torch.tensor([0, 1, 2, 4])
    out = model(pixel_values=x, labels=y)
    assert isinstance(out, ModelOutput) and out.logits.shape == (4, 5)
    if isinstance(model, CifarResNetForImageClassification):
        assert isinstance(out, ImageClassifierOutputWithNoAttention)
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - nn.functional.cross_entropy(out.logits, y).item()) < 1e-6
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    model.save_pretrained(tmp_path / name)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / name).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_resnet32_structure_and_size():
    model = build_image_classifier("cifar_resnet32", num_labels=10, num_channels=3, image_size=32)
    assert isinstance(model, CifarResNetForImageClassification)
    assert len(model.blocks) == 15 and all(isinstance(b, BasicBlock) for b in model.blocks)
    assert 0.45e6 < _n_params(model) < 0.48e6  # ResNet-32 with 1x1-conv shortcuts: 466,906
    # downsampling blocks (first of stages 2 and 3) carry a projection shortcut, the others are identities
    assert [i for i, b in enumerate(model.blocks) if len(b.shortcut)] == [5, 10]
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and model.classifier.in_features == 64


def test_fmd5_model_matches_protocol():
    model = build_image_classifier("fmd5_resnet", num_labels=10, num_channels=1, image_size=28)
    stem_conv = model.stem[0]
    assert stem_conv.in_channels == 1 and stem_conv.out_channels == 32 and stem_conv.kernel_size == (3, 3)
    assert isinstance(model.stem[1], nn.BatchNorm2d) and isinstance(model.stem[2], nn.ReLU)
    assert [b.conv1.out_channels for b in model.blocks] == [32, 64, 128]
    assert [b.conv1.stride[0] for b in model.blocks] == [1, 2, 2]
    assert model.classifier.in_features == 128 and model.classifier.out_features == 10
    assert model.config.widths == [32, 64, 128] and model.config.depths == [1, 1, 1]


def test_hidden_states_and_tuple_output():
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8).eval()
    x = torch.rand(2, 1, 8, 8)
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == 1 + len(model.blocks)
    assert out.hidden_states[-1].shape == (2, 32, 4, 4)
    loss, logits, hidden = model(x, labels=torch.tensor([1, 2]), output_hidden_states=True, return_dict=False)
    assert torch.equal(logits, out.logits) and len(hidden) == 3 and loss.ndim == 0
    assert model(x).hidden_states is None


@pytest.mark.parametrize("conv_init", ["default", "kaiming_fan_out"])
def test_conv_init_options(tmp_path, conv_init):
    torch.manual_seed(0)
    model = build_image_classifier("cifar_resnet32", num_labels=10, num_channels=3, image_size=32, conv_init=conv_init)
    conv = model.blocks[0].conv1.weight  # 16 -> 16, 3x3: fan_in = fan_out = 144
    if conv_init == "default":  # torch's Conv2d: uniform with bound 1 / sqrt(fan_in)
        assert conv.abs().max() <= 1 / 12 and abs(conv.std().item() - 1 / 12 / math.sqrt(3)) < 0.005
    else:  # He et al.: normal with std sqrt(2 / fan_out)
        assert abs(conv.std().item() - math.sqrt(2 / 144)) < 0.01 and conv.abs().max() > 1 / 12
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert model.classifier.bias.abs().max() <= 1 / math.sqrt(64)
    model.save_pretrained(tmp_path)  # the choice is part of the config; loaded weights are not re-initialised
    loaded = CifarResNetForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.conv_init == conv_init and torch.equal(loaded.blocks[0].conv1.weight, conv)


def test_conv_init_is_checked():
    assert CifarResNetConfig().conv_init == "default"
    with pytest.raises(ConfigError, match="conv_init"):
        CifarResNetConfig(conv_init="xavier")
    with pytest.raises(ConfigError, match="conv_init: only the CIFAR ResNet presets"):
        build_image_classifier("tiny_vit", num_labels=3, num_channels=1, image_size=8, conv_init="default")


def test_config_validation_and_registration():
    register_auto_classes()  # idempotent: already called at import
    register_auto_classes()
    cfg = AutoConfig.for_model("cifar_resnet", depths=[3, 3, 3], num_labels=7)
    assert isinstance(cfg, CifarResNetConfig) and cfg.num_labels == 7
    assert type(AutoModelForImageClassification.from_config(cfg)) is CifarResNetForImageClassification
    with pytest.raises(ValueError, match="one entry per stage"):
        CifarResNetConfig(widths=(16, 32), strides=(1, 2, 2))


def test_overrides_and_checkpoint_loading(tmp_path):
    resnet20 = build_image_classifier("cifar_resnet32", num_labels=10, num_channels=3, image_size=32, depths=(3, 3, 3))
    assert len(resnet20.blocks) == 9
    vit = build_image_classifier("tiny_vit", num_labels=3, num_channels=1, image_size=8, num_hidden_layers=2)
    assert vit.config.num_hidden_layers == 2 and len(vit.vit.layers) == 2
    assert vit.config.patch_size == 4 and vit.config.hidden_size == 64

    src = build_image_classifier("fmd5_resnet", num_labels=10, num_channels=1, image_size=28)
    src.save_pretrained(tmp_path / "ck")
    model = build_image_classifier(str(tmp_path / "ck"), num_labels=4, num_channels=1, image_size=28)
    assert model.classifier.out_features == 4 and model.config.num_labels == 4
    assert torch.equal(model.blocks[0].conv1.weight, src.blocks[0].conv1.weight)  # backbone kept, head re-sized
    with pytest.raises(ValueError, match="1 input channels, data has 3"):
        build_image_classifier(str(tmp_path / "ck"), num_labels=4, num_channels=3, image_size=28)


def test_unknown_model_name_fails_fast_offline(tmp_path):
    with pytest.raises(OSError, match="no-such-org/no-such-model") as info:
        build_image_classifier("no-such-org/no-such-model", num_labels=2, num_channels=1, image_size=8)
    assert "\n" not in str(info.value) and "not a preset" in str(info.value)
    with pytest.raises((OSError, ValueError), match=str(tmp_path)):
        build_image_classifier(str(tmp_path), num_labels=2, num_channels=1, image_size=8)


def test_preset_names():
    assert set(PRESETS) == {"cifar_resnet32", "fmd5_resnet", "digits_resnet", "tiny_vit", "tiny_resnet"}
