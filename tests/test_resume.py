"""Exact mid-stream resume: a run killed with SIGKILL (or stopped by a full disk) and resumed with ``--resume``
ends with the same results.json and weights as an uninterrupted run."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_budgetcl.cli import main
from hf_budgetcl.methods import get_method
from hf_budgetcl.stream.memory import EpisodicMemory
from hf_budgetcl.stream.orders import disjoint_stream
from hf_budgetcl.stream.sampler import OnlineStreamSampler
from hf_budgetcl.training.checkpointing import CL_STATE_NAME, find_resumable_checkpoint
from hf_budgetcl.training.trainer import BudgetedCLTrainer
from tests.helpers import digits_run_args

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"wall_time_s", "train_time_s", "eval_time_s", "iterations_per_s"}
ER_ARGS = digits_run_args(16, 5, "--save_strategy", "steps", "--save_steps", "25", "--save_total_limit", "2")
# aL-SAR with adaptive freezing that really freezes (high lr), and 1.5 iterations per arrival (an arrival's second
# iteration may be owed across a checkpoint).
ALSAR_ARGS = [
    "--config",
    "recipes/configs/digits_er.yaml",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--per_class_train",
    "12",
    "--per_class_test",
    "5",
    "--eval_period",
    "40",
    "--logging_steps",
    "1000",
    "--method",
    "alsar",
    "--per_device_train_batch_size",
    "8",
    "--memory_size",
    "60",
    "--learning_rate",
    "0.01",
    "--freeze_warmup_steps",
    "4",
    "--fisher_update_every",
    "3",
    "--sar_warmup_samples",
    "30",
    "--online_iter",
    "1.5",
    "--save_strategy",
    "steps",
    "--save_steps",
    "20",
    "--save_total_limit",
    "2",
]


def _results(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k not in TIMING}


def _run_killed(out: Path, kill_at_step: int, args: list[str]) -> None:
    """A subprocess ``hf-budgetcl run`` (already with --resume) that SIGKILLs itself after ``kill_at_step``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(ROOT / "tests/resume_scripts/run_killed.py"),
        str(kill_at_step),
        *args,
        "--output_dir",
        str(out),
        "--resume",
        "true",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # died by SIGKILL, not by an error
    assert not (out / "results.json").exists()


