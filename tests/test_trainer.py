import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

from hf_budgetcl.stream.sampler import count_iterations
from tests.helpers import digits_trainer

REQUIRED = {
    "method",
    "stream",
    "seed",
    "A_auc",
    "A_last",
    "F_last",
    "train_flops",
    "flops_budget",
    "memory_bytes",
    "memory_budget_bytes",
    "samples_seen",
    "iterations",
    "wall_time_s",
    "curve",
}


class _CountEachStep(TrainerCallback):
    """Wraps every training step (forward, backward, optimizer) in its own FlopCounterMode."""

    def __init__(self):
        self.total, self.mode = 0, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.mode = FlopCounterMode(display=False)
        self.mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.mode.__exit__(None, None, None)
        self.total += self.mode.get_total_flops()


@pytest.mark.parametrize("freeze", ["none", "static:2"])
def test_ledger_matches_flop_counter_around_the_same_steps(tmp_path, freeze):
    trainer = digits_trainer(tmp_path, per_class_train=8, freeze=freeze, eval_period=10_000)
    trainer.check_budget_affords_one_iteration()  # measures the (only) batch shape before the steps run
    counter = _CountEachStep()
    trainer.add_callback(counter)
    trainer.train()
    assert trainer.ledger.steps == trainer.results["iterations"] > 50
    assert trainer.ledger.total == pytest.approx(counter.total, rel=0.01)
    assert trainer.state.total_flos == pytest.approx(counter.total, rel=0.01)


def test_results_json_and_anytime_curve(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=20, eval_period=40)
    trainer.train()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert REQUIRED <= results.keys()
    assert results["samples_seen"] == len(trainer.stream) == 200
    assert [p["samples"] for p in results["curve"]] == [40, 80, 120, 160, 200]
    assert results["A_auc"] == pytest.approx(np.mean([p["accuracy"] for p in results["curve"]]))
    assert results["A_last"] == results["curve"][-1]["accuracy"]
    flops = [p["train_flops"] for p in results["curve"]]
    assert flops == sorted(flops) and flops[-1] == results["train_flops"]
    assert results["memory_bytes"]["total"] <= results["memory_budget_bytes"]
    assert results["A_last"] > 0.3  # 200 real digits, 10 classes: well above chance (0.1)


def test_each_evaluation_uses_only_the_classes_seen_so_far(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=20, eval_period=40)
    seen_sizes = []
    original = trainer.evaluator.__call__

    def spy(tr, seen):
        seen_sizes.append(len(seen))
        return original(tr, seen)

    trainer.evaluator = spy
    trainer.train()
    assert seen_sizes == [2, 4, 6, 8, 10]  # 40 arrivals per 2-class task


def test_batches_only_contain_samples_that_have_arrived(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=10)
    arrived_at = {int(i): t + 1 for t, i in enumerate(trainer.stream.indices)}
    seen = []
    original = trainer.stream_sampler.pop_record

    def record():
        r = original()
        seen.append(r)
        return r

    trainer.stream_sampler.pop_record = record
    trainer.train()
    assert seen and all(arrived_at[i] <= r.samples_seen for r in seen for i in r.indices)
    # ER: the first half of every batch is the latest arrivals, in order
    r = seen[10]
    assert list(r.indices[:4]) == [int(i) for i in trainer.stream.indices[r.samples_seen - 4 : r.samples_seen]]


@pytest.mark.parametrize("online_iter", [0.5, 2.0])
def test_online_iter_sets_the_number_of_iterations(tmp_path, online_iter):
    trainer = digits_trainer(tmp_path, per_class_train=6, online_iter=online_iter, eval_period=1000)
    trainer.train()
    expected = count_iterations(60, online_iter, min_arrivals=4)
    assert trainer.results["iterations"] == expected
    assert expected == pytest.approx((60 - 3) * online_iter, abs=1)


def test_flops_budget_stops_training_but_the_stream_still_arrives(tmp_path):
    probe = digits_trainer(tmp_path / "probe", per_class_train=10)
    probe.check_budget_affords_one_iteration()
    per_step = next(iter(probe.profiler.cache.values())).train_flops(0)
    trainer = digits_trainer(tmp_path, per_class_train=10, flops_budget=30.5 * per_step, eval_period=25)
    trainer.train()
    r = trainer.results
    assert r["stopped_by"] == "flops_budget"
    assert r["iterations"] == 30 and r["train_flops"] <= r["flops_budget"]
    assert r["samples_seen"] == 100 and [p["samples"] for p in r["curve"]] == [25, 50, 75, 100]


def test_replay_draws_whole_batches_from_memory(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=10, method="replay")
    trainer.train()
    assert trainer.results["method"] == "replay"
    assert trainer.results["iterations"] == count_iterations(100, 1.0, min_arrivals=8)


def test_byte_budget_fixes_replay_capacity(tmp_path):
    from hf_budgetcl.accounting.memory_budget import model_bytes

    probe = digits_trainer(tmp_path / "probe", per_class_train=5)
    model = model_bytes(probe.model)
    trainer = digits_trainer(tmp_path, per_class_train=10, memory_size=None, memory_budget_bytes=model + 25 * (64 + 8))
    trainer.train()
    assert trainer.results["memory_slots"] == 25
    assert trainer.results["memory_bytes"]["replay_samples"] == 25 * 72
    assert trainer.results["memory_bytes"]["total"] == trainer.results["memory_budget_bytes"]


def test_nonfinite_loss_skips_the_update(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=4, eval_period=1000)
    calls = {"n": 0}
    original = trainer.method.extra_loss

    def poison(ctx, inputs, outputs):  # called on real training passes only
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 3 else None

    trainer.method.extra_loss = poison
    with pytest.warns(UserWarning, match="non-finite loss"):
        trainer.train()
    assert trainer.results["skipped_nonfinite_batches"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    trainer.method.extra_loss = original
