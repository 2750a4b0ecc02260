"""SAR / aL-SAR: retrieval statistics, count bookkeeping, similarity features, end-to-end and 2-rank agreement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hf_budgetcl.methods import get_method
from hf_budgetcl.methods.conv_features import conv_gradient_features
from hf_budgetcl.methods.sar import SAR, head_gradient_features
from hf_budgetcl.stream.memory import EpisodicMemory
from tests.helpers import FakeMethodContext

ROOT = Path(__file__).resolve().parents[1]


def filled_memory(n_slots: int = 40, n_classes: int = 4, seed: int = 0) -> EpisodicMemory:
    memory = EpisodicMemory(capacity_bytes=n_slots * 10, seed=seed)
    for i in range(n_slots):
        memory.add(i, i % n_classes, 10)
    return memory


def sar(**options) -> SAR:
    return SAR(**{"sar_warmup_samples": 0, **options})


# ---- retrieval ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale_by_memory", [True, False])
def test_rarely_used_slots_are_drawn_more_often(scale_by_memory):
    memory = filled_memory()
    method = sar(sar_scale_by_memory=scale_by_memory, sar_decay_k=1e9)  # no decay: the counts stay as set
    used = np.arange(40) < 20
    rng = np.random.default_rng(0)
    hits = np.zeros(40)
    for _ in range(500):
        memory.use_counts[:] = np.where(used, 5.0, 0.0).tolist()
        hits[method.retrieve(memory, 4, rng, samples_seen=1000)] += 1
    assert hits[~used].mean() > 1.5 * hits[used].mean()
    # first-draw odds of a rare vs a used slot: exp(5 / (40 T)) = e with c_hat = u / |M|, exp(5 / T) without
    assert hits.sum() == 2000


def class_hits(method: SAR, memory: EpisodicMemory, batch: int, draws: int, seed: int) -> np.ndarray:
    """Slots drawn per class over ``draws`` retrievals, the use counts reset to 0 before each."""
    labels, rng = np.asarray(memory.labels), np.random.default_rng(seed)
    hits = np.zeros(labels.max() + 1)
    for _ in range(draws):
        memory.use_counts[:] = [0.0] * len(labels)
        np.add.at(hits, labels[method.retrieve(memory, batch, rng, samples_seen=1000)], 1)
    return hits


def test_rehearsed_similar_classes_are_drawn_less():
    memory = filled_memory()
    method = sar(sar_decay_k=1e9)
    method._introduce(np.arange(4))
    method.class_counts = np.array([200.0, 0.0, 0.0, 0.0])
    method.S = np.diag([0.5, 0.5, 0.5, 0.5])
    method.S[0, 1] = method.S[1, 0] = 0.5  # class 1 resembles the heavily rehearsed class 0
    hits = class_hits(method, memory, batch=4, draws=300, seed=1)
    assert hits[0] < hits[2] / 5 and hits[1] < hits[2] / 5  # exp(-200 * 0.5 / 40 / 0.125) = e^-20
    assert abs(hits[2] - hits[3]) < 0.2 * hits[2]


@pytest.mark.parametrize("damp", [False, True])
def test_damping_ends_the_burst_on_a_new_class(damp):
    """Three rehearsed, mature classes and a new one (a = 0, no row of S): undamped, the draw goes almost only to the
    new class (its slots score u_i = 0 against S_cc U_c / |M| = 0.5 * 400 / 40 = 5 for the others: e^40 odds);
    damped, the new slots score like the average slot and take about their memory share (a quarter)."""
    memory = filled_memory()
    method = sar(sar_decay_k=1e9, sar_damp_new_classes=damp)
    method._introduce(np.arange(4))
    method.maturity = np.array([1.0, 1.0, 1.0, 0.0])
    method.class_counts = np.array([400.0, 400.0, 400.0, 0.0])
    method.S = np.diag([0.5, 0.5, 0.5, 0.0])
    hits = class_hits(method, memory, batch=8, draws=200, seed=0)
    new_share = hits[3] / hits.sum()
    if damp:
        assert 0.15 < new_share < 0.35
    else:
        assert new_share > 0.99  # 8 of its 10 slots in every batch of 8


def test_sar_evens_out_usage_compared_with_uniform_replay():
    def spread(method) -> float:
        memory, rng = filled_memory(), np.random.default_rng(2)
        total = np.zeros(40)
        for _ in range(200):
            slots = method.retrieve(memory, 8, rng, samples_seen=1000)
            method.on_retrieved(memory, slots)
            np.add.at(total, slots, 1)
        return total.std()

    assert spread(sar(sar_scale_by_memory=False, sar_temperature=1.0)) < 0.5 * spread(get_method("replay"))


def test_draw_is_deterministic_for_a_seed():
    def run(seed: int) -> list[list[int]]:
        memory, method = EpisodicMemory(30 * 10, seed=seed), sar(sar_warmup_samples=20)
        rng = np.random.default_rng(seed)
        draws = []
        for t in range(120):  # memory fills, then evicts; warm-up, then SAR
            memory.add(t, (t // 10) % 6, 10)
            if len(memory) >= 8:
                slots = method.retrieve(memory, 8, rng, samples_seen=t + 1)
                method.on_retrieved(memory, slots)
                method.S = np.full((method.class_counts.size,) * 2, 0.1)  # a non-trivial similarity
                draws.append(slots.tolist())
        return draws

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_warmup_is_class_balanced():
    memory = EpisodicMemory(100 * 10)
    for i in range(100):
        memory.add(i, 0 if i < 90 else 1, 10)  # 90 / 10 imbalance
    method, rng = sar(sar_warmup_samples=50), np.random.default_rng(3)
    labels = np.asarray(memory.labels)
    picks = np.concatenate([labels[method.retrieve(memory, 16, rng, samples_seen=10)] for _ in range(100)])
    assert abs(picks.mean() - 0.5) < 0.05  # uniform class, then uniform slot


# ---- counts --------------------------------------------------------------------------------------------------
def test_counts_decay_per_iteration_then_grow_by_uses():
    memory = filled_memory(40, 4)
    u0 = np.linspace(0, 3.9, 40)
    memory.use_counts[:] = u0.tolist()
    method = sar(sar_decay_k=4.0)
    method._introduce(np.arange(4))
    method.class_counts = np.array([10.0, 20.0, 0.0, 5.0])
    slots = method.retrieve(memory, 8, np.random.default_rng(0), samples_seen=1000)
    factor = 1 - 8 / (4 * 40)  # 0.95
    np.testing.assert_allclose(memory.use_counts, u0 * factor)
    np.testing.assert_allclose(method.class_counts, np.array([10.0, 20.0, 0.0, 5.0]) * factor)
    method.on_retrieved(memory, slots)
    expected_u = u0 * factor
    expected_u[slots] += 1
    expected_U = np.array([10.0, 20.0, 0.0, 5.0]) * factor + np.bincount(np.asarray(memory.labels)[slots], minlength=4)
    np.testing.assert_allclose(memory.use_counts, expected_u)
    np.testing.assert_allclose(method.class_counts, expected_U)
    assert len(set(slots.tolist())) == 8  # without replacement


def test_no_decay_while_memory_is_not_larger_than_the_batch():
    memory = filled_memory(8, 2)
    memory.use_counts[:] = [1.0] * 8
    sar().retrieve(memory, 8, np.random.default_rng(0), samples_seen=1000)
    assert memory.use_counts == [1.0] * 8


def test_eviction_resets_the_slot_and_keeps_class_counts():
    memory = EpisodicMemory(20 * 10, seed=0)
    method, rng = sar(), np.random.default_rng(0)
    for i in range(20):
        memory.add(i, i % 2, 10)
    for _ in range(5):
        method.on_retrieved(memory, method.retrieve(memory, 8, rng, samples_seen=1000))
    U = method.class_counts.copy()
    assert memory.add(100, 2, 10)  # full: a slot of the largest class is evicted, the newcomer appended
    assert len(memory.use_counts) == len(memory) == 20
    assert memory.use_counts[-1] == 0.0 and memory.labels[-1] == 2
    slots = method.retrieve(memory, 8, rng, samples_seen=1000)  # class arrays grow to the new label
    assert method.class_counts.shape == (3,) and method.S.shape == (3, 3) and method.known.all()
    np.testing.assert_allclose(method.class_counts[:2], U * (1 - 8 / (4 * 20)))  # decayed, not decremented
    assert slots.max() < len(memory)


# ---- similarity features -------------------------------------------------------------------------------------
def test_head_gradient_features_match_autograd():
    torch.manual_seed(0)
    head = nn.Linear(6, 4)
    h = torch.randn(5, 6)
    y = torch.tensor([0, 3, 1, 1, 2])
    rows, cols = torch.tensor([0, 1, 3, 3, 2]), torch.tensor([0, 5, 2, 4, 1])
    got = head_gradient_features(head(h).detach(), h, y, rows, cols)
    for n in range(5):
        head.zero_grad()
        nn.functional.cross_entropy(head(h[n : n + 1]), y[n : n + 1]).backward()
        np.testing.assert_allclose(got[n], head.weight.grad[rows, cols].clamp(-1, 1), rtol=1e-5, atol=1e-6)
    big = head_gradient_features(head(h).detach(), 100 * h, y, rows, cols)
    assert big.abs().max() <= 1.0  # clamped


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def _set_up(model: nn.Module, method: SAR, x: torch.Tensor) -> FakeMethodContext:
    """Set the method up and run the model's first forward, which finds the head."""
    ctx = FakeMethodContext(model)
    method.setup(ctx)
    model(x)
    return ctx


