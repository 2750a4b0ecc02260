"""CIFAR-style ResNet (He et al. 2016, sec. 4.2) as a native transformers model.

Being a real ``PreTrainedModel`` with a registered config means ``save_pretrained``, ``from_pretrained``,
``AutoModelForImageClassification`` and ``Trainer`` all work offline, with no ``trust_remote_code``.

Layout, flat on purpose so freezing code can address blocks by index::

    stem        conv3x3(num_channels -> stem_width) + BN + ReLU
    blocks      nn.ModuleList of BasicBlocks, flattened over stages (sum(depths) entries)
    pool        AdaptiveAvgPool2d(1)
    classifier  nn.Linear(widths[-1], num_labels)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from ..utils.errors import ConfigError

CONV_INITS = ("default", "kaiming_fan_out")

__all__ = [
    "CONV_INITS",
    "BasicBlock",
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetPreTrainedModel",
]


class CifarResNetConfig(PreTrainedConfig):
    r"""Configuration of :class:`CifarResNetForImageClassification` (defaults: ResNet-32 for 3-channel 32x32 input).

    Args:
        num_channels: input image channels.
        stem_width: output channels of the 3x3 stem convolution.
        widths: output channels of each stage.
        strides: stride of the first block of each stage.
        depths: number of BasicBlocks in each stage (``(5, 5, 5)`` = ResNet-32, ``(3, 3, 3)`` = ResNet-20).
        conv_init: ``"default"`` (PyTorch's ``Conv2d.reset_parameters``) or ``"kaiming_fan_out"`` (He et al.'s
            ``kaiming_normal_(mode="fan_out")``, the authors' and torchvision's choice). Under BatchNorm with Adam the
            fan-out init makes the block convs learn more slowly; see docs/findings.md for the measurement.
        num_labels: classifier outputs (handled by ``PreTrainedConfig``).
    """

    model_type = "cifar_resnet"

    num_channels: int = 3
    stem_width: int = 16
    widths: list[int] | tuple[int, ...] = (16, 32, 64)
    strides: list[int] | tuple[int, ...] = (1, 2, 2)
    depths: list[int] | tuple[int, ...] = (5, 5, 5)
    conv_init: str = "default"

    def __post_init__(self, **kwargs):
        # lists, so a config compares equal to itself after a JSON round trip
        self.widths, self.strides, self.depths = list(self.widths), list(self.strides), list(self.depths)
        if not (len(self.widths) == len(self.strides) == len(self.depths)) or not self.widths:
            raise ConfigError(
                f"widths, strides and depths need one entry per stage, got {self.widths}, {self.strides}, {self.depths}"
            )
        if self.conv_init not in CONV_INITS:
            raise ConfigError(f"conv_init: expected one of {', '.join(CONV_INITS)}, got {self.conv_init!r}")
        super().__post_init__(**kwargs)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), ReLU after the add."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetPreTrainedModel(PreTrainedModel):
    config_class = CifarResNetConfig
    base_model_prefix = "cifar_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["BasicBlock"]

    def get_input_embeddings(self) -> None:
        """Pixels in, no token embeddings (accelerate's FSDP2 preparation asks every model for them)."""
        return None

    def _init_weights(self, module: nn.Module) -> None:
        # through transformers.initialization, so already-loaded weights are left alone
        if isinstance(module, nn.Conv2d) and self.config.conv_init == "kaiming_fan_out":
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.Conv2d, nn.Linear)):  # torch's own Conv2d/Linear.reset_parameters
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)


class CifarResNetForImageClassification(CifarResNetPreTrainedModel):
    """CIFAR ResNet with a linear head; ``forward`` returns ``ImageClassifierOutputWithNoAttention``."""

    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.stem = nn.Sequential(
            nn.Conv2d(config.num_channels, config.stem_width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(config.stem_width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_ch = config.stem_width
        for width, stride, depth in zip(config.widths, config.strides, config.depths):
            for i in range(depth):
                blocks.append(BasicBlock(in_ch, width, stride if i == 0 else 1))
                in_ch = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        """``pixel_values`` (B, C, H, W) float; ``labels`` (B,) -> cross-entropy ``loss``.

        ``hidden_states`` (when asked) holds the stem output followed by every block's output.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = self.stem(pixel_values)
        hidden: list[torch.Tensor] | None = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x)
            if hidden is not None:
                hidden.append(x)
        logits = self.classifier(torch.flatten(self.pool(x), 1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        hidden_states = tuple(hidden) if hidden is not None else None
        if not return_dict:
            out = tuple(v for v in (logits, hidden_states) if v is not None)
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)
