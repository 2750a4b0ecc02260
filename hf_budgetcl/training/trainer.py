"""``BudgetedCLTrainer``: online continual learning under a FLOPs and a byte budget, on top of ``transformers.Trainer``.

Only public, overridable Trainer methods and callbacks are used:

- ``get_train_dataloader`` returns a DataLoader driven by :class:`~hf_budgetcl.stream.sampler.OnlineStreamSampler`, which
  consumes the stream online, fills the episodic memory and composes each batch (stream part + replay);
- ``training_step`` runs the forward, asks the freezing policy how many leading blocks to freeze for this batch,
  runs the backward only for the unfrozen suffix (``inputs=``: graph pruning, so frozen blocks cost nothing) and
  charges the FLOPs ledger exactly what ran;
- before the forward the method may refine the batch (MIR); ``compute_loss`` lets it observe a real training forward
  and add its extra loss, through a :class:`~hf_budgetcl.methods.context.MethodContext` (never the trainer itself);
  ``floating_point_ops`` reports the measured FLOPs to Trainer;
- ``evaluate`` runs the anytime evaluation on the test samples of the classes seen so far (with
  ``bn_recalibration: memory``, on BatchNorm statistics recomputed from the replay memory, put back afterwards);
- a callback triggers those evaluations every ``eval_period`` arrivals and stops training when the FLOPs budget
  cannot pay for another iteration; the rest of the stream still arrives and is evaluated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from .. import __version__
from ..accounting.flops import FlopsProfiler
from ..accounting.ledger import FlopsLedger
from ..accounting.memory_budget import MemoryBudget, gradient_bytes, model_bytes, optimizer_state_bytes
from ..accounting.pacing import BudgetMatchingCallback
from ..config import BudgetedCLConfig
from ..data.collate import collate_rows
from ..evaluation.anytime import AnytimeSchedule, CurvePoint, summarize_curve
from ..evaluation.bn_recalibration import BatchNormRecalibration, batchnorm_layers, even_batches
from ..evaluation.classification import ClassificationEvaluator, Evaluator
from ..freezing.policies import FreezingPolicy, make_freezing_policy
from ..methods import METHODS, ContinualMethod, MethodContext
from ..models.blocks import describe as describe_blocks
from ..models.blocks import find_blocks
from ..models.loading import prepare_model
from ..stream.memory import EpisodicMemory
from ..stream.orders import StreamOrder
from ..stream.sampler import BatchRecord, OnlineStreamSampler
from ..utils.atomic import write_json_atomic
from ..utils.errors import ConfigError
from . import fsdp
from .callbacks import StreamControlCallback, StreamProgressCallback
from .checkpointing import (
    CheckpointSaveError,
    ContinualStateCheckpoint,
    check_checkpoint_files,
    read_cl_state,
    resolve_resume_checkpoint,
)
from .finish import disk_error_message, finish_run, is_disk_error
from .memory_check import check_memory_capacity
from .output_dir import prepare_output_dir
from .results import format_summary, json_default
from .resume_guard import RunArguments
from .run_state import RunProgress, RunState, is_stateful

__all__ = ["BudgetedCLTrainer", "BudgetedCLConfig"]
logger = logging.getLogger(__name__)


class BudgetedCLTrainer(Trainer):
    """Trainer for budgeted online continual learning.

    Args:
        model: any ``transformers`` model (or PEFT model) returning a loss when given ``labels``, or a Hub id / local
            path, loaded through its Auto class with ``model_init_kwargs`` (e.g. ``{"dtype": "bfloat16"}``).
        args: a :class:`BudgetedCLConfig`.
        train_dataset: map-style dataset whose rows the stream indexes.
        stream: the arrival order (:mod:`hf_budgetcl.stream.orders`).
        sample_nbytes: bytes a row takes when stored in replay memory (counted against the memory budget).
        evaluator: anytime evaluator; defaults to classification accuracy on ``eval_dataset``.
        method: a :class:`ContinualMethod` instance (default: ``args.method``).
        peft_config: a peft config (e.g. ``LoraConfig(use_dora=True, ...)``); the model is wrapped with it, as
            TRL's SFTTrainer does (a k-bit base through ``prepare_model_for_kbit_training`` first).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: BudgetedCLConfig,
        train_dataset: Any,
        stream: StreamOrder,
        sample_nbytes: Callable[[dict], int],
        eval_dataset: Any = None,
        evaluator: Evaluator | None = None,
        method: ContinualMethod | None = None,
        data_collator: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        peft_config: Any = None,
        model_init_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if len(stream) == 0:
            raise ConfigError("stream: empty stream, nothing arrives")
        if args.gradient_accumulation_steps != 1:
            # One iteration is one online update on one composed batch; the sampler, the freezing decision and the
            # ledger all work per batch.
            raise ConfigError(
                f"gradient_accumulation_steps must be 1 (got {args.gradient_accumulation_steps}); for a larger "
                "batch raise per_device_train_batch_size"
            )
        model = prepare_model(model, peft_config, model_init_kwargs)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            callbacks=callbacks,
            **kwargs,
        )
        if not self.model.can_generate():
            # Trainer multiplies the loss by the process count when forward takes **kwargs, assuming a token loss
            # summed over the global item count. A classifier's loss is its local batch mean: that doubled it on 2 ranks.
            self.model_accepts_loss_kwargs = False
        self.stream = stream
        self.method = method or METHODS.get_class(args.method)(config=args)
        self.blocks = find_blocks(self.model)
        logger.info("freezable blocks of %s:\n%s", type(self.model).__name__, describe_blocks(self.blocks))
        self.world_size = self.accelerator.num_processes
        self.global_batch_size = args.per_device_train_batch_size * self.world_size
        self.current_record: BatchRecord | None = None
        self.method_context = MethodContext(self)
        # Hooks, callbacks, per-slot sizes, a freeze choice that depends on the blocks: before freezing and budget.
        self.method.setup(self.method_context)
        self.freezing: FreezingPolicy = make_freezing_policy(self.freeze_mode(), self.blocks, args)
        # StaticFreezing subclasses NoFreezing: test the mode, not the class.
        self.freezes = self.freezing.describe()["mode"] != "none"
        self.fsdp2 = self.is_fsdp_enabled and fsdp.fsdp_version(self.accelerator) == 2
        if (self.is_deepspeed_enabled or (self.is_fsdp_enabled and not self.fsdp2)) and self.freezes:
            # ZeRO/FSDP1 reduce gradients through their own hooks (a missing gradient is reduced as zeros, so the
            # optimizer would still move a "frozen" block); DDP and FSDP2 take the pruned step.
            raise ConfigError(
                f"freeze: '{self.freezing.describe()['mode']}' needs DDP, FSDP2 (fsdp_version: 2) or one process; "
                "under DeepSpeed or FSDP1 use freeze none (e.g. method er/sar), see recipes/accelerate/"
            )
        # Under FSDP2 every block is its own unit and the pruned backward runs on the unsharded parameters.
        self.fsdp_backward = fsdp.FSDPBackward(self.model, self.blocks) if self.fsdp2 else None
        if self.fsdp2:
            fsdp.sync_module_states(self.accelerator, self.model)
        if self.fsdp2 and self.freezes:
            fsdp.shard_blocks_as_units(self.accelerator, self.blocks)

        num_classes = len(np.unique(stream.labels))
        extra = self.method.extra_state_bytes(self.model, num_classes)
        extra.update(self.freezing.extra_state_bytes())
        first_sample = self.method.slot_bytes(sample_nbytes(train_dataset[int(stream.indices[0])]))
        # Bytes per rank: under FSDP one shard of the parameters, their gradients and optimizer state.
        shards = self.world_size if self.is_fsdp_enabled else 1
        fixed = model_bytes(self.model, shards)
        opt_bytes = optimizer_state_bytes(self.model, str(args.optim), shards) if args.count_optimizer_state else 0
        grad_bytes = gradient_bytes(self.model, shards) if self.is_fsdp_enabled else 0
        total = args.memory_budget_bytes
        if total is None:  # budget given as a sample count: derive the byte budget it implies
            total = fixed + opt_bytes + grad_bytes + sum(extra.values()) + args.memory_size * first_sample
        self.memory_budget = MemoryBudget(total, fixed, opt_bytes, extra, gradient_bytes=grad_bytes)
        self.memory_budget.validate()
        check_memory_capacity(
            self.memory_budget.sample_bytes_available,
            args.memory_size,
            first_sample,
            self.global_batch_size,
            "memory_budget_bytes" if args.memory_budget_bytes is not None else "memory_size",
        )
        self.memory = EpisodicMemory(self.memory_budget.sample_bytes_available, args.memory_size, seed=args.seed)

        budget = args.flops_budget
        if args.flops_budget_per_sample is not None:
            budget = args.flops_budget_per_sample * len(stream)
        self.ledger = FlopsLedger(budget=budget)
        self.profiler = FlopsProfiler(
            self.accelerator.unwrap_model(self.model), self.blocks, lambda m, inputs: self.compute_loss(m, inputs)
        )
        self.stream_sampler = OnlineStreamSampler(
            stream,
            self.memory,
            self.method,
            lambda index: self.method.slot_bytes(sample_nbytes(train_dataset[index])),
            self.global_batch_size,
            args.online_iter,
            seed=args.seed,
            rank=self.accelerator.process_index,
            world_size=self.world_size,
        )
        self.evaluator = evaluator or (ClassificationEvaluator(eval_dataset) if eval_dataset is not None else None)
        self.bn_recalibration = self.make_bn_recalibration()
        self.schedule = AnytimeSchedule(stream, args.eval_period)
        self.progress = RunProgress()
        self.results: dict[str, Any] | None = None
        # What a recipe adds to the final save: card keyword arguments (e.g. finetuned_from, the base the user
        # gave) and files copied unchanged into the finished folder ({name in output_dir: source path}).
        self.card_kwargs: dict[str, Any] = {}
        self.final_copies: dict[str, str] = {}
        # Facts about the run that a recipe adds to results.json (e.g. the base's weights fingerprint).
        self.run_facts: dict[str, Any] = {}
        self._pending_eval: list[int] = []
        self.add_callback(StreamControlCallback(self))
        self.run_arguments = RunArguments(  # the resume guard: a checkpoint continues only the run that wrote it
            args,
            model_class=type(self.accelerator.unwrap_model(self.model)).__name__,
            model_parameters=sum(p.numel() for p in self.model.parameters()),
            world_size=self.world_size,
        )
        self.run_state = RunState(self.stream_fingerprint, self.stateful_parts)
        self.add_callback(ContinualStateCheckpoint(self.run_state.state_dict, default=json_default))
        if args.budget_matching != "none":
            self.add_callback(BudgetMatchingCallback(self, spend_savings=args.budget_matching == "spend_savings"))
        if isinstance(self.freezing, TrainerCallback):
            self.add_callback(self.freezing)
        if self.fsdp_backward is not None:
            self.add_callback(_BindShardedBlocks(self))
        if not args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(StreamProgressCallback(self))

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # accelerate enables FSDP on accelerator devices only; FSDP2 on a CPU (gloo) group goes through the same path.
        if fsdp.enable_fsdp_on_cpu(self.accelerator, self.args):
            self.is_fsdp_enabled = True

    @property
    def curve(self) -> list[CurvePoint]:
        """The anytime-evaluation curve so far."""
        return self.progress.curve

    def freeze_mode(self) -> str:
        """``args.freeze``, else the method's default; a method with ``required_freeze`` accepts only that mode."""
        required, asked = self.method.required_freeze, self.args.freeze
        if required is not None and asked is not None and asked != required:
            raise ConfigError(
                f"freeze: method '{self.method.name}' runs only with freeze {required}, got '{asked}' "
                "(leave freeze unset for the method's own choice)"
            )
        return required or asked or self.method.freeze

    # ---- data -------------------------------------------------------------------------------------------------
    def collate_rows(self, indices) -> dict:
        """Model inputs of dataset rows ``indices``, collated and on the training device."""
        return collate_rows(self.train_dataset, self.data_collator, indices, self.args.device)

    def first_batch(self) -> dict:
        """The first stream rows, one per-device batch of them: the shape every budget check measures."""
        return self.collate_rows(self.stream.indices[: min(self.args.per_device_train_batch_size, len(self.stream))])

    def get_train_dataloader(self) -> DataLoader:
        """A single-process DataLoader over the stream sampler, not prepared by accelerate.

        Nothing is fetched ahead (no workers, no accelerate prefetch), so at every checkpoint the sampler has composed
        exactly the batches trained so far; the sampler shards each global batch itself, and the collator output is
        moved to the device here. Its own generator keeps iterating it from consuming the global torch RNG.
        """
        collate, device = self.data_collator, self.args.device
        return DataLoader(
            self.train_dataset,
            batch_sampler=self.stream_sampler,
            collate_fn=lambda rows: send_to_device(collate(rows), device),
            num_workers=0,
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    # ---- one iteration ----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.method_context.in_training_pass:  # not the profiler's measurement, not evaluation
            self.method.observe(self.method_context, inputs, outputs)
            extra = self.method.extra_loss(self.method_context, inputs, outputs)
            if extra is not None:
                loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.current_record = self.stream_sampler.pop_record()
        refined = self.method.refine_batch(self.method_context, self.current_record)
        if refined is not None:  # e.g. MIR's choice among its candidates, which needs the model
            self.current_record = refined
            inputs = self.collate_rows(self.stream_sampler.shard(refined.indices))
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        cost = fsdp.measure_in_step(self.profiler, inputs) if self.fsdp2 else self.profiler.cost(inputs)
        # With freezing under DDP the reducer cannot know which gradients will come (the decision follows the
        # forward), so forward and backward run unsynchronised and the unfrozen suffix is all-reduced by hand.
        # FSDP2 reduce-scatters per unit in its post-backward, only the gradients that the pruned backward made.
        sync_by_hand = self.world_size > 1 and self.freezes and not self.is_fsdp_enabled
        with self.accelerator.no_sync(model) if sync_by_hand else contextlib.nullcontext():
            self.method_context.in_training_pass = True
            try:
                with self.compute_loss_context_manager():
                    loss, outputs = self.compute_loss(
                        model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                    )
            finally:
                self.method_context.in_training_pass = False
            if not torch.isfinite(loss.detach()).all():
                # A non-finite loss would poison the weights and the Fisher/similarity statistics: skip the update.
                self.progress.skipped_nonfinite += 1
                warnings.warn(f"non-finite loss at iteration {self.ledger.steps}: batch skipped", stacklevel=2)
                self.ledger.charge("train_forward", cost.forward * self.world_size)
                self.progress.last_step_flops = cost.forward * self.world_size
                return loss.detach()
            n_frozen = self.freezing.decide(model, inputs, outputs, cost)
            self.backward_unfrozen(loss, n_frozen)
            self.method.after_backward(self.method_context)
        if sync_by_hand:
            self.all_reduce_gradients(self.blocks.trainable_from(n_frozen))
        spent = self.ledger.total
        self.ledger.charge_step(cost, n_frozen, scale=self.world_size)
        for item, flops in self.method_context.take_charges().items():
            self.ledger.charge(item, flops)
        for item, flops in self.freezing.extra_flops(cost).items():
            self.ledger.charge(item, flops)
        self.progress.last_step_flops = self.ledger.total - spent
        self.progress.max_charged_step_flops = max(self.progress.max_charged_step_flops, self.progress.last_step_flops)
        self.progress.frozen_counts[n_frozen] += 1
        self.progress.rows_trained += len(self.current_record.indices)
        return loss.detach()

    def backward_unfrozen(self, loss: torch.Tensor, n_frozen: int) -> None:
        """Backward through the unfrozen suffix only: frozen blocks get neither weight nor input gradients."""
        if self.fsdp_backward is not None:
            self.fsdp_backward.set_prefetch(n_frozen)
        if n_frozen == 0:
            self.accelerator.backward(loss)
        elif self.fsdp_backward is not None:
            self.accelerator.backward(loss, inputs=self.fsdp_backward.trainable_from(n_frozen))
        else:
            self.accelerator.backward(loss, inputs=self.blocks.trainable_from(n_frozen))

    def all_reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over processes in one flat all-reduce."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def floating_point_ops(self, inputs) -> int:
        """Trainer's ``total_flos`` becomes the measured training FLOPs of each step (all ranks together)."""
        return int(self.progress.last_step_flops / self.world_size)

    # ---- anytime evaluation -----------------------------------------------------------------------------------
    def make_bn_recalibration(self) -> BatchNormRecalibration | None:
        """``bn_recalibration: memory``: BatchNorm statistics from the replay memory (None: off, or no BatchNorm)."""
        if self.args.bn_recalibration == "none":
            return None
        if self.is_deepspeed_enabled or (self.is_fsdp_enabled and not self.fsdp2):
            raise ConfigError("bn_recalibration: memory needs DDP, FSDP2 (fsdp_version: 2) or one process")
        if not batchnorm_layers(self.model):
            warnings.warn(
                f"bn_recalibration: {type(self.model).__name__} has no BatchNorm layer, nothing to recalibrate",
                stacklevel=3,
            )
            return None
        return BatchNormRecalibration(
            model=lambda: self.accelerator.unwrap_model(self.model),
            batches=self.memory_batches,
            forward_flops=self.profiler.forward_flops,
            charge=self.ledger.charge,
            replicas=self.world_size,  # every rank forwards its own copy of the same memory
        )

    def memory_batches(self) -> list[dict]:
        """The replay memory's rows as model inputs, in batches of at most ``per_device_eval_batch_size``, in a
        seeded shuffled order: the memory keeps its slots in arrival order, so batches in that order would each hold
        one task, and averaging their variances would leave out the variance between tasks."""
        rows = np.random.default_rng(self.args.seed).permutation(np.asarray(self.memory.indices))
        return [self.collate_rows(chunk) for chunk in even_batches(rows, self.args.per_device_eval_batch_size)]

    def recalibration_key(self) -> tuple:
        """What BatchNorm statistics from memory depend on: the weights (the step) and the memory's rows."""
        return self.state.global_step, tuple(int(i) for i in self.memory.indices)

    def evaluation_statistics(self) -> contextlib.AbstractContextManager:
        """What an anytime evaluation runs under: recalibrated BatchNorm statistics, or the model as it is."""
        if self.bn_recalibration is None:
            return contextlib.nullcontext()
        return self.bn_recalibration.for_evaluation(self.recalibration_key())

    def prepare_final_model(self) -> None:
        """Before the final results and save: the saved model keeps the recalibrated BatchNorm statistics (those of
        the last evaluation when nothing has trained since)."""
        if self.bn_recalibration is not None:
            self.bn_recalibration.recalibrate(self.recalibration_key())

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if eval_dataset is not None or self.evaluator is None:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        metrics: dict[str, float] = {}
        for point in self._pending_eval or [self.stream_sampler.cursor]:
            metrics = self.evaluate_at(point)
        self._pending_eval = []
        return metrics

    def evaluate_at(self, samples_seen: int) -> dict[str, float]:
        """Evaluate on the test samples of the classes among the first ``samples_seen`` arrivals."""
        start = time.perf_counter()
        with self.evaluation_statistics():
            accuracy, per_class = self.evaluator(self, self.stream.classes_seen(samples_seen))
        self.progress.eval_time_s += time.perf_counter() - start
        point = CurvePoint(
            samples=samples_seen,
            train_flops=self.ledger.total,
            accuracy=float(accuracy),
            iterations=self.ledger.steps,
            memory_bytes=self.memory_budget.itemise(self.memory.bytes_used)["total"],
            per_class={int(k): float(v) for k, v in per_class.items()},
            frozen_blocks=sum(k * v for k, v in self.progress.frozen_counts.items()),
        )
        self.progress.curve.append(point)
        # Trainer's evaluation convention (eval_ keys): TensorBoard/W&B file them under eval/, not train/.
        metrics = {
            "eval_anytime_accuracy": point.accuracy,
            "eval_samples_seen": samples_seen,
            "eval_train_flops": point.train_flops,
            "eval_memory_bytes": point.memory_bytes,
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- the run ----------------------------------------------------------------------------------------------
    def check_budget_affords_one_iteration(self) -> None:
        """Measure the first batch shape now: a budget too small for a single iteration is a configuration error."""
        one = self.profiler.cost(self.first_batch()).train_flops(0) * self.world_size
        if self.ledger.budget is not None and one > self.ledger.budget:
            name = "flops_budget_per_sample" if self.args.flops_budget_per_sample else "flops_budget"
            raise ConfigError(
                f"{name}: the budget ({self.ledger.budget:.4g} FLOPs) is too small for one iteration ({one:.4g} FLOPs)"
            )

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train on the stream; ``resume_from_checkpoint`` (a path, or True for the newest complete checkpoint in
        ``output_dir``; default: ``args.resume_from_checkpoint``, else ``args.resume``) continues a run exactly."""
        start = time.perf_counter()
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint or (True if self.args.resume else None)
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume_from_checkpoint is True and checkpoint is None:
            warnings.warn(
                f"resume: no complete checkpoint in {self.args.output_dir}; starting from the beginning", stacklevel=2
            )
        prepare_output_dir(
            self.args.output_dir, checkpoint is not None, self.args.overwrite_output_dir, self.is_world_process_zero()
        )
        if checkpoint is not None:
            self.run_arguments.check_checkpoint(checkpoint, self.args.allow_inexact_resume)
            check_checkpoint_files(checkpoint)
            self.run_state.load_state_dict(read_cl_state(checkpoint))
        self.progress.started_at = start
        self.check_budget_affords_one_iteration()
        try:
            output = super().train(
                resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        except Exception as err:  # a full disk while Trainer writes a checkpoint: one line, not a traceback
            if isinstance(err, CheckpointSaveError) or not is_disk_error(err):
                raise
            raise disk_error_message(err, self.args.output_dir, "writing a checkpoint") from err
        train_time = time.perf_counter() - start + self.progress.elapsed_before_resume_s
        sampler = self.stream_sampler
        if self.progress.stop_reason == "stream_end" and (sampler.cursor < len(self.stream) or sampler.pending):
            # Trainer stopped before the stream ended and the budget did not: max_steps, or a user callback.
            at_max = 0 < self.args.max_steps <= self.state.global_step
            self.progress.stop_reason = "max_steps" if at_max else "callback"
        # Whatever training did not consume (budget spent, or no iteration left) still arrives and is evaluated.
        for position in self.stream_sampler.drain():
            for point in self.schedule.due(position):
                self.evaluate_at(point)
        for point in self.schedule.due(len(self.stream)):
            self.evaluate_at(point)
        self.prepare_final_model()  # before the results: its FLOPs are part of them
        self.results = self.build_results(
            wall_time_s=time.perf_counter() - start + self.progress.elapsed_before_resume_s, train_time_s=train_time
        )
        self.save_final()
        if self.is_world_process_zero():
            print(format_summary(self.results), file=sys.stderr)
        return output

    def save_final(self) -> None:
        """The final artifacts (weights, processor, results.json, card, stream.json) into ``output_dir``, all at once
        and marked complete, or not at all (see :mod:`~hf_budgetcl.training.finish`)."""
        finish_run(self)

    # ---- checkpointed continual-learning state (Trainer checkpoints the model, optimizer, scheduler and RNGs) ----
    def stream_fingerprint(self) -> str:
        data = np.concatenate([self.stream.indices, self.stream.labels]).astype(np.int64).tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    def stateful_parts(self) -> dict[str, Any]:
        """Everything beyond Trainer's checkpoint that the rest of the run depends on, by name."""
        parts = {
            "arguments": self.run_arguments,  # first: a changed run is refused before anything is loaded
            "sampler": self.stream_sampler,  # cursor, memory + use counts, generators, method state
            "ledger": self.ledger,
            "freezing": self.freezing,
            "schedule": self.schedule,
            "progress": self.progress,
        }
        for cb in self.callback_handler.callbacks:
            if is_stateful(cb) and cb is not self.freezing:  # a policy may be a callback too: saved once
                parts[f"callback:{type(cb).__name__}"] = cb
        return parts

    def build_results(self, wall_time_s: float, train_time_s: float) -> dict[str, Any]:
        args = self.args
        steps = self.ledger.steps
        return {
            "method": self.method.name,
            "method_options": dataclasses.asdict(self.method.options),
            "freeze": self.freezing.describe(),
            "stream": {"kind": self.stream.kind, "length": len(self.stream), "params": self.stream.params},
            "seed": args.seed,
            **summarize_curve(self.progress.curve, self.stream),
            "train_flops": self.ledger.total,
            "flops_budget": self.ledger.budget,
            "flops_items": dict(self.ledger.items),
            "backward_flops_saved_fraction": self.ledger.backward_saved_fraction,
            "frozen_blocks_histogram": {str(k): v for k, v in sorted(self.progress.frozen_counts.items())},
            "memory_bytes": self.memory_budget.itemise(self.memory.bytes_used),
            "memory_budget_bytes": self.memory_budget.total_bytes,
            "memory_slots": len(self.memory),
            "samples_seen": self.stream_sampler.cursor,
            "iterations": steps,
            "online_iter": args.online_iter,
            "budget_matching": args.budget_matching,
            "online_iter_final": self.stream_sampler.online_iter,
            "batch_size": self.global_batch_size,
            "batch_rows_mean": self.progress.rows_trained / steps if steps else 0.0,  # fewer while memory fills
            "stopped_by": self.progress.stop_reason,
            "exact_resume": self.run_arguments.exact,
            "skipped_nonfinite_batches": self.progress.skipped_nonfinite,
            "wall_time_s": wall_time_s,
            "train_time_s": train_time_s,
            "eval_time_s": self.progress.eval_time_s,
            "iterations_per_s": steps / train_time_s if train_time_s > 0 else float("nan"),
            "world_size": self.world_size,
            "hf_budgetcl_version": __version__,
            **self.run_facts,
            # evaluator-specific figures, e.g. the VQA evaluator's majority_baseline next to A_last
            **dict(getattr(self.evaluator, "extra_results", None) or {}),
            # and callbacks' figures, e.g. the accuracy matrix of the task-boundary evaluation
            **{
                k: v
                for cb in self.callback_handler.callbacks
                for k, v in (getattr(cb, "extra_results", None) or {}).items()
            },
            "curve": [p.to_dict() for p in self.progress.curve],
        }

    def save_results(self, path: str | None = None) -> str:
        path = path or os.path.join(self.args.output_dir, "results.json")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_json_atomic(path, self.results, default=json_default, indent=2)  # never a half-written results.json
        return path

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write hf_budgetcl's card (budgets, stream, method, A_AUC/A_last model-index) to ``output_dir/README.md``.

        Same signature as ``Trainer.create_model_card``, so ``push_to_hub`` renders this card too; before ``train()``
        has produced results there is nothing to report and Trainer's own card is written instead.
        """
        if not self.is_world_process_zero():
            return
        card = dict(language=language, license=license, tags=tags, model_name=model_name)
        card.update(finetuned_from=finetuned_from, tasks=tasks, dataset=dataset)
        if self.results is None:
            return super().create_model_card(**card, dataset_tags=dataset_tags, dataset_args=dataset_args)
        from ..hub.model_card import write_trainer_model_card

        write_trainer_model_card(self, **card)


class _BindShardedBlocks(TrainerCallback):
    """Once accelerate has sharded the model (FSDP2), point the blocks, the profiler's pruned backward and the
    trainer's at the shards and the unsharded parameters; after each evaluation, reshard what its forward left
    gathered."""

    def __init__(self, trainer: BudgetedCLTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        t = self.trainer
        t.fsdp_backward.bind(t.model)
        t.profiler.model, t.profiler.blocks = t.model, t.fsdp_backward
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        fsdp.reshard(self.trainer.model)
        return control
