"""Stream builders: the order in which the rows of a dataset arrive in online continual learning.

Every builder takes the dataset's label column (and, for domain streams, its time/domain column), is pure numpy,
and is reproducible from ``seed`` through one ``np.random.RandomState(seed)`` consumed in a fixed order.
The result, a :class:`StreamOrder`, round-trips through JSON so that a stream can be shared and re-used exactly.

Kinds (``build_stream(kind, ...)``):

* ``disjoint``  -- class-incremental tasks with disjoint classes; reproduces benchmark FM-D5 exactly.
* ``gaussian``  -- the boundary-free stream of the aL-SAR paper (generator ``make_stream.ipynb`` of yonseivnl/sdp).
* ``si_blurry`` -- Si-Blurry-style tasks (KHU-AGI/Si-Blurry, ICCV'23): disjoint and blurry classes, uneven tasks.
* ``domain``    -- CLEAR-style domain-incremental stream: domain by domain, shuffled within a domain.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import write_json_atomic
from ..utils.errors import ConfigError

STREAM_KINDS = ("disjoint", "gaussian", "si_blurry", "domain")
_EPS = 1e-9  # guards floor(n * ratio) against float error (e.g. 100 * 0.29 = 28.999...)


@dataclass(frozen=True, eq=False)
class StreamOrder:
    """Arrival order of dataset rows: ``indices[j]`` is the row that arrives j-th (arrays are read-only)."""

    indices: np.ndarray  # int64, dataset row index of each arrival
    labels: np.ndarray  # int64, label of each arrival
    times: np.ndarray  # float64, task id (disjoint/si_blurry), Gaussian time, or domain rank
    kind: str
    params: dict = field(default_factory=dict)
    task_boundaries: tuple[int, ...] = ()  # arrival counts at which a task/domain ends; () for gaussian

    def __post_init__(self) -> None:
        arrays = {}
        for name, dtype in (("indices", np.int64), ("labels", np.int64), ("times", np.float64)):
            a = np.array(getattr(self, name), dtype=dtype).reshape(-1)
            a.setflags(write=False)  # frozen means frozen: nobody reorders a shared stream in place
            arrays[name] = a
        if not len(arrays["indices"]) == len(arrays["labels"]) == len(arrays["times"]):
            raise ValueError("StreamOrder: indices, labels and times must have the same length")
        bounds = tuple(int(b) for b in self.task_boundaries)
        if any(b < 0 or b > len(arrays["indices"]) for b in bounds) or list(bounds) != sorted(bounds):
            raise ValueError(
                f"StreamOrder: task_boundaries {bounds} must be non-decreasing within [0, {len(arrays['indices'])}]"
            )
        for name, a in arrays.items():
            object.__setattr__(self, name, a)
        object.__setattr__(self, "task_boundaries", bounds)

    def __len__(self) -> int:
        return len(self.indices)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamOrder):
            return NotImplemented
        return (
            np.array_equal(self.indices, other.indices)
            and np.array_equal(self.labels, other.labels)
            and np.array_equal(self.times, other.times)
            and (self.kind, self.params, self.task_boundaries) == (other.kind, other.params, other.task_boundaries)
        )

    __hash__ = None  # type: ignore[assignment]  # arrays inside: not hashable

    def classes_seen(self, n_arrived: int) -> np.ndarray:
        """Sorted unique labels among the first ``n_arrived`` arrivals (0 <= n_arrived <= len(self))."""
        if not 0 <= n_arrived <= len(self):
            raise ConfigError(f"n_arrived must be in [0, {len(self)}], got {n_arrived}")
        return np.unique(self.labels[:n_arrived])

    def first_arrival(self) -> dict[int, int]:
        """Map each label to the stream position (0-based) of its first arrival."""
        uniq, first = np.unique(self.labels, return_index=True)
        return {int(c): int(p) for c, p in zip(uniq, first)}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``{"kind", "params", "task_boundaries", "stream": [{"index", "label", "time"}, ...]}`` atomically."""
        path = Path(path)
        data = {
            "kind": self.kind,
            "params": self.params,
            "task_boundaries": list(self.task_boundaries),
            "stream": [
                {"index": i, "label": y, "time": t}
                for i, y, t in zip(self.indices.tolist(), self.labels.tolist(), self.times.tolist())
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)  # readers never see a half-written stream

    @classmethod
    def from_json(
        cls, path: str | os.PathLike, num_rows: int | None = None, labels: np.ndarray | None = None
    ) -> StreamOrder:
        """Read a stream written by :meth:`to_json` and check it against the dataset.

        ``num_rows`` bounds the indices to [0, num_rows); ``labels`` (the dataset's label column) also checks that
        each entry's label equals ``labels[index]``. Any problem raises a one-line ValueError naming the file
        and the offending entry. A file without ``kind`` loads as kind ``"json"``.
        """
        where = f"stream file {os.fspath(path)}"
        if not os.path.isfile(path):
            raise ConfigError(f"{where} does not exist")
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where} cannot be read: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("stream"), list):
            raise ConfigError(f"{where} must hold a JSON object with a 'stream' list")
        stream = data["stream"]
        if not stream:
            raise ConfigError(f"{where}: empty stream")
        if labels is not None:
            labels = np.asarray(labels)
            if num_rows is None:
                num_rows = len(labels)
            elif num_rows != len(labels):
                raise ConfigError(f"{where}: num_rows={num_rows} but the label column has {len(labels)} rows")
        n = len(stream)
        idx, lab, tim = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.float64)
        for j, e in enumerate(stream):
            shown = repr(e)[:200]  # keep the message to one short line
            if not isinstance(e, dict) or not all(k in e for k in ("index", "label", "time")):
                raise ConfigError(f"{where}: entry {j} {shown} must be an object with 'index', 'label' and 'time'")
            i, y, t = e["index"], e["label"], e["time"]
            if not _is_int(i) or not _is_int(y) or y < 0:
                raise ConfigError(
                    f"{where}: entry {j} {shown} needs an integer index and a non-negative integer label"
                )
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise ConfigError(f"{where}: entry {j} {shown} has a non-numeric time")
            if i < 0 or (num_rows is not None and i >= num_rows):
                bound = f"[0, {num_rows})" if num_rows is not None else "[0, inf)"
                raise ConfigError(f"{where}: entry {j} {shown} has index {i} outside {bound}")
            if labels is not None and labels[i] != y:
                raise ConfigError(
                    f"{where}: entry {j} {shown} has label {y} but dataset row {i} has label {labels[i]}"
                )
            idx[j], lab[j], tim[j] = i, y, t
        bounds = data.get("task_boundaries", [])
        if (
            not isinstance(bounds, list)
            or not all(_is_int(b) and 0 <= b <= n for b in bounds)
            or bounds != sorted(bounds)
        ):
            raise ConfigError(f"{where}: task_boundaries must be a non-decreasing list of ints in [0, {n}]")
        kind, params = data.get("kind", "json"), data.get("params", {})
        if not isinstance(kind, str) or not isinstance(params, dict):
            raise ConfigError(f"{where}: 'kind' must be a string and 'params' an object")
        return cls(idx, lab, tim, kind, params, tuple(bounds))


