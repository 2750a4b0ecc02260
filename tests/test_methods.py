"""Baselines (MIR, DER++, EWC++, REMIND, GDumb, static / LISA freezing) and budget matching, on tiny inputs."""

import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_budgetcl.accounting.pacing import ema_update, paced_online_iter
from hf_budgetcl.freezing.lisa import draw_active_blocks
from hf_budgetcl.methods import METHODS, get_method
from hf_budgetcl.methods.derpp import derpp_loss, derpp_loss_flops
from hf_budgetcl.methods.ewc import EWC, ewc_flops, ewc_penalty, fisher_update, task_gradient
from hf_budgetcl.methods.lm_logits import per_sample_loss
from hf_budgetcl.methods.mir import select_most_interfered
from hf_budgetcl.methods.options import parse_method_options
from hf_budgetcl.methods.remind import dequantise_uint8, quantise_uint8
from hf_budgetcl.stream.sampler import BatchRecord
from hf_budgetcl.utils.errors import ConfigError
from tests.helpers import digits_trainer, tiny_config

DIGIT_BYTES = 72  # 8x8 uint8 + 8 bytes of label/shape (data.images.sample_nbytes)


# ---- registry and options ------------------------------------------------------------------------------------------
def test_every_baseline_is_registered():
    for name in ("er", "replay", "mir", "derpp", "ewc", "remind", "gdumb", "sar", "alsar", "er+static", "er+lisa"):
        assert name in METHODS and METHODS[name].name == name


def test_method_options_parse_cast_and_reject(tmp_path):
    assert parse_method_options("a=1, b = x,") == {"a": "1", "b": "x"}
    with pytest.raises(ValueError, match="method_options"):
        parse_method_options("mir_candidates")
    method = get_method("mir", config=tiny_config(tmp_path, method="mir", method_options="mir_candidates=7"))
    assert method.candidates == 7 and isinstance(method.candidates, int) and method.virtual_lr == 0.1
    with pytest.raises(ValueError, match="mir_candidates"):
        get_method("mir", config=tiny_config(tmp_path, method="mir", method_options="mir_candidates=many"))


# ---- pure maths -----------------------------------------------------------------------------------------------------
def test_per_sample_loss_classifier_and_causal_lm():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = [np.log(1 + np.exp(-2.0)), np.log(2.0)]
    assert per_sample_loss(logits, labels).tolist() == pytest.approx(expected, rel=1e-6)
    # LM: token t predicts label t + 1; row 1 has one labelled token, row 2 none (loss 0).
    lm = torch.zeros(2, 3, 4)
    lm[0, 0, 2] = 3.0
    lm_labels = torch.tensor([[-100, 2, -100], [-100, -100, -100]])
    out = per_sample_loss(lm, lm_labels)
    assert out[0].item() == pytest.approx(-np.log(np.exp(3.0) / (np.exp(3.0) + 3)), rel=1e-6)
    assert out[1].item() == 0.0


def test_mir_selects_the_largest_loss_increases():
    before = np.array([1.0, 2.0, 0.5, 3.0])
    after = np.array([1.5, 2.1, 2.5, 3.0])  # increases 0.5, 0.1, 2.0, 0.0
    assert select_most_interfered(before, after, 2).tolist() == [2, 0]
    assert select_most_interfered(before, after, 0).tolist() == []