@pytest.fixture
def count_steps(monkeypatch):
    calls = []
    step = BudgetedCLTrainer.training_step

    def counting(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(BudgetedCLTrainer, "training_step", counting)
    return calls


@pytest.fixture(scope="module")
def er_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("er") / "full"
    assert main(["run", *ER_ARGS, "--output_dir", str(out)]) == 0
    return out


def test_sigkill_then_resume_gives_identical_results(er_reference, tmp_path, capsys, count_steps):
    out = tmp_path / "killed"
    _run_killed(out, 60, ER_ARGS)  # checkpoints at 25 and 50; dies at the start of iteration 61
    assert find_resumable_checkpoint(str(out)) == str(out / "checkpoint-50")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-25", "checkpoint-50"]

    assert main(["run", *ER_ARGS, "--output_dir", str(out), "--resume", "true"]) == 0
    full = _results(er_reference)
    assert count_steps[0] == 50 and len(count_steps) == full["iterations"] - 50  # it did resume, at step 50
    assert _results(out) == full
    assert (out / "model.safetensors").read_bytes() == (er_reference / "model.safetensors").read_bytes()


def test_alsar_with_adaptive_freezing_resumes_exactly(tmp_path, capsys, count_steps):
    full = tmp_path / "full"
    assert main(["run", *ALSAR_ARGS, "--output_dir", str(full)]) == 0
    reference = _results(full)
    hist = reference["frozen_blocks_histogram"]
    assert any(int(k) > 0 for k in hist)  # freezing happened: the Fisher EMA matters for the result

    out = tmp_path / "killed"
    _run_killed(out, 50, ALSAR_ARGS)  # resumes from checkpoint-40
    state = json.loads((out / "checkpoint-40" / CL_STATE_NAME).read_text())
    assert state["ledger"]["steps"] == 40
    trainer_state = (out / "checkpoint-40" / "trainer_state.json").read_text()
    assert "fisher" not in trainer_state  # the Fisher EMA is written once, in cl_state.json
    assert state["freezing"]["steps"] == 40 and all(state["freezing"]["fisher_seen"])
    sar = state["sampler"]["method"]
    assert np.asarray(sar["S"]).shape[0] > 0 and sar["similarity_updates"] == 8 * 40
    assert len(state["sampler"]["memory"]["use_counts"]) == len(state["sampler"]["memory"]["indices"]) > 0

    count_steps.clear()
    assert main(["run", *ALSAR_ARGS, "--output_dir", str(out), "--resume", "true"]) == 0
    assert count_steps[0] == 40
    resumed = _results(out)
    assert resumed["freeze"]["fisher"] == reference["freeze"]["fisher"]
    assert resumed == reference
    assert (out / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(er_reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    save = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):  # the model file of checkpoint-50 is written, the optimizer not
        if "checkpoint-50" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    assert main(["run", *ER_ARGS, "--output_dir", str(out)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-budgetcl: error:")]
    assert len(lines) == 1
    assert "No space left on device" in lines[0] and str(out / "checkpoint-25") in lines[0]
    assert (out / "checkpoint-50" / "model.safetensors").exists()
    assert not (out / "checkpoint-50" / CL_STATE_NAME).exists()  # incomplete: never picked for a resume
    assert not (out / "results.json").exists()

    monkeypatch.setattr(torch, "save", save)  # space freed
    assert main(["run", *ER_ARGS, "--output_dir", str(out), "--resume", "true"]) == 0
    assert _results(out) == _results(er_reference)


def test_resume_options_are_checked(tmp_path, capsys):
    partial = tmp_path / "checkpoint-5"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    assert main(["run", *ER_ARGS, "--output_dir", str(tmp_path), "--resume_from_checkpoint", str(partial)]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert main(["run", *ER_ARGS, "--output_dir", str(tmp_path), "--save_total_limit", "1"]) == 2
    assert "save_total_limit" in capsys.readouterr().err


def _sampler(online_iter=2.5, rank=0, world_size=1, seed=0):
    labels = np.repeat(np.arange(4), 10)
    stream = disjoint_stream(labels, 2, seed=0)
    method = get_method("er")
    memory = EpisodicMemory(capacity_bytes=12 * 8, seed=seed)
    return OnlineStreamSampler(
        stream,
        memory,
        method,
        lambda i: 8,
        batch_size=4,
        online_iter=online_iter,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )


@pytest.mark.parametrize("stop_after", [1, 4, 7, 30])
def test_sampler_state_resumes_mid_arrival(stop_after):
    """online_iter 2.5: arrivals owe 2 or 3 iterations; a state taken between two of them continues exactly."""
    reference = list(_sampler())
    first = _sampler()
    it = iter(first)
    head = [next(it) for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict(), default=lambda a: a.tolist()))
    second = _sampler(seed=99)  # other generator seeds: their states must come from the checkpoint
    second.load_state_dict(state)
    assert head + list(second) == reference
    assert len(second) == len(reference)  # the whole stream's iterations, also after a resume


def test_each_rank_yields_its_contiguous_shard():
    global_batches = list(_sampler(online_iter=1.0))
    shards = [list(_sampler(online_iter=1.0, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards)] == global_batches
    assert all(len(a) == len(b) == 2 for a, b in zip(*shards))


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="no torchrun")
def test_two_process_alsar_killed_then_resumed_matches_uninterrupted(tmp_path):
    """2 DDP ranks (gloo): both SIGKILLed at iteration 51, then resumed from checkpoint-40 with 2 ranks again; the
    result equals an uninterrupted 2-rank run (same frozen prefixes, SAR state and weights)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ddp = ["--use_cpu", "true", "--ddp_backend", "gloo"]

    def launch(out: Path, kill_at: int, *extra: str) -> subprocess.CompletedProcess:
        cmd = [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "tests/resume_scripts/run_killed.py"),
            str(kill_at),
            *ALSAR_ARGS,
            *ddp,
            "--output_dir",
            str(out),
            *extra,
        ]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)

    full, out = tmp_path / "full", tmp_path / "killed"
    proc = launch(full, 10**9)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _results(full)
    assert reference["world_size"] == 2 and any(int(k) > 0 for k in reference["frozen_blocks_histogram"])

    proc = launch(out, 50, "--resume", "true")
    assert proc.returncode != 0 and not (out / "results.json").exists()
    assert "Signal 9 (SIGKILL)" in proc.stderr or "exitcode  : -9" in proc.stderr, proc.stderr[-3000:]  # killed
    assert find_resumable_checkpoint(str(out)) == str(out / "checkpoint-40")

    proc = launch(out, 10**9, "--resume", "true", "--log_level", "info")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global step 40" in proc.stdout + proc.stderr  # Trainer: "Resuming training from checkpoint ..."
    assert _results(out) == reference
    assert (out / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
