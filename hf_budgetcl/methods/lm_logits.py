"""Per-row losses and answer-token logits of a causal LM's ``(N, T, V)`` output (shared by MIR and DER++).

A causal LM's logits at position ``t`` predict the token at ``t + 1``, so the logits of the answer's tokens are those
at the positions just before each labelled (``!= -100``) token. These positions depend on the batch's padding, but
their order does not: the ``j``-th answer token of a sample is the same token in every batch it appears in, which is
what lets DER++ keep a sample's answer logits from one batch and match them in another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

__all__ = [
    "per_sample_loss",
    "answer_token_counts",
    "answer_positions",
    "top_answer_logits",
    "answer_logit_mse",
    "IGNORE_INDEX",
]


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per row: ``(N, C)`` logits directly; ``(N, T, V)`` (causal LM) shifted by one token and averaged
    over each row's labelled tokens (``-100`` ignored; a row without one gets 0). Only the labelled positions' logits
    are taken: a VLM's prompt and image tokens are most of ``T``, and a softmax over them would be wasted work."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    rows, pos = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)
    tokens = F.cross_entropy(logits[rows, pos].float(), labels[rows, pos + 1], reduction="none")
    sums = tokens.new_zeros(logits.shape[0]).index_add(0, rows, tokens)
    counts = torch.bincount(rows, minlength=logits.shape[0]).clamp(min=1)
    return sums / counts


def answer_token_counts(labels: torch.Tensor) -> torch.Tensor:
    """Labelled (answer) tokens per row of ``labels`` ``(N, T)``: the positions a causal LM's loss covers."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(1)


def answer_positions(labels: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """Per row of ``labels`` ``(N, T)``: the logit positions ``t`` whose next token is labelled, in order, at most
    ``max_tokens`` of them (the answer's first tokens)."""
    nxt = labels[:, 1:] != IGNORE_INDEX
    return [torch.nonzero(row, as_tuple=False).flatten()[:max_tokens] for row in nxt]


def top_answer_logits(
    logits: torch.Tensor, labels: torch.Tensor, max_tokens: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` largest logits (and their vocabulary ids) at each of a row's first ``max_tokens`` answer positions.

    Returns fixed-size ``values`` ``(N, max_tokens, k)`` float32, ``ids`` ``(N, max_tokens, k)`` int64 and ``counts``
    ``(N,)``: rows with fewer answer tokens are zero-padded, so the arrays of several processes can be gathered.
    """
    n, k = logits.shape[0], min(int(k), logits.shape[-1])
    values = torch.zeros(n, max_tokens, k, dtype=torch.float32, device=logits.device)
    ids = torch.zeros(n, max_tokens, k, dtype=torch.int64, device=logits.device)
    counts = torch.zeros(n, dtype=torch.int64, device=logits.device)
    for i, pos in enumerate(answer_positions(labels, max_tokens)):
        if pos.numel():
            top = logits[i, pos].float().topk(k, dim=-1)
            values[i, : pos.numel()], ids[i, : pos.numel()], counts[i] = top.values, top.indices, pos.numel()
    return values, ids, counts


def answer_logit_mse(
    logits: torch.Tensor, labels: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Sum of squared differences between the current logits at each row's answer positions and the stored ``values``
    at the stored vocabulary ``ids``, over the first ``min(counts[i], answer tokens now)`` tokens of each row; returns
    ``(sum, number of elements)`` so that the caller takes the mean over all rows."""
    total, elements = logits.new_zeros((), dtype=torch.float32), 0
    for i, pos in enumerate(answer_positions(labels, values.shape[1])):
        m = min(int(counts[i]), pos.numel())
        if m == 0:
            continue
        now = logits[i, pos[:m]].float().gather(-1, ids[i, :m].to(logits.device))
        total = total + ((now - values[i, :m].to(logits.device)) ** 2).sum()
        elements += now.numel()
    return total, elements
