#!/usr/bin/env python
"""Does a pruned backward save time in proportion to its FLOPs? One training step of ``fmd5_resnet`` (batch 16),
full backward vs the backward of the unfrozen suffix only (``backward(inputs=...)``, as the trainer runs it), at
several image sizes, timed in one process (1 torch thread, the two settings alternating).

    python scripts/benchmark_pruned_backward.py [--frozen 2] [--sizes 8 28] [--repeats 3] [--steps 40]

Writes ``docs/results/pruned_backward.md``: per size, the step time with nothing frozen and the ratios
(frozen / none) of step time and of measured step FLOPs, mean ± std over repeats; next to it ``pruned_backward.json``,
every repeat's measurement (``--table_only`` rebuilds the table from that alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.summary import mean_std
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/benchmark_pruned_backward.py"


def step_cost(model, params, x, y, steps: int) -> tuple[float, float]:
    """(seconds per step, FLOPs per step) of forward + backward into ``params`` only."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def step():
        torch.autograd.backward(model(pixel_values=x, labels=y).loss, inputs=params)
        for p in params:
            p.grad = None

    for _ in range(3):  # warm-up
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, float(counter.get_total_flops())


def measure(args: argparse.Namespace) -> list[dict]:
    """Per image size and repeat: the full step's seconds, and the pruned / full ratios of time and FLOPs."""
    import torch

    from hf_budgetcl.models import build_image_classifier
    from hf_budgetcl.models.blocks import find_blocks

    torch.set_num_threads(1)
    torch.manual_seed(0)
    records = []
    for size in args.sizes:
        model = build_image_classifier("fmd5_resnet", num_labels=10, num_channels=1, image_size=size)
        blocks = find_blocks(model)
        x, y = torch.randn(16, 1, size, size), torch.randint(0, 10, (16,))
        for repeat in range(args.repeats):
            full = step_cost(model, blocks.trainable_from(0), x, y, args.steps)
            pruned = step_cost(model, blocks.trainable_from(args.frozen), x, y, args.steps)
            records.append(
                {
                    "label": {"size": size, "repeat": repeat},
                    "full_step_s": full[0],
                    "time_ratio": pruned[0] / full[0],
                    "flops_ratio": pruned[1] / full[1],
                }
            )
    return records


def table(params: dict, records: list[dict]) -> str:
    rows = []
    for size in params["sizes"]:
        rs = [r for r in records if r["label"]["size"] == size]
        rows.append(
            [
                f"{size}×{size}",
                mean_std([r["full_step_s"] for r in rs], 1e3, 1),
                mean_std([r["time_ratio"] for r in rs], 1, 3),
                mean_std([r["flops_ratio"] for r in rs], 1, 3),
            ]
        )
    header = ["image size", "step time, none frozen (ms)", "time ratio frozen / none", "FLOPs ratio frozen / none"]
    lines = [
        f"One step of `fmd5_resnet` (batch 16, 1 torch thread): full backward vs the backward of the suffix after "
        f"{params['frozen']} frozen blocks (`backward(inputs=...)`), {params['steps']} steps per measurement, the two "
        f"settings alternating, {params['repeats']} repeats; mean ± std over repeats.",
        "",
        *markdown_table(header, rows),
        "",
        f"Command: `{params['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frozen", type=int, default=2, help="blocks frozen (stem first)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 28])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    publish.add_arguments(parser, ROOT / "docs/results/pruned_backward.md", rerun=False)
    args = parser.parse_args()

    def produce() -> tuple[dict, list[dict]]:
        params = {k: getattr(args, k) for k in ("frozen", "sizes", "repeats", "steps")}
        return {**params, "command": publish.command(SCRIPT)}, measure(args)

    return publish.publish(args, SCRIPT, table, produce)


if __name__ == "__main__":
    sys.exit(main())
