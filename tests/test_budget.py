import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from hf_budgetcl.accounting.flops import FlopsProfiler, StepCost
from hf_budgetcl.accounting.ledger import FlopsLedger
from hf_budgetcl.accounting.memory_budget import MemoryBudget, model_bytes
from hf_budgetcl.models import build_image_classifier
from hf_budgetcl.models.blocks import find_blocks


def _loss(model, inputs):
    return model(**inputs).loss


def _image_batch(b=4):
    torch.manual_seed(0)
    return {"pixel_values": torch.randn(b, 1, 8, 8), "labels": torch.randint(0, 10, (b,))}


@pytest.mark.parametrize("n_frozen", [0, 1, 2, 3])
def test_profiler_equals_flop_counter_around_a_real_pruned_step(n_frozen):
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    blocks = find_blocks(model)
    batch = _image_batch()
    cost = FlopsProfiler(model, blocks, _loss).cost(batch)
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward(inputs=blocks.trainable_from(n_frozen))
    assert cost.train_flops(n_frozen) == counter.get_total_flops()


def test_freezing_really_removes_backward_flops():
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    cost = FlopsProfiler(model, find_blocks(model), _loss).cost(_image_batch())
    bwd = cost.backward_by_prefix
    assert all(a > b for a, b in zip(bwd, bwd[1:]))  # every extra frozen block saves backward work
    assert bwd[0] > 1.8 * cost.forward  # full backward ~ 2x forward (minus the stem's input gradient)


def test_profiler_leaves_batchnorm_statistics_and_rng_untouched():
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _image_batch()
    torch.manual_seed(5)
    FlopsProfiler(model, find_blocks(model), _loss).cost(batch)
    draw = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(draw, torch.rand(1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cpu_sdpa_attention_is_counted():
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ids = torch.randint(0, 64, (2, 32))
    totals = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        model.set_attn_implementation(impl)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids)
        totals[impl] = counter.get_total_flops()
    assert totals["sdpa"] == totals["eager"]  # 2*B*H*T*T*d for QK^T and for AV, in both


def test_cost_is_cached_per_shape():
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    profiler = FlopsProfiler(model, find_blocks(model), _loss)
    a = profiler.cost(_image_batch(4))
    assert profiler.cost(_image_batch(4)) is a
    b = profiler.cost(_image_batch(8))
    assert len(profiler.cache) == 2 and b.forward == pytest.approx(2 * a.forward)


def test_ledger_arithmetic_and_saved_fraction():
    cost = StepCost(forward=10.0, backward_by_prefix=(20.0, 12.0, 4.0))
    assert cost.backward_saved_per_block == (8.0, 8.0)
    ledger = FlopsLedger(budget=100.0)
    ledger.charge_step(cost, 0)
    ledger.charge_step(cost, 2, scale=2)  # two processes ran the same shard cost
    assert ledger.items == {"train_forward": 30.0, "train_backward": 28.0}
    assert ledger.total == 58.0 and ledger.remaining == 42.0
    assert ledger.backward_saved_fraction == pytest.approx(1 - 28.0 / 60.0)
    assert not ledger.can_afford(43.0)
    restored = FlopsLedger()
    restored.load_state_dict(ledger.state_dict())
    assert restored.total == 58.0 and restored.budget == 100.0


def test_model_bytes_are_the_real_tensor_bytes():
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    real = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert model_bytes(model) == real


def test_memory_budget_itemises_and_rejects_too_small_budgets():
    budget = MemoryBudget(total_bytes=1000, model_bytes=600, optimizer_state_bytes=100, extra_state_bytes={"s": 50})
    assert budget.sample_bytes_available == 250
    assert budget.itemise(200) == {
        "model": 600,
        "optimizer_state": 100,
        "extra:s": 50,
        "replay_samples": 200,
        "total": 950,
    }
    with pytest.raises(ValueError, match="memory_budget_bytes=500 is smaller"):
        MemoryBudget(total_bytes=500, model_bytes=600).validate()


def test_a_failing_measurement_leaves_no_measuring_flag_behind():
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    model.eval()

    def broken(model, inputs):
        raise RuntimeError("forward failed")

    profiler = FlopsProfiler(model, find_blocks(model), broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        profiler.cost(_image_batch())
    assert profiler.measuring is False
    assert not model.training  # the mode it had before
