"""bn_recalibration: BatchNorm statistics from the replay memory for evaluation and the saved model, training
untouched, its forwards charged (#18)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

from hf_budgetcl.config import BudgetedCLConfig
from hf_budgetcl.evaluation.bn_recalibration import BatchNormRecalibration, even_batches, recalibrate_batchnorm
from hf_budgetcl.utils.errors import ConfigError
from tests.helpers import digits_trainer

# Two 1x2x2 images: 1..4 and 5..8.
IMAGES = torch.arange(1.0, 9.0).reshape(2, 1, 2, 2)


class ConvBN(nn.Module):
    """A 1x1 convolution with weights (1, -3) (channel 0 = x, channel 1 = -3x), BatchNorm, a linear head 2 -> 3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -3.0]).reshape(2, 1, 1, 1))

    def forward(self, pixel_values, labels=None):
        return self.head(self.bn(self.conv(pixel_values)).mean(dim=(2, 3)))


def stats(bn: nn.BatchNorm2d) -> tuple[list[float], list[float]]:
    return bn.running_mean.tolist(), bn.running_var.tolist()


def test_one_batch_gives_the_memorys_per_channel_statistics():
    model = ConvBN()
    recalibrate_batchnorm(model, [{"pixel_values": IMAGES}])
    # 1..8: mean 4.5, unbiased variance 42 / 7 = 6.0; channel 1 is -3x: mean -13.5, variance 9 * 6 = 54
    mean, var = stats(model.bn)
    assert mean == pytest.approx([4.5, -13.5]) and var == pytest.approx([6.0, 54.0])
    assert model.bn.momentum == 0.1 and model.training  # momentum and modes restored


def test_several_batches_average_their_statistics_with_equal_weight():
    model = ConvBN()
    recalibrate_batchnorm(model, [{"pixel_values": IMAGES[:1]}, {"pixel_values": IMAGES[1:]}])
    # batch means 2.5 and 6.5 -> 4.5; unbiased variances of 1..4 and 5..8 are both 5 / 3 (not 6: within batches)
    mean, var = stats(model.bn)
    assert mean == pytest.approx([4.5, -13.5]) and var == pytest.approx([5 / 3, 15.0])


def test_a_layer_that_does_not_run_in_train_mode_keeps_its_statistics():
    model = ConvBN()
    model.bn.running_mean.fill_(7.0)

    def keep_in_eval_mode(module, args):  # as REMIND keeps its frozen prefix
        module.eval()

    model.bn.register_forward_pre_hook(keep_in_eval_mode)
    recalibrate_batchnorm(model, [{"pixel_values": IMAGES}])
    assert stats(model.bn) == ([7.0, 7.0], [1.0, 1.0])


def test_even_batches_never_leave_a_small_last_batch():
    assert [len(b) for b in even_batches(list(range(10)), 4)] == [4, 3, 3]
    assert even_batches([], 4) == []


def counted_forward_flops(model: nn.Module):
    def measure(batch: dict) -> float:
        with FlopCounterMode(display=False) as counter:
            model(**batch)
        return float(counter.get_total_flops())

    return measure


def test_evaluation_sees_recalibrated_statistics_and_gets_the_old_ones_back_and_the_flops_are_charged():
    model = ConvBN()
    charged: dict[str, float] = {}
    recal = BatchNormRecalibration(
        model=lambda: model,
        batches=lambda: [{"pixel_values": IMAGES[:1]}, {"pixel_values": IMAGES[1:]}],
        forward_flops=counted_forward_flops(model),
        charge=lambda item, flops: charged.__setitem__(item, charged.get(item, 0.0) + flops),
        replicas=2,
    )
    before = stats(model.bn)
    with recal.for_evaluation():
        assert stats(model.bn)[0] == pytest.approx([4.5, -13.5])
    assert stats(model.bn) == before and model.bn.num_batches_tracked == 0
    # per image: the 1x1 conv 2 * 1 * 2 * 4 positions = 16, the head 2 * 2 * 3 = 12; 2 images, 2 replicas
    assert charged == {"bn_recalibration": 2 * 2 * (16 + 12)}
    recal.recalibrate()  # the final save: kept
    assert stats(model.bn)[0] == pytest.approx([4.5, -13.5]) and charged["bn_recalibration"] == 2 * 112


def test_a_bad_value_is_a_one_line_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        BudgetedCLConfig(output_dir=str(tmp_path), memory_size=10, bn_recalibration="always")
    assert str(err.value) == "bn_recalibration: expected one of none, memory, got 'always'"


class _Trajectory(TrainerCallback):
    """Every training loss, and the model's full state (running statistics included) when training ends."""

    def __init__(self, trainer):
        self.trainer, self.losses, self.state = trainer, [], None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):  # before the final evaluations and save
        self.state = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}


