"""Within-task swings of the anytime accuracy, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from hf_budgetcl.evaluation.anytime import CurvePoint
from hf_budgetcl.evaluation.anytime_stability import largest_within_task_drop, within_task_runs, within_task_std

TASK_A, TASK_AB = {"0": 1.0, "1": 1.0}, {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0}
# task A: 0.9 -> 0.5 -> 0.8; the switch to A+B falls 0.8 -> 0.3 (not counted); task A+B: 0.3 -> 0.6 -> 0.4
CURVE = [
    {"accuracy": a, "per_class": pc}
    for a, pc in [(0.9, TASK_A), (0.5, TASK_A), (0.8, TASK_A), (0.3, TASK_AB), (0.6, TASK_AB), (0.4, TASK_AB)]
]


def test_tasks_are_runs_of_the_same_classes_seen():
    assert within_task_runs(CURVE) == [[0.9, 0.5, 0.8], [0.3, 0.6, 0.4]]


def test_largest_drop_counts_falls_within_a_task_not_at_a_switch():
    assert largest_within_task_drop(CURVE) == pytest.approx(0.4)  # 0.9 -> 0.5; the switch's 0.5 is not counted
    assert largest_within_task_drop(CURVE[2:5]) == 0.0  # 0.8 | 0.3 -> 0.6: only a switch and a rise


def test_within_task_std_is_the_mean_of_each_tasks_std():
    # task A: mean 0.7333, deviations 0.1667, -0.2333, 0.0667 -> variance 0.08667 / 3 = 0.02889, std 0.16997
    # task A+B: mean 0.4333, deviations -0.1333, 0.1667, -0.0333 -> variance 0.0467 / 3 = 0.01556, std 0.1247
    assert within_task_std(CURVE) == pytest.approx((0.16997 + 0.12472) / 2, abs=1e-5)
    assert math.isnan(within_task_std(CURVE[2:4]))  # no task evaluated twice


def test_curve_points_work_as_well_as_their_json():
    points = [CurvePoint(0, 0.0, p["accuracy"], 0, 0, {int(k): v for k, v in p["per_class"].items()}) for p in CURVE]
    assert largest_within_task_drop(points) == pytest.approx(0.4)


def test_bare_accuracies_split_by_given_tasks():
    """The plain loop's curve has no per-class keys: its tasks are given (here 2 evaluations a task)."""
    from hf_budgetcl.evaluation.anytime_stability import largest_drop, split_by_task

    runs = split_by_task([0.9, 0.7, 0.5, 0.45, 0.6, 0.3], [0, 0, 1, 1, 2, 2])
    assert runs == [[0.9, 0.7], [0.5, 0.45], [0.6, 0.3]]
    assert largest_drop(runs) == pytest.approx(0.3)  # 0.6 -> 0.3; the switches 0.7 -> 0.5 and 0.45 -> 0.6 not counted


def test_largest_fall_split_over_classes_new_and_old():
    from hf_budgetcl.evaluation.anytime_stability import largest_fall_by_class

    curve = [
        {"samples": 100, "accuracy": 0.9, "per_class": {"0": 0.9, "1": 0.9}},  # task {0, 1}
        {"samples": 200, "accuracy": 0.8, "per_class": {"0": 1.0, "1": 0.6}},  # falls 0.1 (class 1 -0.3, 0 +0.1)
        {"samples": 300, "accuracy": 0.4, "per_class": {"0": 0.6, "1": 0.6, "2": 0.2, "3": 0.2}},  # switch
        {"samples": 400, "accuracy": 0.55, "per_class": {"0": 0.8, "1": 0.7, "2": 0.3, "3": 0.4}},
        # falls 0.15: old classes 0 (-0.5) and 1 (-0.2), new 2 (+0.2) and 3 (-0.1): mean change -0.6 / 4
        {"samples": 500, "accuracy": 0.40, "per_class": {"0": 0.3, "1": 0.5, "2": 0.5, "3": 0.3}},
    ]
    fall = largest_fall_by_class(curve)
    assert fall.fall == pytest.approx(0.15) and fall.samples == 500
    assert fall.new == {"2", "3"} and fall.worst == "0"
    assert fall.change == pytest.approx({"0": -0.5, "1": -0.2, "2": 0.2, "3": -0.1})
    assert fall.old_share == pytest.approx((0.5 + 0.2) / 4 / 0.15)  # 1.1667: the new classes rose on the net
    first = largest_fall_by_class(curve[:2])
    assert first.new == {"0", "1"} and first.old_share == 0.0 and first.worst == "1"  # every class is new
    assert largest_fall_by_class(curve[2:4]) is None  # a switch and a rise: no fall within a task
    points = [
        CurvePoint(p["samples"], 0.0, p["accuracy"], 0, 0, {int(k): v for k, v in p["per_class"].items()})
        for p in curve
    ]
    assert (
        largest_fall_by_class(points).change == pytest.approx(fall.change)
        and largest_fall_by_class(points).samples == 500
    )
