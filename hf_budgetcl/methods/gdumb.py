"""GDumb (Prabhu et al., ECCV 2020): a greedy class-balanced memory, and a learner trained from memory only.

The sampler is the memory's own replacement rule (:class:`~hf_budgetcl.stream.memory.EpisodicMemory`): a sample is stored
while there is room, else it replaces a random slot of the currently largest class -- GDumb's greedy class-balanced
sampler. Training never sees the stream directly: every batch is drawn from memory, class-balanced (a uniform class,
then a uniform slot of it; :func:`~hf_budgetcl.methods.retrieval_math.class_balanced_draw`).

How it fits the online budget: the original GDumb trains a fresh model from scratch on the memory whenever it is
asked to predict. Under anytime evaluation with a FLOPs budget per stream sample that would re-pay a whole training
run at every evaluation point. Here the per-sample budget is instead spent continually, ``online_iter`` memory-only
iterations per arrival, on one model that is never reset; the ledger charges exactly those iterations.
"""

from __future__ import annotations

import numpy as np

from .base import ContinualMethod
from .retrieval_math import class_balanced_draw


class GDumb(ContinualMethod):
    name = "gdumb"
    stream_fraction = 0.0

    def retrieve(self, memory, n: int, rng: np.random.Generator, samples_seen: int) -> np.ndarray:
        return class_balanced_draw(memory.labels, n, rng)
