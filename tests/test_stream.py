"""Tests for hf_budgetcl.stream.orders: stream builders, JSON round trip and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_budgetcl.stream.orders import (
    StreamOrder,
    build_stream,
    disjoint_stream,
    domain_stream,
    gaussian_stream,
    si_blurry_stream,
)


def _labels(n_classes: int = 10, per_class: int = 30, seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(n_classes), per_class)
    np.random.RandomState(seed).shuffle(y)  # file order is not sorted by class
    return y


def _is_permutation(s: StreamOrder, n_rows: int) -> bool:
    return len(s) == n_rows and np.array_equal(np.sort(s.indices), np.arange(n_rows))


def _n_tasks_of_class(s: StreamOrder) -> dict[int, int]:
    return {int(c): len(np.unique(s.times[s.labels == c])) for c in np.unique(s.labels)}


# ---------------------------------------------------------------- disjoint / FM-D5


def test_fmd5_matches_protocol_text():
    y = _labels()
    s = disjoint_stream(y, 5, seed=1)
    # independent transcription of the protocol: order = rng.permutation(10); task t = order[2t], order[2t+1];
    # within a task, samples (file order) shuffled in place with the same rng, task by task
    rng = np.random.RandomState(1)
    order = rng.permutation(10)
    expected = []
    for t in range(5):
        task = [i for i in range(len(y)) if y[i] in (order[2 * t], order[2 * t + 1])]
        task = np.array(task)
        rng.shuffle(task)
        expected.extend(task.tolist())
    assert s.indices.tolist() == expected
    assert np.array_equal(s.labels, y[s.indices])
    assert s.params["class_order"] == order.tolist()
    assert s.kind == "disjoint" and s.indices.dtype == np.int64 and s.times.dtype == np.float64


def test_fmd5_class_orders_are_stable():
    # legacy RandomState streams are frozen by numpy; these orders define FM-D5's tasks for seeds 1..3
    golden = {1: [2, 9, 6, 4, 0, 3, 1, 7, 8, 5], 2: [4, 1, 5, 0, 7, 2, 3, 6, 9, 8], 3: [5, 4, 1, 2, 9, 6, 7, 0, 3, 8]}
    for seed, order in golden.items():
        assert disjoint_stream(_labels(), 5, seed).params["class_order"] == order


def test_disjoint_tasks_boundaries_and_reproducibility():
    y = _labels()
    s = disjoint_stream(y, 5, seed=1)
    assert _is_permutation(s, len(y))
    assert s.task_boundaries == (60, 120, 180, 240, 300)
    starts = (0,) + s.task_boundaries[:-1]
    task_sets = [set(s.labels[a:b].tolist()) for a, b in zip(starts, s.task_boundaries)]
    assert all(len(ts) == 2 for ts in task_sets)
    assert len(set().union(*task_sets)) == 10  # no class shared by two tasks
    assert np.array_equal(s.times, np.repeat(np.arange(5.0), 60))
    assert disjoint_stream(y, 5, seed=1) == s
    assert not np.array_equal(disjoint_stream(y, 5, seed=2).indices, s.indices)


def test_disjoint_remainder_goes_to_last_tasks_and_class_order():
    y = _labels(n_classes=7, per_class=4)
    s = disjoint_stream(y, 3, seed=0)
    order = s.params["class_order"]
    assert s.task_boundaries == (8, 16, 28)  # 2, 2, 3 classes
    assert set(s.labels[16:].tolist()) == set(order[4:])
    # a given class order is used as is; passing the one a seed draws reproduces that seed's stream
    assert disjoint_stream(y, 3, seed=0, class_order=order) == s
    mine = disjoint_stream(y, 3, seed=0, class_order=[6, 5, 4, 3, 2, 1, 0])
    assert mine.labels[:8].tolist().count(6) == 4 and set(mine.labels[:8].tolist()) == {6, 5}
    with pytest.raises(ValueError, match="class_order"):
        disjoint_stream(y, 3, seed=0, class_order=[0, 1, 2])


# ---------------------------------------------------------------- gaussian


def _mean_positions(s: StreamOrder) -> dict[int, float]:
    pos = np.arange(len(s))
    return {int(c): float(pos[s.labels == c].mean()) / len(s) for c in np.unique(s.labels)}


def test_gaussian_permutation_reproducible_and_ordered_by_class_time():
    y = _labels(per_class=100)
    s = gaussian_stream(y, sigma=0.1, seed=3)
    assert _is_permutation(s, len(y)) and s.task_boundaries == ()
    assert np.all(np.diff(s.times) >= 0)
    means = _mean_positions(s)
    order = s.params["class_order"]  # order[i] is centred at i / n
    assert [means[c] for c in order] == sorted(means.values())
    assert gaussian_stream(y, 0.1, seed=3) == s
    assert not np.array_equal(gaussian_stream(y, 0.1, seed=4).indices, s.indices)


def test_gaussian_small_sigma_disjoint_like_huge_sigma_iid():
    y = _labels(per_class=100)
    tight = gaussian_stream(y, sigma=1e-3, seed=1)
    changes = np.count_nonzero(np.diff(tight.labels))
    assert changes == 9  # each class is one contiguous block, in class_order
    assert list(dict.fromkeys(tight.labels.tolist())) == tight.params["class_order"]
    iid = gaussian_stream(y, sigma=10.0, seed=1)
    assert all(abs(m - 0.5) < 0.12 for m in _mean_positions(iid).values())
    assert np.count_nonzero(np.diff(iid.labels)) > 700  # ~ 900 expected for i.i.d. labels


def test_gaussian_repeat_drops_only_before_introduction():
    y = _labels(per_class=100)
    full = gaussian_stream(y, sigma=0.05, seed=1, repeat=3, init_cls=1.0)
    assert _is_permutation(full, len(y))  # all classes present from period 0: nothing dropped
    s = gaussian_stream(y, sigma=0.05, seed=1, repeat=3, init_cls=0.4)
    assert len(np.unique(s.indices)) == len(s) < len(y)  # a subset, no repeats
    assert np.array_equal(s.labels, y[s.indices])
    intro = dict(zip(s.params["class_order"], s.params["class_addition"]))
    # n_seen = round(10 * (0.4 + 0.6 * [1, 2, 3] / 3)) = [6, 8, 10]: 4 late classes, 2 per later period
    assert sorted(intro.values()) == [0] * 6 + [1] * 2 + [2] * 2
    for c, r in intro.items():
        kept = np.count_nonzero(s.labels == c)
        assert kept == 100 if r == 0 else kept < 100
        assert s.times[s.labels == c].min() > r - 0.3  # no sample from a period before r (sigma 0.05)
    assert s.times.max() > 2.0  # three periods span [0, 3)


# ---------------------------------------------------------------- si-blurry


def test_si_blurry_disjoint_once_blurry_everywhere():
    y = _labels(per_class=40)
    s = si_blurry_stream(y, 4, seed=5, disjoint_class_ratio=0.5, blurry_ratio=0.25)
    assert _is_permutation(s, len(y))
    assert s.task_boundaries[-1] == len(y) and len(set(s.task_boundaries)) == 4  # no empty task
    n_tasks_of = _n_tasks_of_class(s)
    disjoint = s.params["disjoint_classes"]
    assert len(disjoint) == 5
    home = {c: t for t, cs in enumerate(s.params["task_classes"]) for c in cs}
    for c, k in n_tasks_of.items():
        mask = s.labels == c
        if c in disjoint:
            assert k == 1 and np.all(s.times[mask] == home[c])
        else:
            assert k == 4  # 10 moved rows dealt over the 3 other tasks
            assert np.count_nonzero(s.times[mask] == home[c]) == 30  # 1 - 0.25 of 40 stay home
    assert si_blurry_stream(y, 4, seed=5, blurry_ratio=0.25) == s
    assert not np.array_equal(si_blurry_stream(y, 4, seed=6, blurry_ratio=0.25).indices, s.indices)
    # all classes disjoint, one task: degenerate but valid
    assert _n_tasks_of_class(si_blurry_stream(y, 4, seed=5, disjoint_class_ratio=1.0)) == {c: 1 for c in range(10)}
    assert _is_permutation(si_blurry_stream(y, 1, seed=5), len(y))


# ---------------------------------------------------------------- domain


def test_domain_stream_order_and_shuffle():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 5, size=200)
    years = rng.choice([2004, 2005, 2006, 2007], size=200)
    s = domain_stream(y, years, seed=1)
    assert _is_permutation(s, 200)
    d = years[s.indices]
    assert np.all(np.diff(d) >= 0)
    assert np.array_equal(s.times, np.searchsorted([2004, 2005, 2006, 2007], d).astype(float))
    assert s.task_boundaries == tuple(np.cumsum([np.sum(years == v) for v in (2004, 2005, 2006, 2007)]))
    first = s.indices[: s.task_boundaries[0]]
    assert not np.all(np.diff(first) > 0)  # shuffled, not file order
    assert domain_stream(y, years, seed=1) == s
    assert not np.array_equal(domain_stream(y, years, seed=2).indices, s.indices)
    rev = domain_stream(y, years, seed=1, domain_order=[2007, 2006, 2005, 2004])
    assert np.all(np.diff(years[rev.indices]) <= 0)
    with pytest.raises(ValueError, match="domain_order"):
        domain_stream(y, years, seed=1, domain_order=[2007])


# ---------------------------------------------------------------- dispatch and validation


def test_build_stream_dispatch_and_errors():
    y = _labels()
    assert build_stream("disjoint", y, 1, n_tasks=5) == disjoint_stream(y, 5, 1)
    assert build_stream("gaussian", y, 1, sigma=0.1) == gaussian_stream(y, 0.1, 1)
    assert build_stream("si_blurry", y, 1, n_tasks=2) == si_blurry_stream(y, 2, 1)
    assert build_stream("domain", y, 1, domains=y % 2).kind == "domain"
    with pytest.raises(
        ValueError, match=r"unknown stream type 'x'; choose one of: disjoint, gaussian, si_blurry, domain"
    ):
        build_stream("x", y, 1)
    with pytest.raises(ValueError, match="time/domain column"):
        build_stream("domain", y, 1)


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: disjoint_stream([], 1, 0), "empty stream: the dataset has no rows"),
        (lambda: disjoint_stream([0.0, 1.5], 1, 0), "labels must be integers"),
        (lambda: disjoint_stream(["a", "b"], 1, 0), "labels must be integers"),
        (lambda: disjoint_stream([0, -1], 1, 0), "non-negative"),
        (lambda: disjoint_stream([0, 1], 0, 0), "n_tasks"),
        (lambda: disjoint_stream([0, 1], 3, 0), "n_tasks"),
        (lambda: si_blurry_stream([0, 1], 3, 0), "n_tasks"),
        (lambda: gaussian_stream([0, 1], 0.0, 0), "sigma"),
        (lambda: gaussian_stream([0, 1], 0.1, 0, repeat=0), "repeat"),
        (lambda: gaussian_stream([0, 1], 0.1, 0, init_cls=1.5), "init_cls"),
        (lambda: si_blurry_stream([0, 1], 1, 0, disjoint_class_ratio=-0.1), "disjoint_class_ratio"),
        (lambda: si_blurry_stream([0, 1], 1, 0, blurry_ratio=2), "blurry_ratio"),
    ],
)
def test_validation_errors(call, msg):
    with pytest.raises(ValueError, match=msg) as e:
        call()
    assert "\n" not in str(e.value)


def test_integral_float_labels_accepted():
    assert disjoint_stream(np.array([1.0, 0.0, 1.0]), 2, 0) == disjoint_stream([1, 0, 1], 2, 0)


# ---------------------------------------------------------------- JSON


def test_json_round_trip(tmp_path):
    y = _labels()
    for s in (
        disjoint_stream(y, 5, 1),
        gaussian_stream(y, 0.1, 2, repeat=2, init_cls=0.5),
        si_blurry_stream(y, 3, 3),
        domain_stream(y, y % 3, 4),
    ):
        p = tmp_path / f"{s.kind}.json"
        s.to_json(p)
        back = StreamOrder.from_json(p, num_rows=len(y), labels=y)
        assert back == s
        assert set(json.loads(p.read_text())) == {"kind", "params", "task_boundaries", "stream"}
    assert [q.name for q in tmp_path.iterdir() if q.name.endswith(".tmp")] == []  # no temp file left behind


def _write(path, stream, **extra) -> None:
    path.write_text(json.dumps({"kind": "disjoint", "params": {}, "task_boundaries": [], "stream": stream, **extra}))


def test_from_json_errors_name_file_and_entry(tmp_path):
    y = np.array([0, 1, 2])
    p = tmp_path / "s.json"
    ok = [{"index": 0, "label": 0, "time": 0.0}]
    _write(p, ok + [{"index": 3, "label": 2, "time": 0.0}])
    with pytest.raises(ValueError, match=r"s\.json: entry 1 .*index 3 outside \[0, 3\)"):
        StreamOrder.from_json(p, num_rows=3)
    with pytest.raises(ValueError, match=r"s\.json: entry 1 .*index 3 outside \[0, 3\)"):
        StreamOrder.from_json(p, labels=y)  # num_rows taken from the label column
    _write(p, ok + [{"index": 2, "label": 1, "time": 0.0}])
    with pytest.raises(ValueError, match=r"s\.json: entry 1 .*label 1 but dataset row 2 has label 2") as e:
        StreamOrder.from_json(p, labels=y)
    assert "\n" not in str(e.value)
    assert len(StreamOrder.from_json(p, num_rows=3)) == 2  # labels not checked when not given
    _write(p, ok + [{"index": "1", "label": 1, "time": 0.0}])
    with pytest.raises(ValueError, match=r"s\.json: entry 1"):
        StreamOrder.from_json(p)
    p.write_text('{"stream": [ {"index": 0,, ]}')
    with pytest.raises(ValueError, match=r"s\.json is not valid JSON") as e:
        StreamOrder.from_json(p)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"missing\.json does not exist"):
        StreamOrder.from_json(tmp_path / "missing.json")
    p.write_text(json.dumps({"stream": ok}))
    assert StreamOrder.from_json(p).kind == "json"  # hand-written file without a kind


# ---------------------------------------------------------------- helpers on a tiny stream


def test_classes_seen_and_first_arrival_tiny():
    s = StreamOrder(np.array([4, 0, 3, 1, 2]), np.array([7, 2, 7, 5, 2]), np.zeros(5), "json", {}, ())
    assert s.classes_seen(0).tolist() == []
    assert s.classes_seen(1).tolist() == [7]
    assert s.classes_seen(2).tolist() == [2, 7]
    assert s.classes_seen(4).tolist() == [2, 5, 7]
    assert s.classes_seen(5).tolist() == [2, 5, 7]
    assert s.first_arrival() == {7: 0, 2: 1, 5: 3}
    with pytest.raises(ValueError):
        s.classes_seen(6)
    with pytest.raises(ValueError):
        s.indices[0] = 1  # read-only: a stream is shared, never edited in place
