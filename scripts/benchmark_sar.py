#!/usr/bin/env python
"""SAR vs replay at equal FLOPs on FM-D5 (Fashion-MNIST, 1000 / 500 images per class), Gaussian and disjoint streams.

Both methods draw every batch from memory with the same ``online_iter`` and batch size, so they run the same number
of identical training iterations; SAR's bookkeeping FLOPs are charged to its ledger and reported. Both get the same
memory budget in *bytes* (model + 500 samples): SAR's statistics are paid for with replay slots.

    python scripts/benchmark_sar.py                  # 3 seeds x 2 streams x 2 methods, writes docs/results/sar.md
    python scripts/benchmark_sar.py --quick          # smoke run: 1 seed, 60 / 30 images per class
    python scripts/benchmark_sar.py --jobs 2         # two runs at a time, one torch thread each
    python scripts/benchmark_sar.py --table_only     # the table again from docs/results/sar.json

Every run is a separate ``hf-budgetcl run`` process (recipes/configs/fashion_mnist_er.yaml with overrides); its
results.json is kept under --work_dir, and finished runs are reused (same arguments) when the script is started again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.grid import (
    OFFLINE_ENV,
    Run,
    completed,
    fold_method_options,
    run_grid,
    variant_dirname,
    variant_flags,
)
from hf_budgetcl.compare.summary import group, mean_std, paired_difference
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes/configs/fashion_mnist_er.yaml"
SCRIPT = "scripts/benchmark_sar.py"
SAMPLE_BYTES = 28 * 28 + 8  # uint8 image + int64 label (hf_budgetcl.data.image_rows.sample_nbytes)
HEADER = [
    "stream",
    "method",
    "A_AUC (%)",
    "A_last (%)",
    "Δ A_AUC vs replay, paired (pt)",
    "TFLOPs",
    "SAR extra GFLOPs",
    "memory slots",
    "wall (s)",
]


def equal_byte_budget(memory_size: int) -> int:
    """Replay's total budget: the model plus ``memory_size`` samples; every method gets exactly this many bytes."""
    from hf_budgetcl.accounting.memory_budget import model_bytes
    from hf_budgetcl.models import build_image_classifier

    model = build_image_classifier("fmd5_resnet", num_labels=10, num_channels=1, image_size=28)
    return model_bytes(model) + memory_size * SAMPLE_BYTES


def declare(args: argparse.Namespace, budget: int) -> list[Run]:
    """Every stream × method entry (``method[:key=value,...]``) × seed."""
    runs = []
    for stream in args.streams:
        for entry in args.methods:
            method, flags = variant_flags(entry)
            for seed in args.seeds:
                cli = [
                    *("--config", CONFIG, "--method", method, "--stream", stream, "--seed", seed),
                    *("--per_class_train", args.per_class_train, "--per_class_test", args.per_class_test),
                    *("--eval_period", args.eval_period, "--memory_size", args.memory_size),
                    *("--memory_budget_bytes", budget, *args.extra, *flags),
                ]
                label = {"stream": stream, "method": entry, "seed": seed}
                run_dir = Path(args.work_dir) / f"{stream}_{variant_dirname(entry)}_s{seed}"
                runs.append(Run(run_dir, fold_method_options(cli), label))
    return runs


def table(params: dict, runs: list[dict]) -> str:
    p = params
    fm_d5 = (p["per_class_train"], p["per_class_test"]) == (1000, 500)
    groups = group(runs, lambda r: (r["label"]["stream"], r["label"]["method"]))
    rows = []
    for (stream, method), rs in groups.items():
        extra = [sum(v for k, v in r["flops_items"].items() if k.startswith("sar_")) for r in rs]
        rows.append(
            [
                stream,
                f"`{method}`",
                mean_std([r["A_auc"] for r in rs], 100),
                mean_std([r["A_last"] for r in rs], 100),
                paired_difference(rs, groups.get((stream, "replay"))),
                mean_std([r["train_flops"] for r in rs], 1e-12, 3),
                mean_std(extra, 1e-9, 2),
                mean_std([r["memory_slots"] for r in rs], 1, 0),
                mean_std([r["wall_time_s"] for r in rs], 1, 0),
            ]
        )
    lines = [
        f"# SAR vs replay at equal FLOPs: Fashion-MNIST {p['per_class_train']}/class, {p['memory_size']}-slot memory"
        + (" (FM-D5 size)" if fm_d5 else ""),
        "",
        f"Fashion-MNIST, {p['per_class_train']} / {p['per_class_test']} images per class, `fmd5_resnet`, batch 16 "
        f"(all from memory), online_iter 1, Adam 3e-4, memory budget {p['budget']:,} bytes (= model + "
        f"{p['memory_size']} samples; SAR pays its statistics with replay slots), eval every {p['eval_period']} "
        f"samples, seeds {', '.join(map(str, p['seeds']))}; mean ± std (ddof 1). TFLOPs: measured training FLOPs "
        "(FlopCounterMode units, 2 per MAC) incl. SAR's bookkeeping; wall: whole run incl. evaluation.",
        "",
        *markdown_table(HEADER, rows),
        "",
        f"Command: `{p['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--quick", action="store_true", help="smoke run: seed 1, 60 / 30 images per class")
    publish.add_arguments(p, "docs/results/sar.md (--quick: <work_dir>/results.md)")
    p.add_argument("extra", nargs="*", help="further hf-budgetcl overrides after --, e.g. -- --sar_temperature 0.5")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.per_class_train, args.per_class_test, args.eval_period = [1], 60, 30, 100
        args.memory_size = min(args.memory_size, 100)
        if args.work_dir == str(ROOT / "out/benchmark_sar"):
            args.work_dir = str(ROOT / "out/benchmark_sar_quick")
    if args.output == p.get_default("output"):
        args.output = str(Path(args.work_dir) / "results.md" if args.quick else ROOT / "docs/results/sar.md")

    def produce() -> tuple[dict, list[dict]]:
        budget = equal_byte_budget(args.memory_size)
        grid = declare(args, budget)
        print(f"{len(grid)} runs, {args.jobs} at a time", file=sys.stderr)
        runs = completed(
            run_grid(
                grid, jobs=args.jobs, threads=args.threads, rerun=publish.rerun_arg(args), env=OFFLINE_ENV, cwd=ROOT
            )
        )
        params = {k: getattr(args, k) for k in ("per_class_train", "per_class_test", "eval_period", "memory_size")}
        command = publish.command(SCRIPT, argv)
        return {**params, "seeds": args.seeds, "budget": budget, "command": command}, runs

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
