#!/usr/bin/env python
"""Methods side by side on a vision-language instruction stream (LoRA on the decoder blocks).

``--stream mcit`` (default): the 6-task multi-domain stream on the cached stage-1 *pretrained* base of
``--family`` (recipes/configs/mcit_{family}_{er,alsar}.yaml), with the MCIT metrics (A_last over tasks, forgetting,
per-task majority baseline). ``--stream easyvqa``: the old 3-concept easy-vqa stream on a random-weight tiny LLaVA
(recipes/configs/easyvqa_llava_tiny_*.yaml), plumbing only.

The methods of one seed run at the same time, as ``hf-budgetcl run`` processes with one torch thread each (two at a
time), so that they see the same machine load and their wall-clock times are comparable (a ratio within one
benchmark run, not an absolute speed). Each uses its YAML config unchanged plus any overrides given after ``--``.

    python scripts/benchmark_vlm.py --seeds 1 2 3                  # writes docs/results/vlm_mcit_llava.md
    python scripts/benchmark_vlm.py --family qwen2vl --seeds 1 2 3 # docs/results/vlm_mcit_qwen2vl.md
    python scripts/benchmark_vlm.py --methods er alsar er:method=sar er:freeze=adaptive   # + SAR, ER with aL only
    python scripts/benchmark_vlm.py --quick                        # smoke run (few rows), table under --work_dir
    python scripts/benchmark_vlm.py --table_only                   # the table again from its .json
    python scripts/benchmark_vlm.py --seeds 3 --merge              # add seed 3 to the table's runs

Finished runs (results.json under --work_dir, same arguments) are reused when the script is started again, unless
--rerun. ``--merge`` keeps the runs already in the table's .json (made with the same stream, family, threads and
overrides) and adds or replaces this invocation's; the table lists every command that made its runs.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
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
from hf_budgetcl.compare.summary import group, mean_std, paired, paired_difference
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/benchmark_vlm.py"
QUICK = {
    "easyvqa": [
        "--max_train_questions",
        "96",
        "--max_test_questions",
        "48",
        "--eval_period",
        "48",
        "--memory_size",
        "48",
    ],
    "mcit": ["--task_train_size", "16", "--task_test_size", "8", "--eval_period", "48", "--memory_size", "32"],
}
HEADER = [
    "method",
    "A_AUC (%)",
    "A_last (%)",
    "Δ A_AUC vs er, paired (pt)",
    "majority baseline (%)",
    "A_last over tasks (%)",
    "Δ A_last over tasks vs er, paired (pt)",
    "forgetting (pt)",
    "per-task majority (%)",
    "train TFLOPs",
    "backward FLOPs saved",
    "mean frozen blocks",
    "iterations",
    "memory (MiB)",
    "training wall-clock (s)",
    "FLOPs / er, paired",
    "wall-clock / er, paired",
]


def config_of(name: str, stream: str = "mcit", family: str = "llava") -> Path:
    """The recipe config of an entry's name (er, alsar); a name without one fails the grid's validation."""
    if stream == "easyvqa":
        return ROOT / f"recipes/configs/easyvqa_llava_tiny_{name}.yaml"
    return ROOT / f"recipes/configs/mcit_{family}_{name}.yaml"


def declare(args: argparse.Namespace) -> list[Run]:
    """``entry`` = a config name (er, alsar), optionally with overrides: ``er:freeze=adaptive``; seed-major, so the
    methods of one seed run side by side."""
    runs = []
    for seed in args.seeds:
        for entry in args.methods:
            name, flags = variant_flags(entry)
            quick = QUICK[args.stream] if args.quick else []
            cli = ["--config", config_of(name, args.stream, args.family), "--seed", seed, *quick, *args.extra, *flags]
            runs.append(
                Run(
                    Path(args.work_dir) / f"{variant_dirname(entry)}_s{seed}",
                    fold_method_options(cli),
                    {"method": entry},
                )
            )
    return runs


def run_setting(result: dict) -> tuple:
    """What runs merged into one table must share beyond the command line (the recipe's content may change)."""
    stream = result["stream"]
    tasks = sorted(result.get("task_names") or [])
    return (
        stream["kind"],
        stream["length"],
        result["batch_size"],
        result["online_iter"],
        result.get("eval_questions"),
        tasks,
    )


def mean_frozen_blocks(result: dict) -> float:
    """Mean number of frozen blocks per iteration, from the histogram {n_frozen: iterations}."""
    histogram = {int(k): v for k, v in result["frozen_blocks_histogram"].items()}
    total = sum(histogram.values())
    return sum(k * v for k, v in histogram.items()) / total if total else 0.0


def train_seconds(result: dict) -> float:
    """Training wall-clock, evaluations excluded."""
    return result["train_time_s"] - result.get("eval_time_s", 0.0)


def paired_ratio(rs: list[dict], baseline: list[dict] | None, value) -> str:
    """Mean ± std over seeds of value(run) / value(baseline run of the same seed)."""
    pairs = paired(rs, baseline) if baseline and rs is not baseline else []
    return mean_std([value(a) / value(b) for a, b in pairs], 1, 3) if pairs else "–"


def task_metrics(rs: list[dict], baseline: list[dict] | None) -> list[str]:
    """A_last over tasks (and its paired difference to er), average forgetting and the per-task majority mean
    (– on a stream without tasks)."""
    if any(r.get("A_last_tasks") is None for r in rs):
        return ["–"] * 4
    return [
        mean_std([r["A_last_tasks"] for r in rs], 100),
        paired_difference(rs, baseline, key="A_last_tasks"),
        mean_std([r["forgetting"] for r in rs], 100),
        mean_std([r["majority_baseline_task_mean"] for r in rs], 100),
    ]


def timing(params: dict, commands: list[str]) -> str:
    """How far the wall-clock columns can be compared."""
    if len(commands) == 1:
        return (
            f"The runs of one seed ran at the same time, {params['threads']} torch thread each, on a shared machine: "
            "compare wall-clock times within this table only."
        )
    return (
        f"The runs come from {len(commands)} invocations (below); within one, the methods of a seed ran at the same "
        f"time, {params['threads']} torch thread each, on a shared machine. A wall-clock ratio between methods of "
        "different invocations compares different machine loads: read it as a rough figure."
    )


def diverged(results: list[dict]) -> str:
    """The runs that skipped batches for a non-finite loss: their rows include batches that trained nothing."""
    hit = [
        r
        for r in sorted(results, key=lambda r: (r["label"]["method"], r["seed"]))
        if r.get("skipped_nonfinite_batches")
    ]
    if not hit:
        return ""
    listed = "; ".join(
        f"`{r['label']['method']}` seed {r['seed']}: {r['skipped_nonfinite_batches']} batches skipped, "
        f"{r['iterations']} trained"
        for r in hit
    )
    return f"Runs whose loss became non-finite (the batch is skipped, the run goes on): {listed}."


def bases(results: list[dict]) -> str:
    """Which base weights the runs started from (results.json records their hash since 2026-12-07)."""
    hashes = Counter((r.get("base_model") or {}).get("weights_sha256") for r in results)
    if set(hashes) == {None}:
        return ""
    named = [f"`{h}` ({n} runs)" for h, n in sorted(hashes.items(), key=lambda kv: str(kv[0])) if h is not None]
    unknown = f"; not recorded by {hashes[None]} earlier runs" if hashes[None] else ""
    mixed = " The runs started from different bases: compare them only within one base." if len(named) > 1 else ""
    return f"Base weights (sha256 of the safetensors): {', '.join(named)}{unknown}.{mixed}"


def table(params: dict, results: list[dict]) -> str:
    runs = group(sorted(results, key=lambda r: r["seed"]), lambda r: r["label"]["method"])
    first = next(iter(runs.values()))[0]
    seeds = sorted({r["seed"] for r in results})
    commands = params.get("commands") or [params["command"]]  # "command": a table made before --merge existed
    n_blocks = len(runs.get("alsar", [first])[0]["freeze"].get("fisher", [])) or "?"
    eval_period = first["curve"][0]["samples"] if first["curve"] else "?"
    rows = [
        [
            f"`{method}`",
            mean_std([r["A_auc"] for r in rs], 100),
            mean_std([r["A_last"] for r in rs], 100),
            paired_difference(rs, runs.get("er")),
            mean_std([r["majority_baseline"] for r in rs], 100),
            *task_metrics(rs, runs.get("er")),
            mean_std([r["train_flops"] for r in rs], 1e-12, 3),
            f"{mean_std([r['backward_flops_saved_fraction'] for r in rs], 100, 1)}%",
            f"{mean_std([mean_frozen_blocks(r) for r in rs], 1, 2)} of {n_blocks}",
            mean_std([r["iterations"] for r in rs], 1, 0),
            mean_std([r["memory_bytes"]["total"] for r in rs], 2**-20, 3),
            mean_std([train_seconds(r) for r in rs], 1, 0),
            paired_ratio(rs, runs.get("er"), lambda r: r["train_flops"]),
            paired_ratio(rs, runs.get("er"), train_seconds),
        ]
        for method, rs in runs.items()
    ]
    if params.get("stream", "easyvqa") == "easyvqa":
        title = "## Vision-language instruction stream: ER vs aL-SAR (tiny LLaVA, easy-vqa)"
        setting = (
            f"easy-vqa's real images and questions, disjoint stream over 3 concepts (shape, colour, yes/no), "
            f"{first['stream']['length']} training questions, exact match of the generated answer on held-out "
            f"questions of the concepts seen so far (evaluated every {eval_period} samples). A tiny "
            f"random-weight LLaVA (CLIP tower frozen, Llama decoder with LoRA on its {n_blocks} blocks)"
        )
    else:
        family = params["family"]
        title = f"## Multi-domain instruction stream on the stage-1 {family} base"
        setting = (
            f"{len(first['task_names'])} tasks ({', '.join(first['task_names'])} for seed {first['seed']}; the order "
            f"is drawn per seed), {first['stream']['length']} training questions, one task after another. Exact "
            f"match of the generated answer on each task's held-out questions; A_AUC over the anytime curve (every "
            f"{eval_period} samples, tasks seen so far), A_last and forgetting over the task accuracy matrix. The "
            f"base is the cached stage-1 {family} (`ensure_pretrained_base`), LoRA on its {n_blocks} decoder blocks"
        )
    lines = [
        title,
        "",
        f"{setting}, batch {first['batch_size']}, online_iter {first['online_iter']}, seeds "
        f"{', '.join(map(str, seeds))}. Majority baseline: always the most frequent training answer of "
        "the seen concepts (per task: of that task). TFLOPs: measured training FLOPs (FlopCounterMode units, 2 per "
        f"MAC) incl. each method's bookkeeping. {timing(params, commands)}",
        "",
        *markdown_table(HEADER, rows),
    ]
    if "alsar" in runs:
        alsar = min(runs["alsar"], key=lambda r: r["seed"])
        hist = ", ".join(f"{k}: {v}" for k, v in alsar["frozen_blocks_histogram"].items())
        lines += ["", f"aL-SAR frozen-prefix histogram (seed {alsar['seed']}, frozen blocks: iterations): {hist}."]
    for note in (diverged(results), bases(results)):
        if note:
            lines += ["", note]
    label = "Command" if len(commands) == 1 else "Commands"
    lines += ["", f"{label}: " + "; ".join(f"`{c}`" for c in commands), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stream", choices=["mcit", "easyvqa"], default="mcit")
    p.add_argument("--family", choices=["llava", "qwen2vl"], default="llava", help="mcit: the stage-1 base")
    p.add_argument("--work_dir", default=None, help="default: out/benchmark_vlm_<stream>[_<family>][_quick]")
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--methods", nargs="+", default=["er", "alsar"], help="config name[:key=value,...]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--quick", action="store_true", help="smoke run: a few dozen rows")
    publish.add_arguments(p, "docs/results/vlm_<stream>[_<family>].md (--quick: under --work_dir)", merge=True)
    p.add_argument("extra", nargs="*", help="further hf-budgetcl overrides after --, e.g. -- --online_iter 2")
    args = p.parse_args(argv)
    name = "vlm" if args.stream == "easyvqa" else f"vlm_mcit_{args.family}"  # vlm.md: the easy-vqa table
    if args.work_dir is None:
        args.work_dir = str(ROOT / f"out/benchmark_{name}{'_quick' if args.quick else ''}")
    if args.output == p.get_default("output"):
        args.output = str(Path(args.work_dir) / f"{name}.md" if args.quick else ROOT / f"docs/results/{name}.md")

    # What must match for --merge; the seeds are the runs' own.
    params = {"threads": args.threads, "stream": args.stream, "family": args.family, "overrides": args.extra}

    def produce() -> tuple[dict, list[dict]]:
        if args.merge and not args.table_only:  # before anything trains
            publish.check_mergeable(publish.raw_path(args), params, accumulate=("commands",))
        runs = completed(
            run_grid(
                declare(args), jobs=2, threads=args.threads, rerun=publish.rerun_arg(args), env=OFFLINE_ENV, cwd=ROOT
            )
        )
        return {**params, "commands": [publish.command(SCRIPT, argv)]}, runs

    key = lambda r: (r["label"]["method"], r["seed"])  # noqa: E731
    return publish.publish(args, SCRIPT, table, produce, key=key, accumulate=("commands",), setting=run_setting)


if __name__ == "__main__":
    sys.exit(main())
