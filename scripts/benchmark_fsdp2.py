#!/usr/bin/env python
"""FSDP2 with and without adaptive freezing on 2 CPU ranks (gloo, one torch thread each): the wall-clock and FLOPs
ratios adaptive / none of the same ER run (same seed, stream and iterations) on real digits with ``fmd5_resnet``.

    python scripts/benchmark_fsdp2.py [--rounds 2] [--per_class_train 60]

Each run is ``accelerate launch --config_file recipes/accelerate/fsdp2.yaml recipes/image_classification.py``; the
two settings alternate for ``--rounds`` rounds. Wall-clock is results.json's ``train_time_s`` minus ``eval_time_s``
(training only); FLOPs are the ledger's ``train_flops`` (all ranks together). Writes ``docs/results/fsdp2.md`` next
to ``fsdp2.json`` (every run's figures; ``--table_only`` rebuilds the table from it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.summary import mean_std
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/benchmark_fsdp2.py"
FREEZES = ("none", "adaptive")


def launch(out: Path, freeze: str, args: argparse.Namespace) -> dict:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/fsdp2.yaml"),
        str(ROOT / "recipes/image_classification.py"),
        "--config",
        "recipes/configs/digits_er.yaml",
        "--model_name_or_path",
        "fmd5_resnet",
        "--per_class_train",
        str(args.per_class_train),
        "--per_class_test",
        "10",
        "--per_device_train_batch_size",
        "8",
        "--eval_period",
        "100000",
        "--freeze",
        freeze,
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        "--ddp_backend",
        "gloo",
        "--overwrite_output_dir",
        "true",
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    r = json.loads((out / "results.json").read_text())
    assert r["world_size"] == 2 and "gradients" in r["memory_bytes"], "not an FSDP run"
    return {
        "train_s": r["train_time_s"] - r["eval_time_s"],
        "train_flops": r["train_flops"],
        "iterations": r["iterations"],
        "saved_fraction": r["backward_flops_saved_fraction"],
        "A_auc": r["A_auc"],
        "memory_bytes_per_rank": r["memory_bytes"]["total"],
    }


def measure(args: argparse.Namespace) -> list[dict]:
    records = []
    for round_ in range(args.rounds):
        for freeze in FREEZES:
            out = Path(args.work_dir) / f"{freeze}_r{round_}"
            records.append({"label": {"freeze": freeze, "round": round_}, **launch(out, freeze, args)})
    return records


def table(params: dict, records: list[dict]) -> str:
    by = {f: [r for r in records if r["label"]["freeze"] == f] for f in FREEZES}
    pairs = list(zip(by["none"], by["adaptive"]))  # same round
    rows = [
        [
            freeze,
            mean_std([r["train_s"] for r in rs], 1, 2),
            f"{rs[0]['train_flops'] / 1e12:.3f}",
            f"{rs[0]['saved_fraction']:.1%}",
            str(rs[0]["iterations"]),
            mean_std([r["A_auc"] for r in rs], 100, 2),
        ]
        for freeze, rs in by.items()
    ]
    header = ["freeze", "train wall-clock (s)", "train TFLOPs", "backward FLOPs saved", "iterations", "A_AUC (%)"]
    time_ratio = mean_std([a["train_s"] / n["train_s"] for n, a in pairs], 1, 3)
    flops_ratio = mean_std([a["train_flops"] / n["train_flops"] for n, a in pairs], 1, 3)
    lines = [
        f"ER on real digits ({params['per_class_train']}/class), `fmd5_resnet`, batch 8 per rank, under FSDP2 "
        f"(`recipes/accelerate/fsdp2.yaml`) on 2 CPU ranks (gloo, one torch thread each), `--freeze none` vs "
        f"`--freeze adaptive`, {params['rounds']} rounds alternating; mean ± std over rounds; wall-clock excludes "
        "evaluation.",
        "",
        *markdown_table(header, rows),
        "",
        f"Ratios adaptive / none (per round): wall-clock **{time_ratio}**, FLOPs **{flops_ratio}**.",
        "",
        f"Command: `{params['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per_class_train", type=int, default=60)
    parser.add_argument("--work_dir", default=str(ROOT / "out/benchmark_fsdp2"))
    publish.add_arguments(parser, ROOT / "docs/results/fsdp2.md", rerun=False)
    args = parser.parse_args()

    def produce() -> tuple[dict, list[dict]]:
        params = {k: getattr(args, k) for k in ("rounds", "per_class_train")}
        return {**params, "command": publish.command(SCRIPT)}, measure(args)

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
