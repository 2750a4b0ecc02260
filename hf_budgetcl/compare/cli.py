"""``hf-budgetcl compare``: run several methods and seeds on one base config and tabulate them.

    hf-budgetcl compare --config recipes/configs/fashion_mnist_er.yaml --methods er,replay,alsar --seeds 1,2,3 \\
        --output_dir out/compare [--jobs 2] [-- --eval_period 1000 ...overrides for every run]
    hf-budgetcl compare ... --methods er,alsar,alsar:budget_matching=spend_savings,ema=0.01   # a variant of alsar

A variant ``name:key=value,...`` is a row of its own, run with ``--key value`` after the common overrides; in
``--methods`` an item with ``=`` and no ``:`` is one more option of the variant before it. A comma inside a value
is written ``\\,`` (``er:method_options=a=1\\,b=2``; quote it in the shell). A key that is an option of the
method, not a run setting (``derpp:derpp_alpha=0``), is added to its ``--method_options``.

Each run is a separate ``hf-budgetcl run`` process (one torch thread each, ``--jobs`` at a time), so runs do not
share state and a failed run does not stop the others; a finished run is reused when its arguments are unchanged
(``--rerun``: run everything again).
Writes ``summary.json``, ``summary.md`` (A_AUC ± std, A_last ± std, each paired by seed with the first method, TFLOPs,
MB, wall-clock per method; below, each variant paired with its own method, and the row with the best A_AUC at the
budgets of the first method with results paired with each other row there, with the seeds on which it is higher),
``accuracy_vs_flops.png``, ``per_class_accuracy.png`` (classes named by the runs' ``id2label``) and ``freezing.png``.
``--table_only`` rewrites ``summary.md`` from ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .grid import Run, fold_method_options, run_grid, split_methods, validate, variant_dirname, variant_flags
from .summary import summarize
from .tables import to_markdown


def declare(
    config: str, methods: Sequence[str], seeds: Sequence[int], output_dir: str, overrides: Sequence[str] = ()
) -> list[Run]:
    """The grid of a compare: every method (or variant) × seed, in ``output_dir/<method>_seed<seed>``."""
    runs = []
    for method in methods:
        name, flags = variant_flags(method)
        for seed in seeds:
            runs.append(
                Run(
                    Path(output_dir, f"{variant_dirname(method).replace('+', '_')}_seed{seed}"),
                    fold_method_options(["--config", config, "--method", name, "--seed", seed, *overrides, *flags]),
                    label={"method": method, "seed": seed},
                )
            )
    return runs


def compare(
    config: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    output_dir: str,
    jobs: int = 1,
    overrides: Sequence[str] = (),
    rerun: bool = False,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..evaluation.per_class import class_names_in
    from .plots import plot

    runs = declare(config, methods, seeds, output_dir, overrides)
    validate(runs)
    os.makedirs(output_dir, exist_ok=True)
    with tqdm(total=len(runs), desc="compare") as bar:

        def done(run: Run, result: dict) -> None:
            bar.set_postfix(last=f"{run.label['method']}/{run.label['seed']}")
            bar.update()

        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        outcomes = run_grid(runs, jobs=jobs, threads=threads, rerun=rerun, on_done=done)
    # The runs as summary.json has always listed them: method and seed first, no grid label. The label's method wins:
    # a variant's results.json names only its method.
    results = [{**(label := r.pop("label")), **{k: v for k, v in r.items() if k not in label}} for r in outcomes]
    summary = summarize(results, methods)
    result = {
        "config": config,
        "methods": list(methods),
        "seeds": list(seeds),
        "overrides": list(overrides),
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in results],
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(to_markdown(summary))
    plot(results, output_dir, class_names=next(filter(None, (class_names_in(run.run_dir) for run in runs)), None))
    return result


def table_only(output_dir: str) -> dict[str, Any]:
    """Rewrite ``summary.md`` from the runs recorded in ``summary.json`` (the plots need the curves: not redrawn)."""
    path = Path(output_dir, "summary.json")
    result = json.loads(path.read_text())
    result["summary"] = summarize(result["runs"], result["methods"])
    Path(output_dir, "summary.md").write_text(to_markdown(result["summary"]))
    return result


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-budgetcl compare",
        usage="hf-budgetcl compare --config CONFIG --methods M1,M2 [options] [-- RUN OPTIONS]",
        description=__doc__.splitlines()[0],
        epilog="Everything after a lone `--` is passed to every run as `hf-budgetcl run` options, e.g. "
        "`-- --flops_budget_per_sample 3e8 --memory_size null` (see `hf-budgetcl run --help`).",
    )
    parser.add_argument(
        "--config",
        help="base config of every run: a YAML path or a shipped config name (required unless --table_only)",
    )
    parser.add_argument(
        "--methods",
        help="comma-separated method names or variants name:key=value, e.g. er,replay,alsar:online_iter=2 "
        "(a comma inside a value: \\,) (required unless --table_only)",
    )
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, each method runs once per seed")
    parser.add_argument("--output_dir", required=True, help="one folder per run inside, plus summary.json/.md, plots")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    parser.add_argument("--rerun", action="store_true", help="run again even where a finished run would be reused")
    parser.add_argument("--table_only", action="store_true", help="rewrite summary.md from summary.json, run nothing")
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.table_only:
        result = table_only(args.output_dir)
    else:
        if not args.config or not args.methods:
            parser.error("--config and --methods are required (unless --table_only)")
        methods = split_methods(args.methods)
        seeds = [int(s) for s in args.seeds.split(",")]
        result = compare(args.config, methods, seeds, args.output_dir, args.jobs, overrides, args.rerun)
    print(to_markdown(result["summary"]))
    failed = [r for r in result["runs"] if "error" in r]
    return 1 if failed else 0
