"""The benchmark harness: ``hf-budgetcl compare`` and the grids, summaries and tables of ``scripts/benchmark_*.py``.

- ``grid``: a declared grid of runs, validated whole, run in subprocesses (``run_grid``), finished runs reused;
- ``summary``: mean ± std (ddof 1), paired differences, a method's summary row;
- ``tables``: markdown tables; ``publish``: a generated table next to its raw JSON, and ``--table_only``;
- ``plots``: the compare plots (optional matplotlib); ``cli``: ``hf-budgetcl compare``.
"""
