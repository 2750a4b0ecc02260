"""MIR: maximally interfered retrieval (Aljundi et al., NeurIPS 2019) on top of ER.

Half of each batch is the latest arrivals, as in ER. For the replay half, ``mir_candidates`` memory slots are drawn
uniformly; a virtual SGD step on the stream part, ``theta' = theta - eta * grad L(stream; theta)`` (``eta`` =
``mir_virtual_lr``), is applied to a copy of the trainable parameters; each candidate's loss increase
``d_i = l(x_i; theta') - l(x_i; theta)`` is measured (:func:`per_sample_loss`) and the replay half is the candidates
with the largest increase (:func:`select_most_interfered`).

Cost, charged to the ledger (item ``mir_retrieval``) and measured by the trainer's ``FlopsProfiler``:

* the virtual update: forward + full backward of the stream part, ``profiler.cost(stream).train_flops(0)``, plus the
  SGD update, 2 FLOPs per trainable element (counted by hand: FlopCounterMode counts only matmuls/convolutions);
* the candidate scoring: two forwards, ``2 * profiler.forward_flops(candidates)``.

(The official aL-SAR code charges only the candidate forwards; its virtual step goes uncharged, pitfall 9.) Memory:
the virtual parameters ``theta'`` are one copy of the trainable parameters (extra state ``mir_virtual_model``), as
the paper counts MIR ("- 1 model"). With ``budget_matching`` the higher cost per iteration gives MIR fewer iterations
than ER.

The sampler only draws the candidates (the first ``n`` stand in for the replay half while the batch is composed); the
probe runs in the training step, just before the forward (:meth:`MIR.refine_batch`), which then trains the stream
part plus the chosen candidates: model in train mode as the real step, BatchNorm statistics and the RNG restored
afterwards, parameter ``.grad`` untouched (``torch.autograd.grad``), candidates scored under ``no_grad`` with
``torch.func.functional_call``. While the memory holds no more slots than the replay half needs, there is nothing to
choose: the draw is uniform and nothing is charged.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch.func import functional_call

from ..models.heads import logits_of
from .er import ER
from .lm_logits import per_sample_loss
from .options import MethodOptions


@dataclass
class MIROptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {"mir_candidates": ">= 1", "mir_virtual_lr": "> 0"}
    mir_candidates: int = field(default=50, metadata={"help": "Memory slots scored per batch (mir_cands)."})
    mir_virtual_lr: float = field(default=0.1, metadata={"help": "SGD step of the virtual update."})


def select_most_interfered(loss_before: np.ndarray, loss_after: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest increases ``loss_after - loss_before`` (ties: the earlier position first)."""
    increase = np.asarray(loss_after, dtype=np.float64) - np.asarray(loss_before, dtype=np.float64)
    return np.argsort(-increase, kind="stable")[: max(int(n), 0)]


class MIR(ER):
    name = "mir"
    Options = MIROptions

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        self.candidates = self.options.mir_candidates
        self.virtual_lr = self.options.mir_virtual_lr
        self.probes = 0
        self._pending: deque[np.ndarray | None] = deque()  # per composed batch: its candidates, None if uniform

    def retrieve(self, memory, n: int, rng: np.random.Generator, samples_seen: int) -> np.ndarray:
        m = len(memory)
        if n <= 0 or m <= n:  # nothing to choose: uniform (all of memory)
            self._pending.append(None)
            return super().retrieve(memory, n, rng, samples_seen)
        candidates = rng.choice(m, size=min(self.candidates, m), replace=False)
        self._pending.append(candidates if candidates.size > n else None)
        return candidates[:n]  # placeholders until refine_batch has scored the candidates

    def on_retrieved(self, memory, slots: np.ndarray) -> None:
        if self._pending[-1] is None:  # final already; else counted when refine_batch has chosen
            super().on_retrieved(memory, slots)

    def refine_batch(self, ctx, record):
        candidates = self._pending.popleft() if self._pending else None
        if candidates is None:
            return None
        memory = ctx.memory
        stream_part = [i for i, s in zip(record.indices, record.slots) if s == -1]
        n_replay = len(record.indices) - len(stream_part)
        before, after = self.interference(ctx, stream_part, candidates)
        chosen = candidates[select_most_interfered(before, after, n_replay)]
        super().on_retrieved(memory, chosen)
        return dataclasses.replace(
            record,
            indices=(*stream_part, *(memory.indices[int(s)] for s in chosen)),
            slots=(*[-1] * len(stream_part), *(int(s) for s in chosen)),
            labels=(*record.labels[: len(stream_part)], *(memory.labels[int(s)] for s in chosen)),
        )

    def interference(self, ctx, stream_rows: list[int], candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate losses before and after the virtual update on the stream rows; charges what ran."""
        model = ctx.model
        stream_inputs = ctx.collate(stream_rows)
        cand_inputs = ctx.collate([ctx.memory.indices[int(s)] for s in candidates])
        params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        was_training = model.training
        model.train()
        with ctx.side_effect_free(), torch.enable_grad():
            loss = model(**stream_inputs).loss
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            with torch.no_grad():
                virtual = {k: p if g is None else p - self.virtual_lr * g for (k, p), g in zip(params.items(), grads)}
                labels = cand_inputs["labels"]
                before = per_sample_loss(logits_of(model(**cand_inputs)), labels)
                after = per_sample_loss(
                    logits_of(functional_call(model, virtual, args=(), kwargs=cand_inputs)), labels
                )
        model.train(was_training)
        n_params = sum(p.numel() for p in params.values())
        # Every rank runs the probe on the whole global stream part and candidates.
        flops = ctx.train_flops(stream_inputs) + 2 * n_params + 2 * ctx.forward_flops(cand_inputs)
        ctx.charge("mir_retrieval", flops, on_every_rank=True)
        self.probes += 1
        return before.cpu().numpy(), after.cpu().numpy()

    def extra_state_bytes(self, model: torch.nn.Module, num_classes: int) -> dict[str, int]:
        return {
            "mir_virtual_model": int(sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad))
        }

    def state_dict(self) -> dict[str, Any]:
        return {"probes": self.probes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probes = int(state.get("probes", 0))
        self._pending.clear()  # the sampler's queued batches are cleared on resume as well
