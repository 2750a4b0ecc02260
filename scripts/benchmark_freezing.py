#!/usr/bin/env python
"""Adaptive freezing (aL) on and off, digits and Fashion-MNIST, timed round-robin inside ONE process.

For each dataset the same method runs with ``--freeze none`` and ``--freeze adaptive`` (same seed, same stream, same
iterations), alternating for ``--rounds`` rounds in one process with one torch thread, so the wall-clock ratio is
measured under the same machine load. Reports training FLOPs, backward FLOPs saved, training wall-clock (median
over rounds, evaluation excluded) and A_AUC, and the ratios adaptive / none. Writes ``docs/results_freezing.md``.

    python scripts/benchmark_freezing.py [--rounds 2] [--method er] [--fm_per_class 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from bench_common import write_fragment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="er")
    parser.add_argument("--fm_per_class", type=int, default=200)
    parser.add_argument("--output", default=str(ROOT / "docs/results_freezing.md"))
    args = parser.parse_args()
    from benchmark_speed import round_robin

    datasets = {
        # digits with the FM-D5 ResNet (stem + 3 stages): digits_resnet's 3 blocks never freeze (stem wins F/BF).
        "digits (fmd5_resnet)": ["--config", str(ROOT / "recipes/configs/digits_er.yaml"),
                                 "--model_name_or_path", "fmd5_resnet"],
        f"Fashion-MNIST ({args.fm_per_class}/class)": [
            "--config", str(ROOT / "recipes/configs/fashion_mnist_er.yaml"),
            "--per_class_train", str(args.fm_per_class), "--per_class_test", "100"],
    }
    runs = {f"{data}|{freeze}": [*argv, "--method", args.method, "--freeze", freeze, "--seed", "1"]
            for data, argv in datasets.items() for freeze in ("none", "adaptive")}
    results = round_robin(runs, args.rounds)
    lines = [
        f"`{args.method}` with `--freeze none` vs `--freeze adaptive`, seed 1, {args.rounds} rounds round-robin in one "
        "process (1 torch thread); time = median training wall-clock over rounds, evaluation excluded.",
        "",
        "| data | freeze | iterations | train TFLOPs | backward FLOPs saved | train time s | A_AUC | A_last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in datasets:
        rows = {f: results[f"{data}|{f}"] for f in ("none", "adaptive")}
        time_ = {f: float(np.median([r["wall_time_s"] - r["eval_time_s"] for r in rs])) for f, rs in rows.items()}
        for f, rs in rows.items():
            r = rs[-1]
            lines.append(f"| {data} | {f} | {r['iterations']} | {r['train_flops'] / 1e12:.3f} | "
                         f"{100 * r['backward_flops_saved_fraction']:.1f}% | {time_[f]:.1f} | "
                         f"{100 * r['A_auc']:.2f} | {100 * r['A_last']:.2f} |")
        a, n = rows["adaptive"][-1], rows["none"][-1]
        lines.append(f"| {data} | **adaptive / none** | | **{a['train_flops'] / n['train_flops']:.3f}×** | | "
                     f"**{time_['adaptive'] / time_['none']:.3f}×** | **{100 * (a['A_auc'] - n['A_auc']):+.2f} pt** | |")
    text = "\n".join(lines) + "\n"
    write_fragment(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
