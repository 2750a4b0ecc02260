#!/usr/bin/env python
"""Training speed on FM-D5 settings as ratios measured within ONE process: plain-PyTorch ER loop vs hf_budgetcl.

The machine is shared and noisy, so separate processes are not comparable. Here one process (one torch thread)
runs short FM-D5 streams round-robin: plain, er, alsar, plain, er, alsar, ... for ``--rounds`` rounds; each
method's speed is the median over rounds of stream samples / (training loop time − evaluation time), and the table
gives it relative to the plain loop of the same rounds. Writes ``docs/results/speed.md`` next to its raw
per-round ``speed.json`` (``--table_only`` rebuilds the table from that alone).

    python scripts/benchmark_speed.py [--per_class_train 100] [--rounds 3] [--methods er,alsar]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
SCRIPT = "scripts/benchmark_speed.py"


def round_robin(
    runs: dict[str, list[str] | None], rounds: int, plain_args: tuple[int, int, int] = (1, 100, 20)
) -> dict[str, list[dict]]:
    """Run every named configuration once per round, round-robin, in this process; ``None`` = the plain loop
    (FM-D5 settings; ``plain_args`` = seed, per_class_train, per_class_test) and a list = ``hf-budgetcl run``
    arguments. Returns each run's results per round."""
    import torch

    torch.set_num_threads(1)
    from benchmark_fmd5 import plain_loop

    from hf_budgetcl.runs.image_classification import run

    out: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, argv in runs.items():
                path = Path(tmp, f"{len(out[name])}_{name.replace('/', '_')}")
                if argv is None:
                    path.mkdir()
                    plain_loop(*plain_args, str(path / "plain.json"))
                    res = json.loads((path / "plain.json").read_text())
                else:
                    res = run(
                        [
                            *argv,
                            "--output_dir",
                            str(path),
                            "--report_to",
                            "none",
                            "--disable_tqdm",
                            "true",
                            "--save_strategy",
                            "no",
                        ]
                    ).results
                res["train_samples_per_s"] = res["samples_seen"] / (res["wall_time_s"] - res["eval_time_s"])
                out[name].append(res)
                print(f"round {r} {name}: {res['train_samples_per_s']:.2f} samples/s", flush=True)
    return out


def table(params: dict, records: list[dict]) -> str:
    results = {name: [r for r in records if r["label"]["name"] == name] for name in params["runs"]}
    speeds = {name: [r["train_samples_per_s"] for r in rs] for name, rs in results.items()}
    base = np.median(speeds["plain"])
    rows = [
        [
            "plain-PyTorch ER loop" if method == "plain" else f"hf_budgetcl `{method}`",
            results[method][-1]["iterations"],
            f"{np.median(values):.2f}",
            ", ".join(f"{v:.2f}" for v in values),
            f"{np.median(values) / base:.2f}×",
        ]
        for method, values in speeds.items()
    ]
    header = ["run", "iterations", "training samples/s (median)", "per round", "relative to plain loop"]
    lines = [
        f"One process, one torch thread, FM-D5 settings on {10 * params['per_class_train']} stream samples, "
        f"{params['rounds']} rounds run round-robin; median samples/s over rounds.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class_train", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="er,alsar")
    publish.add_arguments(parser, ROOT / "docs/results/speed.md", rerun=False)
    args = parser.parse_args()

    def produce() -> tuple[dict, list[dict]]:
        from benchmark_fmd5 import CONFIG

        runs: dict[str, list[str] | None] = {"plain": None}
        for method in [m for m in args.methods.split(",") if m]:
            runs[method] = [
                *("--config", str(CONFIG), "--method", method, "--seed", "1"),
                *("--per_class_train", str(args.per_class_train), "--per_class_test", "20"),
            ]
        results = round_robin(runs, args.rounds, plain_args=(1, args.per_class_train, 20))
        records = [
            {**r, "label": {"name": name, "round": i}} for name, rs in results.items() for i, r in enumerate(rs)
        ]
        return {"per_class_train": args.per_class_train, "rounds": args.rounds, "runs": list(runs)}, records

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
