import numpy as np
import pytest

from hf_budgetcl.stream.memory import EpisodicMemory


def test_fills_until_byte_capacity_then_evicts_from_largest_class():
    mem = EpisodicMemory(capacity_bytes=100, seed=0)
    for i in range(10):  # 10 samples of 10 bytes fill it exactly
        assert mem.add(i, label=0 if i < 7 else 1, nbytes=10)
    assert len(mem) == 10 and mem.bytes_used == 100 and mem.num_evicted == 0
    mem.add(10, label=2, nbytes=10)  # full: class 0 (7 samples) is the largest and loses one
    assert mem.bytes_used == 100 and len(mem) == 10
    assert mem.class_counts() == {0: 6, 1: 3, 2: 1}
    assert mem.num_evicted == 1


def test_newcomer_counts_towards_its_class():
    mem = EpisodicMemory(capacity_bytes=40, seed=0)
    for i, y in enumerate([0, 0, 1, 1]):
        mem.add(i, y, 10)
    mem.add(4, 1, 10)  # class 1 would have 3 with the newcomer: it is the largest, so a class-1 slot goes
    assert mem.class_counts() == {0: 2, 1: 2}
    assert 4 in mem.indices


def test_variable_sizes_evict_until_the_newcomer_fits():
    mem = EpisodicMemory(capacity_bytes=100, seed=0)
    for i in range(5):
        mem.add(i, 0, 20)
    assert mem.add(5, 1, 50)  # needs three 20-byte evictions
    assert mem.bytes_used <= 100 and mem.class_counts()[1] == 1
    assert not mem.add(6, 1, 101)  # larger than the whole memory: never stored


def test_slot_cap_and_use_counts_reset_on_eviction():
    mem = EpisodicMemory(capacity_bytes=10_000, max_slots=3, seed=0)
    for i in range(3):
        mem.add(i, i, 10)
    mem.use_counts[:] = [5.0, 5.0, 5.0]
    mem.add(3, 0, 10)
    assert len(mem) == 3
    assert mem.use_counts[-1] == 0.0 and sorted(mem.use_counts) == [0.0, 5.0, 5.0]


def test_bytes_used_equals_real_bytes_of_stored_images():
    from hf_budgetcl.data.image_datasets import load_digits_dataset
    from hf_budgetcl.data.image_rows import sample_nbytes

    train, _ = load_digits_dataset()
    train = train.with_format("numpy")
    mem = EpisodicMemory(capacity_bytes=50 * sample_nbytes(train[0]), seed=1)
    for i in range(200):
        mem.add(i, int(train[i]["label"]), sample_nbytes(train[i]))
    real = sum(np.asarray(train[i]["pixel_values"], dtype=np.uint8).nbytes + np.int64(0).nbytes for i in mem.indices)
    assert len(mem) == 50 and mem.bytes_used == real


def test_state_round_trip_continues_identically():
    a = EpisodicMemory(capacity_bytes=50, seed=3)
    for i in range(20):
        a.add(i, i % 3, 10)
    b = EpisodicMemory(capacity_bytes=1, seed=0)
    b.load_state_dict(a.state_dict())
    for i in range(20, 40):
        a.add(i, i % 4, 10)
        b.add(i, i % 4, 10)
    assert a.indices == b.indices and a.labels == b.labels


def test_rejects_non_positive_capacity():
    with pytest.raises(ValueError, match="capacity"):
        EpisodicMemory(capacity_bytes=0)
