#!/usr/bin/env python
"""FM-D5 (docs: /shared/reference/benchmark-protocol.md): Fashion-MNIST, disjoint, 5 tasks, seeds 1-3.

Runs, on this machine and in the same session, so that speeds are comparable as ratios:

* ``plain``: a minimal plain-PyTorch online ER loop written to the protocol (the yardstick's first row), on the
  same ResNet architecture as ours but as bare ``nn.Module`` code, no Trainer, no accounting;
* hf_budgetcl ``er`` and ``alsar`` (and any other ``--methods``) through ``hf-budgetcl run`` with
  ``recipes/configs/fashion_mnist_er.yaml``.

Every run is a separate process with one torch thread (the harness's ``run_grid``); ``--jobs`` of them at a time;
finished runs under ``--work_dir`` are reused while their arguments are unchanged. A plain run and an hf_budgetcl
run of the same seed are started next to each other, so they see the same machine load. Writes the table
``docs/results/fmd5.md`` next to the raw per-run ``docs/results/fmd5.json``.

    python scripts/benchmark_fmd5.py [--seeds 1,2,3] [--methods er,alsar] [--jobs 2] [--per_class_train 1000]
    python scripts/benchmark_fmd5.py --rerun er_seed1 alsar_seed1   # run those two again, reuse the rest
    python scripts/benchmark_fmd5.py --seeds 1 --plain_seeds "" --rerun --merge   # only the seed-1 pair, into the
                                                                    # committed fmd5.json's other runs
    python scripts/benchmark_fmd5.py --seeds 1,2,3 --plain_seeds "" --merge \\
        --methods alsar:budget_matching=spend_savings,flops_budget=35573171576832   # a variant: name:key=value,...
    python scripts/benchmark_fmd5.py --table_only                   # the table again from docs/results/fmd5.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.grid import (
    OFFLINE_ENV,
    Run,
    completed,
    fold_method_options,
    run_grid,
    split_methods,
    variant_dirname,
    variant_flags,
)
from hf_budgetcl.compare.summary import group, mean_std, paired_difference
from hf_budgetcl.compare.tables import markdown_table
from hf_budgetcl.data.idx import FASHION_MNIST_LABELS
from hf_budgetcl.evaluation.anytime_stability import (
    largest_drop,
    largest_fall_by_class,
    largest_within_task_drop,
    split_by_task,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes/configs/fashion_mnist_er.yaml"
SCRIPT = "scripts/benchmark_fmd5.py"
EVAL_PERIOD = 500  # the protocol's, and eval_period of recipes/configs/fashion_mnist_er.yaml


# --------------------------------------------------------------------------------------------------------------------
# The plain-PyTorch reference loop (protocol text, nothing from hf_budgetcl's training code)
# --------------------------------------------------------------------------------------------------------------------
def plain_loop(seed: int, per_class_train: int, per_class_test: int, out: str) -> None:
    import torch
    from torch import nn

    from hf_budgetcl.data.idx import load_fashion_mnist
    from hf_budgetcl.data.image_rows import dataset_arrays

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train, test = load_fashion_mnist(per_class_train=per_class_train, per_class_test=per_class_test)
    x_train, y_train = dataset_arrays(train)
    x_test, y_test = dataset_arrays(test)
    x_train = torch.from_numpy(x_train).float().div_(255)
    x_test = torch.from_numpy(x_test).float().div_(255)
    y_train, y_test = torch.from_numpy(y_train).long(), torch.from_numpy(y_test).long()

    rng = np.random.RandomState(seed)
    order = rng.permutation(10)
    stream = []
    for t in range(5):
        idx = np.flatnonzero(np.isin(y_train.numpy(), order[2 * t : 2 * t + 2]))
        stream.extend(idx[rng.permutation(len(idx))].tolist())

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        class Basic(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(cout),
                )
                self.short = (
                    nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                    if stride != 1 or cin != cout
                    else nn.Identity()
                )

            def forward(self, x):
                return torch.relu(self.body(x) + self.short(x))

        return Basic()

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        block(32, 32, 1),
        block(32, 64, 2),
        block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = nn.CrossEntropyLoss()
    memory: list[int] = []
    mem_rng = np.random.RandomState(seed + 1000)
    seen: set[int] = set()
    curve = []

    def evaluate() -> float:
        model.eval()
        keep = torch.isin(y_test, torch.tensor(sorted(seen)))
        with torch.no_grad():
            pred = torch.cat([model(x_test[keep][i : i + 500]).argmax(-1) for i in range(0, int(keep.sum()), 500)])
        model.train()
        return float((pred == y_test[keep]).float().mean())

    start = time.perf_counter()
    eval_time, steps = 0.0, 0
    for n, i in enumerate(stream, start=1):
        seen.add(int(y_train[i]))
        if len(memory) < 500:  # class-balanced replacement
            memory.append(i)
        else:
            labels = y_train[memory].numpy()
            counts = np.bincount(labels, minlength=10)
            largest = np.flatnonzero(counts == counts.max())
            victims = np.flatnonzero(np.isin(labels, largest[mem_rng.randint(len(largest))]))
            memory[victims[mem_rng.randint(len(victims))]] = i
        if n >= 8:
            batch = stream[n - 8 : n]
            if len(memory) >= 8:
                batch = batch + [memory[j] for j in mem_rng.choice(len(memory), 8, replace=False)]
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        if n % EVAL_PERIOD == 0 or n == len(stream):
            t0 = time.perf_counter()
            curve.append(evaluate())
            eval_time += time.perf_counter() - t0
    wall = time.perf_counter() - start
    Path(out).write_text(
        json.dumps(
            {
                "method": "plain",
                "seed": seed,
                "A_auc": float(np.mean(curve)),
                "A_last": curve[-1],
                "curve": curve,
                "iterations": steps,
                "samples_seen": len(stream),
                "wall_time_s": wall,
                "eval_time_s": eval_time,
            }
        )
    )


# --------------------------------------------------------------------------------------------------------------------
# The grid and its table
# --------------------------------------------------------------------------------------------------------------------
def declare(args: argparse.Namespace) -> list[Run]:
    """Each plain run next to the hf_budgetcl runs of its seed, so that the two share the machine's load."""
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for a in args.methods for m in split_methods(a)]
    plain_seeds = [int(s) for s in (args.seeds if args.plain_seeds is None else args.plain_seeds).split(",") if s]
    sizes = ["--per_class_train", args.per_class_train, "--per_class_test", args.per_class_test]
    runs = []
    for seed in seeds:
        for method in (["plain"] if seed in plain_seeds else []) + methods:
            name, flags = ("plain", []) if method == "plain" else variant_flags(method)
            run_dir = Path(args.work_dir) / f"{variant_dirname(method).replace('+', '_')}_seed{seed}"
            label = {"method": method, "seed": seed}
            if method == "plain":
                plain = ["--plain_seed", seed, "--plain_out", run_dir / "plain.json", *sizes]
                runs.append(Run(run_dir, plain, label, command=(sys.executable, __file__), result_name="plain.json"))
            else:
                cli = ["--config", CONFIG, "--method", name, "--seed", seed, *sizes, "--save_strategy", "no", *flags]
                runs.append(Run(run_dir, fold_method_options(cli), label))
    return runs


