#!/usr/bin/env python
"""ER vs aL-SAR on the tiny-LLaVA easy-vqa instruction stream (LoRA on the decoder blocks), side by side.

The two methods run at the same time, as two ``hf-budgetcl run`` processes with one torch thread each and the same
seed, so that both see the same machine load and their wall-clock times are comparable (a ratio within one
benchmark run, not an absolute speed). Each uses its YAML config unchanged (recipes/configs/
easyvqa_llava_tiny_{er,alsar}.yaml) plus any overrides given after ``--``.

    python scripts/benchmark_vlm.py                      # writes docs/results_vlm.md
    python scripts/benchmark_vlm.py --seeds 1 2 3        # several seeds (pairs run one after another)
    python scripts/benchmark_vlm.py --quick              # smoke run (few rows), table under --work_dir
    python scripts/benchmark_vlm.py --methods er alsar er:freeze=adaptive   # + ER with aL only (an ablation)

Finished runs (results.json under --work_dir) are reused when the script is started again, unless --rerun.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import (
    mean_std,
    paired_difference,
    run_cli,
    variant_dirname,
    variant_flags,
    write_fragment,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {m: ROOT / f"recipes/configs/easyvqa_llava_tiny_{m}.yaml" for m in ("er", "alsar")}
QUICK = ["--max_train_questions", "96", "--max_test_questions", "48", "--eval_period", "48", "--memory_size", "48"]


def run_one(entry: str, seed: int, args: argparse.Namespace) -> dict:
    """``entry`` = a config name (er, alsar), optionally with overrides: ``er:freeze=adaptive``."""
    method, flags = variant_flags(entry)
    if method not in CONFIGS:
        raise SystemExit(f"--methods: {method!r} is not one of {', '.join(CONFIGS)}")
    name = variant_dirname(entry)
    return run_cli(
        ["--config", str(CONFIGS[method]), "--seed", str(seed), *(QUICK if args.quick else []), *args.extra, *flags],
        Path(args.work_dir) / f"{name}_s{seed}",
        threads=args.threads,
        rerun=args.rerun,
    )


def mean_frozen_blocks(result: dict) -> float:
    """Mean number of frozen blocks per iteration, from the histogram {n_frozen: iterations}."""
    histogram = {int(k): v for k, v in result["frozen_blocks_histogram"].items()}
    total = sum(histogram.values())
    return sum(k * v for k, v in histogram.items()) / total if total else 0.0


def table(runs: dict[str, list[dict]], args: argparse.Namespace) -> str:
    first = next(iter(runs.values()))[0]
    n_blocks = len(runs.get("alsar", [first])[0]["freeze"].get("fisher", [])) or "?"
    lines = [
        "## Vision-language instruction stream: ER vs aL-SAR (tiny LLaVA, easy-vqa)",
        "",
        f"easy-vqa's real images and questions, disjoint stream over 3 concepts (shape, colour, yes/no), "
        f"{first['stream']['length']} training questions, exact match of the generated answer on held-out "
        f"questions of the concepts seen so far (evaluated every {args.eval_period_label} samples). A tiny "
        f"random-weight LLaVA (CLIP tower frozen, Llama decoder with LoRA on its {n_blocks} blocks), batch "
        f"{first['batch_size']}, online_iter {first['online_iter']}, seeds {', '.join(map(str, args.seeds))}. "
        "Majority baseline: always the most frequent training answer of the seen concepts. TFLOPs: measured "
        "training FLOPs (FlopCounterMode units, 2 per MAC) incl. each method's bookkeeping. Both methods ran at "
        f"the same time, {args.threads} torch thread each, on a shared machine: compare wall-clock times within "
        "this table only (runs beyond the first two ran after them, under other load).",
        "",
        "| method | A_AUC (%) | A_last (%) | Δ A_AUC vs er, paired (pt) | majority baseline (%) | train TFLOPs | "
        "backward FLOPs saved | mean frozen blocks | iterations | memory (MiB) | wall-clock (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rs in runs.items():
        lines.append(
            f"| `{method}` | {mean_std([r['A_auc'] for r in rs], 100)} | {mean_std([r['A_last'] for r in rs], 100)} | "
            f"{paired_difference(rs, runs.get('er'))} | "
            f"{mean_std([r['majority_baseline'] for r in rs], 100)} | {mean_std([r['train_flops'] for r in rs], 1e-12, 3)} | "
            f"{mean_std([r['backward_flops_saved_fraction'] for r in rs], 100, 1)}% | "
            f"{mean_std([mean_frozen_blocks(r) for r in rs], 1, 2)} of {n_blocks} | "
            f"{mean_std([r['iterations'] for r in rs], 1, 0)} | "
            f"{mean_std([r['memory_bytes']['total'] for r in rs], 2**-20, 3)} | {mean_std([r['wall_time_s'] for r in rs], 1, 0)} |"
        )
    for method, rs in runs.items():
        if method == "alsar":
            hist = ", ".join(f"{k}: {v}" for k, v in rs[0]["frozen_blocks_histogram"].items())
            lines += ["", f"aL-SAR frozen-prefix histogram (seed {args.seeds[0]}, frozen blocks: iterations): {hist}."]
    lines += ["", f"Command: `{' '.join(['python', 'scripts/benchmark_vlm.py', *sys.argv[1:]])}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=None, help="markdown fragment (default docs/results_vlm.md; --quick: work_dir)")
    p.add_argument("--work_dir", default=str(ROOT / "out/benchmark_vlm"))
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--methods", nargs="+", default=["er", "alsar"], help="config name[:key=value,...]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--rerun", action="store_true", help="ignore results.json of finished runs")
    p.add_argument("--quick", action="store_true", help="smoke run: a few dozen rows")
    p.add_argument("extra", nargs="*", help="further hf-budgetcl overrides after --, e.g. -- --online_iter 2")
    args = p.parse_args(argv)
    if args.quick and args.work_dir == str(ROOT / "out/benchmark_vlm"):
        args.work_dir = str(ROOT / "out/benchmark_vlm_quick")
    default_output = Path(args.work_dir) / "results_vlm.md" if args.quick else ROOT / "docs/results_vlm.md"
    args.output = args.output or str(default_output)
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # the methods of one seed run side by side, two at a time
        with ThreadPoolExecutor(2) as pool:
            pair = list(pool.map(lambda m, s=seed: run_one(m, s, args), list(runs)))
        for method, result in zip(runs, pair):
            runs[method].append(result)
    curve = next(iter(runs.values()))[0]["curve"]
    args.eval_period_label = curve[0]["samples"] if curve else "?"
    write_fragment(args.output, table(runs, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