def test_similarity_updates_from_the_head_and_charges_its_work():
    model, method = _classifier(), sar(similarity_coords=12, similarity_ema=0.1)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    ctx = _set_up(model, method, x)
    assert method.coords.shape == (12, 2) and method.similarity_updates == 0  # set up, no statistics yet
    method.observe(ctx, {"labels": y}, {"logits": model(x)})
    assert method.similarity_updates == 6
    assert method.S.shape == (3, 3) and np.isfinite(method.S).all()
    np.testing.assert_allclose(method.maturity, 1 - 0.9**2)  # two samples per class
    np.testing.assert_allclose(method.S, method.S.T)
    assert method.S[0, 0] > 0
    # softmax 3 per logit + 2 per coordinate, per sample
    assert ctx.charges["sar_features"] == 6 * (3 * 3 + 2 * 12) and ctx.charges["sar_similarity"] > 0


def test_nan_features_do_not_poison_similarity():
    model, method = _classifier(), sar(similarity_coords=12, similarity_ema=0.1)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    x[1] = float("nan")
    ctx = _set_up(model, method, x)
    method.observe(ctx, {"labels": y}, {"logits": model(x)})
    assert np.isfinite(method.S).all() and np.isfinite(method.class_mean).all()
    assert method.maturity[1] == 0  # the NaN row was skipped


