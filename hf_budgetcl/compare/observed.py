"""The driver of a diagnostic script: one hf-budgetcl run observed from inside, published as a generated table.

The script re-invokes itself with ``--observe`` in the harness's subprocess, so the run reuses a finished attempt
(``--rerun`` forces a new one) and its output is published like every other table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import publish
from .grid import OFFLINE_ENV, GridError, Run, completed, run_grid


def observed_main(
    doc: str,
    script: str,
    result_name: str,
    table: Callable[..., str],
    observed_run: Callable[[int, list[str]], None],
    every: int,
    every_help: str,
) -> int:
    """``main()`` of a diagnostic script: ``script [--every N] [publish options] -- <hf-budgetcl run arguments>``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--every", type=int, default=every, help=every_help)
    publish.add_arguments(parser, None)
    parser.add_argument("--observe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the hf-budgetcl run arguments")
    args = parser.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    if args.observe:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        observed_run(args.every, run_args)
        return 0

    def produce() -> tuple[dict, list[dict]]:
        observed = Run(Path("."), ["--every", args.every, "--", *run_args])
        output_dir = observed.option("--output_dir")
        if output_dir is None:
            raise GridError(f"{Path(script).stem}: the hf-budgetcl run arguments must name --output_dir")
        command = (sys.executable, os.path.abspath(sys.argv[0]), "--observe")  # this very script, observing
        grid = [Run(output_dir, observed.args, command=command, result_name=result_name)]
        runs = completed(run_grid(grid, rerun=publish.rerun_arg(args), env=OFFLINE_ENV))
        return {"every": args.every, "command": publish.command(script)}, runs

    return publish.publish(args, script, table, produce)
