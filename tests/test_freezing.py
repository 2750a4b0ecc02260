import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_budgetcl.accounting.flops import StepCost
from hf_budgetcl.config import BudgetedCLConfig
from hf_budgetcl.freezing.adaptive import FREEZE_PRESETS, AdaptiveFreezingCallback, AdaptiveFreezingSettings
from hf_budgetcl.freezing.criterion import select_frozen_prefix
from hf_budgetcl.freezing.policies import StaticFreezing, make_freezing_policy
from hf_budgetcl.models.blocks import BlockPartition
from hf_budgetcl.utils.errors import ConfigError
from tests.helpers import digits_trainer


def _partition(n_blocks=3):
    params = [[torch.nn.Parameter(torch.ones(2))] for _ in range(n_blocks)]
    return BlockPartition(
        names=[f"b{i}" for i in range(n_blocks)],
        params=params,
        modules=[None] * n_blocks,
        head_params=[torch.nn.Parameter(torch.ones(1))],
    )


class _Out:
    def __init__(self, logits):
        self.logits = logits


def _decide(policy, cost, logits=None):
    logits = torch.tensor([[2.0, 0.0]]) if logits is None else logits
    inputs = {"labels": torch.tensor([0])}
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    return policy.decide(model, inputs, _Out(logits), cost)


COST = StepCost(forward=30.0, backward_by_prefix=(60.0, 40.0, 20.0, 2.0))


def test_no_freezing_during_warmup_and_on_refresh_steps():
    policy = AdaptiveFreezingCallback(
        _partition(), AdaptiveFreezingSettings(freeze_warmup_steps=2, fisher_update_every=3)
    )
    policy.fisher[:] = [1e-6, 1e-6, 1.0]
    policy.fisher_seen[:] = True
    decisions = [_decide(policy, COST) for _ in range(6)]
    assert decisions[0] == decisions[1] == 0  # warm-up
    assert decisions[2] == 0 and decisions[5] == 0  # steps 3 and 6 refresh every Fisher trace
    assert decisions[3] > 0 and decisions[4] > 0  # uninformative early blocks: freeze them


def test_criterion_follows_fisher_per_flop():
    informative = AdaptiveFreezingCallback(
        _partition(), AdaptiveFreezingSettings(freeze_warmup_steps=0, fisher_update_every=100)
    )
    informative.fisher[:] = [5.0, 5.0, 5.0]  # equal information per backward FLOP everywhere: nothing to gain
    informative.fisher_seen[:] = True
    assert _decide(informative, COST) == 0
    lazy = AdaptiveFreezingCallback(
        _partition(), AdaptiveFreezingSettings(freeze_warmup_steps=0, fisher_update_every=100)
    )
    lazy.fisher[:] = [1e-4, 1e-4, 5.0]
    lazy.fisher_seen[:] = True
    assert _decide(lazy, COST) == 2


def test_without_a_trained_head_the_criterion_chooses_among_prefixes_that_leave_a_block(monkeypatch):
    from hf_budgetcl.freezing import adaptive

    # BF = [20, 20, 18], C_n = 32 + suffix BF = [90, 70, 50, 32], F = [1, 1, 1e-6]: R* = 2/90. At s_b = 0.55,
    # BFC_2 = 40 R* - 1.1 < 0 < BFC_3 = 58 R* - 1.1: all three would win, but of 0..2 freezing nothing does.
    monkeypatch.setattr(adaptive, "batch_informativeness", lambda *a, **k: (0.55, 0.0))
    no_head = replace(_partition(), head_params=[])
    policy = AdaptiveFreezingCallback(
        no_head, AdaptiveFreezingSettings(freeze_warmup_steps=0, fisher_update_every=100)
    )
    policy.fisher[:] = [1.0, 1.0, 1e-6]
    policy.fisher_seen[:] = True
    assert no_head.max_frozen == 2 and _decide(policy, COST) == 0
    with_head = AdaptiveFreezingCallback(_partition(), policy.settings)
    with_head.fisher[:], with_head.fisher_seen[:] = policy.fisher, True
    assert _decide(with_head, COST) == 3


