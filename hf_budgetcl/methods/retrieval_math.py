"""Pure maths of similarity-aware retrieval (SAR): use counts, class similarity, sampling probabilities.

Notation (aL-SAR algorithm reference, section 8): memory slots ``i`` with labels ``y_i`` and discounted use
counts ``u_i``; per-class discounted use counts ``U_c``; class gradient EMA ``gbar_c``, self-similarity
``s_c`` and maturity ``a_c``; class-similarity matrix ``S``. All functions are pure: inputs are never
modified, new arrays are returned. Randomness only through an explicit ``np.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "count_decay_factor",
    "decay_counts",
    "add_uses",
    "similarity_ema_update",
    "class_similarity",
    "effective_use_frequency",
    "damp_immature_classes",
    "retrieval_probabilities",
    "draw_without_replacement",
    "class_balanced_draw",
]

ArrayLike = Sequence[float] | np.ndarray


def count_decay_factor(batch_size: int, memory_len: int, k: float) -> float:
    """Per-retrieval multiplicative decay of the use counts (section 8.2).

    ``factor = 1 - B / (k * |M|)`` when ``|M| > B``, else ``1.0`` (no decay while memory is tiny).
    A count thus halves after about ``0.69 * k * |M| / B`` retrievals. The factor is clipped at 0:
    with ``k < 1`` (the LLaVA preset uses 0.4) and ``B < |M| < B / k`` the raw value is negative, which
    the official code applies as is (counts flip sign); a negative count has no meaning.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if memory_len <= batch_size:
        return 1.0
    return max(0.0, 1.0 - batch_size / (k * memory_len))


def decay_counts(counts: ArrayLike, factor: float) -> np.ndarray:
    """``counts * factor`` as a new float64 array (apply to ``u`` and to ``U`` once per retrieval)."""
    return np.asarray(counts, dtype=np.float64) * float(factor)


