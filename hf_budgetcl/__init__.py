"""hf_budgetcl: budgeted online continual learning for Hugging Face models (aL-SAR)."""

import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend warns at import that an optional Hub kernel could not be fetched, then falls back to its
# own kernels; transformers imports it whenever it is installed, so every run would start with that noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import BudgetedCLConfig  # noqa: E402
from .trainer import BudgetedCLTrainer  # noqa: E402

__all__ = ["BudgetedCLConfig", "BudgetedCLTrainer", "__version__"]