def test_fisher_ema_updates_only_blocks_that_trained():
    part = _partition()
    policy = AdaptiveFreezingCallback(part, AdaptiveFreezingSettings(fisher_ema=0.5))
    for ps, g in zip(part.params, (1.0, 2.0, 3.0)):
        ps[0].grad = torch.full((2,), g)
    policy.on_pre_optimizer_step(None, None, None)
    assert policy.fisher.tolist() == pytest.approx(
        [2.0, 8.0, 18.0], rel=1e-12
    )  # first measurement replaces the zero start
    policy.last_frozen = 2
    part.params[0][0].grad = None  # frozen blocks have no gradient
    part.params[1][0].grad = None
    part.params[2][0].grad = torch.zeros(2)
    policy.on_pre_optimizer_step(None, None, None)
    assert policy.fisher.tolist() == pytest.approx([2.0, 8.0, 9.0], rel=1e-12)
    # a step skipped for a non-finite loss leaves every gradient None: the EMA must not decay towards zero
    policy.last_frozen = 0
    part.params[2][0].grad = None
    policy.on_pre_optimizer_step(None, None, None)
    assert policy.fisher.tolist() == pytest.approx([2.0, 8.0, 9.0], rel=1e-12)


def test_policy_factory_and_static_bound():
    part = _partition()
    assert isinstance(make_freezing_policy("static:3", part, None), StaticFreezing)
    assert make_freezing_policy("static:3", part, None).n == 3
    with pytest.raises(ValueError, match="static:4 leaves nothing to train; at most 3"):  # was a silent clamp
        make_freezing_policy("static:4", part, None)
    with pytest.raises(ValueError, match="freeze"):
        make_freezing_policy("often", part, None)


def test_frozen_blocks_and_their_optimizer_state_do_not_move(tmp_path):
    trainer = digits_trainer(tmp_path, per_class_train=6, freeze="static:2", eval_period=1000)
    trainer.train()  # Adam has state for every block after this run? No: the prefix never trained
    trainer2 = digits_trainer(tmp_path / "b", per_class_train=6, freeze="none", eval_period=1000)
    trainer2.train()  # momentum everywhere
    frozen = trainer2.blocks.frozen_params(2)
    before = [p.detach().clone() for p in frozen]
    moments = [{k: v.clone() for k, v in trainer2.optimizer.state[p].items()} for p in frozen]
    trainer2.freezing = StaticFreezing(2, trainer2.blocks)
    trainer2.optimizer.zero_grad()
    batch = trainer2.data_collator([trainer2.train_dataset[i] for i in range(8)])
    trainer2.stream_sampler.records.append(trainer2.stream_sampler.compose_batch())
    trainer2.training_step(trainer2.model, batch)
    assert all(p.grad is None for p in frozen)
    trainer2.optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, frozen))
    assert all(torch.equal(m[k], trainer2.optimizer.state[p][k]) for m, p in zip(moments, frozen) for k in m)
    # the optimizer still holds the frozen parameters, so they can train again later
    held = {id(p) for g in trainer2.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in frozen)
    assert trainer.results["frozen_blocks_histogram"] == {"2": trainer.results["iterations"]}


def test_adaptive_freezing_saves_backward_flops_in_a_real_run(tmp_path):
    # fmd5_resnet: stem + 3 stages. (digits_resnet's 3 blocks never freeze: its stem has the most Fisher per FLOP.)
    trainer = digits_trainer(
        tmp_path,
        per_class_train=20,
        model="fmd5_resnet",
        freeze="adaptive",
        freeze_warmup_steps=10,
        fisher_update_every=4,
        eval_period=1000,
    )
    trainer.train()
    r = trainer.results
    hist = {int(k): v for k, v in r["frozen_blocks_histogram"].items()}
    assert sum(hist.values()) == r["iterations"]
    assert sum(v for k, v in hist.items() if k > 0) > 0
    assert 0 < r["backward_flops_saved_fraction"] < 1
    assert r["flops_items"]["freeze_decision"] > 0 and r["flops_items"]["fisher"] > 0
    assert r["freeze"]["mode"] == "adaptive" and len(r["freeze"]["fisher"]) == len(trainer.blocks)


