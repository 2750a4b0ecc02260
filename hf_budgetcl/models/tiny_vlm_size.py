"""The size of the random-weight tiny VLMs (:mod:`~hf_budgetcl.models.tiny_vlm`), apart so that the recipe's
``tiny_*`` flags can mirror it without importing the model classes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class TinyVLMSize:
    """The size of a random-weight tiny VLM, the same fields for both families."""

    RANGES: ClassVar[dict[str, str]] = {
        "image_size": ">= 1",
        "patch_size": ">= 1",
        "lm_hidden": ">= 1",
        "lm_layers": ">= 1",
        "vision_layers": ">= 1",
        "vocab_size": ">= 1",
        "init_std": "> 0",
    }
    image_size: int = field(default=32, metadata={"help": "input image side in pixels."})
    patch_size: int = field(default=8, metadata={"help": "vision patch side in pixels."})
    lm_hidden: int = field(default=64, metadata={"help": "decoder width."})
    lm_layers: int = field(default=4, metadata={"help": "decoder blocks."})
    vision_layers: int = field(default=2, metadata={"help": "vision-encoder layers."})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary cap."})
    init_std: float = field(default=0.02, metadata={"help": "std of the random weights (initializer_range)."})

    @classmethod
    def read(cls, source: Any, prefix: str = "") -> TinyVLMSize:
        """The size held by ``source``'s attributes ``<prefix><field>`` (a stage-1 build config, or the recipe's
        ``tiny_*`` model arguments)."""
        return cls(**{f.name: getattr(source, prefix + f.name) for f in fields(cls)})
