"""Continual-learning methods, one small module each, and their registry.

A new method is one module: subclass :class:`ContinualMethod` (or ER), give it a ``name``, an ``Options`` dataclass
if it has hyper-parameters, and override the hooks it needs (see :mod:`hf_budgetcl.methods.base`). Outside this
package, declare it under the ``hf_budgetcl.methods`` entry point (:mod:`hf_budgetcl.methods.registry`), or call
:func:`register_method` within one process.
"""

from __future__ import annotations

from .alsar import ALSAR
from .base import ContinualMethod
from .context import MethodContext
from .derpp import DERPP
from .er import ER
from .ewc import EWC
from .freezing_baselines import ERLisa, ERStatic
from .gdumb import GDumb
from .mir import MIR
from .options import MethodOptions
from .registry import ENTRY_POINT_GROUP, MethodRegistry
from .remind import REMIND
from .replay import Replay
from .replay_freeze import ReplayFreeze
from .sar import SAR

BUILTIN_METHODS = (ER, Replay, ReplayFreeze, SAR, ALSAR, MIR, DERPP, EWC, REMIND, GDumb, ERStatic, ERLisa)
METHODS = MethodRegistry(list(BUILTIN_METHODS))


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    """Make ``cls`` available as ``--method <cls.name>`` in this process."""
    return METHODS.register(cls)


def get_method(name: str, **options) -> ContinualMethod:
    return METHODS.get_class(name)(**options)


__all__ = [
    "ContinualMethod",
    "ENTRY_POINT_GROUP",
    "METHODS",
    "MethodContext",
    "MethodOptions",
    "get_method",
    "register_method",
]
