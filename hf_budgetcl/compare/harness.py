"""``hf-budgetcl compare``: run several methods and seeds on one base config and tabulate them.

    hf-budgetcl compare --config recipes/configs/fashion_mnist_er.yaml --methods er,replay,alsar --seeds 1,2,3 \\
        --output_dir out/compare [--jobs 2] [-- --eval_period 1000 ...overrides for every run]

Each run is a separate ``hf-budgetcl run`` process (one torch thread each, ``--jobs`` at a time), so runs do not
share state and a failed run does not stop the others. Writes ``summary.json``, ``summary.md`` (A_AUC ± std,
A_last ± std, TFLOPs, MB, wall-clock per method), ``accuracy_vs_flops.png`` and ``freezing.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..evaluation.metrics import frozen_blocks_per_interval


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def run_one(config: str, method: str, seed: int, output_dir: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Run one (method, seed) in a subprocess; returns its results.json (or the error)."""
    run_dir = os.path.join(output_dir, f"{method.replace('+', '_')}_seed{seed}")
    cmd = [
        sys.executable,
        "-m",
        "hf_budgetcl.cli",
        "run",
        "--config",
        config,
        "--method",
        method,
        "--seed",
        str(seed),
        "--output_dir",
        run_dir,
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    results_path = os.path.join(run_dir, "results.json")
    if proc.returncode != 0 or not os.path.exists(results_path):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "seed": seed, "error": tail, "process_wall_s": time.perf_counter() - start}
    with open(results_path) as f:
        results = json.load(f)
    results["process_wall_s"] = time.perf_counter() - start
    return results


def summarize(runs: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in methods:
        ok = [r for r in runs if r["method"] == method and "error" not in r]
        if not ok:
            summary[method] = {"errors": [r.get("error") for r in runs if r["method"] == method]}
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in ok]}
        for key in ("A_auc", "A_last", "F_last", "train_flops", "wall_time_s", "backward_flops_saved_fraction"):
            row[key], row[f"{key}_std"] = _mean_std([r[key] for r in ok])
        row["memory_bytes"] = float(np.mean([r["memory_bytes"]["total"] for r in ok]))
        row["memory_budget_bytes"] = ok[0]["memory_budget_bytes"]
        row["flops_budget"] = ok[0]["flops_budget"]
        row["iterations"] = float(np.mean([r["iterations"] for r in ok]))
        row["train_samples_per_s"] = float(
            np.mean([r["samples_seen"] / max(r["train_time_s"] - r.get("eval_time_s", 0.0), 1e-9) for r in ok])
        )
        summary[method] = row
    return summary


def _pm(row: dict[str, Any], key: str, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of a summary entry; ``–`` when undefined (F_last of a single evaluation), no ``±`` for one seed."""
    mean, std = row[key] * scale, row[f"{key}_std"] * scale
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(row["seeds"]) > 1 else "")


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| method | seeds | A_AUC | A_last | F_last | TFLOPs | bwd saved | memory MB | iterations | "
        "train samples/s | wall-clock s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in summary.items():
        if "errors" in row:
            lines.append(f"| {method} | failed: {row['errors'][0]} |" + " |" * 9)
            continue
        lines.append(
            f"| {method} | {','.join(map(str, row['seeds']))} "
            f"| {_pm(row, 'A_auc')} | {_pm(row, 'A_last')} | {_pm(row, 'F_last')} "
            f"| {row['train_flops'] / 1e12:.3f} | {100 * row['backward_flops_saved_fraction']:.1f}% "
            f"| {row['memory_bytes'] / 1e6:.2f} | {row['iterations']:.0f} | {row['train_samples_per_s']:.1f} "
            f"| {_pm(row, 'wall_time_s', 1.0, 0)} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], output_dir: str) -> list[str]:
    """Accuracy vs training FLOPs per method; for freezing methods, frozen blocks over the stream and their histogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in runs if "error" not in r):
        ok = [r for r in runs if r["method"] == method and "error" not in r]
        flops = np.mean([[p["train_flops"] for p in r["curve"]] for r in ok], axis=0) / 1e12
        acc = np.mean([[p["accuracy"] for p in r["curve"]] for r in ok], axis=0) * 100
        ax.plot(flops, acc, marker="o", ms=3, label=method)
    ax.set(xlabel="training TFLOPs", ylabel="anytime accuracy (%)", title="accuracy vs training FLOPs")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(output_dir, "accuracy_vs_flops.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    freezers = [r for r in runs if "error" not in r and r.get("frozen_blocks_histogram", {}).keys() - {"0"}]
    if freezers:
        fig, (over_stream, shares) = plt.subplots(1, 2, figsize=(11, 4))
        methods = list(dict.fromkeys(r["method"] for r in freezers))
        width = 0.8 / len(methods)  # the methods' bars side by side within each integer bin
        for i, method in enumerate(methods):
            mine = [r for r in freezers if r["method"] == method]
            curves = [r["curve"] for r in mine if r["curve"] and all("frozen_blocks" in p for p in r["curve"])]
            if curves and len({len(c) for c in curves}) == 1:
                per_interval = [
                    frozen_blocks_per_interval([p["iterations"] for p in c], [p["frozen_blocks"] for p in c])
                    for c in curves
                ]
                over_stream.plot(
                    [p["samples"] for p in curves[0]],
                    np.nanmean(per_interval, axis=0),
                    marker="o",
                    ms=3,
                    linestyle=("-", "--", ":", "-.")[i % 4],
                    label=method,
                )  # styles: overlaps show
            hist: dict[int, float] = {}
            for r in mine:
                for k, v in r["frozen_blocks_histogram"].items():
                    hist[int(k)] = hist.get(int(k), 0) + v / r["iterations"]
            keys = sorted(hist)
            shares.bar(
                [k - 0.4 + width * (i + 0.5) for k in keys],
                [100 * hist[k] / len(mine) for k in keys],
                width=width,
                label=method,
            )
        over_stream.set(
            xlabel="stream samples seen",
            ylabel="mean frozen blocks per iteration",
            title="frozen blocks over the stream (per evaluation interval)",
        )
        shares.set(xlabel="frozen blocks", ylabel="share of iterations (%)", title="adaptive freezing decisions")
        for ax in (over_stream, shares):
            ax.legend()
        fig.tight_layout()
        written.append(os.path.join(output_dir, "freezing.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def compare(
    config: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    output_dir: str,
    jobs: int = 1,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    os.makedirs(output_dir, exist_ok=True)
    grid = [(m, s) for m in methods for s in seeds]
    runs: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(grid), desc="compare") as bar:
        futures = [pool.submit(run_one, config, m, s, output_dir, overrides) for m, s in grid]
        for future in futures:
            runs.append(future.result())
            bar.set_postfix(last=f"{runs[-1]['method']}/{runs[-1]['seed']}")
            bar.update()
    summary = summarize(runs, methods)
    result = {
        "config": config,
        "methods": list(methods),
        "seeds": list(seeds),
        "overrides": list(overrides),
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(to_markdown(summary))
    plot(runs, output_dir)
    return result


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="hf-budgetcl compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    args = parser.parse_args(argv)
    from ..methods import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown method '{unknown[0]}'; choose from: {', '.join(sorted(METHODS))}")
    seeds = [int(s) for s in args.seeds.split(",")]
    result = compare(args.config, methods, seeds, args.output_dir, args.jobs, overrides)
    print(to_markdown(result["summary"]))
    failed = [r for r in result["runs"] if "error" in r]
    return 1 if failed else 0
