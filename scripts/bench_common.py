"""What the benchmark scripts share: running ``hf-budgetcl run`` in a fresh process, mean ± std, writing a fragment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_cli(cli_args: Sequence[str], out: Path, threads: int = 1, rerun: bool = False) -> dict:
    """``hf-budgetcl run <cli_args> --output_dir out`` in its own process (``threads`` torch threads); returns its
    results.json. A finished run (results.json present, made with the same ``cli_args``, recorded in out/cmd.json) is
    reused unless ``rerun``; the log goes to out/log.txt."""
    results, recorded = out / "results.json", out / "cmd.json"
    args = [str(a) for a in cli_args]
    # Reuse only a run made with the same arguments (runs from before cmd.json existed are reused as they are).
    same = not recorded.exists() or json.loads(recorded.read_text()) == args
    if results.exists() and same and not rerun:
        return json.loads(results.read_text())
    if results.exists() and not same:
        print(f"  {out.name}: arguments changed, running again", file=sys.stderr, flush=True)
        results.unlink()
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(args))
    cmd = [
        sys.executable,
        "-m",
        "hf_budgetcl.cli",
        "run",
        *args,
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **OFFLINE_ENV}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not results.exists():
        raise RuntimeError(f"{out.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  {out.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return json.loads(results.read_text())


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std, ddof 1) of ``values * scale``; only the mean for a single value."""
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def write_fragment(path: str | Path, text: str) -> None:
    """Write a markdown fragment (scripts/make_results_page.py assembles docs/results.md from them) and echo it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


def variant_flags(entry: str) -> tuple[str, list[str]]:
    """``"sar:sar_temperature=0.03,similarity_ema=0.01"`` -> ``("sar", ["--sar_temperature", "0.03", ...])``; later
    flags win, so a variant's ``memory_size`` caps the slots while the byte budget stays the common one."""
    method, _, options = entry.partition(":")
    pairs = [kv.split("=", 1) for kv in options.split(",") if kv]
    if any(len(kv) != 2 for kv in pairs):
        raise SystemExit(f"expected name[:key=value,...], got {entry!r}")
    return method, [x for k, v in pairs for x in (f"--{k}", v)]


def variant_dirname(entry: str) -> str:
    """A run directory name for a ``name:key=value,...`` entry (no path separators)."""
    return entry.replace(":", "+").replace(",", "+").replace("/", "_")


def paired_difference(
    runs: Sequence[dict], baseline: Sequence[dict] | None, key: str = "A_auc", scale: float = 100.0
) -> str:
    """Mean ± std over seeds of ``run[key] - baseline[key]``, the lists aligned by seed: the seed's stream order and
    initialisation are shared, so the spread is the method's own, not the seeds'. "–" without a baseline or for the
    baseline itself."""
    if not baseline or runs is baseline:
        return "–"
    return mean_std([a[key] - b[key] for a, b in zip(runs, baseline)], scale)