# ----------------------------------------------------------------------------------------------------------
# validation helpers


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_labels(labels: Any) -> np.ndarray:
    """Return the labels as a 1-D int64 array; integral floats are accepted, anything else is a ValueError."""
    y = np.asarray(labels)
    if y.size == 0:
        raise ConfigError("empty stream: the dataset has no rows")
    if y.ndim != 1:
        raise ConfigError(f"labels must be a 1-D column, got shape {y.shape}")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise ConfigError(f"labels must be integers; row {bad[0]} has {y[bad[0]]!r}")
    elif y.dtype.kind not in "iu":
        raise ConfigError(f"labels must be integers, got dtype {y.dtype} (first value {y[0]!r})")
    y = y.astype(np.int64)
    neg = np.flatnonzero(y < 0)
    if len(neg):
        raise ConfigError(f"labels must be non-negative; row {neg[0]} has {y[neg[0]]}")
    return y


def _check_seed(seed: Any) -> int:
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def _check_ratio(name: str, r: float) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float, np.floating)) or not 0.0 <= r <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {r!r}")
    return float(r)


def _check_n_tasks(n_tasks: Any, n_classes: int) -> int:
    if not _is_int(n_tasks) or not 1 <= n_tasks <= n_classes:
        raise ConfigError(f"n_tasks must be an integer in [1, {n_classes}] (the number of classes), got {n_tasks!r}")
    return int(n_tasks)


