"""What the replay memory can hold, checked before training: no room for one sample is an error, less than a batch
a loud warning (batches then shrink, and results.json reports the mean rows trained per iteration)."""

from __future__ import annotations

import warnings

from ..utils.errors import ConfigError


def check_memory_capacity(
    sample_bytes_available: int, memory_size: int | None, slot_bytes: int, batch_size: int, field_name: str
) -> int:
    """The memory's capacity in samples of ``slot_bytes`` (the first arrival's); raises when it is zero."""
    capacity = sample_bytes_available // max(slot_bytes, 1)
    if memory_size is not None:
        capacity = min(capacity, memory_size)
    if capacity == 0:
        raise ConfigError(
            f"{field_name}: the replay memory has {sample_bytes_available:,} bytes left after the model and method "
            f"state, no room for one sample of {slot_bytes:,} bytes; raise the budget"
        )
    if capacity < batch_size:
        warnings.warn(
            f"the replay memory holds at most {capacity} samples, fewer than a batch of {batch_size}: batches will "
            f"have at most {capacity} replayed rows (results.json: batch_rows_mean)",
            stacklevel=3,
        )
    return capacity
