"""DER++: dark experience replay with labels (Buzzega et al., NeurIPS 2020) on top of ER.

Every stored sample keeps the logits the model gave it when it was trained as a stream sample. On replayed rows the
loss adds a logit-matching and a label term (:func:`derpp_loss`):

    L = CE(batch) + alpha * mean_{replayed i with logits, c} (z_ic - z*_ic)^2 + beta * mean_{replayed i} CE(z_i, y_i)

(the original draws two separate buffer batches for the two terms; here both use the replay half of the one batch,
so no extra forward is needed, as in the aL-SAR code's DER++). Logits are stored when a stream row is trained and
its sample is in memory; a replayed slot without stored logits (evicted and re-stored, or never trained from the
stream) only gets the label term.

Accounting: each slot stores ``C`` float32 logits next to its sample, ``slot_bytes = sample + 4 C``, so under one
byte budget DER++ keeps fewer samples than ER. The extra loss terms are element-wise (not counted by
FlopCounterMode) and charged by hand as item ``derpp_loss`` (:func:`derpp_loss_flops`).

A causal LM (a VLM's answer tokens, logits ``(N, T, V)``): a slot keeps, for each of the answer's first
``derpp_answer_tokens`` tokens, the ``derpp_token_topk`` largest logits and their vocabulary ids
(:func:`~hf_budgetcl.methods.lm_logits.top_answer_logits`), ``slot_bytes = sample + tokens * k * (4 + 4) + 4``: the
full vocabulary (1,024 logits a token for the default stage-1 base) would cost several times an image. The logit term
matches those entries; the label term is the LM loss of the replayed rows. The top-k selection is charged as item
``derpp_store`` (``V`` comparisons a stored token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..models.heads import logits_of
from ..utils.errors import ConfigError
from .er import ER
from .lm_logits import answer_logit_mse, answer_token_counts, per_sample_loss, top_answer_logits
from .options import MethodOptions

LOGIT_BYTES = 4  # float32
TOKEN_ID_BYTES = 4  # int32 vocabulary ids


def derpp_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stored: torch.Tensor,
    has_stored: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``alpha * mean((z - z*)^2)`` over the rows with stored logits (all classes) plus ``beta * mean CE(z, y)`` over
    all given (replayed) rows; an empty set contributes 0."""
    zero = logits.sum() * 0.0
    mse = F.mse_loss(logits[has_stored].float(), stored[has_stored].float()) if has_stored.any() else zero
    ce = F.cross_entropy(logits.float(), labels) if logits.shape[0] else zero
    return alpha * mse + beta * ce


def derpp_loss_flops(rows_with_logits: int, rows: int, num_classes: int) -> float:
    """Hand count: MSE forward 3 per element (subtract, square, sum) and backward 2; CE forward ~4 per logit
    (max-shift, exp, sum, log) and backward 2 (softmax minus one-hot, scale)."""
    return float(5 * rows_with_logits * num_classes + 6 * rows * num_classes)


@dataclass
class DERPPOptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {
        "derpp_alpha": ">= 0",
        "derpp_beta": ">= 0",
        "derpp_answer_tokens": ">= 1",
        "derpp_token_topk": ">= 1",
    }
    derpp_alpha: float = field(default=0.1, metadata={"help": "Weight of the logit-matching term."})
    derpp_beta: float = field(default=0.5, metadata={"help": "Weight of the replayed-label term."})
    derpp_answer_tokens: int = field(
        default=4, metadata={"help": "Causal LM: answer tokens whose logits a slot keeps (the answer's first ones)."}
    )
    derpp_token_topk: int = field(
        default=16, metadata={"help": "Causal LM: logits kept per answer token, the largest, with their ids."}
    )


