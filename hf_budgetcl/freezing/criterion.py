"""Pure maths of adaptive layer freezing (aL): Fisher EMA, batch informativeness, freezing criterion.

Notation follows the aL-SAR algorithm reference (sections 3-5): blocks ``0..L-1`` are the freezable blocks,
input side first; freezing is always of a prefix ``0..n-1``; the head always trains.
Nothing here knows about models or trainers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "select_frozen_prefix",
    "reachable_prefixes",
    "fisher_ema_update",
    "grad_sq_sum",
    "batch_informativeness",
    "backward_saved_per_block",
]

# Relative tolerance under which two BFC values count as a tie (ties go to fewer frozen blocks).
_TIE_RTOL = 1e-9


def _largest_prefix(max_frozen: int | None, n_blocks: int) -> int:
    """The largest prefix length the criterion may choose: ``max_frozen`` within 0..n_blocks (None: all)."""
    return n_blocks if max_frozen is None else min(max(int(max_frozen), 0), n_blocks)


def select_frozen_prefix(
    fisher: Sequence[float] | np.ndarray,
    fwd_flops: Sequence[float] | np.ndarray,
    bwd_saved: Sequence[float] | np.ndarray,
    s_b: float,
    head_fwd: float = 0.0,
    head_bwd: float = 0.0,
    max_frozen: int | None = None,
) -> int:
    """Number ``n*`` of leading blocks to freeze for this batch (batch freezing criterion, BFC).

    Per freezable block ``i = 0..L-1``: ``F_i`` (Fisher-trace EMA), ``FF_i`` (forward FLOPs) and
    ``BF_i`` (backward FLOPs saved by also freezing block ``i``). For ``n = 0..L``::

        I_n   = sum_{i>=n} F_i                                  information still learned
        C_n   = sum_i FF_i + head_fwd + head_bwd + sum_{i>=n} BF_i   compute per sample
        R*    = max_n I_n / C_n                                 best information per FLOP
        BFC_n = R* * sum_{i<n} BF_i - s_b * sum_{i<n} F_i        (BFC_0 = 0)
        n*    = argmax_n BFC_n, ties -> the smaller n

    Marginal reading: extending the frozen prefix over block ``j`` pays iff ``s_b F_j < R* BF_j``;
    the argmax is global, not greedy. Values within a relative ``1e-9`` of the maximum count as ties.

    ``max_frozen``: the largest prefix that leaves something to train (``L - 1`` when no head trains, as with LoRA
    on a decoder); ``n`` and ``R*`` range over ``0..max_frozen`` only. Clamping an unrestricted ``n* = L`` instead
    would freeze ``L - 1`` blocks on batches where, by the criterion's own score, freezing them loses to freezing
    nothing.

    Guards (never raises on bad numbers, returns 0 = "freeze nothing"): no blocks; any NaN/inf input;
    a negative ``F``, ``FF``, ``BF``, head cost or ``s_b``; ``sum F == 0`` (no Fisher information yet,
    every ratio would be 0); a zero cost ``C_n`` facing positive information.
    Mismatched lengths are a programming error and raise ``ValueError``.
    """
    F = np.asarray(fisher, dtype=np.float64).reshape(-1)
    FF = np.asarray(fwd_flops, dtype=np.float64).reshape(-1)
    BF = np.asarray(bwd_saved, dtype=np.float64).reshape(-1)
    if not (F.shape == FF.shape == BF.shape):
        raise ValueError(f"length mismatch: fisher {F.shape}, fwd_flops {FF.shape}, bwd_saved {BF.shape}")
    L = F.size
    scalars = np.array([s_b, head_fwd, head_bwd], dtype=np.float64)
    if L == 0:
        return 0
    if not (np.isfinite(F).all() and np.isfinite(FF).all() and np.isfinite(BF).all() and np.isfinite(scalars).all()):
        return 0
    if (F < 0).any() or (FF < 0).any() or (BF < 0).any() or (scalars < 0).any():
        return 0
    if F.sum() <= 0.0:
        return 0

    zero = np.zeros(1)
    suffix_F = np.concatenate([np.cumsum(F[::-1])[::-1], zero])  # I_n, n = 0..L
    suffix_BF = np.concatenate([np.cumsum(BF[::-1])[::-1], zero])
    top = _largest_prefix(max_frozen, L)
    suffix_F = suffix_F[: top + 1]
    cost = (FF.sum() + head_fwd + head_bwd + suffix_BF)[: top + 1]  # C_n
    if ((cost <= 0) & (suffix_F > 0)).any():
        return 0
    ratio = np.divide(suffix_F, cost, out=np.zeros_like(cost), where=cost > 0)
    r_star = float(ratio.max())

    prefix_F = np.concatenate([zero, np.cumsum(F)])[: top + 1]
    prefix_BF = np.concatenate([zero, np.cumsum(BF)])[: top + 1]
    bfc = r_star * prefix_BF - float(s_b) * prefix_F
    if not np.isfinite(bfc).all():
        return 0
    scale = r_star * prefix_BF[-1] + float(s_b) * prefix_F[-1]
    best = bfc.max()
    return int(np.flatnonzero(bfc >= best - _TIE_RTOL * scale)[0])


def reachable_prefixes(
    fisher: Sequence[float] | np.ndarray, bwd_saved: Sequence[float] | np.ndarray, max_frozen: int | None = None
) -> list[int]:
    """The prefix lengths :func:`select_frozen_prefix` can choose for some batch, i.e. for some ``s_b >= 0``
    (with the same ``max_frozen``).

    ``BFC_n = R* Q_n - s_b G_n`` with ``Q_n = sum_{i<n} BF_i`` and ``G_n = sum_{i<n} F_i`` is, for each ``n``, a line
    in ``s_b``; ``n*`` is the top line. So ``n`` can win only if ``(G_n, Q_n)`` is a vertex of the upper convex hull
    of the points ``n = 0..L``, whatever ``R* > 0`` is (it only scales ``Q``). When the backward saved per unit of
    Fisher, ``BF_j / F_j``, grows from block to block (the first blocks hold the most information per FLOP), the
    points lie on a convex curve and only ``0`` and ``L`` are reachable: all or nothing.
    """
    F = np.asarray(fisher, dtype=np.float64).reshape(-1)
    BF = np.asarray(bwd_saved, dtype=np.float64).reshape(-1)
    last = _largest_prefix(max_frozen, F.size)
    G = np.concatenate([[0.0], np.cumsum(F)])[: last + 1]
    Q = np.concatenate([[0.0], np.cumsum(BF)])[: last + 1]
    # among prefixes losing the same information only the one saving most can win (the smaller n on a tie)
    candidates = [n for n in range(G.size) if not any(G[m] == G[n] and (Q[m], -m) > (Q[n], -n) for m in range(G.size))]
    hull: list[int] = []
    for n in candidates:  # G rises with n: a monotone-chain upper hull
        # a vertex on or below the chord of its neighbours never wins (on the chord it ties, and the smaller n wins)
        while len(hull) >= 2 and (Q[hull[-1]] - Q[hull[-2]]) * (G[n] - G[hull[-2]]) <= (Q[n] - Q[hull[-2]]) * (
            G[hull[-1]] - G[hull[-2]]
        ):
            hull.pop()
        hull.append(n)
    top = max(hull, key=lambda n: (Q[n], -n))  # past the largest saving, more information is lost for nothing
    return [n for n in hull if n <= top]


def fisher_ema_update(
    prev: Sequence[float] | np.ndarray,
    new: Sequence[float] | np.ndarray,
    beta: float,
    mask: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """Exponential moving average of the per-block Fisher signal, returned as a new array.

    ``F_i <- F_i + beta * (f_i - F_i)`` for every block ``i`` with ``mask[i]`` True (block trained this
    step; all blocks when ``mask`` is None); other entries are copied unchanged. Entries whose new
    signal ``f_i`` is NaN/inf are also left unchanged so one bad step cannot poison the EMA.
    No bias correction (only ratios of F matter and all blocks share the same schedule).
    """
    F = np.array(prev, dtype=np.float64, copy=True).reshape(-1)
    f = np.asarray(new, dtype=np.float64).reshape(-1)
    if f.shape != F.shape:
        raise ValueError(f"shape mismatch: prev {F.shape}, new {f.shape}")
    upd = np.isfinite(f)
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        if m.shape != F.shape:
            raise ValueError(f"shape mismatch: prev {F.shape}, mask {m.shape}")
        upd &= m
    F[upd] += beta * (f[upd] - F[upd])
    return F


def grad_sq_sum(grads: Iterable[torch.Tensor | None], clamp: float | None = None) -> tuple[float, int]:
    """Fisher signal of one block: ``f = sum_theta clip(g_theta, -clamp, clamp)^2`` (no clip if None).

    ``None`` gradients are skipped. A tensor containing any NaN/inf is skipped as a whole and counted
    (the official code skips silently; callers should log the count). Accumulates in float64 and syncs
    with the device once. Returns ``(value, n_nonfinite_tensors)``.

    Without ``clamp`` the per-tensor sums come from one fused norm kernel per device and dtype
    (``f = sum_t ||g_t||_2^2``; a norm is non-finite when its tensor holds a NaN/inf), which is 5x faster
    on a ResNet block than five small ops per tensor; equal to the elementwise sum up to float64 rounding.
    """
    # Empty tensors add nothing (and trip _foreach_norm on CUDA before torch 2.6).
    tensors = [g.detach() for g in grads if g is not None and g.numel() > 0]
    if not tensors:
        return 0.0, 0
    dev = tensors[0].device
    if clamp is None:
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for g in tensors:
            groups.setdefault((g.device, g.dtype), []).append(g)
        norms = torch.cat(
            [torch.stack(torch._foreach_norm(group, 2, dtype=torch.float64)).to(dev) for group in groups.values()]
        )
        finite = torch.isfinite(norms)
        sq = torch.where(finite, norms, torch.zeros_like(norms)).square()
    else:
        sq = torch.stack([g.to(torch.float64).clamp(-clamp, clamp).square().sum().to(dev) for g in tensors])
        finite = torch.stack([torch.isfinite(g).all().to(dev) for g in tensors])
        sq = torch.where(finite, sq, torch.zeros_like(sq))
    total, n_bad = torch.stack([sq.sum(), (~finite).sum().to(torch.float64)]).tolist()
    return float(total), int(n_bad)


def batch_informativeness(
    logits: torch.Tensor,
    labels: torch.Tensor,
    head_weight: torch.Tensor,
    running_mean: float,
    ema: float = 0.001,
    ignore_index: int = -100,
    chunk_rows: int = 4096,
    updates: int | None = None,
) -> tuple[float, float]:
    """Batch informativeness ``s_b`` and the updated running mean ``m`` (reference section 4).

    Over the supervised rows (``label != ignore_index``) with ``p = softmax(z)`` and one-hot ``Y``::

        G   = (p - Y) @ W          # (rows, D): grad of the SUM cross-entropy w.r.t. the penultimate features
        g   = sum_{r,d} G_{r,d}^2
        s_b = g / (m + 1e-10)      # computed BEFORE m is updated
        m  <- m + ema * (g - m)

    ``W`` is the head weight ``(C, D)`` (``nn.Linear.weight``; the bias does not enter ``G``).
    ``logits`` may be ``(B, C)`` or ``(B, T, V)`` (language models: rows = supervised tokens). For causal
    LMs the caller passes already-aligned tensors (``logits[:, :-1]`` with ``labels[:, 1:]``).
    Rows are processed ``chunk_rows`` at a time in float32 to bound the ``rows x V`` probability buffer.

    With ``updates = k`` (the number of earlier updates of ``m``) the mean is bias-corrected as in Adam,
    ``s_b = g / (m / (1 - (1 - ema)^k) + 1e-10)``, and ``s_b = 1`` when ``k = 0``; without it ``m`` starts at 0 and
    ``s_b`` is inflated by ``1 / (1 - (1 - ema)^k)``, the reference code's accidental warm-up.

    Degenerate cases: no supervised row -> ``(0.0, m)`` (nothing to learn, m untouched); non-finite
    ``g`` -> ``(nan, m)`` (m untouched; :func:`select_frozen_prefix` then freezes nothing).
    """
    z = logits.detach()
    C = z.shape[-1]
    if head_weight.dim() != 2 or head_weight.shape[0] != C:
        raise ValueError(f"head_weight must be (C={C}, D), got {tuple(head_weight.shape)}")
    z = z.reshape(-1, C)
    y = labels.detach().reshape(-1).to(z.device)
    if y.numel() != z.shape[0]:
        raise ValueError(f"{y.numel()} labels for {z.shape[0]} logit rows")
    keep = y != ignore_index
    z, y = z[keep], y[keep].long()
    m = float(running_mean)
    if y.numel() == 0:
        return 0.0, m
    W = head_weight.detach().to(device=z.device, dtype=torch.float32)
    g = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, y.numel(), chunk_rows):
        zc, yc = z[start : start + chunk_rows], y[start : start + chunk_rows]
        p = torch.softmax(zc.float(), dim=-1)
        p[torch.arange(yc.numel(), device=p.device), yc] -= 1.0
        G = p @ W
        g += G.double().square().sum()
    g_val = float(g.item())
    if not np.isfinite(g_val):
        return float("nan"), m
    if updates is None:
        s_b = g_val / (m + 1e-10)
    elif updates == 0:
        s_b = 1.0
    else:
        s_b = g_val / (m / (1.0 - (1.0 - ema) ** updates) + 1e-10)
    return s_b, m + ema * (g_val - m)


def backward_saved_per_block(bwd_by_prefix: Sequence[float], rtol: float = 1e-6) -> list[float]:
    """Backward FLOPs saved per block from prefix measurements: ``BF_i = BWD(i) - BWD(i+1)``.

    ``bwd_by_prefix[n] = BWD(n)`` is the total backward cost with the first ``n`` blocks frozen,
    ``n = 0..L`` (so ``L + 1`` entries give ``L`` values). Differences that are negative by at most
    ``rtol * max|BWD|`` (measurement round-off) are clamped to 0; larger negative differences mean
    freezing more blocks costs more, a measurement bug, and raise ``ValueError``.
    """
    b = np.asarray(bwd_by_prefix, dtype=np.float64).reshape(-1)
    if b.size < 1:
        raise ValueError("need BWD(n) for n = 0..L (at least one value)")
    if not np.isfinite(b).all():
        raise ValueError("non-finite backward FLOPs")
    d = b[:-1] - b[1:]
    tol = rtol * float(np.abs(b).max(initial=0.0))
    if (d < -tol).any():
        raise ValueError(f"backward FLOPs increase when freezing more blocks: BWD = {b.tolist()}")
    return np.maximum(d, 0.0).tolist()