def test_without_a_linear_head_similarity_is_disabled():
    model, method = nn.Sequential(nn.Conv1d(1, 3, 5), nn.Flatten()), sar()
    x, y = torch.randn(4, 1, 5), torch.tensor([0, 1, 2, 0])
    with pytest.warns(UserWarning, match="class similarity disabled"):
        ctx = _set_up(model, method, x)
    method.observe(ctx, {"labels": y}, {"logits": model(x)})
    assert method.similarity_updates == 0 and method.coords is None


def test_extra_state_bytes_and_options_from_config(tmp_path):
    from hf_budgetcl.config import BudgetedCLConfig

    common = dict(output_dir=str(tmp_path), method="sar", memory_size=10, use_cpu=True, report_to="none")
    config = BudgetedCLConfig(**common, sar_temperature=0.5, sar_decay_k=2.0, similarity_coords=64)
    method = get_method("sar", config=config)
    assert (method.temperature, method.decay_k, method.n_coords) == (0.5, 2.0, 64)
    assert method.extra_state_bytes(nn.Linear(2, 2), 10) == {"sar_statistics": 8 * (10 + 100 + 640 + 20) + 8 * 128}
    # method_options reach SAR and take precedence over the config fields
    config = BudgetedCLConfig(**common, sar_decay_k=2.0, method_options="sar_temperature=0.3,similarity_coords=8")
    method = get_method("sar", config=config)
    assert (method.temperature, method.decay_k, method.n_coords) == (0.3, 2.0, 8)
    assert get_method("alsar").freeze == "adaptive" and get_method("replay+freeze").freeze == "adaptive"
    assert get_method("replay+freeze").stream_fraction == 0.0 and get_method("er").name == "er"
    with pytest.raises(ValueError, match="'sar_temperature' is not an option of method 'er'"):
        get_method("er", config=config)  # an option meant for another method is not silently dropped


