#!/usr/bin/env python
"""Adaptive freezing (aL) on and off, digits and Fashion-MNIST, timed round-robin inside ONE process.

For each dataset the same method runs with ``--freeze none`` and ``--freeze adaptive`` (same seed, same stream, same
iterations), alternating for ``--rounds`` rounds in one process with one torch thread, so the wall-clock ratio is
measured under the same machine load. Reports training FLOPs, backward FLOPs saved, training wall-clock (median
over rounds, evaluation excluded) and A_AUC, and the ratios adaptive / none. Writes ``docs/results_freezing.md``.

    python scripts/benchmark_freezing.py [--rounds 2] [--method er] [--fm_per_class 200] [--seeds 1 2 3]

Seed 1 is the timed round-robin run; further ``--seeds`` run once each in their own process (not timed, reused from
``--work_dir`` when the script is started again) and add A_AUC mean ± std per setting and the paired difference
adaptive − none per seed (same stream and initialisation, so its spread is freezing's own, not the seeds').
``--accuracy_only`` runs just those extra seeds. ``--variants freeze_warmup_steps=200`` adds untimed adaptive runs with
other aL settings (every seed, each a ``key=value[,key=value]`` list of ``hf-budgetcl run`` options), compared with
``none`` on the same seed.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import (
    mean_std,
    paired_difference,
    run_cli,
    variant_flags,
    write_fragment,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def train_time(result: dict) -> float:
    """Training wall-clock of one run: the whole run less its evaluations."""
    return result["wall_time_s"] - result["eval_time_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="er")
    parser.add_argument("--fm_per_class", type=int, default=200)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seed 1 first: the timed one")
    parser.add_argument("--work_dir", default=str(ROOT / "out/benchmark_freezing"))
    parser.add_argument("--jobs", type=int, default=1, help="extra-seed runs at a time (2 cores: at most 2)")
    parser.add_argument(
        "--variants", nargs="*", default=[], help="extra adaptive settings, e.g. freeze_warmup_steps=200"
    )
    parser.add_argument("--accuracy_only", action="store_true", help="run only the untimed extra seeds")
    parser.add_argument("--output", default=str(ROOT / "docs/results_freezing.md"))
    args = parser.parse_args()

    datasets = {
        # digits with the FM-D5 ResNet (stem + 3 stages): digits_resnet's 3 blocks never freeze (stem wins F/BF).
        "digits (fmd5_resnet)": [
            "--config",
            str(ROOT / "recipes/configs/digits_er.yaml"),
            "--model_name_or_path",
            "fmd5_resnet",
        ],
        f"Fashion-MNIST ({args.fm_per_class}/class)": [
            "--config",
            str(ROOT / "recipes/configs/fashion_mnist_er.yaml"),
            "--per_class_train",
            str(args.fm_per_class),
            "--per_class_test",
            "100",
        ],
    }
    runs = {
        f"{data}|{freeze}": [*argv, "--method", args.method, "--freeze", freeze]
        for data, argv in datasets.items()
        for freeze in ("none", "adaptive")
    }
    for variant in args.variants:
        _, flags = variant_flags(f"adaptive:{variant}")
        runs.update(
            {
                f"{data}|adaptive {variant}": [*argv, "--method", args.method, "--freeze", "adaptive", *flags]
                for data, argv in datasets.items()
            }
        )
    timed = [name for name in runs if name.endswith(("|none", "|adaptive"))]
    keys = [(name, seed) for seed in args.seeds for name in runs if seed != args.seeds[0] or name not in timed]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = pool.map(
            lambda key: run_cli(
                [*runs[key[0]], "--seed", str(key[1]), "--save_strategy", "no"],
                Path(args.work_dir) / f"{key[0].split(' ')[0]}_{key[0].split('|')[1].replace(' ', '_')}_s{key[1]}",
            ),
            keys,
        )
        extra = dict(zip(keys, done))
    if args.accuracy_only:
        return 0
    from benchmark_speed import round_robin

    results = round_robin({name: [*runs[name], "--seed", str(args.seeds[0])] for name in timed}, args.rounds)
    for name in runs:
        if name not in timed:
            results[name] = [extra[(name, args.seeds[0])]]
    lines = [
        f"`{args.method}` with `--freeze none` vs `--freeze adaptive`, seed {args.seeds[0]}, {args.rounds} rounds "
        "round-robin in one process (1 torch thread); time = median training wall-clock over rounds, evaluation "
        "excluded.",
        "",
        "| data | freeze | iterations | train TFLOPs | backward FLOPs saved | train time s | A_AUC | A_last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in datasets:
        rows = {f: results[f"{data}|{f}"] for f in ("none", "adaptive")}
        time_ = {f: float(np.median([train_time(r) for r in rs])) for f, rs in rows.items()}
        for f, rs in rows.items():
            r = rs[-1]
            lines.append(
                f"| {data} | {f} | {r['iterations']} | {r['train_flops'] / 1e12:.3f} | "
                f"{100 * r['backward_flops_saved_fraction']:.1f}% | {time_[f]:.1f} | "
                f"{100 * r['A_auc']:.2f} | {100 * r['A_last']:.2f} |"
            )
        a, n = rows["adaptive"][-1], rows["none"][-1]
        per_round = ", ".join(
            f"{train_time(ra) / train_time(rn):.3f}" for ra, rn in zip(rows["adaptive"], rows["none"])
        )
        lines.append(
            f"| {data} | **adaptive / none** | | **{a['train_flops'] / n['train_flops']:.3f}×** | | "
            f"**{time_['adaptive'] / time_['none']:.3f}×** (per round: {per_round}) | "
            f"**{100 * (a['A_auc'] - n['A_auc']):+.2f} pt** | |"
        )
    if len(args.seeds) > 1:
        lines += [
            "",
            f"A_AUC over seeds {', '.join(map(str, args.seeds))} (seed {args.seeds[0]} from the timed runs, "
            "the others run once each); the paired difference is adaptive − none on the same seed.",
            "",
            "| data | none A_AUC | adaptive A_AUC | paired Δ A_AUC (pt) | adaptive / none FLOPs |",
            "|---|---|---|---|---|",
        ]
        for data in datasets:
            per = {
                name.split("|")[1]: [results[name][-1], *(extra[(name, s)] for s in args.seeds[1:])]
                for name in runs
                if name.startswith(f"{data}|")
            }
            for f in [k for k in per if k != "none"]:
                lines.append(
                    f"| {data} | {mean_std([r['A_auc'] for r in per['none']], 100)} | {f}: "
                    f"{mean_std([r['A_auc'] for r in per[f]], 100)} | "
                    f"{paired_difference(per[f], per['none'])} | "
                    f"{mean_std([a['train_flops'] / n['train_flops'] for a, n in zip(per[f], per['none'])], 1, 3)}× |"
                )
    text = "\n".join(lines) + "\n"
    write_fragment(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
