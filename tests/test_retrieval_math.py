import math

import numpy as np
import pytest

from hf_budgetcl.methods.retrieval_math import (
    add_uses,
    class_balanced_draw,
    class_similarity,
    count_decay_factor,
    damp_immature_classes,
    decay_counts,
    draw_without_replacement,
    effective_use_frequency,
    retrieval_probabilities,
    similarity_ema_update,
)

# ---------------------------------------------------------------------------------------------------
# counts


def test_count_decay_factor_hand_computed():
    assert count_decay_factor(16, 100, 4) == pytest.approx(0.96)  # 1 - 16 / 400
    assert count_decay_factor(16, 17, 4) == pytest.approx(1 - 16 / 68)  # 0.7647
    assert count_decay_factor(32, 4000, 2) == pytest.approx(0.996)  # 1 - 32 / 8000
    assert count_decay_factor(16, 16, 4) == 1.0  # |M| = B: no decay
    assert count_decay_factor(16, 3, 4) == 1.0
    assert count_decay_factor(16, 20, 0.4) == 0.0  # raw 1 - 16 / 8 = -1, clipped
    with pytest.raises(ValueError):
        count_decay_factor(16, 100, 0.0)


def test_count_halving_time():
    # half-life ~ ln 2 * k |M| / B = .693 * 4 * 1000 / 16 = 173 retrievals
    f = count_decay_factor(16, 1000, 4)
    assert f**173 == pytest.approx(0.5, abs=0.01)


def test_decay_counts_is_pure():
    u = np.array([1.0, 2.5, 0.0])
    np.testing.assert_allclose(decay_counts(u, 0.96), [0.96, 2.4, 0.0])
    np.testing.assert_array_equal(u, [1.0, 2.5, 0.0])


def test_add_uses_hand_computed_with_duplicates():
    u = np.array([0.0, 1.0, 0.0, 2.0])
    U = np.array([1.0, 2.0])
    labels = np.array([0, 1, 1, 0])
    new_u, new_U = add_uses(u, U, slots=[1, 3, 1], slot_labels=labels)
    # slot 1 twice, slot 3 once; classes of slots 1, 3, 1 = 1, 0, 1
    np.testing.assert_array_equal(new_u, [0.0, 3.0, 0.0, 3.0])
    np.testing.assert_array_equal(new_U, [2.0, 4.0])
    np.testing.assert_array_equal(u, [0.0, 1.0, 0.0, 2.0])  # pure
    np.testing.assert_array_equal(U, [1.0, 2.0])
    same_u, same_U = add_uses(u, U, slots=[], slot_labels=labels)
    np.testing.assert_array_equal(same_u, u)
    np.testing.assert_array_equal(same_U, U)


# ---------------------------------------------------------------------------------------------------
# similarity
#
# Two classes, D = 2, alpha = .5, start gbar = 0, s = [1, 1], a = [0, 0].
#  n=1, y=0, g=[1,0]: gbar0 = [.5, 0];  cos(g, gbar0) = 1;  s0 = 1;  a0 = .5
#  n=2, y=0, g=[0,1]: gbar0 = [.5,0] + .5([0,1] - [.5,0]) = [.25, .5];
#                     cos([0,1], [.25,.5]) = .5 / sqrt(.3125) = 2/sqrt5;  s0 = 1 + .5(2/sqrt5 - 1) = .5 + 1/sqrt5
#                     a0 = .5 + .5(1 - .5) = .75
#  n=3, y=1, g=[1,1]: gbar1 = [.5, .5];  cos = 1;  s1 = 1;  a1 = .5
# S: cos(gbar0, gbar1) = .375 / (sqrt(.3125) sqrt(.5)) = 3/sqrt10
#    S00 = s0 a0^2 = (.5 + 1/sqrt5) * .5625;  S11 = 1 * .25;  S01 = 3/sqrt10 * sqrt(s0 * 1) * .75 * .5
S0 = 0.5 + 1 / math.sqrt(5)


