#!/usr/bin/env python
"""Adaptive freezing (aL) on and off, digits and Fashion-MNIST, timed round-robin inside ONE process.

For each dataset the same method runs with ``--freeze none`` and ``--freeze adaptive`` (same seed, same stream, same
iterations), alternating for ``--rounds`` rounds in one process with one torch thread, so the wall-clock ratio is
measured under the same machine load. Reports training FLOPs, backward FLOPs saved, training wall-clock (median
over rounds, evaluation excluded) and A_AUC, and the ratios adaptive / none. Writes ``docs/results/freezing.md`` next to its raw per-run ``freezing.json`` (``--table_only`` rebuilds the table
from that alone).

    python scripts/benchmark_freezing.py [--rounds 2] [--method er] [--fm_per_class 200] [--seeds 1 2 3]

Seed 1 is the timed round-robin run; further ``--seeds`` run once each in their own process (not timed, reused from
``--work_dir`` when the script is started again) and add A_AUC mean ± std per setting and the paired difference
adaptive − none per seed (same stream and initialisation, so its spread is freezing's own, not the seeds').
``--accuracy_only`` runs just those extra seeds (through the harness's ``run_grid``, arguments checked on reuse). ``--variants freeze_warmup_steps=200`` adds untimed adaptive runs with
other aL settings (every seed, each a ``key=value[,key=value]`` list of ``hf-budgetcl run`` options), compared with
``none`` on the same seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.grid import OFFLINE_ENV, Run, completed, run_grid, variant_flags
from hf_budgetcl.compare.summary import group, mean_std, paired_difference
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
SCRIPT = "scripts/benchmark_freezing.py"
TIMED = ("none", "adaptive")


def train_time(result: dict) -> float:
    """Training wall-clock of one run: the whole run less its evaluations."""
    return result["wall_time_s"] - result["eval_time_s"]


def settings(args: argparse.Namespace) -> dict[str, list[str]]:
    """``"<data>|<freeze setting>"`` -> its ``hf-budgetcl run`` arguments, the seed aside."""
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
        for freeze in TIMED
    }
    for variant in args.variants:
        _, flags = variant_flags(f"adaptive:{variant}")
        runs.update(
            {
                f"{data}|adaptive {variant}": [*argv, "--method", args.method, "--freeze", "adaptive", *flags]
                for data, argv in datasets.items()
            }
        )
    return runs


def declare(args: argparse.Namespace, runs: dict[str, list[str]]) -> list[Run]:
    """The untimed runs, one process each: every setting on the seeds after the first, the variants on all."""
    return [
        Run(
            Path(args.work_dir) / f"{name.split(' ')[0]}_{name.split('|')[1].replace(' ', '_')}_s{seed}",
            [*runs[name], "--seed", str(seed), "--save_strategy", "no"],
            {"name": name, "seed": seed},
        )
        for seed in args.seeds
        for name in runs
        if seed != args.seeds[0] or not name.endswith(TIMED)
    ]


def table(params: dict, records: list[dict]) -> str:
    seeds, datasets = params["seeds"], params["datasets"]
    by = group(records, lambda r: (r["label"]["name"], r["label"]["seed"]))  # timed: one result per round
    lines = [
        f"`{params['method']}` with `--freeze none` vs `--freeze adaptive`, seed {seeds[0]}, {params['rounds']} rounds "
        "round-robin in one process (1 torch thread); time = median training wall-clock over rounds, evaluation "
        "excluded.",
        "",
    ]
    rows = []
    for data in datasets:
        timed = {f: by[(f"{data}|{f}", seeds[0])] for f in TIMED}
        time_ = {f: float(np.median([train_time(r) for r in rs])) for f, rs in timed.items()}
        for f, rs in timed.items():
            r = rs[-1]
            rows.append(
                [
                    data,
                    f,
                    r["iterations"],
                    f"{r['train_flops'] / 1e12:.3f}",
                    f"{100 * r['backward_flops_saved_fraction']:.1f}%",
                    f"{time_[f]:.1f}",
                    f"{100 * r['A_auc']:.2f}",
                    f"{100 * r['A_last']:.2f}",
                ]
            )
        a, n = timed["adaptive"][-1], timed["none"][-1]
        per_round = ", ".join(
            f"{train_time(ra) / train_time(rn):.3f}" for ra, rn in zip(timed["adaptive"], timed["none"])
        )
        rows.append(
            [
                data,
                "**adaptive / none**",
                "",
                f"**{a['train_flops'] / n['train_flops']:.3f}×**",
                "",
                f"**{time_['adaptive'] / time_['none']:.3f}×** (per round: {per_round})",
                f"**{100 * (a['A_auc'] - n['A_auc']):+.2f} pt**",
                "",
            ]
        )
    header = ["data", "freeze", "iterations", "train TFLOPs", "backward FLOPs saved", "train time s", "A_AUC"]
    lines += markdown_table([*header, "A_last"], rows)
    if len(seeds) > 1:
        lines += [
            "",
            f"A_AUC over seeds {', '.join(map(str, seeds))} (seed {seeds[0]} from the timed runs, "
            "the others run once each); the paired difference is adaptive − none on the same seed.",
            "",
        ]
        rows = []
        for data in datasets:
            per = {
                name.split("|")[1]: [by[(name, seeds[0])][-1], *(by[(name, s)][0] for s in seeds[1:])]
                for name in params["settings"]
                if name.startswith(f"{data}|")
            }
            for f in [k for k in per if k != "none"]:
                ratios = [a["train_flops"] / n["train_flops"] for a, n in zip(per[f], per["none"])]
                rows.append(
                    [
                        data,
                        mean_std([r["A_auc"] for r in per["none"]], 100),
                        f"{f}: {mean_std([r['A_auc'] for r in per[f]], 100)}",
                        paired_difference(per[f], per["none"]),
                        f"{mean_std(ratios, 1, 3)}×",
                    ]
                )
        header = ["data", "none A_AUC", "adaptive A_AUC", "paired Δ A_AUC (pt)", "adaptive / none FLOPs"]
        lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


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
    publish.add_arguments(parser, ROOT / "docs/results/freezing.md")
    args = parser.parse_args()

    def produce() -> tuple[dict, list[dict]]:
        runs = settings(args)
        extra = completed(
            run_grid(declare(args, runs), jobs=args.jobs, rerun=publish.rerun_arg(args), env=OFFLINE_ENV, cwd=ROOT)
        )
        if args.accuracy_only:
            raise SystemExit(0)
        from benchmark_speed import round_robin

        timed = [name for name in runs if name.endswith(TIMED)]
        rounds = round_robin({name: [*runs[name], "--seed", str(args.seeds[0])] for name in timed}, args.rounds)
        records = [
            {**r, "label": {"name": name, "seed": args.seeds[0], "round": i}}
            for name, rs in rounds.items()
            for i, r in enumerate(rs)
        ]
        params = {
            "method": args.method,
            "rounds": args.rounds,
            "seeds": args.seeds,
            "datasets": list(dict.fromkeys(name.split("|")[0] for name in runs)),
            "settings": list(runs),
        }
        return params, records + extra

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