def vocabulary_size(model: Any) -> int | None:
    """The vocabulary of a model that generates text (the rows of its output embeddings, the LM head), ``None`` for a
    classifier. Not the config's ``vocab_size``: a CLIP or SigLIP image classifier has a text vocabulary there."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


class DERPP(ER):
    name = "derpp"
    Options = DERPPOptions

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        self.alpha, self.beta = self.options.derpp_alpha, self.options.derpp_beta
        self.answer_tokens, self.topk = self.options.derpp_answer_tokens, self.options.derpp_token_topk
        self.num_classes = 0  # logits per slot, set in setup
        self.vocab: int | None = None  # a causal LM's vocabulary: answer-token mode
        # dataset index -> float32 logits (C,); answer-token mode: (values (tokens, k), ids (tokens, k), count)
        self.stored: dict[int, Any] = {}

    def setup(self, ctx) -> None:
        self.vocab = vocabulary_size(ctx.model)
        if self.vocab is None:
            self.num_classes = ctx.num_classes
        else:
            self.topk = min(self.topk, self.vocab)

    def slot_bytes(self, sample_nbytes: int) -> int:
        if self.vocab is not None:  # top-k values and ids per answer token, and the token count
            return int(sample_nbytes) + self.answer_tokens * self.topk * (LOGIT_BYTES + TOKEN_ID_BYTES) + 4
        return int(sample_nbytes) + LOGIT_BYTES * self.num_classes

    def observe(self, ctx, inputs: dict, outputs: Any) -> None:
        """Store the logits of every trained stream row whose sample is in memory (gathered: every rank keeps the
        same store), and forget those of evicted samples."""
        logits = logits_of(outputs)
        record = ctx.record
        slots, indices = np.asarray(record.slots), np.asarray(record.indices)
        in_memory = set(ctx.memory.indices)
        if logits.dim() == 3 and self.vocab is not None:
            with torch.no_grad():
                stored = top_answer_logits(logits.detach(), inputs["labels"], self.answer_tokens, self.topk)
            values, ids, counts = (t.cpu().numpy() for t in ctx.gather(stored))
            ctx.charge("derpp_store", float(int(counts.sum()) * self.vocab))  # gathered: all ranks' top-k work
            entry = lambda pos: (values[pos].copy(), ids[pos].astype(np.int32), int(counts[pos]))  # noqa: E731
        elif logits.dim() == 2 and self.vocab is None:
            all_logits = ctx.gather(logits.detach()).float().cpu().numpy()
            entry = lambda pos: all_logits[pos].copy()  # noqa: E731
        else:
            raise ConfigError(
                f"derpp: needs classification logits (N, C) or a causal LM's (N, T, V), got {tuple(logits.shape)}"
            )
        for pos in np.flatnonzero(slots == -1):  # the stream rows of this batch whose sample is in memory
            if int(indices[pos]) in in_memory:
                self.stored[int(indices[pos])] = entry(pos)
        self.stored = {k: v for k, v in self.stored.items() if k in in_memory}

    def extra_loss(self, ctx, inputs: dict, outputs: Any) -> torch.Tensor | None:
        """The logit and label terms on this process's replayed rows. Every rank books the work of the whole batch, so
        the ranks' ledgers stay identical."""
        logits = logits_of(outputs)
        record = ctx.record
        slots, indices = np.asarray(record.slots), np.asarray(record.indices)
        positions = ctx.local_positions(logits.shape[0])
        replay = np.flatnonzero(slots[positions] != -1)
        rows = [int(indices[positions[j]]) for j in replay]
        if logits.dim() == 3:
            return self._answer_token_loss(ctx, logits, inputs["labels"], replay, rows)
        replayed = indices[slots != -1]  # of every rank: the record is the global batch's
        stored_rows = sum(int(i) in self.stored for i in replayed)
        ctx.charge("derpp_loss", derpp_loss_flops(stored_rows, replayed.size, logits.shape[1]))
        if replay.size == 0:
            return None
        has = torch.tensor([r in self.stored for r in rows], device=logits.device)
        target = torch.from_numpy(np.stack([self.stored.get(r, np.zeros(logits.shape[1], np.float32)) for r in rows]))
        labels = inputs["labels"][torch.as_tensor(replay, device=logits.device)]
        return derpp_loss(
            logits[torch.as_tensor(replay, device=logits.device)],
            labels,
            target.to(logits.device),
            has,
            self.alpha,
            self.beta,
        )

    def _answer_token_loss(
        self, ctx, logits: torch.Tensor, labels: torch.Tensor, replay: np.ndarray, rows: list[int]
    ) -> torch.Tensor | None:
        """``alpha * mean squared error`` over the stored top-k entries of the replayed rows' answer tokens plus
        ``beta *`` the mean LM loss of the replayed rows that have an answer token."""
        at = torch.as_tensor(replay, dtype=torch.long, device=logits.device)
        z, y = logits[at], labels[at]
        have = [j for j, r in enumerate(rows) if r in self.stored]
        mse, elements = logits.sum() * 0.0, 0
        if have:
            values, ids, counts = (np.stack([self.stored[rows[j]][f] for j in have]) for f in range(3))
            h = torch.as_tensor(have, device=logits.device)
            total, elements = answer_logit_mse(
                z[h], y[h], torch.from_numpy(values), torch.from_numpy(ids).long(), torch.from_numpy(counts)
            )
            mse = total / max(elements, 1)
        answers = answer_token_counts(y)
        # The work of all ranks (MSE 5 per entry; CE 6 per logit of an answer token), booked identically by each: a
        # collective, which every rank reaches on every training pass.
        work = ctx.gather(torch.tensor([[elements, int(answers.sum())]], device=logits.device)).sum(0).tolist()
        ctx.charge("derpp_loss", float(5 * work[0] + 6 * work[1] * logits.shape[-1]))
        if replay.size == 0:
            return None
        labelled = answers > 0
        label_term = per_sample_loss(z[labelled], y[labelled]).mean() if labelled.any() else mse * 0.0
        return self.alpha * mse + self.beta * label_term

    def state_dict(self) -> dict[str, Any]:
        keys = sorted(self.stored)
        if self.vocab is not None:
            empty = (0, self.answer_tokens, self.topk)
            return {
                "indices": np.asarray(keys, dtype=np.int64),
                "values": np.stack([self.stored[i][0] for i in keys]) if keys else np.zeros(empty, np.float32),
                "ids": np.stack([self.stored[i][1] for i in keys]) if keys else np.zeros(empty, np.int32),
                "counts": np.asarray([self.stored[i][2] for i in keys], dtype=np.int64),
            }
        logits = np.stack([self.stored[k] for k in keys]) if keys else np.zeros((0, self.num_classes), np.float32)
        return {"indices": np.asarray(keys, dtype=np.int64), "logits": logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "values" in state:
            self.stored = {
                int(k): (np.asarray(v, np.float32), np.asarray(i, np.int32), int(n))
                for k, v, i, n in zip(state["indices"], state["values"], state["ids"], state["counts"])
            }
            return
        self.stored = {
            int(k): np.asarray(v, dtype=np.float32) for k, v in zip(state.get("indices", []), state.get("logits", []))
        }