def largest_drop_within_a_task(run: dict, task_samples: int, eval_period: int = EVAL_PERIOD) -> float:
    """The largest fall of anytime accuracy between two consecutive evaluations of the same task. The plain loop
    records bare accuracies, so its tasks come from the evaluation's stream position (FM-D5's tasks are equal)."""
    if run["curve"] and isinstance(run["curve"][0], dict):
        return largest_within_task_drop(run["curve"])
    tasks = [(eval_period * (k + 1) - 1) // task_samples for k in range(len(run["curve"]))]
    return largest_drop(split_by_task(run["curve"], tasks))


def system(run: dict) -> str:
    """The table row a run belongs to: its grid entry (a variant ``name:key=value`` is a row of its own, though its
    results.json says only ``name``); runs recorded before labels existed carry their method only."""
    return run.get("label", {}).get("method", run["method"])


def table(params: dict, runs: list[dict]) -> str:
    by_method = group(runs, system)
    plain = by_method.get("plain", [])
    plain_speed = np.mean([r["samples_seen"] / (r["wall_time_s"] - r["eval_time_s"]) for r in plain])
    task_samples = 2 * params["per_class_train"]  # FM-D5: 2 classes a task
    rows = []
    for method, rs in by_method.items():
        speed = np.mean([r["samples_seen"] / (r["wall_time_s"] - r["eval_time_s"]) for r in rs])
        flops = f"{np.mean([r['train_flops'] for r in rs]) / 1e12:.2f}" if "train_flops" in rs[0] else "–"
        saved = (
            f"{100 * np.mean([r['backward_flops_saved_fraction'] for r in rs]):.1f}%"
            if "backward_flops_saved_fraction" in rs[0]
            else "–"
        )
        name = "plain-PyTorch online ER loop (this script)" if method == "plain" else f"hf_budgetcl `{method}`"
        base = by_method.get(method.partition(":")[0]) if ":" in method else None  # a variant vs its method
        rows.append(
            [
                name,
                ",".join(str(r["seed"]) for r in rs),
                mean_std([100 * r["A_auc"] for r in rs]),
                mean_std([100 * r["A_last"] for r in rs]),
                f"{paired_difference(rs, plain, 'A_auc')} / {paired_difference(rs, plain, 'A_last')}",
                f"{paired_difference(rs, by_method.get('er'), 'A_auc')} / "
                f"{paired_difference(rs, by_method.get('er'), 'A_last')}",
                f"{paired_difference(rs, base, 'A_auc')} / {paired_difference(rs, base, 'A_last')}",
                mean_std([100 * largest_drop_within_a_task(r, task_samples) for r in rs]),
                f"{speed:.1f}",
                f"{speed / plain_speed:.2f}×",
                flops,
                f"{np.mean([r['iterations'] for r in rs]):.0f}",
                saved,
                f"{np.mean([r['wall_time_s'] for r in rs]):.0f}",
            ]
        )
    init = f" Conv init: {params['conv_init']}." if "conv_init" in params else ""
    lines = [
        f"FM-D5, seeds {','.join(map(str, sorted({r['seed'] for r in runs})))}, {params['per_class_train']} train / {params['per_class_test']} test images "
        f"per class, {params['jobs']} runs at a time on the 2-core CPU (plus whatever else the machine runs), 1 torch "
        f"thread each.{init}",
        "",
        *markdown_table(HEADER, rows),
        "",
        "Paired differences: mean ± std over the seeds both rows have, of the row minus the plain loop, minus "
        "`er`, or (a variant `name:key=value`) minus its method `name`, in points (A_AUC / A_last). Largest drop within a task: the largest fall of anytime accuracy between "
        f"two consecutive evaluations ({EVAL_PERIOD} samples apart) with the same classes seen, in points, mean ± std over "
        "seeds. Training samples/s = stream samples / (wall-clock − evaluation time) of each run's training loop.",
    ]
    return "\n".join(lines + falls_by_class(by_method)) + "\n"


def falls_by_class(by_method: dict[str, list[dict]]) -> list[str]:
    """Per run with per-class curves: the largest within-task fall, the classes that fell most and the part of the
    fall the classes of earlier tasks make up."""
    rows = []
    for method, rs in by_method.items():
        for r in rs:
            fall = largest_fall_by_class(r["curve"]) if r["curve"] and isinstance(r["curve"][0], dict) else None
            if fall is None:
                continue
            name = {c: FASHION_MNIST_LABELS[int(c)] + (" (new)" if c in fall.new else "") for c in fall.change}
            losers = sorted((x, c) for c, x in fall.change.items() if x < 0)[:3]
            rows.append(
                [
                    f"`{method}`",
                    str(r["seed"]),
                    f"{100 * fall.fall:.1f}",
                    str(fall.samples),
                    ", ".join(f"{name[c]} {100 * x:+.0f}" for x, c in losers),
                    ", ".join(name[c] for c in sorted(fall.new, key=int)),
                    f"{100 * fall.old_share:.0f}%",
                ]
            )
    if not rows:
        return []
    return [
        "",
        "### Where the largest within-task fall comes from",
        "",
        "Per run: the largest fall of anytime accuracy between two consecutive evaluations of one task, the classes "
        "that fell most then (accuracy change in points), the classes of the task being trained, and the part of the "
        "fall that the classes of earlier tasks make up (net of their gains; over 100% when the new classes rose "
        "meanwhile).",
        "",
        *markdown_table(
            [
                "system",
                "seed",
                "fall (pt)",
                "at sample",
                "largest per-class falls",
                "task being trained",
                "old classes' share",
            ],
            rows,
        ),
    ]


HEADER = [
    "system",
    "seeds",
    "A_AUC",
    "A_last",
    "Δ vs plain loop, paired (A_AUC / A_last)",
    "Δ vs er, paired (A_AUC / A_last)",
    "Δ of a variant vs its method, paired (A_AUC / A_last)",
    "largest drop within a task",
    "training samples/s",
    "vs plain loop",
    "train TFLOPs",
    "iterations",
    "backward saved",
    "wall-clock s",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["er,alsar"],
        help="er,alsar and/or variants name:key=value,..., one per argument (an argument with : is one variant)",
    )
    parser.add_argument("--plain_seeds", default=None, help='seeds of the plain loop (default: --seeds; "": none)')
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--per_class_train", type=int, default=1000)
    parser.add_argument("--per_class_test", type=int, default=500)
    parser.add_argument("--work_dir", default=str(ROOT / "out/fmd5"))
    publish.add_arguments(parser, ROOT / "docs/results/fmd5.md", merge=True)
    parser.add_argument("--plain_seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plain_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_seed is not None:
        plain_loop(args.plain_seed, args.per_class_train, args.per_class_test, args.plain_out)
        return 0

    def produce() -> tuple[dict, list[dict]]:
        # Runs from before cmd.json was recorded (the earlier runner) are reused as they are.
        runs = completed(
            run_grid(
                declare(args),
                jobs=args.jobs,
                rerun=publish.rerun_arg(args),
                env=OFFLINE_ENV,
                cwd=ROOT,
                reuse_unrecorded=True,
            )
        )
        from hf_budgetcl.models.cifar_resnet import CifarResNetConfig  # the preset's init, which the runs use

        params = {k: getattr(args, k) for k in ("per_class_train", "per_class_test", "jobs")}
        return {**params, "conv_init": CifarResNetConfig().conv_init}, runs

    return publish.publish(args, SCRIPT, table, produce, key=lambda r: (system(r), r["seed"]))


if __name__ == "__main__":
    sys.exit(main())
