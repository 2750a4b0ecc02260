"""Exact mid-stream resume: the continual-learning state next to Trainer's checkpoint, and finding a complete one.

Trainer's own checkpoint (``checkpoint-<step>/``) holds the model (safetensors), the optimizer, the scheduler, the
RNGs and ``trainer_state.json``. Everything a stream run adds -- stream cursor, replay memory with use counts, the
sampler's and the memory's generators, the method's statistics (SAR), the freezing policy (Fisher EMA), the FLOPs
ledger, the anytime curve and schedule -- is written by :class:`ContinualStateCheckpoint` in ``on_save`` as
``cl_state.json``. Trainer calls ``on_save`` after every one of its own files is written, and the JSON is written to a
temporary file and renamed, so the presence of ``cl_state.json`` marks a complete checkpoint: a crash (or a full disk)
during a save leaves an incomplete folder that :func:`find_resumable_checkpoint` skips.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..utils.atomic import write_json_atomic
from ..utils.errors import ConfigError

CL_STATE_NAME = "cl_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (e.g. the disk is full); the message names the last complete checkpoint."""


def is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CL_STATE_NAME))


def find_resumable_checkpoint(output_dir: str) -> str | None:
    """The ``checkpoint-<step>`` folder of ``output_dir`` with the highest step that holds ``cl_state.json``."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and is_complete_checkpoint(os.path.join(output_dir, name)):
            steps.append((int(match.group(1)), name))
    return os.path.join(output_dir, max(steps)[1]) if steps else None


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """``True``: the newest complete checkpoint in ``output_dir`` (None when there is none yet, i.e. start afresh);
    a path: that checkpoint, which must be complete; None/False: no resume."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        return find_resumable_checkpoint(output_dir)
    path = os.fspath(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"resume_from_checkpoint: {path} does not exist")
    if not is_complete_checkpoint(path):
        raise ConfigError(
            f"resume_from_checkpoint: {path} is incomplete (no {CL_STATE_NAME}); "
            f"the newest complete one is {find_resumable_checkpoint(os.path.dirname(path) or '.')}"
        )
    return path


def read_cl_state(checkpoint: str) -> dict[str, Any]:
    path = os.path.join(checkpoint, CL_STATE_NAME)
    try:
        with open(path) as f:
            state = json.load(f)
    except json.JSONDecodeError as err:
        raise ConfigError(f"resume_from_checkpoint: {path} is not valid JSON ({err.msg})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"resume_from_checkpoint: {path} holds a {type(state).__name__}, not the run state (a dict)")
    return state


def check_checkpoint_files(checkpoint: str) -> None:
    """Read every weight and optimizer file of ``checkpoint`` once: a truncated or garbage file is a one-line error
    here, not a traceback from inside Trainer's loading."""
    import torch
    from safetensors import safe_open

    for name in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, name)
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
            elif name in ("optimizer.pt", "scheduler.pt", "scaler.pt"):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # safetensors, pickle and zip readers each raise their own type
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"resume_from_checkpoint: {path} is damaged ({reason[:200]})") from None


class ContinualStateCheckpoint(TrainerCallback):
    """Writes the trainer's continual-learning state into each checkpoint Trainer has just saved."""

    def __init__(self, state_fn: Callable[[], dict[str, Any]], default: Callable[[Any], Any] | None = None):
        self.state_fn = state_fn
        self.default = default

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # every rank holds the same stream state; the main process writes it
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            write_json_atomic(os.path.join(checkpoint, CL_STATE_NAME), self.state_fn(), default=self.default)
        return control
