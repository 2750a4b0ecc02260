"""HF-native image classifiers: the CIFAR ResNet family and a preset factory.

Importing this package registers ``cifar_resnet`` with ``AutoConfig`` and ``AutoModelForImageClassification``.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .cifar_resnet import (
    BasicBlock,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    CifarResNetPreTrainedModel,
)


def register_auto_classes() -> None:
    """Register ``cifar_resnet`` with the Auto classes; safe to call any number of times."""
    AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
    AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)


register_auto_classes()

from .factory import PRESETS, build_image_classifier  # noqa: E402  (after registration on purpose)

__all__ = [
    "PRESETS",
    "BasicBlock",
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetPreTrainedModel",
    "build_image_classifier",
    "register_auto_classes",
]
