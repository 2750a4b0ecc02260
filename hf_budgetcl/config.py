"""``BudgetedCLConfig``: TrainingArguments plus the stream, the budgets and the method."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import ClassVar

from transformers import TrainingArguments

from .freezing.adaptive import FREEZE_PRESETS, AdaptiveFreezingSettings
from .methods import BUILTIN_METHODS, METHODS
from .methods.options import build_options
from .methods.sar import SAROptions
from .stream.orders import STREAM_KINDS
from .utils.errors import ConfigError
from .utils.mirrored_field import mirrored_field
from .utils.validation import check_numbers

# The range of every number that has one (NaN and inf are refused for every float field, see utils.validation).
_RANGES = {
    "fisher_ema": "(0, 1]",
    "informativeness_ema": "(0, 1]",
    "fisher_update_every": ">= 1",
    "freeze_warmup_steps": ">= 0",
    "lisa_interval": ">= 1",
    "n_tasks": ">= 1",
    "sigma": "> 0",
    "repeat": ">= 1",
    "init_cls": "(0, 1]",
    "disjoint_class_ratio": "[0, 1]",
    "blurry_ratio": "[0, 1]",
    "stream_seed": ">= 0",
    "online_iter": "> 0",
    "eval_period": ">= 1",
    "memory_budget_bytes": "> 0",
    "memory_size": ">= 1",
    "flops_budget": "> 0",
    "flops_budget_per_sample": "> 0",
    # inherited from TrainingArguments
    "per_device_train_batch_size": ">= 1",
    "per_device_eval_batch_size": ">= 1",
    "learning_rate": "> 0",
    "weight_decay": ">= 0",
    "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)",
    "adam_epsilon": "> 0",
    "max_grad_norm": ">= 0",
    "num_train_epochs": "> 0",
    "warmup_steps": ">= 0",
    "label_smoothing_factor": "[0, 1)",
    "seed": ">= 0",
    "data_seed": ">= 0",
}
FREEZE_PATTERN = re.compile(r"^(none|adaptive|static:\d+|lisa(:\d+)?)$")
BUDGET_MATCHING = ("none", "auto", "spend_savings")
BN_RECALIBRATION = ("none", "memory")  # see evaluation.bn_recalibration


@dataclass
class BudgetedCLConfig(TrainingArguments):
    """Arguments of a budgeted online continual-learning run.

    Stream: ``stream`` (disjoint | gaussian | si_blurry | domain) with ``n_tasks``, ``sigma``, ``repeat``,
    ``init_cls``, ``disjoint_class_ratio``, ``blurry_ratio``; or ``stream_file`` (a JSON order).
    Budgets: ``flops_budget`` (total training FLOPs) or ``flops_budget_per_sample``; ``memory_budget_bytes`` (model
    + method state + replay samples) and/or ``memory_size`` (a cap in samples).
    Online training: ``online_iter`` iterations per arriving sample, anytime evaluation every ``eval_period``.
    """

    RANGES: ClassVar[dict[str, str]] = _RANGES

    method: str = field(
        default="er",
        metadata={
            "help": f"Continual method: {', '.join(m.name for m in BUILTIN_METHODS)}, or a plug-in registered "
            "under the hf_budgetcl.methods entry point."
        },
    )
    freeze: str | None = field(
        default=None,
        metadata={"help": "none | adaptive | static:<n> | lisa[:<n>]; default: the method's own choice."},
    )
    method_options: str | None = field(
        default=None,
        metadata={
            "help": "Method hyper-parameters as key=value,key=value (e.g. mir_candidates=50); a key the method does "
            "not know is an error."
        },
    )
    fisher_ema: float = mirrored_field(AdaptiveFreezingSettings, "fisher_ema", "aL")
    informativeness_ema: float = mirrored_field(AdaptiveFreezingSettings, "informativeness_ema", "aL")
    fisher_update_every: int = mirrored_field(AdaptiveFreezingSettings, "fisher_update_every", "aL")
    freeze_warmup_steps: int = mirrored_field(AdaptiveFreezingSettings, "freeze_warmup_steps", "aL")
    freeze_preset: str = field(
        default="default",
        metadata={
            "help": "aL: named settings (default | authors: the authors' code, EMAs 0.001, uncorrected warm-up, "
            "unfrozen with probability 0.5, Fisher on unfrozen steps only, stem outside the criterion); the aL "
            "fields above override it where they differ from their defaults."
        },
    )
    lisa_interval: int = field(default=20, metadata={"help": "LISA: steps between two draws of the active blocks."})
    # SAR's options as config fields too (--sar_temperature ...); method_options=... takes precedence.
    sar_temperature: float = mirrored_field(SAROptions, "sar_temperature", "SAR")
    sar_decay_k: float = mirrored_field(SAROptions, "sar_decay_k", "SAR")
    sar_warmup_samples: int = mirrored_field(SAROptions, "sar_warmup_samples", "SAR")
    sar_scale_by_memory: bool = mirrored_field(SAROptions, "sar_scale_by_memory", "SAR")
    sar_damp_new_classes: bool = mirrored_field(SAROptions, "sar_damp_new_classes", "SAR")
    similarity_ema: float = mirrored_field(SAROptions, "similarity_ema", "SAR")
    similarity_coords: int = mirrored_field(SAROptions, "similarity_coords", "SAR")
    similarity_features: str = mirrored_field(SAROptions, "similarity_features", "SAR")
    stream: str = field(default="disjoint", metadata={"help": f"Arrival order: {', '.join(STREAM_KINDS)}."})
    stream_file: str | None = field(default=None, metadata={"help": "JSON arrival order to import instead."})
    n_tasks: int = field(default=5, metadata={"help": "Tasks of disjoint / si_blurry streams."})
    sigma: float = field(default=0.1, metadata={"help": "Gaussian stream spread, in stream periods (0.1 = sigma10)."})
    repeat: int = field(default=1, metadata={"help": "Gaussian stream periods."})
    init_cls: float = field(default=1.0, metadata={"help": "Gaussian stream: fraction of classes in period 0."})
    disjoint_class_ratio: float = field(default=0.5, metadata={"help": "Si-Blurry: share of disjoint classes."})
    blurry_ratio: float = field(default=0.1, metadata={"help": "Si-Blurry: share of a blurry class outside its task."})
    stream_seed: int | None = field(default=None, metadata={"help": "Seed of the arrival order (default: seed)."})
    online_iter: float = field(default=1.0, metadata={"help": "Training iterations per arriving sample (float)."})
    budget_matching: str = field(
        default="none",
        metadata={
            "help": "none: use online_iter; auto: derive online_iter from the FLOPs budget and the method's "
            "measured cost per iteration (freezing savings are not re-spent); spend_savings: the same, but "
            "what freezing saves buys further iterations."
        },
    )
    eval_period: int = field(default=500, metadata={"help": "Anytime evaluation every this many arrivals."})
    bn_recalibration: str = field(
        default="none",
        metadata={
            "help": "none | memory: before every anytime evaluation and the final save, recompute the BatchNorm "
            "running statistics from the replay memory (reset, cumulative average over per_device_eval_batch_size "
            "batches of it, no_grad). The evaluation's are put back afterwards, so training is unchanged; the saved "
            "model keeps the final ones. Their forwards are charged as ledger item bn_recalibration at their "
            "measured FLOPs (FlopCounterMode, as the training forward) and count against the FLOPs budget like any "
            "charge; evaluations after the budget is spent still recalibrate, so train_flops may exceed it by "
            "those. A model without BatchNorm: a warning, and nothing happens."
        },
    )
    memory_budget_bytes: int | None = field(
        default=None, metadata={"help": "Total memory budget in bytes: model + method state + replay samples."}
    )
    memory_size: int | None = field(default=None, metadata={"help": "Replay memory cap in samples."})
    count_optimizer_state: bool = field(
        default=False, metadata={"help": "Charge the optimizer state of trainable parameters to the memory budget."}
    )
    flops_budget: float | None = field(default=None, metadata={"help": "Total training-FLOPs budget."})
    flops_budget_per_sample: float | None = field(
        default=None, metadata={"help": "Training-FLOPs budget per stream sample (times the stream length)."}
    )
    # Defaults of the aL-SAR paper's online setting, overriding Trainer's offline ones.
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size (stream + replay)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Adam learning rate (the paper's)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Online streams have no known end."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "No clipping, as in the paper."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (weight_decay 0 makes it Adam)."})
    logging_steps: float = field(default=100, metadata={"help": "Log every this many iterations."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Collators need every column."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "CPU-first."})
    seed: int = field(default=1, metadata={"help": "Seed of the run (the paper uses 1, 2, 3)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "A stream is seen once."})
    output_dir: str | None = field(default="out/run", metadata={"help": "Where results.json and the model go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds an earlier run (its results and checkpoints go)."},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue from the newest complete checkpoint in output_dir (start afresh if there is none); "
            "--resume_from_checkpoint PATH picks one."
        },
    )
    allow_inexact_resume: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint without optimizer/scheduler state (save_only_model), with a fresh "
            "optimizer; results.json then says exact_resume: false."
        },
    )

    def stream_arguments(self) -> tuple[int, dict]:
        """The seed and the keyword arguments of :func:`~hf_budgetcl.stream.orders.build_stream` for ``stream``."""
        seed = self.stream_seed if self.stream_seed is not None else self.seed
        params = {
            "disjoint": {"n_tasks": self.n_tasks},
            "gaussian": {"sigma": self.sigma, "repeat": self.repeat, "init_cls": self.init_cls},
            "si_blurry": {
                "n_tasks": self.n_tasks,
                "disjoint_class_ratio": self.disjoint_class_ratio,
                "blurry_ratio": self.blurry_ratio,
            },
            "domain": {},
        }[self.stream]
        return seed, params

    def __post_init__(self):
        METHODS.get_class(self.method)  # an unknown name is a one-line error listing the choices
        if self.stream not in STREAM_KINDS:
            raise ConfigError(f"stream: unknown stream type '{self.stream}'; choose one of: {', '.join(STREAM_KINDS)}")
        if self.freeze is not None and not FREEZE_PATTERN.match(self.freeze):
            raise ConfigError(f"freeze: expected none, adaptive, static:<n> or lisa[:<n>], got '{self.freeze}'")
        if self.freeze_preset not in FREEZE_PRESETS:
            raise ConfigError(
                f"freeze_preset: expected one of {', '.join(FREEZE_PRESETS)}, got '{self.freeze_preset}'"
            )
        if self.bn_recalibration not in BN_RECALIBRATION:
            raise ConfigError(
                f"bn_recalibration: expected one of {', '.join(BN_RECALIBRATION)}, got '{self.bn_recalibration}'"
            )
        if self.budget_matching not in BUDGET_MATCHING:
            raise ConfigError(
                f"budget_matching: expected one of {', '.join(BUDGET_MATCHING)}, got '{self.budget_matching}'"
            )
        if self.budget_matching != "none" and self.flops_budget is None and self.flops_budget_per_sample is None:
            raise ConfigError("budget_matching: needs a FLOPs budget (flops_budget or flops_budget_per_sample)")
        check_numbers(self, self.RANGES)  # every number finite and in range, inherited fields included
        if self.memory_budget_bytes is None and self.memory_size is None:
            raise ConfigError("memory_budget_bytes: give a memory budget in bytes (or memory_size in samples)")
        if self.flops_budget is not None and self.flops_budget_per_sample is not None:
            raise ConfigError("flops_budget: give either flops_budget or flops_budget_per_sample, not both")
        # The method's options (method_options, and config fields such as sar_temperature): checked now, not at the
        # first training step.
        build_options(METHODS[self.method].Options, self.method, self)
        if self.save_total_limit is not None and 0 < self.save_total_limit < 2:
            # Trainer rotates old checkpoints before the new one is complete: keep one more to survive a crash then.
            raise ConfigError(f"save_total_limit must be at least 2 (or unset), got {self.save_total_limit}")
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:  # else a traceback from Trainer
            raise ConfigError("deepspeed: the deepspeed package is not installed (pip install deepspeed)")
        # The stream sampler's own state is restored on resume; Trainer must not fast-forward the data as well.
        self.ignore_data_skip = True
        super().__post_init__()
