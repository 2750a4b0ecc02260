"""Freezing baselines as methods: ER with a static frozen prefix, and ER with LISA-style random layer sampling.

The policies themselves live with the other freezing policies (``freeze: static:<n>`` and ``freeze: lisa[:<n>]``,
:mod:`hf_budgetcl.freezing.adaptive` and :mod:`hf_budgetcl.freezing.lisa`) and combine with any method through the config's
``freeze``; these two names make them first-class entries of ``hf-budgetcl compare``.
"""

from __future__ import annotations

from typing import Any

from .er import ER


class ERStatic(ER):
    """ER with the first ``static_frozen_blocks`` blocks always frozen (default: half of the blocks, rounded down,
    at least one)."""

    name = "er+static"
    freeze = "static:1"

    def setup(self, trainer: Any) -> None:
        n = self.option("static_frozen_blocks", max(len(trainer.blocks) // 2, 1))
        self.freeze = f"static:{n}"


class ERLisa(ER):
    """ER with LISA-style layer sampling (:class:`~hf_budgetcl.freezing.lisa.LisaFreezing`)."""

    name = "er+lisa"
    freeze = "lisa"
