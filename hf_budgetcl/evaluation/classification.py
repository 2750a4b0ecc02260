"""Anytime evaluation of an image classifier: accuracy on the test samples of the classes seen so far."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .metrics import accuracy_by_class


class Evaluator(Protocol):
    def __call__(self, trainer: Any, seen_classes: np.ndarray) -> tuple[float, dict[int, float]]: ...


class ClassificationEvaluator:
    """Accuracy on the test rows whose label is among ``seen_classes``, through ``Trainer.predict``
    (which batches with ``per_device_eval_batch_size`` and gathers across processes)."""

    def __init__(self, test_dataset, label_column: str = "label"):
        self.test_dataset = test_dataset
        self.test_labels = np.asarray(test_dataset[label_column])

    def __call__(self, trainer: Any, seen_classes: np.ndarray) -> tuple[float, dict[int, float]]:
        rows = np.flatnonzero(np.isin(self.test_labels, seen_classes))
        if len(rows) == 0:
            return float("nan"), {}
        output = trainer.predict(self.test_dataset.select(rows), metric_key_prefix="anytime")
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        return accuracy_by_class(np.asarray(logits).argmax(-1), np.asarray(output.label_ids))
