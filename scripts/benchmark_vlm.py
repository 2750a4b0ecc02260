#!/usr/bin/env python
"""ER vs aL-SAR on the tiny-LLaVA easy-vqa instruction stream (LoRA on the decoder blocks), side by side.

The methods of one seed run at the same time, as ``hf-budgetcl run`` processes with one torch thread each (two at a
time), so that they see the same machine load and their wall-clock times are comparable (a ratio within one
benchmark run, not an absolute speed). Each uses its YAML config unchanged (recipes/configs/
easyvqa_llava_tiny_{er,alsar}.yaml) plus any overrides given after ``--``.

    python scripts/benchmark_vlm.py                      # writes docs/results/vlm.md
    python scripts/benchmark_vlm.py --seeds 1 2 3        # several seeds
    python scripts/benchmark_vlm.py --quick              # smoke run (few rows), table under --work_dir
    python scripts/benchmark_vlm.py --methods er alsar er:freeze=adaptive   # + ER with aL only (an ablation)
    python scripts/benchmark_vlm.py --table_only         # the table again from docs/results/vlm.json

Finished runs (results.json under --work_dir, same arguments) are reused when the script is started again, unless
--rerun.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.grid import OFFLINE_ENV, Run, completed, run_grid, variant_dirname, variant_flags
from hf_budgetcl.compare.summary import group, mean_std, paired_difference
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/benchmark_vlm.py"
QUICK = ["--max_train_questions", "96", "--max_test_questions", "48", "--eval_period", "48", "--memory_size", "48"]
HEADER = [
    "method",
    "A_AUC (%)",
    "A_last (%)",
    "Δ A_AUC vs er, paired (pt)",
    "majority baseline (%)",
    "train TFLOPs",
    "backward FLOPs saved",
    "mean frozen blocks",
    "iterations",
    "memory (MiB)",
    "wall-clock (s)",
]


def config_of(name: str) -> Path:
    """The recipe config of an entry's name (er, alsar); a name without one fails the grid's validation."""
    return ROOT / f"recipes/configs/easyvqa_llava_tiny_{name}.yaml"


def declare(args: argparse.Namespace) -> list[Run]:
    """``entry`` = a config name (er, alsar), optionally with overrides: ``er:freeze=adaptive``; seed-major, so the
    methods of one seed run side by side."""
    runs = []
    for seed in args.seeds:
        for entry in args.methods:
            name, flags = variant_flags(entry)
            cli = ["--config", config_of(name), "--seed", seed, *(QUICK if args.quick else []), *args.extra, *flags]
            runs.append(Run(Path(args.work_dir) / f"{variant_dirname(entry)}_s{seed}", cli, {"method": entry}))
    return runs


def mean_frozen_blocks(result: dict) -> float:
    """Mean number of frozen blocks per iteration, from the histogram {n_frozen: iterations}."""
    histogram = {int(k): v for k, v in result["frozen_blocks_histogram"].items()}
    total = sum(histogram.values())
    return sum(k * v for k, v in histogram.items()) / total if total else 0.0


def table(params: dict, results: list[dict]) -> str:
    runs = group(results, lambda r: r["label"]["method"])
    first = next(iter(runs.values()))[0]
    n_blocks = len(runs.get("alsar", [first])[0]["freeze"].get("fisher", [])) or "?"
    eval_period = first["curve"][0]["samples"] if first["curve"] else "?"
    rows = [
        [
            f"`{method}`",
            mean_std([r["A_auc"] for r in rs], 100),
            mean_std([r["A_last"] for r in rs], 100),
            paired_difference(rs, runs.get("er")),
            mean_std([r["majority_baseline"] for r in rs], 100),
            mean_std([r["train_flops"] for r in rs], 1e-12, 3),
            f"{mean_std([r['backward_flops_saved_fraction'] for r in rs], 100, 1)}%",
            f"{mean_std([mean_frozen_blocks(r) for r in rs], 1, 2)} of {n_blocks}",
            mean_std([r["iterations"] for r in rs], 1, 0),
            mean_std([r["memory_bytes"]["total"] for r in rs], 2**-20, 3),
            mean_std([r["wall_time_s"] for r in rs], 1, 0),
        ]
        for method, rs in runs.items()
    ]
    lines = [
        "## Vision-language instruction stream: ER vs aL-SAR (tiny LLaVA, easy-vqa)",
        "",
        f"easy-vqa's real images and questions, disjoint stream over 3 concepts (shape, colour, yes/no), "
        f"{first['stream']['length']} training questions, exact match of the generated answer on held-out "
        f"questions of the concepts seen so far (evaluated every {eval_period} samples). A tiny "
        f"random-weight LLaVA (CLIP tower frozen, Llama decoder with LoRA on its {n_blocks} blocks), batch "
        f"{first['batch_size']}, online_iter {first['online_iter']}, seeds {', '.join(map(str, params['seeds']))}. "
        "Majority baseline: always the most frequent training answer of the seen concepts. TFLOPs: measured "
        "training FLOPs (FlopCounterMode units, 2 per MAC) incl. each method's bookkeeping. Both methods ran at "
        f"the same time, {params['threads']} torch thread each, on a shared machine: compare wall-clock times within "
        "this table only (runs beyond the first two ran after them, under other load).",
        "",
        *markdown_table(HEADER, rows),
    ]
    if "alsar" in runs:
        hist = ", ".join(f"{k}: {v}" for k, v in runs["alsar"][0]["frozen_blocks_histogram"].items())
        lines += [
            "",
            f"aL-SAR frozen-prefix histogram (seed {params['seeds'][0]}, frozen blocks: iterations): {hist}.",
        ]
    lines += ["", f"Command: `{params['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default=str(ROOT / "out/benchmark_vlm"))
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--methods", nargs="+", default=["er", "alsar"], help="config name[:key=value,...]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--quick", action="store_true", help="smoke run: a few dozen rows")
    publish.add_arguments(p, "docs/results/vlm.md (--quick: <work_dir>/results_vlm.md)")
    p.add_argument("extra", nargs="*", help="further hf-budgetcl overrides after --, e.g. -- --online_iter 2")
    args = p.parse_args(argv)
    if args.quick and args.work_dir == str(ROOT / "out/benchmark_vlm"):
        args.work_dir = str(ROOT / "out/benchmark_vlm_quick")
    if args.output == p.get_default("output"):
        args.output = str(Path(args.work_dir) / "results_vlm.md" if args.quick else ROOT / "docs/results/vlm.md")

    def produce() -> tuple[dict, list[dict]]:
        runs = completed(
            run_grid(
                declare(args), jobs=2, threads=args.threads, rerun=publish.rerun_arg(args), env=OFFLINE_ENV, cwd=ROOT
            )
        )
        command = publish.command(SCRIPT, argv)
        return {"seeds": args.seeds, "threads": args.threads, "command": command}, runs

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
