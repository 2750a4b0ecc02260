"""Adaptive freezing under FSDP2 (recipes/accelerate/fsdp2.yaml) on 2 CPU ranks (gloo), against DDP on the same
global batches, and exact resume after a SIGKILL under FSDP2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from hf_budgetcl.accounting.memory_budget import MemoryBudget, model_bytes, shard_numel
from hf_budgetcl.training.checkpointing import find_resumable_checkpoint
from tests.helpers import digits_run_args

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
BIN = Path(sys.executable).parent
FSDP2 = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "recipes/accelerate/fsdp2.yaml")]
DDP = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]


def _launch(launcher: list[str], *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def alsar_runs(tmp_path_factory):
    """The same aL-SAR run under FSDP2 and under DDP, each rank's record (tests/fsdp_scripts/alsar_ranks.py)."""
    runs = {}
    for name, launcher in (("fsdp", FSDP2), ("ddp", DDP)):
        out = tmp_path_factory.mktemp(name)
        proc = _launch(launcher, str(ROOT / "tests/fsdp_scripts/alsar_ranks.py"), str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        runs[name] = {"ranks": ranks, "params": torch.load(out / "params.pt"), "out": out}
    return runs


def test_fsdp2_ranks_take_the_same_decisions_and_freeze_for_real(alsar_runs):
    r0, r1 = alsar_runs["fsdp"]["ranks"]
    assert r0["fsdp"] and r0["world_size"] == 2
    assert r0["units"] and all(u.startswith("FSDP") for u in r0["units"])  # every block its own fully_shard unit
    assert [s["frozen"] for s in r0["steps"]] == [s["frozen"] for s in r1["steps"]]
    assert [s["batch"] for s in r0["steps"]] == [s["batch"] for s in r1["steps"]] and len(r0["steps"]) > 40
    assert r0["fisher"] == r1["fisher"]
    assert any(s["frozen"] > 0 for s in r0["steps"])
    # Frozen blocks never hold a gradient at the optimizer step; the blocks that train always do.
    assert not any(s["stale_grad"] for s in r0["steps"] + r1["steps"])
    assert all(s["suffix_grads"] for s in r0["steps"])


def test_fsdp2_frozen_units_reduce_scatter_nothing(alsar_runs):
    steps = alsar_runs["fsdp"]["ranks"][0]["steps"]
    n_units = len(alsar_runs["fsdp"]["ranks"][0]["units"])  # block units; the stem and the head are in the root
    full = [s["reduce_scatter_single"] for s in steps if s["frozen"] == 0]
    assert set(full) == {n_units + 1}
    stem = 1  # fmd5_resnet: block 0 is the stem (root unit), blocks 1.. are the units
    for s in steps:
        frozen_units = max(s["frozen"] - stem, 0)
        assert s["reduce_scatter_single"] == n_units + 1 - frozen_units, s
    # The backward all-gathers only the trained units, not the frozen one below them (FSDP's default prefetch
    # would). Typical count per prefix: a step after an evaluation finds the root unit still gathered.
    gathers: dict[int, Counter] = {}
    for s in steps:
        gathers.setdefault(s["frozen"], Counter())[s["all_gather_single"]] += 1
    typical = {n: c.most_common(1)[0][0] for n, c in gathers.items()}
    assert len(typical) > 1
    for n, count in typical.items():
        assert typical[0] - count == max(n - stem, 0), typical


def test_fsdp2_matches_ddp_on_the_same_global_batches(alsar_runs):
    fsdp, ddp = alsar_runs["fsdp"], alsar_runs["ddp"]
    f0, d0 = fsdp["ranks"][0], ddp["ranks"][0]
    assert not d0["fsdp"]
    assert [s["batch"] for s in f0["steps"]] == [s["batch"] for s in d0["steps"]]
    assert [s["frozen"] for s in f0["steps"]] == [s["frozen"] for s in d0["steps"]]
    assert f0["saved_fraction"] == pytest.approx(d0["saved_fraction"], rel=1e-9) and f0["saved_fraction"] > 0
    assert f0["train_flops"] == pytest.approx(d0["train_flops"], rel=1e-9)
    assert fsdp["params"].keys() == ddp["params"].keys()
    for name, p in fsdp["params"].items():
        torch.testing.assert_close(p, ddp["params"][name], rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp2_bytes_are_per_rank_shards(alsar_runs):
    f0, d0 = alsar_runs["fsdp"]["ranks"][0], alsar_runs["ddp"]["ranks"][0]
    mem = f0["memory_bytes"]
    # what this rank really stores: its padded parameter shards and the (replicated) buffers
    assert mem["model"] == f0["local_param_storage_bytes"] + f0["buffer_bytes"]
    assert mem["gradients"] == f0["local_param_storage_bytes"]  # every parameter trains here
    assert "gradients" not in d0["memory_bytes"] and d0["memory_bytes"]["model"] > mem["model"]
    assert mem["replay_samples"] == d0["memory_bytes"]["replay_samples"]  # the replay memory is on every rank


def test_shard_sizes_pad_dim0_and_the_budget_counts_gradients():
    assert [shard_numel(torch.Size(s), 2) for s in [(10, 3), (1,), (7,), ()]] == [15, 1, 4, 1]
    lin = torch.nn.Linear(3, 5)  # weight (5, 3), bias (5,): rank shards of 3 rows
    assert model_bytes(lin, shards=2) == 4 * (3 * 3 + 3) and model_bytes(lin) == 4 * 20
    budget = MemoryBudget(1000, model_bytes=100, optimizer_state_bytes=200, gradient_bytes=100)
    assert budget.sample_bytes_available == 600 and budget.itemise(50)["gradients"] == 100


RESUME_ARGS = digits_run_args(
    8,
    4,
    "--method",
    "alsar",
    "--per_device_train_batch_size",
    "4",
    "--memory_size",
    "40",
    "--learning_rate",
    "0.01",
    "--freeze_warmup_steps",
    "4",
    "--fisher_update_every",
    "3",
    "--sar_warmup_samples",
    "30",
    "--save_strategy",
    "steps",
    "--save_steps",
    "20",
    "--save_total_limit",
    "2",
    "--use_cpu",
    "true",
    "--ddp_backend",
    "gloo",
)
TIMING = {"wall_time_s", "train_time_s", "eval_time_s", "iterations_per_s"}


def _results(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k not in TIMING}


def test_fsdp2_sigkill_then_resume_matches_uninterrupted(tmp_path):
    def run(out: Path, kill_at: int, *extra: str) -> subprocess.CompletedProcess:
        script = str(ROOT / "tests/resume_scripts/run_killed.py")
        return _launch(FSDP2, script, str(kill_at), *RESUME_ARGS, "--output_dir", str(out), *extra, timeout=300)

    full, out = tmp_path / "full", tmp_path / "killed"
    proc = run(full, 10**9)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _results(full)
    assert reference["world_size"] == 2 and "gradients" in reference["memory_bytes"]  # it ran under FSDP
    assert any(int(k) > 0 for k in reference["frozen_blocks_histogram"])

    proc = run(out, 30, "--resume", "true")
    assert proc.returncode != 0 and not (out / "results.json").exists()
    assert find_resumable_checkpoint(str(out)) == str(out / "checkpoint-20")

    proc = run(out, 10**9, "--resume", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _results(out) == reference


@pytest.mark.parametrize("engine", ["fsdp1", "deepspeed"])
def test_fsdp1_and_deepspeed_still_refuse_freezing(tmp_path, monkeypatch, engine):
    from hf_budgetcl.training import fsdp
    from hf_budgetcl.training.trainer import BudgetedCLTrainer
    from hf_budgetcl.utils.errors import ConfigError
    from tests.helpers import digits_trainer

    create = BudgetedCLTrainer.create_accelerator_and_postprocess

    def as_engine(self):  # this trainer only, nothing global: the flags Trainer derives from accelerate's state
        create(self)
        self.is_fsdp_enabled, self.is_deepspeed_enabled = engine == "fsdp1", engine == "deepspeed"

    monkeypatch.setattr(BudgetedCLTrainer, "create_accelerator_and_postprocess", as_engine)
    monkeypatch.setattr(fsdp, "fsdp_version", lambda accelerator: 1)
    with pytest.raises(ConfigError, match="freeze: 'adaptive' needs DDP, FSDP2"):
        digits_trainer(tmp_path, per_class_train=2, freeze="adaptive")
    assert digits_trainer(tmp_path, per_class_train=2, freeze="none").freezes is False