def test_state_dict_round_trip():
    memory, method = filled_memory(), sar()
    method.on_retrieved(memory, method.retrieve(memory, 8, np.random.default_rng(0), samples_seen=1000))
    method.S = np.eye(4) * 0.3
    other = sar()
    other.load_state_dict(method.state_dict())
    for k in ("class_counts", "known", "S"):
        np.testing.assert_array_equal(getattr(other, k), getattr(method, k))


# ---- end to end ----------------------------------------------------------------------------------------------
def _digits_trainer(tmp_path, method: str, **overrides):
    from hf_budgetcl.config import BudgetedCLConfig
    from hf_budgetcl.data.image_collator import ImageCollator
    from hf_budgetcl.data.image_datasets import load_digits_dataset
    from hf_budgetcl.data.image_rows import sample_nbytes
    from hf_budgetcl.models import build_image_classifier
    from hf_budgetcl.stream.orders import disjoint_stream
    from hf_budgetcl.training.trainer import BudgetedCLTrainer

    def first(ds, n):
        y = np.asarray(ds["label"])
        keep = np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)])
        return ds.select(np.sort(keep)).with_format("numpy")

    train, test = load_digits_dataset()
    train, test = first(train, 15), first(test, 5)
    config = BudgetedCLConfig(
        output_dir=str(tmp_path / "out"),
        method=method,
        memory_size=50,
        per_device_train_batch_size=8,
        eval_period=50,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=1000,
        sar_warmup_samples=30,
        freeze_warmup_steps=5,
        **overrides,
    )
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    return BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=test,
        stream=disjoint_stream(np.asarray(train["label"]), 5, seed=1),
        sample_nbytes=sample_nbytes,
        data_collator=ImageCollator(),
    )


@pytest.mark.parametrize("method", ["sar", "alsar"])
def test_end_to_end_digits(tmp_path, method):
    trainer = _digits_trainer(tmp_path, method)
    trainer.train()
    r = trainer.results
    assert r["method"] == method and r["freeze"]["mode"] == ("adaptive" if method == "alsar" else "none")
    assert r["iterations"] == 150 - 8 + 1 and r["samples_seen"] == 150
    assert 0 < r["A_auc"] <= 1
    items = r["flops_items"]
    assert all(items[k] > 0 for k in ("sar_retrieval", "sar_features", "sar_similarity"))
    assert sum(items[k] for k in items if k.startswith("sar_")) < 0.05 * items["train_forward"]
    assert r["memory_bytes"]["extra:sar_statistics"] > 0
    m = trainer.method
    assert m.similarity_updates == 8 * r["iterations"]
    assert len(trainer.memory.use_counts) == len(trainer.memory) == 50
    assert np.isfinite(m.S).all() and m.S.shape == (10, 10) and (m.S != 0).any()
    assert (m.class_counts > 0).all()