def add_uses(
    slot_counts: ArrayLike,
    class_counts: ArrayLike,
    slots: Sequence[int] | np.ndarray,
    slot_labels: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Record one retrieval: ``u_i += 1`` and ``U_{y_i} += 1`` for every retrieved slot ``i``.

    ``slots`` are the retrieved slot indices (a slot drawn twice counts twice); ``slot_labels`` is the
    label of every memory slot (length ``|M|``), so the class of slot ``i`` is ``slot_labels[i]``.
    Returns ``(new_slot_counts, new_class_counts)``.
    """
    u = np.array(slot_counts, dtype=np.float64, copy=True)
    U = np.array(class_counts, dtype=np.float64, copy=True)
    idx = np.asarray(slots, dtype=np.int64).reshape(-1)
    labels = np.asarray(slot_labels, dtype=np.int64).reshape(-1)
    np.add.at(u, idx, 1.0)
    np.add.at(U, labels[idx], 1.0)
    return u, U


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """``a.b / (|a| |b|)``, 0 when either vector is zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def similarity_ema_update(
    class_mean: np.ndarray,
    self_sim: ArrayLike,
    maturity: ArrayLike,
    grads: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample EMA update of the class gradient statistics (section 8.3), samples in order.

    For sample ``n`` of class ``y`` with gradient feature ``g_n``::

        gbar_y <- gbar_y + alpha * (g_n - gbar_y)
        s_y    <- s_y + alpha * (cos(g_n, gbar_y) - s_y)     # uses the just-updated gbar_y
        a_y    <- a_y + alpha * (1 - a_y)                    # a_y = 1 - (1 - alpha)^{n_y}

    ``cos`` with a zero vector is 0. ``grads`` is ``(N, D)``. Rows containing NaN/inf are skipped entirely. Callers clamp/unscale features beforehand.
    Returns new ``(class_mean (C, D), self_sim (C,), maturity (C,))``.
    """
    gbar = np.array(class_mean, dtype=np.float64, copy=True)
    s = np.array(self_sim, dtype=np.float64, copy=True).reshape(-1)
    a = np.array(maturity, dtype=np.float64, copy=True).reshape(-1)
    G = np.asarray(grads, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if G.ndim != 2 or G.shape != (y.size, gbar.shape[1]):
        raise ValueError(f"grads must be (N, D) = ({y.size}, {gbar.shape[1]}), got {G.shape}")
    for g_n, c in zip(G, y):
        if not np.isfinite(g_n).all():
            continue
        gbar[c] = gbar[c] + alpha * (g_n - gbar[c])
        s[c] += alpha * (_cos(g_n, gbar[c]) - s[c])
        a[c] += alpha * (1.0 - a[c])
    return gbar, s, a


def class_similarity(class_mean: np.ndarray, self_sim: ArrayLike, maturity: ArrayLike) -> np.ndarray:
    """Class-similarity matrix ``S`` (section 8.3), always finite.

    ``S_cc' = cos(gbar_c, gbar_c') * sqrt(max(s_c, 0) * max(s_c', 0)) * a_c * a_c'``, hence
    ``S_cc = max(s_c, 0) * a_c^2`` for a nonzero ``gbar_c``. Cosines with a zero vector are 0. The clamp
    at 0 before the square root fixes the official code's NaN when a self-similarity EMA turns negative.
    """
    gbar = np.asarray(class_mean, dtype=np.float64)
    s = np.nan_to_num(np.asarray(self_sim, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.nan_to_num(np.asarray(maturity, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    gbar = np.nan_to_num(gbar, nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(gbar, axis=1)
    nz = norms > 0
    unit = np.zeros_like(gbar)
    unit[nz] = gbar[nz] / norms[nz, None]
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(cos, nz.astype(np.float64))  # exactly 1 for nonzero vectors, 0 otherwise
    r = np.sqrt(np.maximum(s, 0.0))
    S = cos * np.outer(r, r) * np.outer(a, a)
    return np.nan_to_num(S, nan=0.0, posinf=0.0, neginf=0.0)


def effective_use_frequency(
    slot_counts: ArrayLike,
    slot_labels: Sequence[int] | np.ndarray,
    class_counts: ArrayLike,
    S: np.ndarray,
    paper_compat: bool = False,
) -> np.ndarray:
    """Effective use frequency ``c_hat_i`` of every memory slot (section 8.4).

    ``c_hat_i = (1 - S_{y_i y_i}) * u_i + sum_c S_{y_i, c} * U_c``.

    Derivation: the paper writes ``c_hat_i = u_i + sum_c S_{c, y_i} U_c``, but ``U_{y_i}`` already
    contains ``u_i`` with weight ``S_{y_i y_i}``. Subtracting that share makes the slot's own count enter
    exactly once: when ``U_c = sum_{j: y_j = c} u_j`` this equals
    ``u_i + sum_{j != i} S_{y_i, y_j} u_j`` (other slots weighted by class similarity; ``S`` symmetric).
    This is the official code's numerator.

    ``paper_compat=True`` additionally applies the official code's ``max(0, c_hat / |M|)``
    (``|M| = len(slot_counts)``), which changes the scale on which the temperature acts.
    """
    u = np.asarray(slot_counts, dtype=np.float64).reshape(-1)
    y = np.asarray(slot_labels, dtype=np.int64).reshape(-1)
    U = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    S = np.asarray(S, dtype=np.float64)
    if u.shape != y.shape:
        raise ValueError(f"{u.size} slot counts for {y.size} slot labels")
    c_hat = (1.0 - np.diag(S)[y]) * u + (S @ U)[y]
    if paper_compat and u.size:
        c_hat = np.maximum(c_hat / u.size, 0.0)
    return c_hat


def damp_immature_classes(
    c_hat: ArrayLike, slot_labels: Sequence[int] | np.ndarray, maturity: ArrayLike
) -> np.ndarray:
    """``max(c_hat_i, (1 - r_i) * m)`` with ``r_i = a_{y_i} / max_j a_{y_j}`` (the slot's class maturity relative to
    the most mature class in memory) and ``m = sum_j r_j c_hat_j / sum_j r_j``: an optional damping of the burst on a
    class newer than the others. Unchanged while no class has any maturity.

    A new class has maturity ``a = 0``, hence a zero row of ``S`` and no class term: its slots score ``u_i``, about 0,
    against ``S_cc U_c`` for every older class, and the softmax draws almost only them until ``a`` grows (about
    ``1 / alpha`` samples of the class). The floor makes such a slot score like the average slot of the mature classes,
    so the new class is drawn about as often as under uniform replay; the floor fades as it catches up. Relative, not
    absolute, maturity: classes that arrived together (a Gaussian stream) are not damped at all.
    """
    c = np.asarray(c_hat, dtype=np.float64).reshape(-1)
    y = np.asarray(slot_labels, dtype=np.int64).reshape(-1)
    a = np.clip(np.asarray(maturity, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if c.shape != y.shape:
        raise ValueError(f"{c.size} effective frequencies for {y.size} slot labels")
    if c.size == 0 or a[y].max() <= 0:
        return c.copy()
    r = a[y] / a[y].max()
    return np.maximum(c, (1.0 - r) * float(r @ c / r.sum()))


def retrieval_probabilities(c_hat: ArrayLike, temperature: float) -> np.ndarray:
    """``p_i = exp(-c_hat_i / T) / sum_j exp(-c_hat_j / T)``: rarely used slots are preferred.

    Stable: the exponent is shifted by its maximum. Non-finite ``c_hat`` entries are replaced by the
    largest finite value (NaN, +inf: as unattractive as the most used slot) or the smallest (-inf);
    with no finite entry at all the distribution is uniform. Output sums to 1 and is finite.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = np.asarray(c_hat, dtype=np.float64).reshape(-1)
    if c.size == 0:
        return c
    fin = np.isfinite(c)
    if not fin.all():
        if not fin.any():
            return np.full(c.size, 1.0 / c.size)
        hi, lo = c[fin].max(), c[fin].min()
        c = np.nan_to_num(c, nan=hi, posinf=hi, neginf=lo)
    z = -c / temperature
    z -= z.max()
    e = np.exp(z)
    return e / e.sum()


def draw_without_replacement(p: ArrayLike, n: int, generator: np.random.Generator) -> np.ndarray:
    """``min(n, len(p))`` distinct indices drawn successively with probabilities ``p`` (renormalised).

    Uses ``generator.choice(len(p), size, replace=False, p=p)``, so a seeded generator is deterministic.
    When fewer entries of ``p`` are positive than requested (softmax underflow with a small temperature),
    all positive entries are drawn according to ``p`` first and the rest uniformly among the zeros --
    the limit of the tiny probabilities -- instead of letting numpy raise.
    """
    w = np.asarray(p, dtype=np.float64).reshape(-1)
    size = min(int(n), w.size)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    pos = np.flatnonzero(w > 0)
    if pos.size == 0:
        return generator.choice(w.size, size=size, replace=False).astype(np.int64)
    if pos.size >= size:
        return generator.choice(w.size, size=size, replace=False, p=w / w.sum()).astype(np.int64)
    first = generator.choice(pos, size=pos.size, replace=False, p=w[pos] / w[pos].sum())
    rest = generator.choice(np.flatnonzero(w == 0), size=size - pos.size, replace=False)
    return np.concatenate([first, rest]).astype(np.int64)


def class_balanced_draw(slot_labels: Sequence[int] | np.ndarray, n: int, generator: np.random.Generator) -> np.ndarray:
    """Warm-up retrieval: ``min(n, |M|)`` draws, each a uniform class among those present, then a uniform
    slot of that class (with replacement, as in the official ``balanced_retrieval``)."""
    y = np.asarray(slot_labels).reshape(-1)
    size = min(int(n), y.size)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    classes, inverse = np.unique(y, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(classes.size)]
    picks = generator.integers(0, classes.size, size=size)
    return np.array([generator.choice(members[k]) for k in picks], dtype=np.int64)
