import math

import numpy as np
import pytest
import torch

from hf_budgetcl.freezing.criterion import (
    backward_saved_per_block,
    batch_informativeness,
    fisher_ema_update,
    grad_sq_sum,
    reachable_prefixes,
    select_frozen_prefix,
)

# ---------------------------------------------------------------------------------------------------
# select_frozen_prefix
#
# Case A: F = [1, 2, 4], FF = [1, 1, 1], BF = [2, 2, 2], no head cost.
#   sum FF = 3;  C_n = 3 + sum_{i>=n} BF_i = [9, 7, 5, 3];  I_n = [7, 6, 4, 0]
#   I/C = [7/9 = .778, 6/7 = .857, 4/5 = .8, 0]  ->  R* = 6/7
#   prefix BF = [0, 2, 4, 6], prefix F = [0, 1, 3, 7]
#   BFC_n = (6/7) * [0, 2, 4, 6] - s_b * [0, 1, 3, 7]
#     s_b = 1   : [0, 5/7, 3/7, 1/7]            -> 1
#     s_b = 0.5 : [0, 17/14, 27/14, 23/14]      -> 2
#     s_b = 2   : [0, -2/7, -18/7, -62/7]       -> 0
#     s_b = 0   : [0, 12/7, 24/7, 36/7]         -> 3 (all)
#     s_b = 12/7: [0, 0, -12/7, -48/7]          -> tie 0/1 -> 0
#     s_b = 6/7 : [0, 6/7, 6/7, -6/7]           -> tie 1/2 -> 1
#   Marginal rule: block 0 pays iff s_b * 1 < 12/7, block 1 iff s_b * 2 < 12/7, block 2 iff s_b * 4 < 12/7.
A = dict(fisher=[1.0, 2.0, 4.0], fwd_flops=[1.0, 1.0, 1.0], bwd_saved=[2.0, 2.0, 2.0])

# Case B: F = [4, 2, 1], FF = [1, 1, 1], BF = [2, 2, 2], head_fwd = 1, head_bwd = 2.
#   fixed cost = 3 + 1 + 2 = 6;  C_n = [12, 10, 8, 6];  I_n = [7, 3, 1, 0]
#   I/C = [7/12, 3/10, 1/8, 0]  ->  R* = 7/12 (attained at n = 0)
#   prefix BF = [0, 2, 4, 6], prefix F = [0, 4, 6, 7];  BFC_n = (7/12) * prefixBF - s_b * prefixF
#     s_b = 0.4 : [0, 7/6 - 1.6 = -.433, 7/3 - 2.4 = -.067, 3.5 - 2.8 = .7]  -> 3
#                 (block 0 alone does not pay, freezing all does: argmax is global, not greedy)
#     s_b = 0.5 : [0, -.833, -.667, 0]                                     -> tie 0/3 -> 0
#     s_b = 0.1 : [0, .767, 1.733, 2.8]                                     -> 3
B = dict(fisher=[4.0, 2.0, 1.0], fwd_flops=[1.0, 1.0, 1.0], bwd_saved=[2.0, 2.0, 2.0], head_fwd=1.0, head_bwd=2.0)


@pytest.mark.parametrize(
    "s_b, expected",
    [(1.0, 1), (0.5, 2), (2.0, 0), (0.0, 3), (12 / 7, 0), (6 / 7, 1), (0.43, 2), (0.42, 3)],
)
def test_case_a_hand_computed(s_b, expected):
    # s_b = 0.43 / 0.42: BFC_2 - BFC_3 = s_b*4 - 12/7 changes sign at s_b = 3/7 = 0.4286
    assert select_frozen_prefix(**A, s_b=s_b) == expected


@pytest.mark.parametrize("s_b, expected", [(0.4, 3), (0.5, 0), (0.1, 3), (0.51, 0)])
def test_case_b_hand_computed_with_head_cost(s_b, expected):
    assert select_frozen_prefix(**B, s_b=s_b) == expected


