#!/usr/bin/env python
"""One setting against its variants, on a few short streams and seeds, with paired differences per seed.

Each ``--data NAME=FLAGS`` is a stream (``hf-budgetcl run`` flags, e.g. a config and a model), each
``--variants NAME=FLAGS`` a setting; every variant runs on every stream and seed (``--common`` flags added to all),
through the harness's ``run_grid`` (arguments checked on reuse). The first variant is the reference: the table
gives every variant's A_AUC and A_last (mean ± std over seeds), training FLOPs, and its paired difference to the
reference on the same seed (same stream and initialisation, so its spread is the setting's own).

    python scripts/benchmark_ablation.py --output docs/results/conv_init.md --common "--method er" \\
        --data "digits=--config recipes/configs/digits_er.yaml --model_name_or_path fmd5_resnet" \\
        --variants "kaiming_fan_out=--conv_init kaiming_fan_out" "default=--conv_init default" --seeds 1 2 3

``--table_only --output X.md`` rebuilds the table from ``X.json``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.grid import OFFLINE_ENV, GridError, Run, completed, run_grid
from hf_budgetcl.compare.summary import group, mean_std, paired_difference
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/benchmark_ablation.py"


def named(entries: list[str], what: str) -> dict[str, list[str]]:
    """``["name=--flag value ..."]`` -> ``{name: [flags]}``; a malformed or repeated entry is a one-line error."""
    out: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, flags = entry.partition("=")
        name = name.strip()
        if not sep or not name or "/" in name or name in out:
            raise GridError(f"--{what} {entry!r}: expected a unique NAME=FLAGS")
        out[name] = shlex.split(flags)
    return out


def declare(args: argparse.Namespace, params: dict) -> list[Run]:
    return [
        Run(
            Path(args.work_dir) / f"{data}_{variant}_s{seed}",
            [*params["common"], *dflags, *vflags, "--seed", str(seed), "--save_strategy", "no"],
            {"data": data, "variant": variant, "seed": seed},
        )
        for data, dflags in params["data"].items()
        for variant, vflags in params["variants"].items()
        for seed in params["seeds"]
    ]


def table(params: dict, records: list[dict]) -> str:
    by = group(records, lambda r: (r["label"]["data"], r["label"]["variant"]))
    reference = next(iter(params["variants"]))
    rows = []
    for data in params["data"]:
        base = sorted(by[(data, reference)], key=lambda r: r["label"]["seed"])
        for variant in params["variants"]:
            runs = sorted(by[(data, variant)], key=lambda r: r["label"]["seed"])
            rows.append(
                [
                    data,
                    f"`{variant}`",
                    mean_std([r["A_auc"] for r in runs], 100),
                    mean_std([r["A_last"] for r in runs], 100),
                    paired_difference(runs, base if variant != reference else None),
                    paired_difference(runs, base if variant != reference else None, key="A_last"),
                    mean_std([r["train_flops"] / 1e12 for r in runs], 1, 3),
                ]
            )
    seeds = ", ".join(map(str, params["seeds"]))
    lines = [
        f"Seeds {seeds}; paired Δ = variant − `{reference}` on the same seed (pt). Common flags: "
        f"`{shlex.join(params['common'])}`.",
        "",
        *markdown_table(
            ["data", "variant", "A_AUC", "A_last", "paired Δ A_AUC", "paired Δ A_last", "train TFLOPs"], rows
        ),
        "",
        "Streams: " + "; ".join(f"{d}: `{shlex.join(f)}`" for d, f in params["data"].items()) + ".",
        "Variants: " + "; ".join(f"`{v}`: `{shlex.join(f)}`" for v, f in params["variants"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[], help="NAME=FLAGS, one per stream")
    parser.add_argument("--variants", nargs="+", default=[], help="NAME=FLAGS, the first is the reference")
    parser.add_argument("--common", default="", help="flags for every run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--work_dir", default=None, help="run directories (default: out/ablation/<output stem>)")
    parser.add_argument("--jobs", type=int, default=1)
    publish.add_arguments(parser, None)
    args = parser.parse_args()

    def produce() -> tuple[dict, list[dict]]:
        params = {
            "data": named(args.data, "data"),
            "variants": named(args.variants, "variants"),
            "common": shlex.split(args.common),
            "seeds": args.seeds,
        }
        if not params["data"] or not params["variants"]:
            raise GridError("give at least one --data and one --variants entry")
        stem = Path(args.output).stem if args.output else "ablation"
        args.work_dir = args.work_dir or str(ROOT / "out/ablation" / stem)
        runs = declare(args, params)
        return params, completed(
            run_grid(runs, jobs=args.jobs, rerun=publish.rerun_arg(args), env=OFFLINE_ENV, cwd=ROOT)
        )

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
