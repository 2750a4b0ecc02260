"""The stream-driving batch sampler: it turns an arrival order into training batches.

For every arriving sample it inserts the sample into the episodic memory, adds ``online_iter`` to an update
accumulator and yields ``floor(accumulator)`` batches of dataset indices, each composed by the method (latest
arrivals + memory retrieval). A sample is only ever drawn after it has arrived. Every rank runs an identical copy
(same seed) so that memory, retrieval and counts agree, composes the same global batch and yields its own contiguous
shard of it (rank ``r`` of ``W`` gets rows ``[r B / W, (r + 1) B / W)``).

The trainer iterates it through a plain single-process DataLoader that fetches nothing ahead, so when a step ends
the sampler has composed exactly the batches trained so far: its state (cursor, memory, counts, generator, the
iterations still owed to the current arrival) is the state to checkpoint for an exact resume. The sampler also
queues one :class:`BatchRecord` per yielded batch; the trainer pops it to learn which stream position, memory slots
and iteration a trained batch belongs to.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Sampler

from ..utils.errors import ConfigError
from .memory import EpisodicMemory
from .orders import StreamOrder

if TYPE_CHECKING:  # the sampler only calls the method's retrieval hooks
    from ..methods import ContinualMethod


@dataclass(frozen=True)
class BatchRecord:
    samples_seen: int  # arrivals so far when the batch was composed
    last_for_arrival: bool  # no further iteration runs at this arrival (anytime evaluation may follow)
    indices: tuple[int, ...]  # dataset rows, in batch order
    slots: tuple[int, ...]  # memory slot of each row, -1 for rows taken from the stream part
    labels: tuple[int, ...]


def count_iterations(n_arrivals: int, online_iter: float, min_arrivals: int) -> int:
    """Iterations over a whole stream: the accumulator gains ``online_iter`` per arrival from arrival
    ``min_arrivals`` on, and ``floor(acc)`` iterations run each time (the same float arithmetic as the sampler)."""
    acc, total = 0.0, 0
    for t in range(1, n_arrivals + 1):
        if t < min_arrivals:
            continue
        acc += online_iter
        k = math.floor(acc)
        acc -= k
        total += k
    return total


class OnlineStreamSampler(Sampler[list[int]]):
    """Batch sampler over a map-style dataset that consumes a :class:`StreamOrder` online."""

    def __init__(
        self,
        stream: StreamOrder,
        memory: EpisodicMemory,
        method: ContinualMethod,
        sample_nbytes: Callable[[int], int],
        batch_size: int,
        online_iter: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if online_iter <= 0:
            raise ConfigError(f"online_iter must be positive, got {online_iter}")
        self.stream = stream
        self.memory = memory
        self.method = method
        self.sample_nbytes = sample_nbytes
        self.batch_size = batch_size
        self.online_iter = online_iter
        self.online_iter_cap: float | None = None  # set when a controller adapts online_iter (budget matching)
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = rank, world_size
        self.min_arrivals = method.min_arrivals(batch_size)
        self.cursor = 0  # arrivals consumed
        self.accumulator = 0.0
        self.batches_yielded = 0
        self.pending = 0  # iterations the current arrival still owes (online_iter > 1)
        self.stopped = False  # training is over (FLOPs budget spent): yield nothing more, also after a resume
        self.records: deque[BatchRecord] = deque()
        self.dropped = 0  # samples too large for the whole memory

    def __len__(self) -> int:
        """Iterations over the whole stream (a resumed run's Trainer needs the same total as the original run's)."""
        # An adapted online_iter never exceeds its cap, so the cap gives an upper bound of the iterations.
        online_iter = max(self.online_iter, self.online_iter_cap or 0.0)
        return count_iterations(len(self.stream), online_iter, self.min_arrivals)

    def arrive(self) -> int:
        """Consume the next arrival into memory; returns the number of iterations it earns."""
        t = self.cursor
        index, label = int(self.stream.indices[t]), int(self.stream.labels[t])
        if not self.memory.add(index, label, self.sample_nbytes(index)):
            self.dropped += 1
        self.cursor += 1
        if self.cursor < self.min_arrivals:
            return 0
        self.accumulator += self.online_iter
        k = math.floor(self.accumulator)
        self.accumulator -= k
        return k

    def compose_batch(self) -> BatchRecord:
        n_stream = min(self.method.stream_batch_size(self.batch_size), self.cursor)
        stream_rows = [int(i) for i in self.stream.indices[self.cursor - n_stream : self.cursor]]
        stream_labels = [int(y) for y in self.stream.labels[self.cursor - n_stream : self.cursor]]
        slots = self.method.retrieve(self.memory, self.batch_size - n_stream, self.rng, self.cursor)
        self.method.on_retrieved(self.memory, slots)
        rows = stream_rows + [self.memory.indices[int(s)] for s in slots]
        labels = stream_labels + [self.memory.labels[int(s)] for s in slots]
        return BatchRecord(
            samples_seen=self.cursor,
            last_for_arrival=False,
            indices=tuple(rows),
            slots=tuple([-1] * n_stream + [int(s) for s in slots]),
            labels=tuple(labels),
        )

    def shard(self, rows: tuple[int, ...]) -> list[int]:
        """This rank's contiguous part of a global batch."""
        n = len(rows)
        return list(rows[self.rank * n // self.world_size : (self.rank + 1) * n // self.world_size])

    def __iter__(self) -> Iterator[list[int]]:
        # Resumable: every decision lives in attributes (cursor, pending), none in generator locals.
        while not self.stopped:
            if self.pending == 0:
                if self.cursor >= len(self.stream):
                    return
                self.pending = self.arrive()
                continue
            self.pending -= 1
            record = self.compose_batch()
            record = BatchRecord(**{**record.__dict__, "last_for_arrival": self.pending == 0})
            self.records.append(record)
            self.batches_yielded += 1
            yield self.shard(record.indices)

    def pop_record(self) -> BatchRecord:
        return self.records.popleft()

    def drain(self) -> Iterator[int]:
        """Consume the remaining arrivals without training (the FLOPs budget is spent); yields positions."""
        self.records.clear()
        self.pending = 0
        while self.cursor < len(self.stream):
            self.arrive()
            yield self.cursor

    def state_dict(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "accumulator": self.accumulator,
            "batches_yielded": self.batches_yielded,
            "online_iter": self.online_iter,  # budget matching adapts it along the stream
            "pending": self.pending,
            "stopped": self.stopped,
            "dropped": self.dropped,
            "rng": self.rng.bit_generator.state,
            "memory": self.memory.state_dict(),
            "method": self.method.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = state["cursor"]
        self.accumulator = state["accumulator"]
        self.batches_yielded = state["batches_yielded"]
        self.online_iter = state.get("online_iter", self.online_iter)
        self.pending = state.get("pending", 0)
        self.stopped = state.get("stopped", False)
        self.records.clear()
        self.dropped = state["dropped"]
        self.rng.bit_generator.state = state["rng"]
        self.memory.load_state_dict(state["memory"])
        self.method.load_state_dict(state["method"])