def test_head_cost_changes_rate():
    # Case B without the head cost: C_n = [9, 7, 5, 3], I/C = [7/9, 3/7, 1/5, 0] -> R* = 7/9.
    # s_b = 0.5: BFC = (7/9)[0,2,4,6] - .5[0,4,6,7] = [0, -.444, .111, 1.167] -> 3 (with head cost: 0)
    b = dict(B, head_fwd=0.0, head_bwd=0.0)
    assert select_frozen_prefix(**b, s_b=0.5) == 3
    assert select_frozen_prefix(**B, s_b=0.5) == 0


def test_single_block():
    # L = 1: F = [2], FF = [1], BF = [2], head 1 + 1.  C = [5, 3], I = [2, 0], R* = 2/5.
    # BFC_1 = (2/5)*2 - s_b*2 = 0.8 - 2 s_b  -> freeze iff s_b < 0.4
    kw = dict(fisher=[2.0], fwd_flops=[1.0], bwd_saved=[2.0], head_fwd=1.0, head_bwd=1.0)
    assert select_frozen_prefix(**kw, s_b=0.39) == 1
    assert select_frozen_prefix(**kw, s_b=0.41) == 0
    assert select_frozen_prefix(**kw, s_b=0.4) == 0  # exact tie -> fewer frozen


def test_extremes_of_s_b():
    assert select_frozen_prefix(**A, s_b=1e12) == 0
    assert select_frozen_prefix(**B, s_b=0.0) == 3


def test_zero_backward_saving_never_frozen_at_s_b_zero():
    # BF_2 = 0: extending over block 2 gains nothing; at s_b = 0 BFC_2 = BFC_3 -> tie -> 2
    assert select_frozen_prefix([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0], s_b=0.0) == 2


def test_guards_return_zero_and_never_raise():
    assert select_frozen_prefix([0.0, 0.0, 0.0], [1, 1, 1], [2, 2, 2], s_b=0.0) == 0  # no info yet
    assert select_frozen_prefix([], [], [], s_b=0.1) == 0
    for bad in (math.nan, math.inf, -math.inf):
        assert select_frozen_prefix([1.0, bad, 4.0], [1, 1, 1], [2, 2, 2], s_b=0.0) == 0
        assert select_frozen_prefix([1.0, 2.0, 4.0], [1, bad, 1], [2, 2, 2], s_b=0.0) == 0
        assert select_frozen_prefix([1.0, 2.0, 4.0], [1, 1, 1], [2, 2, bad], s_b=0.0) == 0
        assert select_frozen_prefix(**A, s_b=bad) == 0
        assert select_frozen_prefix(**A, s_b=0.0, head_fwd=bad) == 0
    assert select_frozen_prefix([1.0, -2.0, 4.0], [1, 1, 1], [2, 2, 2], s_b=0.0) == 0
    assert select_frozen_prefix(**A, s_b=-1.0) == 0
    # zero cost everywhere with positive information: rate undefined
    assert select_frozen_prefix([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], s_b=0.0) == 0


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        select_frozen_prefix([1.0, 2.0], [1.0], [1.0, 1.0], s_b=0.0)


def _official_get_freeze_idx(F, FF, BF, head_fwd, head_bwd, s_b):
    """Transcription of the official score (reference section 5.2) for the equivalence test."""
    L = len(F)
    uc = sum(FF) + sum(BF) + head_fwd + head_bwd - FF[0] - BF[0]
    tot_f = sum(F[1:])
    cum_bf = [sum(BF[1 : i + 1]) for i in range(1, L)]
    cum_f = [sum(F[1 : i + 1]) for i in range(1, L)]
    ratios = [1.0, 1.0] + [uc / (uc - cum_bf[i]) * (tot_f - cum_f[i]) / (tot_f + 1e-10) for i in range(L - 1)]
    r_max = max(ratios)
    scores = [s_b, s_b] + [s_b * (tot_f - cum_f[i]) / (tot_f + 1e-10) + cum_bf[i] / uc * r_max for i in range(L - 1)]
    return int(np.argmax(scores))


