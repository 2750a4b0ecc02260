"""The resume guard: a checkpoint continues only the run that wrote it, and says whether it can do so exactly.

Every checkpoint's ``cl_state.json`` records the run's defining arguments: every config field (method and its
options, freeze, budgets, memory, batch, optimizer, learning rate and schedule, seed, stream...) except those listed
in :data:`MAY_CHANGE`, the recipe's model and data arguments, and what the trainer sees of the model and processes.
A resume whose arguments differ refuses with one line naming each differing field (old -> new).

A checkpoint without the optimizer or scheduler state (``--save_only_model``, or a deleted ``optimizer.pt``)
cannot continue exactly (a fresh Adam): ``--resume`` refuses it unless ``--allow_inexact_resume true``, which resumes
with a loud warning and ``exact_resume: false`` in results.json (and in every later checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

from ..utils.errors import ConfigError

# Fields that do not change what is trained, on which data, or what is reported: where things are written and
# logged, how often checkpoints are saved, how data is loaded, how to reach the Hub.
MAY_CHANGE = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume",
        "resume_from_checkpoint",
        "allow_inexact_resume",
        "logging_dir",
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "logging_nan_inf_filter",
        "log_on_each_node",
        "log_level",
        "log_level_replica",
        "disable_tqdm",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "save_on_each_node",
        "save_only_model",
        "enable_jit_checkpoint",
        "push_to_hub",
        "hub_token",
        "hub_private_repo",
        "hub_model_id",
        "hub_strategy",
        "hub_always_push",
        "hub_revision",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "per_device_eval_batch_size",
        "eval_accumulation_steps",
        "skip_memory_metrics",
        "include_num_input_tokens_seen",
        "torch_empty_cache_steps",
        "local_rank",
        "ddp_backend",
        "ddp_timeout",
        "debug",
        "do_train",
        "do_eval",
        "do_predict",
        "data_dir",  # a recipe's data folder may move; the stream fingerprint covers its content
    }
)
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")


def _has_state(checkpoint: str, name: str) -> bool:
    """Whether ``checkpoint`` holds ``name``'s state in any layout Trainer loads: ``optimizer.pt``, or FSDP's
    ``optimizer.bin`` / ``optimizer_0`` (sharded folder) as accelerate writes them."""
    stem = name.split(".")[0]
    if os.path.isfile(os.path.join(checkpoint, name)) or os.path.isfile(os.path.join(checkpoint, f"{stem}.bin")):
        return True
    return stem == "optimizer" and any(entry.startswith(f"{stem}_") for entry in os.listdir(checkpoint))


def _defaults(args: Any) -> dict[str, Any]:
    """The declared default of each field of dataclass ``args`` that has a plain one."""
    return {f.name: f.default for f in dataclasses.fields(args) if f.default is not dataclasses.MISSING}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """As the values read back from cl_state.json (tuples become lists, enums and paths strings)."""
    return json.loads(json.dumps(values, default=str))


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


class RunArguments:
    """A stateful part of the run: its defining arguments and whether it has been exact so far."""

    def __init__(self, config: Any, **facts: Any):
        values = {k: v for k, v in config.to_dict().items() if k not in MAY_CHANGE}
        self.values = _jsonable({**values, **facts})
        # An option added since a checkpoint was written is absent from its record; at its default it keeps the
        # behaviour the checkpoint had, so it does not count as a change.
        self.defaults = _jsonable(_defaults(config))
        self.exact = True

    def record(self, *argument_dataclasses: Any) -> None:
        """Add a recipe's own arguments (model, data) to the record, before ``train()``."""
        for args in argument_dataclasses:
            fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in MAY_CHANGE}
            self.values.update(_jsonable(fields))
            self.defaults.update(_jsonable(_defaults(args)))

    def check_checkpoint(self, checkpoint: str, allow_inexact: bool) -> None:
        """Refuse (or, with ``allow_inexact``, warn about) a checkpoint that holds no optimizer/scheduler state."""
        missing = [n for n in OPTIMIZER_FILES if not _has_state(checkpoint, n)]
        if not missing:
            return
        if not allow_inexact:
            raise ConfigError(
                f"resume_from_checkpoint: {checkpoint} has no {' or '.join(missing)} (saved with save_only_model?), "
                "so the run cannot continue exactly; pass --allow_inexact_resume true to resume with a fresh "
                "optimizer (results.json then says exact_resume: false)"
            )
        warnings.warn(
            f"INEXACT RESUME: {checkpoint} has no {' or '.join(missing)}; the optimizer/scheduler start afresh, so "
            "this run will not match an uninterrupted one (results.json: exact_resume false)",
            stacklevel=2,
        )
        self.exact = False

    def _new_at_default(self, key: str, saved: dict[str, Any]) -> bool:
        return key not in saved and key in self.defaults and self.values.get(key) == self.defaults[key]

    def state_dict(self) -> dict[str, Any]:
        return {"arguments": self.values, "exact_resume": self.exact}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("arguments") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            raise ConfigError("resume_from_checkpoint: the checkpoint records no run arguments")
        changed = [
            f"{k} {_show(saved[k]) if k in saved else '(not recorded)'} -> {_show(self.values.get(k))}"
            for k in sorted(set(saved) | set(self.values))
            if saved.get(k) != self.values.get(k) and not self._new_at_default(k, saved)
        ]
        if changed:
            raise ConfigError(
                f"resume_from_checkpoint: the checkpoint was written by a run with other arguments: {'; '.join(changed)}"
                " (resume with the original arguments, or start afresh in another output_dir)"
            )
        self.exact = bool(state.get("exact_resume", True)) and self.exact