def run_digits(tmp_path, bn_recalibration: str, method: str):
    torch.manual_seed(0)  # the same initial weights
    trainer = digits_trainer(
        tmp_path / bn_recalibration, method=method, eval_period=15, logging_steps=1, bn_recalibration=bn_recalibration
    )
    trajectory = _Trajectory(trainer)
    trainer.add_callback(trajectory)
    trainer.train()
    return trainer, trajectory


@pytest.mark.parametrize("method", ["er", "alsar"])
def test_training_is_bit_identical_with_and_without_recalibration(tmp_path, method):
    plain, plain_run = run_digits(tmp_path, "none", method)
    recal, recal_run = run_digits(tmp_path, "memory", method)
    assert len(plain.curve) == len(recal.curve) > 10 and recal.ledger.items["bn_recalibration"] > 0
    assert len(recal_run.losses) == recal.results["iterations"] > 100
    assert recal_run.losses == plain_run.losses
    assert recal_run.state.keys() == plain_run.state.keys()
    assert all(torch.equal(recal_run.state[k], plain_run.state[k]) for k in plain_run.state)
    assert recal.results["frozen_blocks_histogram"] == plain.results["frozen_blocks_histogram"]
    assert [p.accuracy for p in recal.curve] != [p.accuracy for p in plain.curve]  # the evaluation did change
    # the saved model keeps the final recalibration: its running statistics, not training's last ones
    final = recal.model.state_dict()
    assert not torch.equal(final["stem.1.running_mean"], recal_run.state["stem.1.running_mean"])


def test_the_charge_is_every_recalibrated_row_at_its_measured_forward_flops(tmp_path):
    trainer = digits_trainer(tmp_path, eval_period=40, bn_recalibration="memory")
    rows = []
    batches = trainer.memory_batches

    def counting():
        out = batches()
        rows.append(sum(len(b["labels"]) for b in out))
        return out

    trainer.bn_recalibration.batches = counting
    keys, key_of = [], trainer.recalibration_key
    trainer.recalibration_key = lambda: keys.append(key_of()) or keys[-1]
    trainer.train()
    one_row = trainer.collate_rows(trainer.stream.indices[:1])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        trainer.model.eval()(**one_row)
    items = trainer.results["flops_items"]
    assert len(keys) == len(trainer.curve) + 1  # every evaluation, then the final save
    # one pass per distinct (step, memory): the final save reuses the last evaluation's statistics
    assert keys[-1] == keys[-2] and len(rows) == len(set(keys)) < len(keys)
    assert items["bn_recalibration"] == sum(rows) * counter.get_total_flops() > 0
    assert trainer.results["train_flops"] == sum(items.values())


def test_a_model_without_batchnorm_warns_once_and_runs_as_without(tmp_path):
    with pytest.warns(UserWarning, match="bn_recalibration: .* has no BatchNorm layer") as caught:
        trainer = digits_trainer(tmp_path, model="tiny_vit", per_class_train=4, bn_recalibration="memory")
    assert sum("bn_recalibration" in str(w.message) for w in caught) == 1
    trainer.train()
    assert "bn_recalibration" not in trainer.results["flops_items"]


def test_memory_batches_mix_the_tasks(tmp_path):
    """The memory keeps its slots in arrival order; a recalibration batch of one task would miss the variance
    between tasks."""
    trainer = digits_trainer(tmp_path, eval_period=1000, bn_recalibration="memory")
    trainer.train()
    labels = [set(b["labels"].tolist()) for b in trainer.memory_batches()]
    assert len(labels) > 2 and all(len(classes) > 2 for classes in labels[:2])  # a task holds 2 classes


class _Costs(TrainerCallback):
    def __init__(self, pacing):
        self.pacing, self.costs = pacing, []

    def on_step_end(self, args, state, control, **kwargs):
        self.costs.append(self.pacing.cost_per_iteration)


def test_budget_pacing_does_not_count_a_recalibration_as_a_step(tmp_path):
    from hf_budgetcl.accounting.pacing import BudgetMatchingCallback

    trainer = digits_trainer(
        tmp_path, eval_period=15, bn_recalibration="memory", budget_matching="auto", flops_budget_per_sample=3e6
    )
    pacing = next(c for c in trainer.callback_handler.callbacks if isinstance(c, BudgetMatchingCallback))
    costs = _Costs(pacing)
    trainer.add_callback(costs)
    trainer.train()
    assert trainer.ledger.items["bn_recalibration"] > 0 and len(costs.costs) > 5
    # an average of step charges never exceeds the dearest step
    assert max(costs.costs) <= trainer.ledger.max_step_flops * (1 + 1e-9)