def test_criterion_on_blocks_after_the_stem_matches_official_score_on_random_inputs():
    # The official code leaves block 0 (the stem) out of the criterion and maps a sub-result m >= 1 to m + 1.
    rng = np.random.default_rng(0)
    agree = frozen = 0
    for _ in range(400):
        L = int(rng.integers(2, 10))
        F = rng.uniform(0.01, 1.0, L).tolist()
        FF = rng.uniform(0.5, 2.0, L).tolist()
        BF = (2 * np.array(FF) * rng.uniform(0.5, 1.0, L)).tolist()
        hf, hb = float(rng.uniform(0, 1)), float(rng.uniform(0, 2))
        s_b = float(rng.uniform(0.0, 2.0))
        m = select_frozen_prefix(F[1:], FF[1:], BF[1:], s_b, hf, hb)
        ours = 0 if m == 0 else m + 1
        agree += ours == _official_get_freeze_idx(F, FF, BF, hf, hb, s_b)
        frozen += ours > 0
    assert agree == 400
    assert 50 < frozen < 350  # the sample exercises both outcomes


def test_marginal_rule_for_two_blocks():
    # L = 2 with R* fixed: freezing block 0 alone pays iff s_b F_0 < R* BF_0.
    # F = [1, 3], FF = [1, 1], BF = [1, 1]: C = [4, 3, 2], I = [4, 3, 0], R* = 1.
    # BFC = [0, 1 - s_b, 2 - 4 s_b]: block 0 pays iff s_b < 1; both iff 2 - 4 s_b > max(0, 1 - s_b) <=> s_b < 1/3
    kw = dict(fisher=[1.0, 3.0], fwd_flops=[1.0, 1.0], bwd_saved=[1.0, 1.0])
    assert select_frozen_prefix(**kw, s_b=0.99) == 1
    assert select_frozen_prefix(**kw, s_b=1.01) == 0
    assert select_frozen_prefix(**kw, s_b=0.32) == 2
    assert select_frozen_prefix(**kw, s_b=0.34) == 1


def test_properties_range_monotone_and_scale_invariant():
    rng = np.random.default_rng(1)
    for _ in range(200):
        L = int(rng.integers(1, 8))
        F = rng.uniform(0, 1, L)
        FF = rng.uniform(0.1, 2, L)
        BF = rng.uniform(0.1, 4, L)
        hf, hb = rng.uniform(0, 1, 2)
        grid = np.linspace(0, 3, 31)
        ns = [select_frozen_prefix(F, FF, BF, s, hf, hb) for s in grid]
        assert all(0 <= n <= L for n in ns)
        assert all(a >= b for a, b in zip(ns, ns[1:])), ns  # more informative batch -> fewer frozen
        s = float(rng.uniform(0, 2))
        n = select_frozen_prefix(F, FF, BF, s, hf, hb)
        assert select_frozen_prefix(7.0 * F, FF, BF, s, hf, hb) == n  # Fisher units cancel
        assert select_frozen_prefix(F, 3.0 * FF, 3.0 * BF, s, 3.0 * hf, 3.0 * hb) == n  # FLOPs units cancel


# ---------------------------------------------------------------------------------------------------
# fisher_ema_update


def test_fisher_ema_update_hand_computed():
    prev = np.array([1.0, 2.0, 3.0])
    # beta = .5: [1 + .5(3-1), 2 + .5(4-2), 3 + .5(0-3)] = [2, 3, 1.5]
    np.testing.assert_allclose(fisher_ema_update(prev, [3.0, 4.0, 0.0], 0.5), [2.0, 3.0, 1.5])
    np.testing.assert_allclose(
        fisher_ema_update(prev, [3.0, 4.0, 0.0], 0.5, mask=[False, True, True]), [1.0, 3.0, 1.5]
    )
    # beta = .001 from 0: 0 + .001 * 10 = .01
    np.testing.assert_allclose(fisher_ema_update([0.0], [10.0], 0.001), [0.01])
    np.testing.assert_array_equal(prev, [1.0, 2.0, 3.0])  # pure


def test_fisher_ema_update_skips_nonfinite_and_checks_shapes():
    out = fisher_ema_update([1.0, 1.0], [math.nan, 3.0], 0.5)
    np.testing.assert_allclose(out, [1.0, 2.0])
    with pytest.raises(ValueError):
        fisher_ema_update([1.0, 1.0], [1.0], 0.5)
    with pytest.raises(ValueError):
        fisher_ema_update([1.0, 1.0], [1.0, 1.0], 0.5, mask=[True])