def _rows_by_class(y: np.ndarray, classes: np.ndarray) -> list[np.ndarray]:
    """Rows of each class (aligned with ``classes``), in file order; one sort instead of a scan per class."""
    pos = np.searchsorted(classes, y)
    return np.split(np.argsort(pos, kind="stable"), np.cumsum(np.bincount(pos, minlength=len(classes)))[:-1])


def _task_stream(labels: np.ndarray, task_of_row: np.ndarray, n_tasks: int, rng: np.random.RandomState):
    """Rows of task 0, then task 1, ...: each task's rows in file order, then shuffled with ``rng``."""
    parts = []
    for t in range(n_tasks):
        idx = np.flatnonzero(task_of_row == t)
        parts.append(idx[rng.permutation(len(idx))])
    indices = np.concatenate(parts)
    times = np.repeat(np.arange(n_tasks, dtype=np.float64), [len(p) for p in parts])
    bounds = tuple(int(b) for b in np.cumsum([len(p) for p in parts]))
    return indices, labels[indices], times, bounds


# ----------------------------------------------------------------------------------------------------------
# builders


def disjoint_stream(labels: Any, n_tasks: int, seed: int, class_order: Any = None) -> StreamOrder:
    """Class-incremental stream with disjoint tasks (benchmark FM-D5 when labels are Fashion-MNIST's, n_tasks=5).

    Rule, with ``rng = np.random.RandomState(seed)`` and ``classes`` the sorted unique labels (n of them):

    1. ``order = classes[rng.permutation(n)]``, or ``class_order`` when given. The permutation is drawn even then,
       so the within-task shuffles depend on the seed only: passing the order a seed produces gives the same stream.
    2. With k = n // n_tasks and r = n % n_tasks, tasks take consecutive slices of ``order``: the first
       n_tasks - r tasks get k classes and the LAST r tasks get k + 1 (the remainder classes go to the last tasks).
    3. Task by task, in order and with the same rng: ``idx = np.flatnonzero(np.isin(labels, task_classes))``
       (file order), then ``idx = idx[rng.permutation(len(idx))]``.

    ``times`` is the task id; every row appears exactly once.
    """
    y = _check_labels(labels)
    classes = np.unique(y)
    n = len(classes)
    n_tasks = _check_n_tasks(n_tasks, n)
    rng = np.random.RandomState(_check_seed(seed))
    order = classes[rng.permutation(n)]
    if class_order is not None:
        given = np.asarray(class_order)
        if given.ndim != 1 or len(given) != n or not np.array_equal(np.sort(given), classes):
            raise ConfigError(
                f"class_order must be a permutation of the {n} classes {classes.tolist()}, got {given.tolist()}"
            )
        order = given.astype(np.int64)
    k, r = divmod(n, n_tasks)
    sizes = [k] * (n_tasks - r) + [k + 1] * r
    task_classes = np.split(order, np.cumsum(sizes)[:-1])
    task_of_class = np.empty(n, np.int64)
    for t, cs in enumerate(task_classes):
        task_of_class[np.searchsorted(classes, cs)] = t
    # same as np.isin per task (file order inside a task), in one pass
    indices, labs, times, bounds = _task_stream(y, task_of_class[np.searchsorted(classes, y)], n_tasks, rng)
    params = {"n_tasks": n_tasks, "seed": int(seed), "class_order": order.tolist()}
    return StreamOrder(indices, labs, times, "disjoint", params, bounds)