def test_two_process_ddp_ranks_agree(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(root / "tests/ddp_scripts/freeze_ddp.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == 2
    assert r0["batches"] == r1["batches"] and len(r0["batches"]) > 50
    assert r0["decisions"] == r1["decisions"] and any(n > 0 for n in r0["decisions"])
    assert r0["params_sha"] == r1["params_sha"]
    # The loss trained on is each rank's batch mean, as on one process: Trainer must not scale it by the world size.
    trained, own = np.array(r0["loss_pairs"]).T
    assert len(trained) > 50 and np.allclose(trained, own, rtol=1e-6)
    assert r0["fisher"] == r1["fisher"] and r0["curve"] == r1["curve"]
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["curve"]) == len(r0["curve"])


def test_curve_records_frozen_blocks_over_the_stream(tmp_path):
    from hf_budgetcl.compare.plots import plot
    from hf_budgetcl.evaluation.metrics import frozen_blocks_per_interval

    trainer = digits_trainer(
        tmp_path, per_class_train=12, model="fmd5_resnet", freeze="adaptive", freeze_warmup_steps=5, eval_period=30
    )
    trainer.train()
    totals = [p.frozen_blocks for p in trainer.curve]
    assert totals == sorted(totals)  # cumulative
    assert (
        totals[-1] == sum(k * v for k, v in trainer.progress.frozen_counts.items()) > 0
    )  # it froze, and all is counted
    means = frozen_blocks_per_interval([p.iterations for p in trainer.curve], totals)
    assert np.all((means >= 0) & (means <= trainer.blocks.max_frozen))
    results = json.loads(open(trainer.save_results()).read())
    assert [p["frozen_blocks"] for p in results["curve"]] == totals
    assert str(tmp_path / "freezing.png") in plot([results], str(tmp_path))


def _stem_partition():
    part = _partition()
    part.names[0] = "stem"
    return part


def test_authors_preset_coin_is_seeded_and_resumable():
    settings = replace(FREEZE_PRESETS["authors"], freeze_warmup_steps=0)
    policy = AdaptiveFreezingCallback(_partition(), settings, seed=3)
    policy.fisher[:] = [1e-6, 1e-6, 1.0]  # the criterion alone would freeze on every step
    policy.fisher_seen[:] = True
    first = [_decide(policy, COST) for _ in range(40)]
    assert 8 < sum(n == 0 for n in first) < 32  # about half the steps left unfrozen, not every 4th
    assert [n == 0 for n in first] != [(i + 1) % 4 == 0 for i in range(40)]
    state = json.loads(json.dumps(policy.state_dict()))  # through cl_state.json
    rest = [_decide(policy, COST) for _ in range(20)]
    resumed = AdaptiveFreezingCallback(_partition(), settings, seed=99)
    resumed.load_state_dict(state)
    assert [_decide(resumed, COST) for _ in range(20)] == rest
    other = AdaptiveFreezingCallback(_partition(), settings, seed=4)
    other.fisher[:], other.fisher_seen[:] = policy.fisher, True
    assert [_decide(other, COST) for _ in range(40)] != first


def test_authors_preset_fisher_only_on_unfrozen_steps():
    part = _partition()
    policy = AdaptiveFreezingCallback(part, FREEZE_PRESETS["authors"])
    for ps in part.params:
        ps[0].grad = torch.ones(2)
    policy.on_pre_optimizer_step(None, None, None)
    before = policy.fisher.copy()
    policy.last_frozen = 1  # a frozen step: the trained suffix's gradients must not enter F
    part.params[0][0].grad = None
    part.params[2][0].grad = torch.full((2,), 10.0)
    policy.on_pre_optimizer_step(None, None, None)
    assert policy.fisher.tolist() == before.tolist()
    assert "fisher" not in policy.extra_flops(COST)  # and no Fisher FLOPs charged for it
    policy.last_frozen = 0
    part.params[0][0].grad = torch.ones(2)
    policy.on_pre_optimizer_step(None, None, None)
    assert policy.fisher[2] > before[2]


def test_authors_preset_stem_rides_with_the_first_block():
    settings = replace(
        FREEZE_PRESETS["authors"],
        freeze_warmup_steps=0,
        unfreeze_probability=1e-9,
        informativeness_bias_correction=True,
    )
    policy = AdaptiveFreezingCallback(_stem_partition(), settings)
    # the stem alone would be frozen (little information per FLOP), the next block carries much information
    policy.fisher[:] = [1e-6, 5.0, 5.0]
    policy.fisher_seen[:] = True
    with_stem = AdaptiveFreezingCallback(_stem_partition(), replace(settings, stem_in_criterion=True))
    with_stem.fisher[:], with_stem.fisher_seen[:] = policy.fisher, True
    assert _decide(with_stem, COST) == 1
    assert _decide(policy, COST) == 0  # never the stem alone
    policy.fisher[:] = [5.0, 1e-6, 5.0]  # an uninformative first block: frozen, and the stem with it
    assert _decide(policy, COST) == 2


def test_informativeness_warmup_without_bias_correction():
    settings = AdaptiveFreezingSettings(freeze_warmup_steps=0, fisher_update_every=10**6, informativeness_ema=0.01)
    corrected = AdaptiveFreezingCallback(_partition(), settings)
    uncorrected = AdaptiveFreezingCallback(_partition(), replace(settings, informativeness_bias_correction=False))
    for policy in (corrected, uncorrected):
        policy.fisher[:] = [0.5, 0.5, 5.0]
        policy.fisher_seen[:] = True
    same = [(_decide(corrected, COST), _decide(uncorrected, COST)) for _ in range(20)]
    assert all(c > 0 for c, _ in same[1:])  # same batch every step: s_b = 1 after the first, so it freezes
    assert all(u == 0 for _, u in same)  # s_b = 1 / (1 - 0.99^t) > 5 here, above the freeze threshold 4


def test_freeze_preset_from_config(tmp_path):
    part = _partition()
    args = BudgetedCLConfig(output_dir=str(tmp_path), memory_size=10, freeze_preset="authors", seed=5)
    assert make_freezing_policy("adaptive", part, args).settings == FREEZE_PRESETS["authors"]
    args = BudgetedCLConfig(output_dir=str(tmp_path), memory_size=10, freeze_preset="authors", fisher_ema=0.1)
    assert make_freezing_policy("adaptive", part, args).settings.fisher_ema == 0.1  # a given field wins
    with pytest.raises(ConfigError, match="freeze_preset"):
        BudgetedCLConfig(output_dir=str(tmp_path), memory_size=10, freeze_preset="paper")


def test_decision_with_zero_per_block_forward_equals_the_measured_split():
    """decide() passes FF_i = 0 and the whole forward as head cost: since every forward is paid whatever is frozen,
    only sum_i FF_i enters C_n, so the decision equals the paper's form with each block's measured forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from hf_budgetcl.accounting.flops import FlopsProfiler
    from hf_budgetcl.models import build_image_classifier
    from hf_budgetcl.models.blocks import find_blocks

    torch.manual_seed(0)
    model = build_image_classifier("cifar_resnet32", num_labels=4, num_channels=1, image_size=8, depths=(1, 1, 1))
    blocks = find_blocks(model)
    inputs = {"pixel_values": torch.randn(4, 1, 8, 8), "labels": torch.tensor([0, 1, 2, 3])}
    cost = FlopsProfiler(model, blocks, lambda m, b: m(**b).loss).cost(inputs)
    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    prefix = type(model).__name__
    FF = [per_module.get(f"{prefix}.{name}", 0) for name in blocks.names]
    assert all(f > 0 for f in FF) and sum(FF) < cost.forward
    rng = np.random.default_rng(0)
    decisions = set()
    for _ in range(40):
        policy = AdaptiveFreezingCallback(blocks, AdaptiveFreezingSettings(freeze_warmup_steps=0))
        policy.fisher[:] = rng.exponential(1.0, len(blocks)) * np.array(cost.backward_saved_per_block)
        policy.fisher_seen[:] = True
        logits = model(inputs["pixel_values"]).logits  # the first step's s_b is 1 (bias-corrected mean)
        n = policy.decide(model, inputs, _Out(logits), cost)
        paper = select_frozen_prefix(
            policy.fisher, FF, cost.backward_saved_per_block, 1.0, cost.forward - sum(FF), cost.backward_by_prefix[-1]
        )
        assert n == paper
        decisions.add(n)
    assert len(decisions) > 2  # the draws reach interior prefixes too, not only all or nothing