# ---------------------------------------------------------------------------------------------------
# grad_sq_sum


def test_grad_sq_sum_hand_computed():
    grads = [torch.tensor([1.0, -2.0]), None, torch.tensor([[0.5, 3.0]])]
    # 1 + 4 + .25 + 9 = 14.25;  clamped to [-1, 1]: 1 + 1 + .25 + 1 = 3.25
    assert grad_sq_sum(grads) == (pytest.approx(14.25, rel=1e-12), 0)  # fused norms: float64 rounding
    assert grad_sq_sum(grads, clamp=1.0) == (3.25, 0)
    assert grad_sq_sum(iter(grads), clamp=1.0) == (3.25, 0)  # any iterable


def test_grad_sq_sum_skips_and_counts_nonfinite():
    grads = [torch.tensor([1.0, math.nan]), torch.tensor([2.0]), torch.tensor([math.inf, 0.0]), None]
    assert grad_sq_sum(grads) == (pytest.approx(4.0, rel=1e-12), 2)
    assert grad_sq_sum(grads, clamp=1.0) == (1.0, 2)
    assert grad_sq_sum([]) == (0.0, 0)
    assert grad_sq_sum([None]) == (0.0, 0)


def test_grad_sq_sum_low_precision():
    g = torch.tensor([0.5, 0.25], dtype=torch.bfloat16)
    assert grad_sq_sum([g]) == (pytest.approx(0.3125, rel=1e-12), 0)


def test_grad_sq_sum_fused_equals_elementwise_over_mixed_dtypes():
    gen = torch.Generator().manual_seed(0)
    grads = [
        torch.randn(17, 5, generator=gen),
        torch.randn(3, generator=gen).to(torch.bfloat16),
        torch.randn(2, 2, dtype=torch.float64, generator=gen),
        torch.tensor(3.0),
        torch.empty(0),
        torch.tensor([1.0, math.inf]).to(torch.bfloat16),
    ]
    expected = sum(float((g.double() ** 2).sum()) for g in grads[:5])
    value, bad = grad_sq_sum(grads)
    assert value == pytest.approx(expected, rel=1e-12) and bad == 1


# ---------------------------------------------------------------------------------------------------
# batch_informativeness
#
# W = [[1, 2], [3, 4]] (C = 2, D = 2).
# Row 1: z = [0, 0], y = 0: p = [.5, .5], p - Y = [-.5, .5], G = -.5[1,2] + .5[3,4] = [1, 1], g = 2
# Row 2: z = [ln 3, 0], y = 1: p = [.75, .25], p - Y = [.75, -.75], G = .75([1,2] - [3,4]) = [-1.5, -1.5], g = 4.5
W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


def test_batch_informativeness_hand_computed():
    z = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    y = torch.tensor([0, 1, -100])  # third row unsupervised
    s_b, m = batch_informativeness(z, y, W, running_mean=0.5, ema=0.1)
    # g = 2 + 4.5 = 6.5;  s_b = 6.5 / .5 = 13;  m = .5 + .1 (6.5 - .5) = 1.1
    assert s_b == pytest.approx(13.0, rel=1e-6)
    assert m == pytest.approx(1.1, rel=1e-6)
    assert isinstance(s_b, float) and isinstance(m, float)
    s_b1, m1 = batch_informativeness(z[:1], y[:1], W, running_mean=0.5, ema=0.1)
    assert s_b1 == pytest.approx(4.0, rel=1e-6)  # 2 / .5
    assert m1 == pytest.approx(0.65, rel=1e-6)  # .5 + .1 (2 - .5)


def test_batch_informativeness_uses_mean_before_update_and_warmup():
    z = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])
    s_b, m = batch_informativeness(z, y, W, running_mean=0.0, ema=0.001)
    assert s_b == pytest.approx(2.0 / 1e-10, rel=1e-6)  # m = 0 initially: huge s_b blocks freezing
    assert m == pytest.approx(0.002, rel=1e-6)


