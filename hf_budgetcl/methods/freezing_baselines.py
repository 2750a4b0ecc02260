"""Freezing baselines as methods: ER with a static frozen prefix, and ER with LISA-style random layer sampling.

The policies themselves live with the other freezing policies (``freeze: static:<n>`` and ``freeze: lisa[:<n>]``,
:mod:`hf_budgetcl.freezing.adaptive` and :mod:`hf_budgetcl.freezing.lisa`) and combine with any method through the config's
``freeze``; these two names make them first-class entries of ``hf-budgetcl compare``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .er import ER
from .options import MethodOptions


@dataclass
class ERStaticOptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {"static_frozen_blocks": ">= 1"}
    static_frozen_blocks: int | None = field(
        default=None, metadata={"help": "Blocks always frozen (default: half of them, rounded down, at least one)."}
    )


class ERStatic(ER):
    """ER with the first ``static_frozen_blocks`` blocks always frozen."""

    name = "er+static"
    freeze = "static:1"
    Options = ERStaticOptions

    def setup(self, ctx) -> None:
        n = self.options.static_frozen_blocks
        self.freeze = f"static:{max(len(ctx.blocks) // 2, 1) if n is None else n}"


class ERLisa(ER):
    """ER with LISA-style layer sampling (:class:`~hf_budgetcl.freezing.lisa.LisaFreezing`)."""

    name = "er+lisa"
    freeze = "lisa"
