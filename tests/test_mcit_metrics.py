"""MCIT metrics on hand-computed matrices, and the task-boundary evaluation that fills the accuracy matrix.

The matrix evaluation runs here against a scripted evaluator and a scripted training loop (the batches' stream
positions), so each row can be traced to the iterations it saw; tests/test_mcit_recipe.py runs it for real.
"""

from __future__ import annotations

import math
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

from hf_budgetcl.evaluation.mcit_metrics import (
    a_last_matrix,
    average_forgetting,
    backward_transfer,
    majority_baseline_per_task,
)
from hf_budgetcl.evaluation.task_matrix import TaskMatrix
from hf_budgetcl.stream.orders import disjoint_stream, gaussian_stream
from hf_budgetcl.stream.sampler import BatchRecord
from hf_budgetcl.utils.errors import ConfigError

# Task 0 peaks after task 1 (0.7), not on the diagonal: forgetting and -BWT differ.
R = [
    [0.5, 0.0, 0.1],
    [0.7, 0.6, 0.0],
    [0.4, 0.6, 0.9],
]


def test_a_last_is_the_mean_of_the_last_row():
    assert a_last_matrix(R) == pytest.approx((0.4 + 0.6 + 0.9) / 3)


def test_forgetting_takes_the_best_earlier_accuracy_of_each_old_task():
    # task 0: best 0.7 (after task 1), final 0.4 -> 0.3; task 1: best 0.6, final 0.6 -> 0.0
    assert average_forgetting(R) == pytest.approx(0.15)


def test_bwt_compares_the_final_accuracy_with_the_one_just_after_learning():
    # task 0: 0.4 - 0.5 = -0.1; task 1: 0.6 - 0.6 = 0
    assert backward_transfer(R) == pytest.approx(-0.05)
    # learning task 1 helped task 0: positive transfer, negative forgetting
    assert backward_transfer([[0.2, 0.0], [0.5, 0.8]]) == pytest.approx(0.3)
    assert average_forgetting([[0.2, 0.0], [0.5, 0.8]]) == pytest.approx(-0.3)


def test_one_task_has_no_forgetting_and_a_ragged_matrix_is_refused():
    assert math.isnan(average_forgetting([[0.4]])) and math.isnan(backward_transfer([[0.4]]))
    assert a_last_matrix([[0.4]]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="square"):
        average_forgetting([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])


def test_majority_baseline_per_task_uses_each_task_own_most_frequent_answer():
    train = ["yes", "Yes", "no", "blue", "red", "blue"]
    train_tasks = ["yn", "yn", "yn", "color", "color", "color"]
    test = ["yes", "no", "blue", "red", "blue", "blue", "seven"]
    test_tasks = ["yn", "yn", "color", "color", "color", "color", "digits"]
    out = majority_baseline_per_task(train, train_tasks, test, test_tasks)
    assert list(out) == ["yn", "color", "digits"]
    assert out["yn"] == pytest.approx(0.5)  # "yes" (2 of 3, case folded) on [yes, no]
    assert out["color"] == pytest.approx(0.75)  # "blue" on [blue, red, blue, blue]
    assert math.isnan(out["digits"])  # no training answer: undefined


# ---- the matrix along a scripted run ------------------------------------------------------------------------------
class ScriptedEvaluator:
    """Task j's accuracy is what the script says for the number of iterations trained so far."""

    def __init__(self, labels_test, answers_test, labels_train, answers_train):
        self.test_labels, self.test_answers = np.asarray(labels_test), answers_test
        self.train_labels, self.train_answers = np.asarray(labels_train), answers_train
        self.trained = 0
        self.calls = 0

    def score(self, trainer, classes):
        self.calls += 1
        return (self.trained + 10 * int(classes[0])) / 100.0, {}

    def __call__(self, trainer, seen):
        return 0.0, {}


def _run(matrix, stream, positions, stop_after=None):
    """Drive the callback like Trainer does: on_step_begin with the batch composed, train, on_train_end."""
    trainer = SimpleNamespace(
        stream=stream, stream_sampler=SimpleNamespace(records=deque()), progress=SimpleNamespace(eval_time_s=0.0)
    )
    callback = matrix.callback(trainer)
    for k, seen in enumerate(positions):
        if stop_after is not None and k == stop_after:
            break
        trainer.stream_sampler.records.append(BatchRecord(seen, True, (), (), ()))
        callback.on_step_begin(None, None, None)
        trainer.stream_sampler.records.popleft()
        matrix.evaluator.trained += 1
    callback.on_train_end(None, None, None)
    return callback


def _matrix(labels_per_task=4):
    labels = np.repeat([0, 1, 2], labels_per_task)
    stream = disjoint_stream(labels, n_tasks=3, seed=0, class_order=[2, 0, 1])
    # majority answers: zero "a", one "b", two "c" (tie with "d", the first wins)
    evaluator = ScriptedEvaluator([0, 1, 2, 2], ["a", "x", "c", "d"], labels, ["a"] * 4 + ["b"] * 4 + ["c", "d"] * 2)
    return TaskMatrix(evaluator, stream, class_names=["zero", "one", "two"]), stream


def test_each_row_sees_every_iteration_of_its_task_and_none_of_the_next():
    matrix, stream = _matrix()
    assert stream.task_boundaries == (4, 8, 12)
    # batches at arrivals 2, 4 (boundary: the row follows it), 6, 9 (past 8, so the row comes before it), 12
    _run(matrix, stream, [2, 4, 6, 9, 12])
    trained_at_rows = [[round(v * 100) - 10 * c for v, c in zip(row, (2, 0, 1))] for row in matrix.rows]
    assert trained_at_rows == [[2] * 3, [3] * 3, [5] * 3]
    results = matrix.extra_results
    assert results["task_names"] == ["two", "zero", "one"] and results["accuracy_matrix_samples"] == [4, 8, 12]
    assert results["majority_baseline_per_task"] == {"two": 0.5, "zero": 1.0, "one": 0.0}
    assert results["forgetting"] == pytest.approx(average_forgetting(matrix.rows))
    assert matrix.evaluator.calls == 9  # three tasks at three boundaries


def test_after_the_budget_stops_training_the_remaining_rows_share_one_evaluation():
    matrix, stream = _matrix()
    _run(matrix, stream, [2, 4, 6, 9, 12], stop_after=3)  # trained at arrivals 2, 4, 6, then the budget ran out
    assert matrix.rows[1] == matrix.rows[2] and matrix.rows[0] != matrix.rows[1]
    assert matrix.evaluator.calls == 6
    assert np.isfinite(matrix.extra_results["BWT"])


def test_the_matrix_state_round_trips_for_a_resume():
    matrix, stream = _matrix()
    callback = _run(matrix, stream, [2, 4, 6], stop_after=None)
    fresh, _ = _matrix()
    fresh.callback(None).load_state_dict(callback.state_dict())
    assert fresh.rows == matrix.rows and fresh.row_samples == matrix.row_samples


def test_streams_without_boundaries_or_tasks_without_test_rows_are_one_line_errors():
    labels = np.repeat([0, 1, 2], 4)
    evaluator = ScriptedEvaluator([0, 1], ["a", "b"], labels, ["a"] * 12)
    with pytest.raises(ConfigError, match="accuracy_matrix: a gaussian stream has no task boundaries"):
        TaskMatrix(evaluator, gaussian_stream(labels, sigma=0.1, seed=0))
    with pytest.raises(ConfigError, match="test set: task 'two' has no held-out rows"):
        TaskMatrix(evaluator, disjoint_stream(labels, 3, seed=0), class_names=["zero", "one", "two"])
