#!/usr/bin/env python
"""Anytime stability (#18): BatchNorm statistics recomputed from memory (`bn_recalibration memory`) vs not, on digits
and tinted_digits.

Each method runs with ``--bn_recalibration none`` and ``memory`` on the same seed, stream and initialisation; the
training is then identical (the option only changes what the evaluation and the saved model use), so the paired
difference memory − none is the recalibration's own effect. Settings: recipes/configs/digits_er.yaml (disjoint, 5
tasks of 2 classes, batch 16, 200 slots), evaluated every ``--eval_period`` samples (default 25: about 11 evaluations
per task of ~288 samples, so within-task swings are visible).

    python scripts/benchmark_anytime_stability.py --jobs 2     # writes docs/results/anytime_stability.md and .json
    python scripts/benchmark_anytime_stability.py --table_only # the table again from anytime_stability.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.grid import OFFLINE_ENV, Run, completed, run_grid
from hf_budgetcl.compare.summary import group, mean_std, paired
from hf_budgetcl.compare.tables import markdown_table
from hf_budgetcl.evaluation.anytime_stability import largest_within_task_drop, within_task_std

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes/configs/digits_er.yaml"
SCRIPT = "scripts/benchmark_anytime_stability.py"
RECALIBRATION = ("none", "memory")
HEADER = [
    "data",
    "method",
    "BN stats",
    "A_AUC",
    "A_last",
    "largest drop within a task",
    "std within tasks",
    "Δ A_AUC (memory − none), per seed → mean ± std",
    "Δ A_last",
    "Δ largest drop",
    "FLOPs memory / none",
]


def declare(args: argparse.Namespace) -> list[Run]:
    return [
        Run(
            Path(args.work_dir) / f"{data}_{method}_{recal}_s{seed}",
            [
                *("--config", CONFIG, "--dataset", data, "--method", method, "--seed", seed),
                *("--eval_period", args.eval_period, "--bn_recalibration", recal, "--save_strategy", "no"),
            ],
            {"data": data, "method": method, "recal": recal, "seed": seed},
        )
        for data in args.datasets
        for method in args.methods
        for recal in RECALIBRATION
        for seed in args.seeds
    ]


def metrics(run: dict) -> dict[str, float]:
    """The per-run figures of the table, in points (accuracies) or as they are."""
    return {
        "A_auc": 100 * run["A_auc"],
        "A_last": 100 * run["A_last"],
        "drop": 100 * largest_within_task_drop(run["curve"]),
        "std": 100 * within_task_std(run["curve"]),
        "flops": run["train_flops"],
    }


def per_seed_difference(pairs: list[tuple[dict, dict]], key: str) -> str:
    """``a, b, c → mean ± std`` of memory − none per seed, in points."""
    diffs = [metrics(a)[key] - metrics(b)[key] for a, b in pairs]
    return ", ".join(f"{d:+.2f}" for d in diffs) + f" → {mean_std(diffs, 1.0)}"


def table(params: dict, runs: list[dict]) -> str:
    by = group(runs, lambda r: (r["label"]["data"], r["label"]["method"], r["label"]["recal"]))
    rows = []
    for (data, method, recal), rs in by.items():
        figures = [metrics(r) for r in rs]
        row = [data, f"`{method}`", recal]
        row += [mean_std([f[k] for f in figures]) for k in ("A_auc", "A_last", "drop", "std")]
        if recal == "none":
            rows.append(row + ["", "", "", ""])
            continue
        pairs = paired(rs, by[(data, method, "none")])
        ratios = [a["train_flops"] / b["train_flops"] for a, b in pairs]
        row += [per_seed_difference(pairs, k) for k in ("A_auc", "A_last", "drop")]
        rows.append(row + [f"{mean_std(ratios, 1.0, 3)}×"])
    recalibrated = [r for r in runs if r["label"]["recal"] == "memory"]
    share = np.mean([r["flops_items"]["bn_recalibration"] / r["train_flops"] for r in recalibrated])
    lines = [
        f"Disjoint stream, 5 tasks of 2 classes, `recipes/configs/digits_er.yaml` (digits_resnet, batch 16, 200 "
        f"memory slots, online_iter 1, Adam 3e-4), evaluated every {params['eval_period']} samples; seeds "
        f"{', '.join(map(str, params['seeds']))}, {params['jobs']} runs at a time, 1 torch thread each. "
        "`tinted_digits`: the same digits multiplied by a fixed colour per class.",
        "",
        *markdown_table(HEADER, rows),
        "",
        "Accuracies and their differences in points, mean ± std (ddof 1) over seeds. Largest drop within a task: the "
        "largest fall of anytime accuracy between two consecutive evaluations with the same classes seen (a task "
        "switch's drop not counted); std within tasks: the standard deviation of the anytime accuracy over each "
        "task's evaluations, averaged over tasks. Δ: the `memory` run minus the `none` run of the same seed (same "
        "training, bit for bit). FLOPs memory / none: training FLOPs including the recalibration forwards (ledger "
        f"item `bn_recalibration`, {100 * share:.1f}% of the recalibrated runs' FLOPs on average).",
        "",
        f"Command: `{params['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["er", "alsar"], help="e.g. er alsar replay")
    parser.add_argument("--datasets", nargs="+", default=["digits", "tinted_digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--eval_period", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (2 cores: at most 2)")
    parser.add_argument("--work_dir", default=str(ROOT / "out/anytime_stability"))
    publish.add_arguments(parser, ROOT / "docs/results/anytime_stability.md")
    args = parser.parse_args(argv)

    def produce() -> tuple[dict, list[dict]]:
        grid = declare(args)
        print(f"{len(grid)} runs, {args.jobs} at a time", file=sys.stderr)
        runs = completed(run_grid(grid, jobs=args.jobs, rerun=publish.rerun_arg(args), env=OFFLINE_ENV, cwd=ROOT))
        params = {k: getattr(args, k) for k in ("methods", "datasets", "seeds", "eval_period", "jobs")}
        return {**params, "command": publish.command(SCRIPT, argv)}, runs

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