# ---- two processes -------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_two_ranks_agree(tmp_path):
    """sar, alsar and alsar with conv features in one 2-process gloo launch: same global batches, own shards,
    identical state and weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests/ddp_scripts/sar_ranks.py"),
        "sar,alsar,alsar:conv",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in ("sar", "alsar", "alsar_conv"):
        a, b = (json.loads((tmp_path / method / f"rank{r}.json").read_text()) for r in (0, 1))
        assert a["world_size"] == b["world_size"] == 2 and len(a["steps"]) == len(b["steps"]) > 50
        for sa, sb in zip(a["steps"], b["steps"]):
            assert sa["slots"] == sb["slots"] and sa["labels"] == sb["labels"] and sa["frozen"] == sb["frozen"]
            assert sa["shard"] + sb["shard"] == sa["labels"]  # split_batches: each rank trains its half
        for key in ("use_counts", "class_counts", "S", "params", "similarity_updates", "flops_items"):
            assert a[key] == b[key], (method, key)
        # the gathered global batch, on both ranks; conv features only on steps where a conv2 block trained
        trained = [s for s in a["steps"] if method != "alsar_conv" or s["frozen"] < a["n_blocks"]]
        assert a["similarity_updates"] == 8 * len(trained)
        assert np.any(np.asarray(a["S"]) != 0)
    conv, head = (json.loads((tmp_path / m / "rank0.json").read_text()) for m in ("alsar_conv", "alsar"))
    assert conv["flops_items"]["sar_features"] != head["flops_items"]["sar_features"]  # the conv path ran


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_conv_gradient_features_match_autograd_per_sample(stride, padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=stride, padding=padding, bias=False)
    x = torch.randn(5, 3, 7, 7)
    target = torch.randn(5, 4, *conv(x).shape[2:])
    coords = torch.tensor([0, 7, 26, 27, 50, 107])  # flat indices into the (4, 3, 3, 3) weight
    out = conv(x)
    loss = ((out - target) ** 2).sum()  # a sum of independent per-sample losses
    (grad_out,) = torch.autograd.grad(loss, out)
    got = conv_gradient_features(x, grad_out, conv, coords)
    for n in range(5):
        (grad_w,) = torch.autograd.grad(((conv(x[n : n + 1]) - target[n : n + 1]) ** 2).sum(), conv.weight)
        torch.testing.assert_close(got[n], grad_w.flatten()[coords])


# ---- conv features (the authors': residual blocks' conv2 weights) --------------------------------------------------
def _tiny_resnet() -> nn.Module:
    """fmd5_resnet's layout (stem, three one-block stages) at a tiny size; conv2 of 576, 2304 and 20,736 weights."""
    from hf_budgetcl.models.cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification

    torch.manual_seed(0)
    config = CifarResNetConfig(
        num_channels=1, stem_width=8, widths=[8, 16, 48], strides=[1, 2, 2], depths=[1, 1, 1], num_labels=3
    )
    return CifarResNetForImageClassification(config)


def _conv_sar(model: nn.Module, seed: int = 0) -> tuple[SAR, FakeMethodContext]:
    method = sar(similarity_features="conv", similarity_ema=0.1)
    method.seed = seed
    ctx = FakeMethodContext(model)
    ctx.in_training_pass, ctx.loss_scale = True, 1.0
    method.setup(ctx)
    return method, ctx


def _train_pass(model, method, ctx, x, y, n_frozen: int = 0):
    """The trainer's order: forward and observe, the backward (of the loss times ``ctx.loss_scale``, as an AMP
    grad scaler would) pruned to the unfrozen suffix, after_backward."""
    from hf_budgetcl.models.blocks import find_blocks

    out = model(pixel_values=x, labels=y)
    method.observe(ctx, {"labels": y}, out)
    (out.loss * ctx.loss_scale).backward(inputs=find_blocks(model).trainable_from(n_frozen))
    method.after_backward(ctx)