def test_derpp_loss_terms_by_hand():
    logits = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    stored = torch.tensor([[0.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([1, 0])
    has = torch.tensor([True, False])  # only row 0 has stored logits
    mse = ((1.0 - 0.0) ** 2 + 0.0) / 2  # mean over row 0's two logits
    ce = (F.cross_entropy(logits[:1], labels[:1]) + F.cross_entropy(logits[1:], labels[1:])).item() / 2
    assert derpp_loss(logits, labels, stored, has, alpha=0.3, beta=0.5).item() == pytest.approx(0.3 * mse + 0.5 * ce)
    none = torch.tensor([False, False])
    assert derpp_loss(logits, labels, stored, none, 0.3, 0.0).item() == 0.0
    assert derpp_loss_flops(1, 2, 10) == 5 * 10 + 6 * 2 * 10


def test_ewc_penalty_and_fisher_update_by_hand():
    p = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    anchor = [torch.tensor([0.0, 2.0]), torch.tensor([[1.5]])]
    fisher = [torch.tensor([2.0, 7.0]), torch.tensor([[3.0]])]
    # lambda / 2 * (2 * 1^2 + 7 * 0^2 + 3 * 1^2) = 5 * 5 / 2
    assert ewc_penalty(p, fisher, anchor, lam=5.0).item() == pytest.approx(12.5)
    updated = fisher_update(torch.tensor([1.0, 0.0]), torch.tensor([2.0, -3.0]), ema=0.25)
    assert updated.tolist() == pytest.approx([0.75 + 0.25 * 4, 0.25 * 9])
    assert ewc_flops(10, 4) == 7 * 10 + 4 * 4
    # grad 3 - lam 2 * F 0.5 * (p 4 - anchor 1) = 0
    assert task_gradient(torch.tensor([3.0]), torch.tensor([0.5]), torch.tensor([4.0]), torch.tensor([1.0]), 2.0) == 0


@pytest.mark.parametrize("fisher_of", ["task_loss", "total_loss"])
def test_ewc_fisher_squares_the_gradient_it_is_told_to(fisher_of):
    """One backward of task loss + penalty; the Fisher must equal the EMA of the squared task-loss gradient (computed
    by its own backward) or, with total_loss, of the whole gradient."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    charges = []
    ctx = types.SimpleNamespace(
        model=model, add_callback=lambda cb: None, charge=lambda item, flops, **kw: charges.append(flops)
    )
    ewc = EWC(ewc_lambda=50.0, ewc_fisher_ema=0.5, ewc_fisher_of=fisher_of)
    ewc.setup(ctx)
    ewc.fisher = [torch.rand_like(f) for f in ewc.fisher]
    ewc.anchor = [p.detach() + 0.3 for p in ewc.params]
    x = torch.randn(4, 3)
    task_grads = torch.autograd.grad(model(x).pow(2).sum(), ewc.params)
    penalty = ewc.extra_loss(ctx, {}, None)
    total_grads = torch.autograd.grad(model(x).pow(2).sum() + penalty, ewc.params)
    assert not torch.allclose(task_grads[0], total_grads[0])  # the penalty does move the gradient
    for p, g in zip(ewc.params, total_grads):
        p.grad = g
    squared = task_grads if fisher_of == "task_loss" else total_grads
    expected = [fisher_update(f, g, 0.5) for f, g in zip(ewc.fisher, squared)]
    ewc.update_fisher(ctx)
    for f, e in zip(ewc.fisher, expected):
        torch.testing.assert_close(f, e)
    n = sum(p.numel() for p in ewc.params)
    assert charges[-1] == ewc_flops(0, n, n if fisher_of == "task_loss" else 0)


def test_ewc_fisher_of_must_be_known_and_task_loss_refuses_clipping():
    with pytest.raises(ConfigError, match="ewc_fisher_of"):
        EWC(ewc_fisher_of="penalty")
    clipped = types.SimpleNamespace(max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        EWC(clipped)
    assert EWC(clipped, ewc_fisher_of="total_loss").options.ewc_fisher_of == "total_loss"
    assert EWC(types.SimpleNamespace(max_grad_norm=0.0)).options.ewc_fisher_of == "task_loss"


def test_uint8_quantisation_round_trip():
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    x[2] = 1.5  # a constant row: scale 1, exact
    codes, lo, scale = quantise_uint8(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and lo.shape == (3, 1, 1)
    err = (dequantise_uint8(codes, lo, scale) - x).abs()
    assert (err <= scale / 2 + 1e-6).all() and err[2].max() == 0
    assert int(codes[0].max()) == 255 and int(codes[0].min()) == 0


def test_lisa_draws():
    rng = np.random.default_rng(0)
    draws = [draw_active_blocks(5, 2, rng, always_last=False) for _ in range(50)]
    assert all(len(d) == 2 and d[0] < d[1] for d in draws)
    assert len({tuple(d) for d in draws}) > 3  # random, not fixed
    assert all(d[-1] == 4 and len(d) == 3 for d in (draw_active_blocks(5, 3, rng, always_last=True) for _ in range(9)))


def test_paced_online_iter_by_hand():
    assert paced_online_iter(1000.0, 10, 50.0, cap=5.0) == 2.0
    assert paced_online_iter(1000.0, 10, 5.0, cap=5.0) == 5.0  # clipped
    assert paced_online_iter(-3.0, 10, 5.0, cap=5.0) == 0.0  # overspent: no more iterations
    assert paced_online_iter(1000.0, 0, 5.0, cap=5.0) == 5.0
    assert ema_update(None, 4.0, 0.1) == 4.0 and ema_update(4.0, 14.0, 0.1) == pytest.approx(5.0)


# ---- accounting in the trainer --------------------------------------------------------------------------------------
def _run(tmp_path, method, **overrides):
    values = dict(
        method=method,
        memory_size=None,
        memory_budget_bytes=250_000,
        flops_budget_per_sample=4e7,
        budget_matching="auto",
    )
    values.update(overrides)
    trainer = digits_trainer(tmp_path / method.replace("+", "_"), per_class_train=8, per_class_test=3, **values)
    trainer.train()
    return trainer, trainer.results


def test_budget_matching_gives_mir_fewer_iterations_within_five_percent(tmp_path):
    _, er = _run(tmp_path, "er")
    mir_trainer, mir = _run(tmp_path, "mir")
    for r in (er, mir):
        assert r["budget_matching"] == "auto"
        assert 0.95 * r["flops_budget"] <= r["train_flops"] <= r["flops_budget"]
        assert r["memory_bytes"]["total"] <= r["memory_budget_bytes"]
    assert mir["iterations"] < er["iterations"]
    assert mir["online_iter_final"] < er["online_iter_final"]
    assert mir["flops_items"]["mir_retrieval"] > 0 and mir_trainer.method.probes > 0
    # the virtual model copy is charged to the byte budget
    n_params = sum(p.numel() for p in mir_trainer.model.parameters())
    assert mir["memory_bytes"]["extra:mir_virtual_model"] == 4 * n_params


def test_mir_probe_runs_in_the_training_step_charged_as_measured_and_side_effect_free(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=8, method="mir", method_options="mir_candidates=12")
    memory, stream, method, ctx = trainer.memory, trainer.stream, trainer.method, trainer.method_context
    for t in range(30):
        memory.add(int(stream.indices[t]), int(stream.labels[t]), DIGIT_BYTES)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # In the sampler: a uniform draw of 12 candidates, the first 4 standing in; nothing runs, nothing is charged.
    placeholders = method.retrieve(memory, 4, np.random.default_rng(0), samples_seen=30)
    method.on_retrieved(memory, placeholders)
    assert len(set(placeholders.tolist())) == 4 and ctx.take_charges() == {} and method.probes == 0
    assert sum(memory.use_counts) == 0  # counted once chosen
    stream_rows = tuple(int(i) for i in stream.indices[30 - 4 : 30])  # ER half of a batch of 8
    record = BatchRecord(
        samples_seen=30,
        last_for_arrival=True,
        indices=stream_rows + tuple(memory.indices[int(s)] for s in placeholders),
        slots=(-1,) * 4 + tuple(int(s) for s in placeholders),
        labels=tuple(int(y) for y in stream.labels[26:30]) + tuple(memory.labels[int(s)] for s in placeholders),
    )
    refined = method.refine_batch(ctx, record)
    assert refined.indices[:4] == stream_rows and refined.slots[:4] == (-1,) * 4
    chosen = refined.slots[4:]
    assert len(set(chosen)) == 4 and all(memory.indices[s] == i for s, i in zip(chosen, refined.indices[4:]))
    assert [memory.use_counts[s] for s in chosen] == [1.0] * 4 and sum(memory.use_counts) == 4
    assert all(torch.equal(state[k], v) for k, v in trainer.model.state_dict().items())  # weights, BN stats
    assert all(p.grad is None for p in trainer.model.parameters())
    candidates = trainer.collate_rows(stream.indices[:12])  # any 12 rows: the FLOPs depend on the shape only
    n_params = sum(p.numel() for p in trainer.model.parameters())
    expected = (
        trainer.profiler.cost(trainer.collate_rows(stream_rows)).train_flops(0)
        + 2 * n_params
        + 2 * trainer.profiler.forward_flops(candidates)
    )
    assert trainer.profiler.forward_flops(candidates) == trainer.profiler.cost(candidates).forward
    assert ctx.take_charges() == {"mir_retrieval": pytest.approx(expected)}
    assert ctx.take_charges() == {}  # charged once


def test_per_slot_bytes_shrink_the_replay_memory(tmp_path):
    budget = dict(
        memory_budget_bytes=80_024 + 3_000, flops_budget_per_sample=None, budget_matching="none", online_iter=0.25
    )
    er_trainer, er = _run(tmp_path, "er", **budget)
    derpp_trainer, derpp = _run(tmp_path, "derpp", **budget)
    remind_trainer, remind = _run(tmp_path, "remind", **budget)
    available = 3_000
    assert derpp_trainer.method.slot_bytes(DIGIT_BYTES) == DIGIT_BYTES + 4 * 10  # ten float32 logits
    assert remind_trainer.method.slot_bytes(DIGIT_BYTES) == 16 * 8 * 8 + 8  # uint8 16x8x8 features + offset, scale
    assert er["memory_slots"] == available // DIGIT_BYTES
    assert derpp["memory_slots"] == available // (DIGIT_BYTES + 40) < er["memory_slots"]
    assert remind["memory_slots"] == available // (16 * 8 * 8 + 8)
    for r in (er, derpp, remind):
        assert r["memory_bytes"]["total"] <= r["memory_budget_bytes"]
    stored, kept = set(derpp_trainer.method.stored), set(derpp_trainer.memory.indices)
    assert stored & kept and len(stored - kept) <= 8  # pruned every step; arrivals after the last step may evict
    # REMIND: G (stem + first block) is frozen and its replayed prefix forward is credited back
    assert remind["freeze"]["mode"] == "static:1"
    assert remind["flops_items"]["remind_replay_prefix_skipped"] < 0


def test_ewc_state_bytes_penalty_and_charges(tmp_path):
    trainer, r = _run(tmp_path, "ewc")
    n_params = sum(p.numel() for p in trainer.model.parameters())
    assert r["memory_bytes"]["extra:ewc_fisher_and_anchor"] == 8 * n_params
    assert trainer.method.anchors_taken >= 1  # disjoint stream: new classes after the first task
    assert r["flops_items"]["ewc"] > 0 and all(float(f.sum()) > 0 for f in trainer.method.fisher)
    assert r["train_flops"] <= r["flops_budget"]


def test_ewc_task_loss_fisher_stays_finite_where_the_total_loss_fisher_overflows(tmp_path):
    """Through the Trainer: with a large lambda and no Fisher averaging, squaring the whole loss's gradient feeds the
    penalty back into F until the loss overflows and batches are skipped; the task-loss Fisher trains every batch."""
    runs = {}
    for fisher_of in ("total_loss", "task_loss"):
        trainer = digits_trainer(
            tmp_path / fisher_of,
            per_class_train=15,
            per_class_test=3,
            method="ewc",
            stream="disjoint",
            method_options=f"ewc_lambda=1000,ewc_fisher_ema=1.0,ewc_fisher_of={fisher_of}",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped batches warn
            trainer.train()
        runs[fisher_of] = (trainer, trainer.results)
    assert runs["total_loss"][1]["skipped_nonfinite_batches"] > 0  # the setting does overflow the old Fisher
    trainer, task = runs["task_loss"]
    assert task["skipped_nonfinite_batches"] == 0 and trainer.method.anchors_taken >= 1
    assert all(torch.isfinite(f).all() for f in trainer.method.fisher)


def test_spend_savings_buys_iterations_for_a_freezing_method(tmp_path):
    _, auto = _run(tmp_path / "auto", "er+static")
    _, spend = _run(tmp_path / "spend", "er+static", budget_matching="spend_savings")
    _, er = _run(tmp_path / "er", "er")
    assert auto["freeze"]["mode"] == "static:1" and auto["backward_flops_saved_fraction"] > 0
    assert auto["iterations"] == pytest.approx(er["iterations"], abs=1)  # auto: savings are not re-spent
    assert auto["train_flops"] < 0.95 * auto["flops_budget"]
    assert spend["iterations"] > auto["iterations"]
    assert 0.95 * spend["flops_budget"] <= spend["train_flops"] <= spend["flops_budget"]


def test_lisa_and_gdumb_train_within_budget(tmp_path):
    lisa_trainer, lisa = _run(tmp_path, "er+lisa", budget_matching="spend_savings")
    _, gdumb = _run(tmp_path, "gdumb")
    assert lisa["freeze"]["mode"].startswith("lisa:") and lisa["backward_flops_saved_fraction"] > 0
    for r in (lisa, gdumb):
        assert 0.95 * r["flops_budget"] <= r["train_flops"] <= r["flops_budget"]