def gaussian_stream(labels: Any, sigma: float, seed: int, repeat: int = 1, init_cls: float = 1.0) -> StreamOrder:
    """Boundary-free Gaussian stream of the aL-SAR paper (rule of ``make_stream.ipynb``, yonseivnl/sdp).

    ``sigma`` is the std of arrival times in units of one period; with repeat=1 a period is the whole stream,
    so sigma=0.1 is the paper's ``sigma10`` (file names use 100 * sigma) and sigma=10 (``sigma1000``) is ~i.i.d.
    With ``rng = np.random.RandomState(seed)``, n classes, R = repeat, iota = init_cls:

    1. ``class_order = classes[rng.permutation(n)]``; the class at position i is centred at time i / n.
    2. n_seen[r] = round(n * (iota + (1 - iota) * (r + 1) / R)), r = 0..R-1. Under a second permutation
       ``p = rng.permutation(n)``, the classes at positions p[n_seen[r-1]:n_seen[r]] are introduced in period r
       (r >= 1), all others in period 0. As in the generator, period 0 thus holds round(n * (iota + (1-iota)/R))
       classes (all of them when R = 1 or iota = 1).
    3. For each class (position i, rows in file order): time = N(i / n, sigma) + q with q uniform in {0..R-1};
       a row is kept only if q >= the class's introduction period.
    4. Shuffle the kept rows (``rng.permutation``), then stable-sort by time.

    Every row appears exactly once when R = 1 or iota = 1; otherwise rows drawn into a period before their
    class's introduction are dropped (as in the paper). No row ever appears twice. ``times`` is the drawn time.
    Same rule as the notebook, not bit-identical to it (it used Python's ``random`` and directory order).
    """
    y = _check_labels(labels)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) or not sigma > 0:
        raise ConfigError(f"sigma must be > 0 (use disjoint_stream for the paper's sigma0), got {sigma!r}")
    if not _is_int(repeat) or repeat < 1:
        raise ConfigError(f"repeat must be an integer >= 1, got {repeat!r}")
    iota = _check_ratio("init_cls", init_cls)
    classes = np.unique(y)
    n = len(classes)
    rng = np.random.RandomState(_check_seed(seed))
    class_order = classes[rng.permutation(n)]
    n_seen = np.round(n * (iota + (1 - iota) * (np.arange(repeat) + 1) / repeat)).astype(np.int64)
    p = rng.permutation(n)
    intro = np.zeros(n, np.int64)  # introduction period, by position in class_order
    for r in range(1, repeat):
        intro[p[n_seen[r - 1] : n_seen[r]]] = r
    kept_idx, kept_t = [], []
    by_class = _rows_by_class(y, classes)
    for i, c in enumerate(class_order):
        rows = by_class[np.searchsorted(classes, c)]
        t = rng.normal(i / n, sigma, size=len(rows))  # draw order as in the generator: times, then periods
        q = rng.randint(0, repeat, size=len(rows))
        keep = q >= intro[i]
        kept_idx.append(rows[keep])
        kept_t.append(t[keep] + q[keep])
    idx, t = np.concatenate(kept_idx), np.concatenate(kept_t)
    perm = rng.permutation(len(idx))
    idx, t = idx[perm], t[perm]
    srt = np.argsort(t, kind="stable")
    idx, t = idx[srt], t[srt]
    params = {
        "sigma": float(sigma),
        "seed": int(seed),
        "repeat": int(repeat),
        "init_cls": iota,
        "class_order": class_order.tolist(),  # class_order[i] is centred at time i / n
        "class_addition": intro.tolist(),  # introduction period of class_order[i]
    }
    return StreamOrder(idx, y[idx], t, "gaussian", params, ())


