import math

import numpy as np
import pytest

from hf_budgetcl.evaluation.metrics import (
    a_auc,
    a_last,
    accuracy_by_class,
    exact_match,
    f_last,
    frozen_blocks_per_interval,
    majority_baseline,
    normalize_answer,
)


def test_a_auc_and_a_last():
    accs = [0.2, 0.4, 0.9]
    assert a_auc(accs) == pytest.approx(0.5)  # (.2 + .4 + .9) / 3
    assert a_last(accs) == 0.9
    assert a_auc(np.array([0.25])) == 0.25
    assert math.isnan(a_auc([])) and math.isnan(a_last([]))


def test_f_last_hand_computed():
    history = [{0: 0.8, 1: 0.0}, {0: 0.6, 1: 0.5, 2: 0.0}]
    final = {0: 0.3, 1: 0.5, 2: 0.4, 3: 0.9}
    # max: class 0 -> .8, class 1 -> .5, class 2 -> 0 (excluded, max not > 0), class 3 not in history
    # F_last = ((.8 - .3) + (.5 - .5)) / 2 = .25
    assert f_last(history, final) == pytest.approx(0.25)


def test_f_last_edge_cases():
    assert f_last([{0: 0.2}], {0: 0.5}) == pytest.approx(-0.3)  # backward transfer -> negative
    assert f_last([{0: 0.9, 1: 0.4}], {1: 0.1}) == pytest.approx(0.3)  # class 0 not evaluated at the end
    assert math.isnan(f_last([], {0: 1.0}))
    assert math.isnan(f_last([{0: 0.0}], {0: 0.0}))


def test_accuracy_by_class_hand_computed():
    overall, per = accuracy_by_class([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 1])
    # correct = [T, T, F, T, T, F] -> 4/6; class 0: 1/1, class 1 (idx 1, 5): 1/2, class 2 (idx 2, 3, 4): 2/3
    assert overall == pytest.approx(4 / 6)
    assert per == pytest.approx({0: 1.0, 1: 0.5, 2: 2 / 3})
    assert all(type(k) is int for k in per)
    overall, per = accuracy_by_class(["yes", "no"], ["yes", "yes"])
    assert overall == 0.5 and per == {"yes": 0.5}
    overall, per = accuracy_by_class([], [])
    assert math.isnan(overall) and per == {}
    with pytest.raises(ValueError):
        accuracy_by_class([0, 1], [0])


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("  The Cat, sat!  ", "cat sat"),
        ("An apple", "apple"),
        ("theater", "theater"),  # articles only as whole words
        ("A.B", "ab"),
        ("two\t\tred   balls", "two red balls"),
        ("THE", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("Two.", "two")
    assert exact_match("the dog", "a dog")
    assert not exact_match("dogs", "dog")
    assert not exact_match("circle", "rectangle")


def test_majority_baseline():
    # normalised train answers: yes x3, no x2 -> "yes"; test: yes, no, yes -> 2/3
    assert majority_baseline(["yes", "no", "Yes", "no", "yes."], ["yes", "no", "YES"]) == pytest.approx(2 / 3)
    # tie no/yes -> lexicographically first "no"; test: no, no, yes -> 2/3
    assert majority_baseline(["yes", "no"], ["no", "no", "yes"]) == pytest.approx(2 / 3)
    assert majority_baseline(iter(["red"]), ["blue"]) == 0.0
    assert math.isnan(majority_baseline([], ["yes"]))
    assert math.isnan(majority_baseline(["yes"], []))


def test_frozen_blocks_per_interval_hand_computed():
    # points after 10, 30, 30 and 40 iterations, with 0, 30, 30 and 50 frozen blocks summed over them:
    # 0/10 = 0, 30/20 = 1.5, no iterations -> nan, 20/10 = 2
    means = frozen_blocks_per_interval([10, 30, 30, 40], [0, 30, 30, 50])
    assert means[[0, 1, 3]].tolist() == [0.0, 1.5, 2.0] and math.isnan(means[2])
    assert frozen_blocks_per_interval([], []).size == 0
    with pytest.raises(ValueError, match="cumulative"):
        frozen_blocks_per_interval([10, 5], [0, 0])
