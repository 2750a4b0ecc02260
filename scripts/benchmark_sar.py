#!/usr/bin/env python
"""SAR vs replay at equal FLOPs on FM-D5 (Fashion-MNIST, 1000 / 500 images per class), Gaussian and disjoint streams.

Both methods draw every batch from memory with the same ``online_iter`` and batch size, so they run the same number
of identical training iterations; SAR's bookkeeping FLOPs are charged to its ledger and reported. Both get the same
memory budget in *bytes* (model + 500 samples): SAR's statistics are paid for with replay slots.

    python scripts/benchmark_sar.py                  # 3 seeds x 2 streams x 2 methods, writes docs/results_sar.md
    python scripts/benchmark_sar.py --quick          # smoke run: 1 seed, 60 / 30 images per class
    python scripts/benchmark_sar.py --jobs 2         # two runs at a time, one torch thread each

Every run is a separate ``hf-budgetcl run`` process (recipes/configs/fashion_mnist_er.yaml with overrides); its
results.json is kept under --work_dir, and finished runs are reused when the script is started again.
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
CONFIG = ROOT / "recipes/configs/fashion_mnist_er.yaml"
SAMPLE_BYTES = 28 * 28 + 8  # uint8 image + int64 label (hf_budgetcl.data.image_rows.sample_nbytes)


def equal_byte_budget(memory_size: int) -> int:
    """Replay's total budget: the model plus ``memory_size`` samples; every method gets exactly this many bytes."""
    from hf_budgetcl.accounting.memory_budget import model_bytes
    from hf_budgetcl.models import build_image_classifier

    model = build_image_classifier("fmd5_resnet", num_labels=10, num_channels=1, image_size=28)
    return model_bytes(model) + memory_size * SAMPLE_BYTES


def run_one(entry: str, stream: str, seed: int, args: argparse.Namespace, budget: int) -> dict:
    method, flags = variant_flags(entry)
    name = variant_dirname(entry)
    return run_cli(
        [
            "--config",
            str(CONFIG),
            "--method",
            method,
            "--stream",
            stream,
            "--seed",
            str(seed),
            "--per_class_train",
            str(args.per_class_train),
            "--per_class_test",
            str(args.per_class_test),
            "--eval_period",
            str(args.eval_period),
            "--memory_size",
            str(args.memory_size),
            "--memory_budget_bytes",
            str(budget),
            *args.extra,
            *flags,
        ],
        Path(args.work_dir) / f"{stream}_{name}_s{seed}",
        threads=args.threads,
        rerun=args.rerun,
    )


def table(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> str:
    lines = [
        f"# SAR vs replay at equal FLOPs: Fashion-MNIST {args.per_class_train}/class, {args.memory_size}-slot memory"
        + (" (FM-D5 size)" if (args.per_class_train, args.per_class_test) == (1000, 500) else ""),
        "",
        f"Fashion-MNIST, {args.per_class_train} / {args.per_class_test} images per class, `fmd5_resnet`, batch 16 "
        f"(all from memory), online_iter 1, Adam 3e-4, memory budget {args.budget:,} bytes (= model + "
        f"{args.memory_size} samples; SAR pays its statistics with replay slots), eval every {args.eval_period} "
        f"samples, seeds {', '.join(map(str, args.seeds))}; mean ± std (ddof 1). TFLOPs: measured training FLOPs "
        "(FlopCounterMode units, 2 per MAC) incl. SAR's bookkeeping; wall: whole run incl. evaluation.",
        "",
        "| stream | method | A_AUC (%) | A_last (%) | Δ A_AUC vs replay, paired (pt) | TFLOPs | SAR extra GFLOPs | "
        "memory slots | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (stream, method), rs in runs.items():
        extra = [sum(v for k, v in r["flops_items"].items() if k.startswith("sar_")) for r in rs]
        lines.append(
            f"| {stream} | `{method}` | {mean_std([r['A_auc'] for r in rs], 100)} | {mean_std([r['A_last'] for r in rs], 100)} | "
            f"{paired_difference(rs, runs.get((stream, 'replay')))} | "
            f"{mean_std([r['train_flops'] for r in rs], 1e-12, 3)} | {mean_std(extra, 1e-9, 2)} | "
            f"{mean_std([r['memory_slots'] for r in rs], 1, 0)} | {mean_std([r['wall_time_s'] for r in rs], 1, 0)} |"
        )
    lines += ["", f"Command: `{' '.join(['python', 'scripts/benchmark_sar.py', *sys.argv[1:]])}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=None, help="markdown table (default docs/results_sar.md; --quick: work_dir)")
    p.add_argument("--work_dir", default=str(ROOT / "out/benchmark_sar"))
    p.add_argument(
        "--methods",
        nargs="+",
        default=["replay", "sar"],
        help="method or method:key=value,... (an ablation), e.g. sar:similarity_ema=1e-12",
    )
    p.add_argument("--streams", nargs="+", default=["gaussian", "disjoint"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--per_class_train", type=int, default=1000)
    p.add_argument("--per_class_test", type=int, default=500)
    p.add_argument("--eval_period", type=int, default=500)
    p.add_argument("--memory_size", type=int, default=500)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (2 cores: at most 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--rerun", action="store_true", help="ignore results.json of finished runs")
    p.add_argument("--quick", action="store_true", help="smoke run: seed 1, 60 / 30 images per class")
    p.add_argument("extra", nargs="*", help="further hf-budgetcl overrides after --, e.g. -- --sar_temperature 0.5")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.per_class_train, args.per_class_test, args.eval_period = [1], 60, 30, 100
        args.memory_size = min(args.memory_size, 100)
        if args.work_dir == str(ROOT / "out/benchmark_sar"):
            args.work_dir = str(ROOT / "out/benchmark_sar_quick")
    args.output = args.output or str(
        Path(args.work_dir) / "results.md" if args.quick else ROOT / "docs/results_sar.md"
    )
    args.budget = equal_byte_budget(args.memory_size)
    jobs = [(m, s, seed) for s in args.streams for m in args.methods for seed in args.seeds]
    print(f"{len(jobs)} runs, {args.jobs} at a time", file=sys.stderr)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(*j, args, args.budget), jobs))
    runs: dict[tuple[str, str], list[dict]] = {}
    for (method, stream, _), r in zip(jobs, results):
        runs.setdefault((stream, method), []).append(r)
    write_fragment(args.output, table(runs, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
