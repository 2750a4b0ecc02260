"""hf_budgetcl: budgeted online continual learning for Hugging Face models (aL-SAR).

The public API; everything is imported on first use, so ``hf-budgetcl --help`` does not load torch.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# bitsandbytes' CPU backend warns at import that an optional Hub kernel could not be fetched, then falls back to its
# own kernels; transformers imports it whenever it is installed, so every run would start with that noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_EXPORTS = {
    "BudgetedCLConfig": "hf_budgetcl.config",
    "BudgetedCLTrainer": "hf_budgetcl.training.trainer",
}

if TYPE_CHECKING:
    from .config import BudgetedCLConfig
    from .training.trainer import BudgetedCLTrainer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hf_budgetcl' has no attribute {name!r}")


__all__ = ["BudgetedCLConfig", "BudgetedCLTrainer", "__version__"]
