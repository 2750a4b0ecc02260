"""Kill a run with SIGKILL at 3 random points, resume it each time with ``--resume``, compare with an uninterrupted run.

    python scripts/kill_resume.py [--out out/kill_resume] [--kills 3] [--seed 0] [--report docs/results/kill_resume.md]
        [-- extra hf-budgetcl run arguments]

Each attempt runs ``hf-budgetcl run <args> --resume true`` in a subprocess; once it has written a checkpoint beyond
the one it resumed from (so it is past start-up and training), it gets SIGKILLed after a random further delay of up
to ~1.5 checkpoint intervals -- anywhere in training, evaluation or a checkpoint write. After the kills the same
command runs to the end. The final results.json (timings aside) and model.safetensors must equal the uninterrupted
run's. Exit status 0 when they do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"wall_time_s", "train_time_s", "eval_time_s", "iterations_per_s"}
DEFAULT_ARGS = [
    "--config",
    "recipes/configs/digits_er.yaml",
    "--method",
    "alsar",
    "--learning_rate",
    "0.01",
    "--freeze_warmup_steps",
    "20",
    "--online_iter",
    "1.5",
    "--eval_period",
    "100",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "100000",
    "--save_strategy",
    "steps",
    "--save_steps",
    "100",
    "--save_total_limit",
    "2",
]


def command(args: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "hf_budgetcl.cli", "run", *args, "--output_dir", str(out), "--resume", "true"]


def checkpoints(out: Path) -> tuple[list[int], list[int]]:
    """Steps of the complete (with cl_state.json) and incomplete checkpoint folders."""
    complete, incomplete = [], []
    for p in out.glob("checkpoint-*"):
        (complete if (p / "cl_state.json").exists() else incomplete).append(int(p.name.split("-")[1]))
    return sorted(complete), sorted(incomplete)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def results(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k not in TIMING}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/kill_resume")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=None, help="write a Markdown report here")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then hf-budgetcl run arguments")
    opts = parser.parse_args()
    run_args = DEFAULT_ARGS + [a for a in opts.extra if a != "--"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    rng = random.Random(opts.seed)
    root = Path(opts.out)
    shutil.rmtree(root, ignore_errors=True)
    full, killed = root / "full", root / "killed"

    start = time.perf_counter()
    subprocess.run(command(run_args, full), env=env, cwd=ROOT, check=True, capture_output=True)
    full_time = time.perf_counter() - start
    reference = results(full)
    iterations = reference["iterations"]
    save_steps = int(run_args[len(run_args) - 1 - run_args[::-1].index("--save_steps") + 1])
    interval_s = full_time * save_steps / max(iterations, 1)  # an upper estimate: full_time includes start-up
    print(f"uninterrupted: {iterations} iterations in {full_time:.1f} s", file=sys.stderr)

    log = []
    kills = 0
    while kills < opts.kills:
        resumed_from = (checkpoints(killed)[0] or [0])[-1] if killed.exists() else 0
        proc = subprocess.Popen(
            command(run_args, killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        t0 = time.perf_counter()
        while proc.poll() is None and not any(s > resumed_from for s in checkpoints(killed)[0]):
            time.sleep(0.02)  # wait until this attempt is training (it wrote a checkpoint of its own)
        delay = rng.uniform(0.0, 1.5 * interval_s)
        time.sleep(delay)
        if proc.poll() is not None:
            log.append({"resumed_from": resumed_from, "outcome": f"finished before the kill (exit {proc.returncode})"})
            shutil.rmtree(killed)  # start over: this attempt was not interrupted
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        complete, incomplete = checkpoints(killed)
        log.append(
            {
                "resumed_from": resumed_from,
                "killed_after_s": round(time.perf_counter() - t0, 2),
                "random_delay_s": round(delay, 2),
                "complete": complete,
                "incomplete": incomplete,
                "results_json": (killed / "results.json").exists(),
            }
        )
        print(f"kill {kills}: {log[-1]}", file=sys.stderr)
    final_from = checkpoints(killed)[0][-1]
    subprocess.run(command(run_args, killed), env=env, cwd=ROOT, check=True, capture_output=True)
    resumed = results(killed)

    differing = sorted(k for k in set(reference) | set(resumed) if reference.get(k) != resumed.get(k))
    same_model = sha256(full / "model.safetensors") == sha256(killed / "model.safetensors")
    ok = not differing and same_model
    lines = [
        "# Kill and resume",
        "",
        f"`python scripts/kill_resume.py --kills {opts.kills} --seed {opts.seed}` (CPU, OMP_NUM_THREADS="
        f"{env['OMP_NUM_THREADS']}). Run arguments:",
        "",
        f"    hf-budgetcl run {' '.join(run_args)} --resume true",
        "",
        f"The uninterrupted run trains {iterations} iterations ({full_time:.1f} s wall, start-up included); "
        f"checkpoints every {save_steps} iterations, `save_total_limit 2`. Each attempt was SIGKILLed a random "
        "delay after it wrote its first checkpoint, then the same command (with `--resume true`) was started again.",
        "",
        "| attempt | resumed from step | killed after (s) | complete checkpoints left | incomplete folders left |",
        "|---|---|---|---|---|",
    ]
    for i, entry in enumerate(log, 1):
        if "complete" not in entry:
            lines.append(f"| {i} | {entry['resumed_from']} | {entry['outcome']} | | |")
            continue
        lines.append(
            f"| {i} | {entry['resumed_from']} | {entry['killed_after_s']} | "
            f"{', '.join(map(str, entry['complete']))} | {', '.join(map(str, entry['incomplete'])) or '-'} |"
        )
    lines += [
        f"| final | {final_from} | ran to the end | | |",
        "",
        "| | uninterrupted | killed 3x and resumed |",
        "|---|---|---|",
        f"| A_AUC | {reference['A_auc']:.6f} | {resumed['A_auc']:.6f} |",
        f"| A_last | {reference['A_last']:.6f} | {resumed['A_last']:.6f} |",
        f"| training FLOPs | {reference['train_flops']:.6e} | {resumed['train_flops']:.6e} |",
        f"| iterations | {reference['iterations']} | {resumed['iterations']} |",
        f"| frozen-blocks histogram | {reference['frozen_blocks_histogram']} | {resumed['frozen_blocks_histogram']} |",
        f"| curve points | {len(reference['curve'])} | {len(resumed['curve'])} |",
        f"| model.safetensors sha256 | {sha256(full / 'model.safetensors')} | {sha256(killed / 'model.safetensors')} |",
        "",
        f"**{'Identical' if ok else 'DIFFERENT'}**: results.json keys compared (timings excluded): {len(reference)}; "
        f"differing: {', '.join(differing) or 'none'}; weights {'bit-identical' if same_model else 'differ'}.",
        "",
    ]
    report = "\n".join(lines)
    if opts.report:
        from hf_budgetcl.compare.publish import write_table

        write_table(opts.report, "scripts/kill_resume.py", report)
    else:
        print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