def _recording(method: SAR) -> list:
    """Record the features after_backward hands to the similarity update."""
    seen, update = [], method.update_similarity

    def record(g, labels, world_size=1, cols=None):
        seen.append((g, labels, cols))
        return update(g, labels, world_size, cols=cols)

    method.update_similarity = record
    return seen


def test_conv_coordinates_per_layer_follow_the_authors_rule_with_a_floor_of_one():
    from hf_budgetcl.methods.conv_features import coords_per_layer, residual_conv2s
    from hf_budgetcl.models import build_image_classifier

    model = build_image_classifier("fmd5_resnet", num_labels=10, num_channels=1, image_size=28)
    # the authors' floor(1e-4 numel) gives 0, 3, 14 (17 coordinates); the first block gets one here
    assert coords_per_layer(residual_conv2s(model)) == [1, 3, 14]
    method, _ = _conv_sar(model)
    assert method.conv_coords.shape == (18, 2) and method.class_mean.shape[1] == 18
    assert method.extra_state_bytes(model, 10) == {"sar_statistics": 8 * (10 + 100 + 10 * 18 + 20) + 8 * 2 * 18}


@pytest.mark.parametrize("mode", ["eval", "train", "amp"])
def test_conv_features_are_per_sample_conv2_gradients(mode):
    model = _tiny_resnet().train(mode == "train")
    method, ctx = _conv_sar(model)
    ctx.loss_scale = 2.0**16 if mode == "amp" else 1.0  # fp16's initial scale: unscaled before the clamp
    seen = _recording(method)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    _train_pass(model, method, ctx, x, y)
    ((g, labels, cols),) = seen
    np.testing.assert_array_equal(labels, y.numpy())
    assert np.abs(g).max() < 1  # the clamp does not act here, so the values can be compared exactly
    layer, flat = method.conv_coords[cols, 0], method.conv_coords[cols, 1]
    convs = [block.conv2 for block in model.blocks]

    def grads_at_coords(loss) -> np.ndarray:
        grads = torch.autograd.grad(loss, [c.weight for c in convs])
        return np.array([grads[l].flatten()[f].item() for l, f in zip(layer, flat)])

    if mode != "train":  # BN on running statistics: samples are independent, each one's own loss
        for n in range(4):
            loss = nn.functional.cross_entropy(model(pixel_values=x[n : n + 1]).logits, y[n : n + 1])
            np.testing.assert_allclose(g[n], grads_at_coords(loss), rtol=1e-4, atol=1e-7)
    else:  # batch statistics couple the samples: the per-sample terms still sum to the batch gradient
        loss = model(pixel_values=x, labels=y).loss
        np.testing.assert_allclose(g.mean(0), grads_at_coords(loss), rtol=1e-4, atol=1e-7)
    assert method.similarity_updates == 4 and np.isfinite(method.S).all() and method.S[1, 1] > 0


def test_conv_features_come_from_the_unfrozen_blocks_only():
    import copy

    model = _tiny_resnet()
    twin = copy.deepcopy(model)  # same weights, its own hooks
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    full, full_ctx = _conv_sar(twin)
    _train_pass(twin, full, full_ctx, x, y)
    method, ctx = _conv_sar(model)
    _train_pass(model, method, ctx, x, y, n_frozen=2)  # the stem and blocks.0 frozen
    present = method.conv_coords[:, 0] >= 1
    assert (method.class_mean[:, ~present] == 0).all() and (method.class_mean[:, present] != 0).any()
    np.testing.assert_allclose(method.class_mean[:, present], full.class_mean[:, present], rtol=1e-5, atol=1e-9)
    assert 0 < ctx.charges["sar_features"] < full_ctx.charges["sar_features"]
    updates, charged = method.similarity_updates, dict(ctx.charges)
    _train_pass(model, method, ctx, x, y, n_frozen=4)  # every block frozen, only the head trains
    assert method.similarity_updates == updates and ctx.charges == charged


