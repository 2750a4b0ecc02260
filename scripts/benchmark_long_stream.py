#!/usr/bin/env python
"""Long-stream stability: stream all 60k Fashion-MNIST training images and watch process RSS and speed.

    python scripts/benchmark_long_stream.py                          # writes docs/results/long_stream.md
    python scripts/benchmark_long_stream.py --online_iter 0.05 --window 2000 --output /tmp/ls.md
    python scripts/benchmark_long_stream.py --table_only             # the report again from long_stream.json

A tiny model (digits_resnet) and a small ``online_iter`` keep it cheap: the point is whether anything grows with the
stream (replay memory, the curve, the ledger, caches, leaked tensors), not accuracy. Every ``--window`` arrivals a
callback records the resident set size (psutil), the iterations trained and the time spent, evaluation time excluded,
both wall-clock and this process's CPU time (one thread: CPU time is what the code costs even when other jobs share
the cores). Verdict: RSS growth from the first window after warm-up to the end, and the CPU-time speed of the second
half of the stream against the first half (a ratio within this one run).

glibc's dynamic mmap threshold makes RSS climb in steps after large temporary allocations (the evaluation batches)
without any leak: freed blocks stay in the heap. So each sample records the raw RSS and the RSS right after
``malloc_trim(0)`` (freed heap pages handed back to the OS), which tracks live memory; a leak grows both.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from transformers import TrainerCallback

from hf_budgetcl.compare import publish
from hf_budgetcl.compare.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRIPT = "scripts/benchmark_long_stream.py"


def trimmed_rss_mib(process: psutil.Process) -> tuple[float, float]:
    """(raw RSS, RSS after glibc's malloc_trim(0)) in MiB; without glibc both are the raw RSS."""
    raw = process.memory_info().rss / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return raw, raw
    return raw, process.memory_info().rss / 2**20


class StabilityProbe(TrainerCallback):
    """Samples RSS, iterations and time each time the stream cursor passes a multiple of ``window`` arrivals."""

    def __init__(self, trainer, window: int):
        self.trainer, self.window = trainer, window
        self.process = psutil.Process()
        self.rows: list[dict] = []
        self.next_mark = window
        self.eval_cpu_s = 0.0
        evaluate_at = trainer.evaluate_at

        def timed_evaluate_at(samples_seen: int):
            start = time.process_time()
            try:
                return evaluate_at(samples_seen)
            finally:
                self.eval_cpu_s += time.process_time() - start

        trainer.evaluate_at = timed_evaluate_at
        self._last = self._now()

    def _now(self) -> tuple[float, float, int, float, float]:
        """wall time, CPU time, iterations, evaluation wall and CPU seconds so far"""
        return (
            time.perf_counter(),
            time.process_time(),
            self.trainer.ledger.steps,
            self.trainer.progress.eval_time_s,
            getattr(self, "eval_cpu_s", 0.0),
        )

    def sample(self, samples: int) -> None:
        now = self._now()
        (t0, c0, s0, e0, ec0), (t1, c1, s1, e1, ec1) = self._last, now
        train_s = max(t1 - t0 - (e1 - e0), 1e-9)
        train_cpu_s = max(c1 - c0 - (ec1 - ec0), 1e-9)
        raw, trimmed = trimmed_rss_mib(self.process)
        self.rows.append(
            {
                "samples": samples,
                "raw_rss_mib": raw,
                "rss_mib": trimmed,
                "iterations": s1,
                "iterations_per_s": (s1 - s0) / train_s,
                "iterations_per_cpu_s": (s1 - s0) / train_cpu_s,
                "arrivals_per_cpu_s": self.window / train_cpu_s,
                "memory_slots": len(self.trainer.memory),
                "curve_points": len(self.trainer.curve),
            }
        )
        self._last = now
        print(
            f"{samples:>6} samples  RSS {raw:.1f} MiB, trimmed {trimmed:.1f} MiB  "
            f"{self.rows[-1]['iterations_per_s']:.1f} it/s  {self.rows[-1]['iterations_per_cpu_s']:.1f} it/CPU-s",
            file=sys.stderr,
            flush=True,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        while self.trainer.stream_sampler.cursor >= self.next_mark:
            self.sample(self.next_mark)
            self.next_mark += self.window


def measure(opts: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Stream the whole training set once with the probe attached; (the run's figures, the probe's rows)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from hf_budgetcl.config import BudgetedCLConfig
    from hf_budgetcl.data.idx import load_fashion_mnist
    from hf_budgetcl.data.image_collator import ImageCollator
    from hf_budgetcl.data.image_rows import sample_nbytes
    from hf_budgetcl.models import build_image_classifier
    from hf_budgetcl.stream.orders import disjoint_stream
    from hf_budgetcl.training.trainer import BudgetedCLTrainer

    config = BudgetedCLConfig(
        output_dir=opts.output_dir,
        method="er",
        memory_size=500,
        per_device_train_batch_size=16,
        online_iter=opts.online_iter,
        eval_period=10_000,
        per_device_eval_batch_size=500,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=10**9,
        seed=1,
    )
    from transformers import set_seed

    set_seed(1)  # the model's random init
    train, test = load_fashion_mnist(None, None, opts.per_class_test)
    stream = disjoint_stream(np.asarray(train["label"]), 5, seed=1)
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=28)
    trainer = BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=train.with_format("numpy"),
        eval_dataset=test.with_format("numpy"),
        stream=stream,
        sample_nbytes=sample_nbytes,
        data_collator=ImageCollator(),
    )
    probe = StabilityProbe(trainer, opts.window)
    trainer.add_callback(probe)
    rss_before = trimmed_rss_mib(psutil.Process())[1]
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    # Diagnostic: repeated evaluations on the full test set must not grow RSS either.
    eval_rss = []
    for _ in range(5):
        trainer.evaluate_at(len(stream))
        eval_rss.append(trimmed_rss_mib(psutil.Process())[1])
    params = {
        "online_iter": opts.online_iter,
        "window": opts.window,
        "threads": torch.get_num_threads(),
        "stream_length": len(stream),
        "test_size": len(test),
        "rss_before_mib": rss_before,
        "wall_s": wall,
        "eval_rss_mib": eval_rss,
        "results": {k: trainer.results[k] for k in ("A_auc", "A_last", "iterations", "samples_seen")},
    }
    return params, probe.rows


def table(params: dict, rows: list[dict]) -> str:
    p, r = params, params["results"]
    # Verdict: growth after warm-up (the first window fills memory and caches), and speed drift between halves.
    after_warmup = rows[1:] if len(rows) > 2 else rows
    rss = np.array([row["rss_mib"] for row in after_warmup])
    slope = np.polyfit([row["samples"] for row in after_warmup], rss, 1)[0] * 10_000 if len(rss) > 1 else 0.0
    half = len(rows) // 2
    speed = np.array([row["iterations_per_cpu_s"] for row in rows])
    ratio = speed[half:].mean() / speed[:half].mean() if half else float("nan")
    flat = abs(rss[-1] - rss[0]) < 10.0 and abs(slope) < 2.0
    trend = np.polyfit([row["samples"] for row in rows], speed, 1)[0] * 10_000 / speed.mean() if len(rows) > 1 else 0.0
    steady = ratio >= 0.85 and trend > -0.05  # no slowdown as the stream goes on
    header = [
        "samples seen",
        "RSS raw (MiB)",
        "RSS trimmed (MiB)",
        "iterations",
        "it/s wall",
        "it/s CPU",
        "arrivals/s CPU",
        "memory slots",
        "curve points",
    ]
    cells = [
        [
            f"{row['samples']:,}",
            f"{row['raw_rss_mib']:.1f}",
            f"{row['rss_mib']:.1f}",
            f"{row['iterations']:,}",
            f"{row['iterations_per_s']:.1f}",
            f"{row['iterations_per_cpu_s']:.1f}",
            f"{row['arrivals_per_cpu_s']:.0f}",
            row["memory_slots"],
            row["curve_points"],
        ]
        for row in rows
    ]
    lines = [
        "# Long-stream stability",
        "",
        f"`python scripts/benchmark_long_stream.py --online_iter {p['online_iter']} --window {p['window']}` "
        f"(CPU, {p['threads']} thread). Fashion-MNIST, all {p['stream_length']:,} training images as one "
        f"disjoint 5-task stream; ER, batch 16, 500-sample memory, `digits_resnet`, online_iter {p['online_iter']} "
        f"({r['iterations']:,} iterations); anytime evaluation every 10,000 arrivals on {p['test_size']:,} test "
        f"images. RSS before training: {p['rss_before_mib']:.1f} MiB. Wall time {p['wall_s']:.0f} s on a machine "
        "shared with other jobs (speed figures are ratios within this run; the CPU-time rate is what the code costs, "
        "the wall-clock rate also shows how busy the machine was).",
        "",
        "RSS: raw, and after `malloc_trim(0)` (live memory; glibc keeps freed evaluation buffers otherwise).",
        "",
        *markdown_table(header, cells, align="---:"),
        "",
        f"- Trimmed RSS from {after_warmup[0]['samples']:,} to {rows[-1]['samples']:,} samples: "
        f"{rss[0]:.1f} -> {rss[-1]:.1f} MiB ({rss[-1] - rss[0]:+.1f} MiB); fitted slope {slope:+.2f} MiB per 10k "
        f"samples, min {rss.min():.1f}, max {rss.max():.1f}.",
        f"- Speed (iterations per CPU second), second half of the stream / first half: {ratio:.3f} "
        f"(mean {speed[:half].mean():.1f} vs {speed[half:].mean():.1f} it/CPU-s; range {speed.min():.1f} to "
        f"{speed.max():.1f}); fitted trend {100 * trend:+.1f}% of the mean per 10k samples.",
        f"- After the run, 5 more evaluations on all {p['test_size']:,} test images: RSS "
        f"{' -> '.join(f'{x:.1f}' for x in p['eval_rss_mib'])} MiB.",
        f"- A_AUC {100 * r['A_auc']:.2f}, A_last {100 * r['A_last']:.2f}, {r['iterations']:,} iterations, "
        f"{r['samples_seen']:,} samples.",
        "",
        f"**Verdict: RSS {'flat' if flat else 'NOT flat'} (no leak: "
        f"{'yes' if flat else 'check'}); steps/s {'steady, no slowdown' if steady else 'SLOWING DOWN'}.** "
        "(Flat: under 10 MiB change and |slope| under 2 MiB per 10k samples after the first window; steady: the "
        "second half at least 85% of the first and no downward trend beyond 5% per 10k samples. Other jobs shared "
        "the machine, so the rate wanders with their load, in both directions.)",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--online_iter", type=float, default=0.1)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--per_class_test", type=int, default=100)
    parser.add_argument("--output_dir", default="out/long_stream")
    publish.add_arguments(parser, ROOT / "docs/results/long_stream.md", rerun=False)
    parser.add_argument("--report", dest="output", help=argparse.SUPPRESS)  # the earlier name of --output
    opts = parser.parse_args()
    return publish.publish(opts, SCRIPT, table, lambda: measure(opts))


if __name__ == "__main__":
    sys.exit(main())
