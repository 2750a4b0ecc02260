"""hf_budgetcl: budgeted online continual learning for Hugging Face models (aL-SAR)."""

__version__ = "0.1.0"

from .config import BudgetedCLConfig  # noqa: E402
from .trainer import BudgetedCLTrainer  # noqa: E402

__all__ = ["BudgetedCLConfig", "BudgetedCLTrainer", "__version__"]