def _two_class_state():
    return similarity_ema_update(
        np.zeros((2, 2)),
        np.ones(2),
        np.zeros(2),
        grads=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        labels=[0, 0, 1],
        alpha=0.5,
    )


def test_similarity_ema_update_hand_computed():
    gbar, s, a = _two_class_state()
    np.testing.assert_allclose(gbar, [[0.25, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(s, [S0, 1.0])
    np.testing.assert_allclose(a, [0.75, 0.5])


def test_class_similarity_hand_computed():
    S = class_similarity(*_two_class_state())
    s01 = 3 / math.sqrt(10) * math.sqrt(S0) * 0.75 * 0.5
    np.testing.assert_allclose(S, [[S0 * 0.5625, s01], [s01, 0.25]], rtol=1e-12)
    assert S[0, 1] == pytest.approx(0.34624, abs=1e-5)  # 0.948683 * 0.973249 * 0.375


def test_similarity_order_matters():
    # same samples, reversed order: gbar0 = [.5,0] after ... differs, so per-sample order is honoured
    gbar, s, _ = similarity_ema_update(
        np.zeros((2, 2)), np.ones(2), np.zeros(2), np.array([[0.0, 1.0], [1.0, 0.0]]), [0, 0], 0.5
    )
    np.testing.assert_allclose(gbar[0], [0.5, 0.25])
    assert s[0] == pytest.approx(S0)  # symmetric example: same cosine 2/sqrt5


def test_similarity_update_rejects_features_of_another_width():
    with pytest.raises(ValueError):
        similarity_ema_update(np.zeros((1, 3)), [0.0], [0.0], np.ones((1, 5)), [0], 0.5)


def test_similarity_zero_vector_and_nonfinite_rows():
    # zero gradient into a zero mean: cos = 0, s = .8 + .5 (0 - .8) = .4; a still matures
    gbar, s, a = similarity_ema_update(np.zeros((1, 2)), [0.8], [0.0], np.zeros((1, 2)), [0], 0.5)
    np.testing.assert_array_equal(gbar, [[0.0, 0.0]])
    np.testing.assert_allclose(s, [0.4])
    np.testing.assert_allclose(a, [0.5])
    gbar, s, a = similarity_ema_update(np.zeros((1, 2)), [0.8], [0.0], np.array([[math.nan, 1.0]]), [0], 0.5)
    np.testing.assert_array_equal(gbar, [[0.0, 0.0]])
    np.testing.assert_allclose(s, [0.8])
    np.testing.assert_allclose(a, [0.0])


def test_maturity_closed_form():
    alpha, n = 0.001, 37
    _, _, a = similarity_ema_update(np.zeros((1, 3)), [1.0], [0.0], np.ones((n, 3)), [0] * n, alpha)
    assert a[0] == pytest.approx(1 - (1 - alpha) ** n, rel=1e-12)


def test_class_similarity_nan_guard_and_zero_vectors():
    gbar = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    S = class_similarity(gbar, [-0.2, 0.5, 1.0], [1.0, 1.0, 1.0])
    assert np.isfinite(S).all()
    # class 0: s clamped to 0 -> its row is 0; class 2: zero vector -> row 0; S11 = .5 * 1
    np.testing.assert_allclose(S, [[0, 0, 0], [0, 0.5, 0], [0, 0, 0]])
    S = class_similarity(np.array([[math.nan, 1.0]]), [math.nan], [1.0])
    assert np.isfinite(S).all()


def test_class_similarity_properties():
    rng = np.random.default_rng(0)
    gbar = rng.normal(size=(5, 8))
    s = rng.uniform(-0.5, 1, 5)
    a = rng.uniform(0, 1, 5)
    S = class_similarity(gbar, s, a)
    np.testing.assert_allclose(S, S.T)
    np.testing.assert_allclose(np.diag(S), np.maximum(s, 0) * a**2)
    bound = np.sqrt(np.outer(np.maximum(s, 0), np.maximum(s, 0))) * np.outer(a, a)
    assert (np.abs(S) <= bound + 1e-12).all()


# ---------------------------------------------------------------------------------------------------
# effective use frequency
#
# labels = [0, 0, 1], u = [2, 1, 0], U = [3, 0] (U_0 = 2 + 1), S = [[.5, .2], [.2, .4]]
#  c0 = (1 - .5) 2 + (.5*3 + .2*0) = 2.5   = u0 + S00 u1 = 2 + .5
#  c1 = (1 - .5) 1 + 1.5          = 2.0   = u1 + S00 u0 = 1 + 1
#  c2 = (1 - .4) 0 + (.2*3 + .4*0) = .6   = u2 + S10 (u0 + u1)
LAB = np.array([0, 0, 1])
U_SLOT = np.array([2.0, 1.0, 0.0])
U_CLS = np.array([3.0, 0.0])
S_EX = np.array([[0.5, 0.2], [0.2, 0.4]])


def test_effective_use_frequency_hand_computed():
    np.testing.assert_allclose(effective_use_frequency(U_SLOT, LAB, U_CLS, S_EX), [2.5, 2.0, 0.6])
    np.testing.assert_allclose(
        effective_use_frequency(U_SLOT, LAB, U_CLS, S_EX, paper_compat=True), [2.5 / 3, 2.0 / 3, 0.2]
    )


def test_effective_use_frequency_paper_compat_clamps():
    # labels [0, 1], u = [0, 5], U = [0, 5], S = [[.5, -.9], [-.9, .4]]
    #  c0 = 0 + (.5*0 - .9*5) = -4.5;  c1 = .6*5 + .4*5 = 5  -> compat: max(0, c/2) = [0, 2.5]
    S = np.array([[0.5, -0.9], [-0.9, 0.4]])
    args = ([0.0, 5.0], [0, 1], [0.0, 5.0], S)
    np.testing.assert_allclose(effective_use_frequency(*args), [-4.5, 5.0])
    np.testing.assert_allclose(effective_use_frequency(*args, paper_compat=True), [0.0, 2.5])


def test_own_count_enters_exactly_once():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n, C = 12, 4
        labels = rng.integers(0, C, n)
        u = rng.uniform(0, 5, n)
        U = np.bincount(labels, weights=u, minlength=C)
        M = rng.uniform(-1, 1, (C, C))
        S = (M + M.T) / 2
        c_hat = effective_use_frequency(u, labels, U, S)
        expected = [u[i] + sum(S[labels[i], labels[j]] * u[j] for j in range(n) if j != i) for i in range(n)]
        np.testing.assert_allclose(c_hat, expected, rtol=1e-10)
    # S = 0: no sharing, c_hat = u
    np.testing.assert_allclose(effective_use_frequency(U_SLOT, LAB, U_CLS, np.zeros((2, 2))), U_SLOT)


# ---------------------------------------------------------------------------------------------------
# probabilities and draws


def test_retrieval_probabilities_hand_computed():
    # T = 1: p ~ [1, e^-1, e^-2] / 1.503214 = [.665241, .244728, .090031]
    np.testing.assert_allclose(
        retrieval_probabilities([0.0, 1.0, 2.0], 1.0), [0.665241, 0.244728, 0.090031], atol=1e-6
    )
    # T = .5: p ~ [1, e^-2, e^-4] / 1.153651 = [.866813, .117310, .015876]
    np.testing.assert_allclose(
        retrieval_probabilities([0.0, 1.0, 2.0], 0.5), [0.866813, 0.117310, 0.015876], atol=1e-6
    )
    # shift invariance / stability
    np.testing.assert_allclose(
        retrieval_probabilities([1000.0, 1001.0, 1002.0], 1.0), retrieval_probabilities([0.0, 1.0, 2.0], 1.0)
    )


def test_retrieval_probabilities_rare_slots_preferred_and_finite():
    c = np.array([5.0, 0.0, 2.0, 0.0, 9.0])
    p = retrieval_probabilities(c, 0.125)
    assert p.sum() == pytest.approx(1.0)
    assert np.isfinite(p).all()
    order = np.argsort(c, kind="stable")
    assert (np.diff(p[order]) <= 0).all()  # lower count -> higher probability
    assert p[1] == p[3]
    p = retrieval_probabilities([0.0, 1e6], 0.125)
    np.testing.assert_array_equal(p, [1.0, 0.0])
    np.testing.assert_allclose(retrieval_probabilities([0.0, math.nan, math.inf], 1.0), [1 / 3] * 3)
    np.testing.assert_allclose(retrieval_probabilities([1.0, -math.inf], 1.0), [0.5, 0.5])
    np.testing.assert_allclose(retrieval_probabilities([math.nan, math.nan], 1.0), [0.5, 0.5])
    assert retrieval_probabilities([], 1.0).size == 0
    with pytest.raises(ValueError):
        retrieval_probabilities([0.0], 0.0)


def test_draw_without_replacement_distinct_and_deterministic():
    p = retrieval_probabilities(np.arange(50, dtype=float) / 10, 0.5)
    a = draw_without_replacement(p, 16, np.random.default_rng(7))
    b = draw_without_replacement(p, 16, np.random.default_rng(7))
    c = draw_without_replacement(p, 16, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 16 and len(set(a.tolist())) == 16
    assert len(draw_without_replacement([0.5, 0.5], 16, np.random.default_rng(0))) == 2  # min(n, |M|)
    assert draw_without_replacement([0.5, 0.5], 0, np.random.default_rng(0)).size == 0


def test_draw_frequencies_follow_p():
    rng = np.random.default_rng(0)
    p = np.array([0.7, 0.2, 0.1])
    draws = np.concatenate([draw_without_replacement(p, 1, rng) for _ in range(20000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 20000, p, atol=0.015)


def test_draw_with_underflowed_probabilities():
    p = retrieval_probabilities([0.0, 1e6, 1e6, 1e6], 0.125)  # [1, 0, 0, 0]
    out = draw_without_replacement(p, 3, np.random.default_rng(0))
    assert out[0] == 0
    assert len(set(out.tolist())) == 3 and set(out[1:].tolist()) <= {1, 2, 3}


def test_class_balanced_draw():
    labels = np.array([0, 0, 0, 1])
    rng = np.random.default_rng(0)
    draws = np.concatenate([class_balanced_draw(labels, 4, rng) for _ in range(5000)])
    # class 1 (one slot) is drawn half of the time, not 1/4; class-0 slots share the other half
    assert np.mean(draws == 3) == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(np.bincount(draws, minlength=4)[:3] / draws.size, [1 / 6] * 3, atol=0.02)
    a = class_balanced_draw(labels, 4, np.random.default_rng(5))
    b = class_balanced_draw(labels, 4, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert class_balanced_draw(labels, 10, rng).size == 4  # min(n, |M|), with replacement
    assert class_balanced_draw([], 4, rng).size == 0


def test_damp_immature_classes_hand_computed():
    # r = a_y / max a = [1, 1, 0, .5, .5]: m = (2 + 1 + 0 + .2 + .8) / 3 = 4/3; class 0 is the most mature (no floor),
    # class 1 new (floor 4/3), class 2 half-way (floor 2/3)
    c_hat, labels = [2.0, 1.0, 0.0, 0.4, 1.6], [0, 0, 1, 2, 2]
    expected = [2.0, 1.0, 4 / 3, 2 / 3, 1.6]
    np.testing.assert_allclose(damp_immature_classes(c_hat, labels, [1.0, 0.0, 0.5]), expected)
    np.testing.assert_allclose(damp_immature_classes(c_hat, labels, [0.2, 0.0, 0.1]), expected)  # relative maturity
    np.testing.assert_allclose(damp_immature_classes(c_hat, labels, [0.1, 0.1, 0.1]), c_hat)  # arrived together
    np.testing.assert_allclose(damp_immature_classes([3.0, 1.0], [0, 0], [0.0]), [3.0, 1.0])  # none mature yet
    assert damp_immature_classes([], [], [0.0]).size == 0
    with pytest.raises(ValueError, match="2 effective frequencies for 1 slot labels"):
        damp_immature_classes([1.0, 2.0], [0], [0.0])
