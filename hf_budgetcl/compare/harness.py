"""Where ``hf_budgetcl.cli`` finds ``hf-budgetcl compare`` (``from .compare.harness import main``); the harness
itself is split one job per file: grid, summary, tables, plots, publish, cli."""

from .cli import compare, main

__all__ = ["compare", "main"]
