"""The MCIT accuracy matrix of a run: every task's exact match at every task boundary of the stream.

:class:`TaskMatrix` scores every task through the anytime evaluator's ``score`` and holds the matrix;
:class:`TaskBoundaryCallback` fills one row when a task ends: in ``on_step_begin``
of the first iteration whose batch holds an arrival past the boundary (so the row sees every iteration of the task
and none of the next), and in ``on_train_end`` for the last task and for boundaries the stream reaches after the
FLOPs budget stopped training (the model no longer changes). The matrix, A_last over tasks, forgetting, BWT and
the per-task majority baselines reach ``results.json`` through the callback's ``extra_results``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from transformers import TrainerCallback

from ..stream.orders import StreamOrder
from ..utils.errors import ConfigError
from .mcit_metrics import majority_baseline_per_task, mcit_summary


def task_classes(stream: StreamOrder) -> list[np.ndarray]:
    """The classes (concepts) that first arrive in each task of the stream: one each on a task-incremental stream."""
    starts = (0, *stream.task_boundaries[:-1])
    seen: set[int] = set()
    out = []
    for t, (a, b) in enumerate(zip(starts, stream.task_boundaries)):
        new = [int(c) for c in np.unique(stream.labels[a:b]) if int(c) not in seen]
        if not new:
            raise ConfigError(
                f"accuracy_matrix: task {t} of the stream brings no new concept; set accuracy_matrix false"
            )
        seen.update(new)
        out.append(np.asarray(new, dtype=np.int64))
    return out


class TaskMatrix:
    """The accuracy matrix ``R[i][j]`` (task j's exact match after task i), scored by the anytime evaluator.

    Args:
        evaluator: the anytime evaluator; it needs ``score(trainer, classes) -> (accuracy, per_class)`` and the
            ``train_answers``/``train_labels``/``test_answers``/``test_labels`` of
            :class:`~hf_budgetcl.evaluation.vqa.VQAEvaluator`.
        stream: a stream with task boundaries (disjoint, si_blurry; a Gaussian stream has none).
        class_names: concept names by label, for the task names (default: the label ids).
    """

    def __init__(self, evaluator: Any, stream: StreamOrder, class_names: list[str] | None = None):
        if not stream.task_boundaries:
            raise ConfigError(
                f"accuracy_matrix: a {stream.kind} stream has no task boundaries; set accuracy_matrix false"
            )
        self.evaluator = evaluator
        self.boundaries = stream.task_boundaries
        self.tasks = task_classes(stream)
        name = (lambda c: class_names[c]) if class_names is not None else str
        self.task_names = ["+".join(name(int(c)) for c in classes) for classes in self.tasks]
        task_of_label = {int(c): t for t, classes in enumerate(self.tasks) for c in classes}
        test_tasks = [task_of_label.get(int(y), -1) for y in evaluator.test_labels]
        for t, task in enumerate(self.task_names):
            if t not in test_tasks:
                raise ConfigError(f"test set: task '{task}' has no held-out rows, so its accuracy cannot be measured")
        baselines = majority_baseline_per_task(
            list(evaluator.train_answers),
            [task_of_label.get(int(y), -1) for y in evaluator.train_labels],
            list(evaluator.test_answers),
            test_tasks,
        )
        self.majority_baselines = [baselines[t] for t in range(len(self.tasks))]
        self.rows: list[list[float]] = []
        self.row_samples: list[int] = []  # the boundary (arrivals) each row was measured at

    def evaluate_boundaries(self, trainer: Any, up_to: int) -> None:
        """Add a row for every boundary ``<= up_to`` not measured yet (one evaluation serves them all)."""
        due = [b for b in self.boundaries[len(self.rows) :] if b <= up_to]
        if not due:
            return
        start = time.perf_counter()
        row = [float(self.evaluator.score(trainer, classes)[0]) for classes in self.tasks]
        trainer.progress.eval_time_s += time.perf_counter() - start  # evaluation, not training time
        for b in due:
            self.rows.append(list(row))
            self.row_samples.append(int(b))

    def callback(self, trainer: Any) -> TaskBoundaryCallback:
        return TaskBoundaryCallback(trainer, self)

    @property
    def extra_results(self) -> dict[str, Any]:
        """The matrix and its metrics (nan until the matrix is complete), for ``results.json``."""
        complete = len(self.rows) == len(self.tasks)
        summary = mcit_summary(self.rows) if complete else dict.fromkeys(mcit_summary([[0.0]]), float("nan"))
        return {
            "task_names": list(self.task_names),
            "accuracy_matrix": [list(r) for r in self.rows],
            "accuracy_matrix_samples": list(self.row_samples),
            **summary,
            "majority_baseline_per_task": dict(zip(self.task_names, self.majority_baselines)),
            "majority_baseline_task_mean": float(np.mean(self.majority_baselines)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows], "row_samples": list(self.row_samples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [list(map(float, r)) for r in state["rows"]]
        self.row_samples = [int(s) for s in state["row_samples"]]


class TaskBoundaryCallback(TrainerCallback):
    """Fills the accuracy matrix at task boundaries; its state (the rows so far) is checkpointed with the run."""

    def __init__(self, trainer: Any, matrix: TaskMatrix):
        self.trainer = trainer
        self.matrix = matrix

    def on_step_begin(self, args, state, control, **kwargs):
        records = self.trainer.stream_sampler.records  # the batch about to be trained is composed already
        if records:
            self.matrix.evaluate_boundaries(self.trainer, records[0].samples_seen - 1)

    def on_train_end(self, args, state, control, **kwargs):
        self.matrix.evaluate_boundaries(self.trainer, len(self.trainer.stream))

    @property
    def extra_results(self) -> dict[str, Any]:
        return self.matrix.extra_results

    def state_dict(self) -> dict[str, Any]:
        return self.matrix.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.matrix.load_state_dict(state)