def si_blurry_stream(
    labels: Any, n_tasks: int, seed: int, disjoint_class_ratio: float = 0.5, blurry_ratio: float = 0.1
) -> StreamOrder:
    """Si-Blurry-style stream (after KHU-AGI/Si-Blurry, ICCV'23): uneven tasks mixing disjoint and blurry classes.

    Rule, with ``rng = np.random.RandomState(seed)`` and n classes:

    1. ``order = classes[rng.permutation(n)]`` is cut at n_tasks - 1 distinct random points
       (``rng.choice(1..n-1, n_tasks - 1, replace=False)``) into n_tasks non-empty groups of varying size:
       group t is the *home* classes of task t (stochastic task sizes, as in Si-Blurry).
    2. floor(n * disjoint_class_ratio) classes, the first of ``rng.permutation(order)``, are *disjoint*: all their
       rows are in their home task. The others are *blurry*.
    3. For each blurry class (in ``order``), floor(blurry_ratio * its rows) of its rows, chosen with
       ``rng.permutation``, leave the home task and are dealt over the other tasks as evenly as possible in
       random order (``rng.permutation(m) % (n_tasks - 1)``): a blurry class thus appears in every task when it
       has enough rows. With n_tasks = 1 nothing moves.
    4. Task by task, the task's rows (file order) are shuffled with ``rng.permutation``.

    ``times`` is the task id; task lengths vary; every row appears exactly once. Unlike the Si-Blurry code
    no class is dropped to make counts divide evenly, and every task has at least one home class.
    """
    y = _check_labels(labels)
    classes = np.unique(y)
    n = len(classes)
    n_tasks = _check_n_tasks(n_tasks, n)
    dr = _check_ratio("disjoint_class_ratio", disjoint_class_ratio)
    br = _check_ratio("blurry_ratio", blurry_ratio)
    rng = np.random.RandomState(_check_seed(seed))
    order = classes[rng.permutation(n)]
    cuts = np.sort(rng.choice(np.arange(1, n), n_tasks - 1, replace=False)) if n_tasks > 1 else np.array([], np.int64)
    groups = np.split(order, cuts)
    home = np.empty(n, np.int64)  # home task by class position in `classes`
    for t, g in enumerate(groups):
        home[np.searchsorted(classes, g)] = t
    disjoint = np.sort(rng.permutation(order)[: int(np.floor(n * dr + _EPS))])
    pos = np.searchsorted(classes, y)
    task_of_row = home[pos]
    if n_tasks > 1:
        by_class = _rows_by_class(y, classes)
        for c in order:
            if c in disjoint:
                continue
            rows = by_class[np.searchsorted(classes, c)]
            moved = rows[rng.permutation(len(rows))[: int(np.floor(len(rows) * br + _EPS))]]
            h = home[np.searchsorted(classes, c)]
            others = np.delete(np.arange(n_tasks), h)
            task_of_row[moved] = others[rng.permutation(len(moved)) % len(others)]
    indices, labs, times, bounds = _task_stream(y, task_of_row, n_tasks, rng)
    params = {
        "n_tasks": n_tasks,
        "seed": int(seed),
        "disjoint_class_ratio": dr,
        "blurry_ratio": br,
        "task_classes": [g.tolist() for g in groups],  # home classes of each task
        "disjoint_classes": disjoint.tolist(),
    }
    return StreamOrder(indices, labs, times, "si_blurry", params, bounds)


def domain_stream(labels: Any, domains: Any, seed: int, domain_order: Any = None) -> StreamOrder:
    """Domain-incremental stream (CLEAR style): every row of domain d arrives before any row of the next domain.

    Domains are the sorted unique values of ``domains`` (e.g. CLEAR's year buckets) unless ``domain_order``
    (a permutation of them) is given. With ``rng = np.random.RandomState(seed)``, domain by domain in order,
    the domain's rows (file order) are shuffled with ``rng.permutation``. ``times`` is the domain's rank
    (0, 1, ...), and ``task_boundaries`` the arrival count at the end of each domain. Every row appears once.
    """
    y = _check_labels(labels)
    d = np.asarray(domains)
    if d.ndim != 1 or len(d) != len(y):
        raise ConfigError(f"domains must be a 1-D column with one value per row ({len(y)}), got shape {d.shape}")
    uniq = np.unique(d)
    order = uniq
    if domain_order is not None:
        order = np.asarray(domain_order)
        if order.ndim != 1 or len(order) != len(uniq) or not np.array_equal(np.sort(order), uniq):
            raise ConfigError(
                f"domain_order must be a permutation of the domains {uniq.tolist()}, got {order.tolist()}"
            )
    rank = np.empty(len(uniq), np.int64)
    rank[np.searchsorted(uniq, order)] = np.arange(len(order))
    rng = np.random.RandomState(_check_seed(seed))
    indices, labs, times, bounds = _task_stream(y, rank[np.searchsorted(uniq, d)], len(order), rng)
    params = {"seed": int(seed), "domain_order": order.tolist()}
    return StreamOrder(indices, labs, times, "domain", params, bounds)


def build_stream(kind: str, labels: Any, seed: int, domains: Any = None, **params: Any) -> StreamOrder:
    """Dispatch to the builder of ``kind`` (one of STREAM_KINDS) with its keyword ``params``."""
    if kind == "disjoint":
        return disjoint_stream(labels, seed=seed, **params)
    if kind == "gaussian":
        return gaussian_stream(labels, seed=seed, **params)
    if kind == "si_blurry":
        return si_blurry_stream(labels, seed=seed, **params)
    if kind == "domain":
        if domains is None:
            raise ConfigError(
                "stream type 'domain' needs the dataset's time/domain column: pass domains=<that column's values>"
            )
        return domain_stream(labels, domains, seed=seed, **params)
    raise ConfigError(f"unknown stream type {kind!r}; choose one of: {', '.join(STREAM_KINDS)}")
