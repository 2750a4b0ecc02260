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

The probe runs in the sampler, when the batch is composed: model in train mode as the real step, BatchNorm
statistics and the RNG restored afterwards, parameter ``.grad`` untouched (``torch.autograd.grad``), candidates
scored under ``no_grad`` with ``torch.func.functional_call``. While the memory holds no more slots than the replay
half needs, there is nothing to choose: the draw is uniform and nothing is charged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..accounting.flops import _side_effect_free
from .base import collate_rows
from .er import ER


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per row: ``(N, C)`` logits directly; ``(N, T, V)`` (causal LM) shifted by one token and averaged
    over each row's labelled tokens (``-100`` ignored; a row without one gets 0)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    tokens = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    valid = (labels != -100).float()
    return (tokens * valid).sum(1) / valid.sum(1).clamp(min=1.0)


def select_most_interfered(loss_before: np.ndarray, loss_after: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest increases ``loss_after - loss_before`` (ties: the earlier position first)."""
    increase = np.asarray(loss_after, dtype=np.float64) - np.asarray(loss_before, dtype=np.float64)
    return np.argsort(-increase, kind="stable")[: max(int(n), 0)]


def _logits(outputs: Any) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs.logits


class MIR(ER):
    name = "mir"

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        self.candidates = self.option("mir_candidates", 50)  # the reference code's mir_cands
        self.virtual_lr = self.option("mir_virtual_lr", 0.1)  # SGD step of the original MIR code
        self.pending_flops = 0.0
        self.probes = 0
        self._trainer: Any = None
        if self.candidates < 1 or self.virtual_lr <= 0:
            raise ValueError("method_options: mir_candidates must be >= 1 and mir_virtual_lr > 0")

    def setup(self, trainer: Any) -> None:
        self._trainer = trainer

    def retrieve(self, memory, n: int, rng: np.random.Generator, samples_seen: int) -> np.ndarray:
        m = len(memory)
        if n <= 0 or m <= n or self._trainer is None:  # nothing to choose: uniform (all of memory)
            return super().retrieve(memory, n, rng, samples_seen)
        candidates = rng.choice(m, size=min(self.candidates, m), replace=False)
        if candidates.size <= n:
            return candidates
        before, after = self.interference(memory, candidates, samples_seen)
        return candidates[select_most_interfered(before, after, n)]

    def interference(self, memory, candidates: np.ndarray, samples_seen: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate losses before and after the virtual update on the latest arrivals; charges what ran."""
        t = self._trainer
        model = t.model
        n_stream = min(self.stream_batch_size(t.global_batch_size), samples_seen)
        stream_inputs = collate_rows(t, t.stream.indices[samples_seen - n_stream : samples_seen])
        cand_inputs = collate_rows(t, [memory.indices[int(s)] for s in candidates])
        params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        was_training = model.training
        model.train()
        with _side_effect_free(model), torch.enable_grad():
            loss = model(**stream_inputs).loss
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            with torch.no_grad():
                virtual = {k: p if g is None else p - self.virtual_lr * g for (k, p), g in zip(params.items(), grads)}
                labels = cand_inputs["labels"]
                before = per_sample_loss(_logits(model(**cand_inputs)), labels)
                after = per_sample_loss(_logits(functional_call(model, virtual, args=(), kwargs=cand_inputs)), labels)
        model.train(was_training)
        n_params = sum(p.numel() for p in params.values())
        self.pending_flops += (
            t.profiler.cost(stream_inputs).train_flops(0) + 2 * n_params + 2 * t.profiler.forward_flops(cand_inputs)
        )
        self.probes += 1
        return before.cpu().numpy(), after.cpu().numpy()

    def extra_state_bytes(self, model: torch.nn.Module, num_classes: int) -> dict[str, int]:
        return {
            "mir_virtual_model": int(sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad))
        }

    def extra_flops_per_iteration(self, trainer: Any, batch_size: int) -> dict[str, float]:
        """Every probe run since the last charge; every rank runs the sampler's probe, so world_size times."""
        out, self.pending_flops = self.pending_flops * getattr(trainer, "world_size", 1), 0.0
        return {"mir_retrieval": out}

    def state_dict(self) -> dict[str, Any]:
        return {"probes": self.probes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probes = int(state.get("probes", 0))