def test_conv_features_charge_their_dot_products():
    from torch.utils.flop_counter import FlopCounterMode

    model = _tiny_resnet()
    method, ctx = _conv_sar(model)
    positions = {}
    for i, block in enumerate(model.blocks):
        block.conv2.register_forward_hook(lambda m, a, out, i=i: positions.__setitem__(i, out[0, 0].numel()))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    _train_pass(model, method, ctx, x, y)
    # the same contractions as batched matrix products (one per sample and coordinate), counted by torch
    with FlopCounterMode(display=False) as counter:
        for layer in method.conv_coords[:, 0]:
            torch.bmm(torch.ones(4, 1, positions[int(layer)]), torch.ones(4, positions[int(layer)], 1))
    k = len(method.conv_coords)
    assert ctx.charges["sar_features"] == counter.get_total_flops() + 2 * 4 * k  # + rescale and clamp
    assert ctx.charges["sar_similarity"] > 0


def test_conv_state_round_trips_and_keeps_its_coordinates():
    from hf_budgetcl.training.results import json_default

    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    model = _tiny_resnet()
    method, ctx = _conv_sar(model)
    _train_pass(model, method, ctx, x, y)
    state = json.loads(json.dumps(method.state_dict(), default=json_default))  # as in cl_state.json
    model_b = _tiny_resnet()
    other = sar(similarity_features="conv", similarity_ema=0.1)
    other.load_state_dict(state)
    other.seed = 7  # a fresh draw would pick other coordinates
    ctx_b = FakeMethodContext(model_b)
    ctx_b.in_training_pass, ctx_b.loss_scale = True, 1.0
    other.setup(ctx_b)
    np.testing.assert_array_equal(other.conv_coords, method.conv_coords)
    assert not np.array_equal(_conv_sar(_tiny_resnet(), seed=7)[0].conv_coords, method.conv_coords)
    _train_pass(model, method, ctx, x, y)
    _train_pass(model_b, other, ctx_b, x, y)
    np.testing.assert_allclose(other.S, method.S, rtol=1e-12)
    np.testing.assert_allclose(other.class_mean, method.class_mean, rtol=1e-12)


def test_conv_features_need_conv2_blocks(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from hf_budgetcl.config import BudgetedCLConfig
    from hf_budgetcl.utils.errors import ConfigError

    vit = ViTForImageClassification(
        ViTConfig(
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=8,
            image_size=8,
            patch_size=4,
            num_channels=1,
            num_labels=3,
        )
    )
    with pytest.raises(ConfigError, match="similarity_features: 'conv' needs residual blocks") as err:
        _conv_sar(vit)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="similarity_features: expected one of head, conv"):
        BudgetedCLConfig(
            output_dir=str(tmp_path), method="sar", memory_size=10, use_cpu=True, similarity_features="conv2"
        )


def test_end_to_end_alsar_with_conv_features(tmp_path):
    trainer = _digits_trainer(tmp_path, "alsar", similarity_features="conv")
    trainer.train()
    r, m = trainer.results, trainer.method
    frozen = {int(k): v for k, v in r["frozen_blocks_histogram"].items()}
    n_blocks = len(trainer.blocks)  # stem, blocks.0, blocks.1: the last conv2 trains unless all are frozen
    assert any(0 < k < n_blocks for k in frozen) or frozen.get(n_blocks, 0) > 0, frozen  # some steps froze
    assert m.similarity_updates == 8 * (r["iterations"] - frozen.get(n_blocks, 0))
    assert r["flops_items"]["sar_features"] > 0 and r["method_options"]["similarity_features"] == "conv"
    assert np.isfinite(m.S).all() and (m.S != 0).any() and m.conv_coords.shape == (2, 2)
