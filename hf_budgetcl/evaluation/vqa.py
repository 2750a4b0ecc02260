"""Anytime evaluation of a vision-language model on held-out questions: generated answers, exact match.

:class:`VQAEvaluator` implements the trainer's evaluator protocol ``evaluator(trainer, seen_classes) ->
(accuracy, per_class)``: it generates answers (greedy, batched, prompts left-padded by the collator) for the test
questions whose concept is among the seen ones and scores them with the normalised exact match of
:func:`~hf_budgetcl.evaluation.metrics.exact_match`. Alongside, at every evaluation, it scores the majority-answer baseline
on the same questions (always answering the most frequent training answer of the seen concepts), and exposes it
through ``extra_results`` so that ``results.json`` carries ``majority_baseline`` next to ``A_last``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from .metrics import exact_match, majority_baseline, normalize_answer


class VQAEvaluator:
    """Exact-match accuracy of generated answers on the test rows of the seen concepts.

    Args:
        test_dataset: rows with ``image``, ``question``, ``answer`` and ``label`` (the concept id).
        collator: a :class:`~hf_budgetcl.data.vlm_collator.VLMInstructionCollator` (prompt building, decoding).
        train_answers, train_labels: the training answers and their concepts, for the majority baseline.
        batch_size: prompts per ``generate`` call. ``max_new_tokens``: answers are a word or two.

    With several processes each rank generates for its share of the rows (``rows[rank::world]``) and the
    per-row results are gathered, so all ranks return the same accuracy.
    """

    def __init__(
        self,
        test_dataset: Any,
        collator: Any,
        train_answers: Sequence[str],
        train_labels: Sequence[int],
        batch_size: int = 64,
        max_new_tokens: int = 8,
    ):
        self.test_dataset = test_dataset
        self.collator = collator
        self.test_labels = np.asarray(test_dataset["label"])
        self.test_answers = list(test_dataset["answer"])
        self.train_answers = np.asarray([normalize_answer(a) for a in train_answers], dtype=object)
        self.train_labels = np.asarray(train_labels)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.baseline_curve: list[float] = []
        self.last_predictions: list[str] = []

    def majority_baseline(self, seen_classes: np.ndarray) -> float:
        """Accuracy, on the seen concepts' test questions, of always giving their most frequent training answer."""
        train = self.train_answers[np.isin(self.train_labels, seen_classes)]
        test = [self.test_answers[i] for i in np.flatnonzero(np.isin(self.test_labels, seen_classes))]
        return majority_baseline(train.tolist(), test)

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, rows: Sequence[dict]) -> list[str]:
        """Greedy answers for ``rows`` (prompt only; generation stops at the end-of-turn token)."""
        device = next(model.parameters()).device
        answers: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            inputs = {k: v.to(device) for k, v in self.collator.build_generation_inputs(chunk).items()}
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            answers += self.collator.decode_answers(out, inputs["input_ids"].shape[1])
        return answers

    def __call__(self, trainer: Any, seen_classes: np.ndarray) -> tuple[float, dict[int, float]]:
        if not np.isin(self.test_labels, seen_classes).any():
            return float("nan"), {}
        self.baseline_curve.append(self.majority_baseline(seen_classes))
        return self.score(trainer, seen_classes)

    def score(self, trainer: Any, classes: np.ndarray) -> tuple[float, dict[int, float]]:
        """Exact match (overall, per concept) on the test rows of ``classes``; no baseline is recorded (the task
        matrix scores every task at each boundary through this)."""
        rows = np.flatnonzero(np.isin(self.test_labels, classes))
        if len(rows) == 0:
            return float("nan"), {}
        rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
        mine = rows[rank::world]
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            predictions = self.generate(model, [self.test_dataset[int(i)] for i in mine])
        finally:
            model.train(was_training)
        local = [(int(i), p, bool(exact_match(p, self.test_answers[int(i)]))) for i, p in zip(mine, predictions)]
        scored = sorted(gather_object(local) if world > 1 else local)
        self.last_predictions = [p for _, p, _ in scored]
        correct = np.array([c for _, _, c in scored])
        labels = self.test_labels[[i for i, _, _ in scored]]
        per_class = {int(c): float(correct[labels == c].mean()) for c in np.unique(labels)}
        return float(correct.mean()), per_class

    @property
    def extra_results(self) -> dict[str, Any]:
        """Merged into ``results.json``: the final and per-evaluation majority baselines."""
        return {
            "majority_baseline": self.baseline_curve[-1] if self.baseline_curve else float("nan"),
            "majority_baseline_curve": list(self.baseline_curve),
            "eval_questions": int(len(self.test_labels)),
        }
