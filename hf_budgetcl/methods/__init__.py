"""Registry of continual-learning methods; each lives in its own small module.

A new baseline (X-DER, MEMO, OCS, LiDER, ...) is one more module: subclass :class:`ContinualMethod` (or ER), override
the hooks it needs -- ``retrieve``, ``extra_loss``, ``slot_bytes`` (per-slot side information such as logits),
``extra_state_bytes`` (extra models), ``extra_flops_per_iteration``, ``setup`` -- and add it to ``METHODS`` below (or
call :func:`register_method` from outside the package).
"""

from __future__ import annotations

from .alsar import ALSAR
from .base import ContinualMethod
from .derpp import DERPP
from .er import ER
from .ewc import EWC
from .freezing_baselines import ERLisa, ERStatic
from .gdumb import GDumb
from .mir import MIR
from .remind import REMIND
from .replay import Replay
from .replay_freeze import ReplayFreeze
from .sar import SAR

METHODS: dict[str, type[ContinualMethod]] = {
    cls.name: cls for cls in (ER, Replay, ReplayFreeze, SAR, ALSAR, MIR, DERPP, EWC, REMIND, GDumb, ERStatic, ERLisa)
}


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options) -> ContinualMethod:
    if name not in METHODS:
        raise ValueError(f"method: unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


__all__ = ["ContinualMethod", "METHODS", "get_method", "register_method"]