def test_batch_informativeness_lm_shape_and_chunking():
    z = torch.tensor([[[0.0, 0.0], [9.0, 9.0], [math.log(3.0), 0.0]]])  # (B=1, T=3, V=2)
    y = torch.tensor([[0, -100, 1]])
    for chunk in (1, 2, 4096):
        s_b, m = batch_informativeness(z, y, W, running_mean=1.0, ema=0.5, chunk_rows=chunk)
        assert s_b == pytest.approx(6.5, rel=1e-6)
        assert m == pytest.approx(3.75, rel=1e-6)  # 1 + .5 (6.5 - 1)


def test_batch_informativeness_degenerate():
    z = torch.zeros(2, 2)
    assert batch_informativeness(z, torch.tensor([-100, -100]), W, 0.7) == (0.0, 0.7)
    s_b, m = batch_informativeness(torch.tensor([[math.nan, 0.0]]), torch.tensor([0]), W, 0.7)
    assert math.isnan(s_b) and m == 0.7
    with pytest.raises(ValueError):
        batch_informativeness(z, torch.tensor([0, 1]), torch.zeros(3, 2), 0.7)


@pytest.mark.parametrize("shape", [(5,), (2, 4)])
def test_batch_informativeness_matches_autograd(shape):
    torch.manual_seed(0)
    C, D = 7, 6
    h = torch.randn(*shape, D, dtype=torch.float64, requires_grad=True)
    Wt = torch.randn(C, D, dtype=torch.float64)
    b = torch.randn(C, dtype=torch.float64)
    y = torch.randint(0, C, shape)
    y.view(-1)[1] = -100
    logits = h @ Wt.T + b
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1), reduction="sum")
    (grad_h,) = torch.autograd.grad(loss, h)
    assert grad_h.reshape(-1, D)[1].abs().max() == 0  # ignored row contributes nothing
    g_ref = float(grad_h.square().sum())
    s_b, m = batch_informativeness(logits.detach(), y, Wt, running_mean=2.0, ema=0.25)
    assert s_b == pytest.approx(g_ref / 2.0, rel=1e-5)
    assert m == pytest.approx(2.0 + 0.25 * (g_ref - 2.0), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# backward_saved_per_block


def test_backward_saved_per_block():
    # BWD = [10, 7, 3, 3] -> BF = [10-7, 7-3, 3-3] = [3, 4, 0]
    assert backward_saved_per_block([10.0, 7.0, 3.0, 3.0]) == [3.0, 4.0, 0.0]
    assert backward_saved_per_block([5.0]) == []
    out = backward_saved_per_block([10.0, 10.0 + 1e-9, 4.0])  # round-off negative clamped
    assert out[0] == 0.0 and out[1] == pytest.approx(6.0)
    with pytest.raises(ValueError):
        backward_saved_per_block([10.0, 12.0, 4.0])
    with pytest.raises(ValueError):
        backward_saved_per_block([])


def test_backward_saved_feeds_selection():
    # BWD(n) = [6, 4, 2, 0] -> BF = [2, 2, 2] = case A's BF
    assert select_frozen_prefix([1.0, 2.0, 4.0], [1.0] * 3, backward_saved_per_block([6, 4, 2, 0]), 1.0) == 1


def test_batch_informativeness_bias_correction_hand_computed():
    # logits (1,2) = [0, 0], label 0, W = [[1], [0]]: p = [.5, .5], p - Y = [-.5, .5], G = -.5, g = 0.25
    logits, labels, W = torch.zeros(1, 2), torch.tensor([0]), torch.tensor([[1.0], [0.0]])
    s0, m1 = batch_informativeness(logits, labels, W, 0.0, ema=0.5, updates=0)
    assert s0 == 1.0 and m1 == pytest.approx(0.125)  # no history: neutral
    s1, _ = batch_informativeness(logits, labels, W, m1, ema=0.5, updates=1)
    assert s1 == pytest.approx(0.25 / (0.125 / 0.5))  # debiased mean 0.25: the same batch scores 1
    raw, _ = batch_informativeness(logits, labels, W, m1, ema=0.5)
    assert raw == pytest.approx(2.0)  # uncorrected: inflated by 1 / (1 - 0.5)


# reachable_prefixes: which n the criterion can choose at all


def _chosen_over_all_s_b(F, FF, BF, head_fwd, head_bwd, max_frozen=None):
    """Every n select_frozen_prefix picks, at s_b = 0, beyond every crossing of two BFC lines and between them."""
    top = len(F) if max_frozen is None else max_frozen
    G, Q = np.concatenate([[0], np.cumsum(F)])[: top + 1], np.concatenate([[0], np.cumsum(BF)])[: top + 1]
    I = np.concatenate([np.cumsum(F[::-1])[::-1], [0]])[: top + 1]
    C = np.sum(FF) + head_fwd + head_bwd + np.concatenate([np.cumsum(BF[::-1])[::-1], [0]])[: top + 1]
    r_star = np.max(I / C)
    cross = sorted(r_star * (Q[m] - Q[n]) / (G[m] - G[n]) for n in range(len(G)) for m in range(n) if G[m] != G[n])
    cross = [c for c in cross if c > 0]
    points = [0.0, *cross, *(0.5 * (a + b) for a, b in zip(cross, cross[1:])), 2 * max(cross, default=1.0) + 1]
    return sorted({select_frozen_prefix(F, FF, BF, s, head_fwd, head_bwd, max_frozen) for s in points})


def test_reachable_prefixes_are_exactly_those_the_criterion_picks():
    rng = np.random.default_rng(0)
    seen_interior = False
    for _ in range(200):
        L = int(rng.integers(1, 7))
        F, BF, FF = rng.exponential(1.0, L), rng.exponential(1.0, L), rng.exponential(1.0, L)
        head_fwd, head_bwd = rng.exponential(1.0, 2)
        reach = reachable_prefixes(F, BF)
        assert reach == _chosen_over_all_s_b(F, FF, BF, head_fwd, head_bwd)
        seen_interior |= any(0 < n < L for n in reach)
    assert seen_interior


def test_information_per_flop_falling_with_depth_leaves_all_or_nothing():
    BF = np.array([20.0, 70.0, 60.0, 50.0])
    F = BF * np.array([40.0, 7.3, 7.2, 6.2])  # F_j / BF_j falls from block to block
    assert reachable_prefixes(F, BF) == [0, 4]
    assert reachable_prefixes(F[::-1], BF[::-1]) == [0, 1, 2, 3, 4]  # rising: every prefix can win


def test_max_frozen_restricts_the_choice_rather_than_clamping_it():
    # F = [1, 0.01], BF = [1, 1], no block forward, head_fwd 1: C_n = [3, 2, 1], I_n = [1.01, 0.01, 0], R* = 1.01/3.
    # s_b = 0.5: BFC = [0, R* - 0.5, 2 R* - 0.505] = [0, -0.163, +0.168]. Freezing both blocks wins; when the last
    # one must train (no head), freezing nothing beats freezing the first, so clamping 2 to 1 would be wrong.
    args = ([1.0, 0.01], [0.0, 0.0], [1.0, 1.0])
    assert select_frozen_prefix(*args, 0.5, head_fwd=1.0) == 2
    assert select_frozen_prefix(*args, 0.5, head_fwd=1.0, max_frozen=1) == 0
    assert select_frozen_prefix(*args, 0.2, head_fwd=1.0, max_frozen=1) == 1  # BFC_1 = R* - 0.2 = +0.137
    assert reachable_prefixes(args[0], args[2]) == [0, 2] and reachable_prefixes(args[0], args[2], 1) == [0, 1]


def test_reachable_prefixes_under_max_frozen_are_those_the_criterion_picks():
    rng = np.random.default_rng(1)
    for _ in range(100):
        L = int(rng.integers(2, 7))
        F, BF, FF = rng.exponential(1.0, L), rng.exponential(1.0, L), rng.exponential(1.0, L)
        head_fwd, head_bwd = rng.exponential(1.0, 2)
        top = int(rng.integers(1, L))
        assert reachable_prefixes(F, BF, top) == _chosen_over_all_s_b(F, FF, BF, head_fwd, head_bwd, top)
