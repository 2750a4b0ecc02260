"""SAR: similarity-aware retrieval (aL-SAR, Seo et al., ICLR 2025, Sec. 3.2; algorithm reference section 8).

Every batch comes from memory. Slot ``i`` (label ``y_i``) is drawn with probability ``p = softmax(-c_hat / T)``,
without replacement, where the effective use frequency (:func:`~hf_budgetcl.methods.retrieval_math.effective_use_frequency`)

    c_hat_i = (1 - S_{y_i y_i}) u_i + sum_c S_{y_i c} U_c      (own count enters once; optionally / |M|, clamped at 0)

mixes the slot's discounted use count ``u_i`` with the discounted use counts ``U_c`` of the classes whose gradients
resemble its own (class similarity ``S``). Before ``sar_warmup_samples`` stream arrivals retrieval is class-balanced.

Bookkeeping, all in the sampler (so it runs identically on every rank):

* per retrieval of ``B`` slots: ``u <- (1 - B / (k |M|)) u``, ``U <- (1 - B / (k |M|)) U`` (if ``|M| > B``), draw, then
  ``u_i += 1`` and ``U_{y_i} += 1`` per retrieved slot;
* ``u`` lives in ``EpisodicMemory.use_counts``, which the memory keeps aligned with its slots: an evicted slot is
  deleted with its count and the newcomer is appended with ``u = 0``. ``U`` is *not* decremented on eviction (the
  reference code's behaviour, algorithm reference section 8.1): a class's count records how much it was rehearsed,
  not how many of its samples are stored.

Class similarity (training step, :meth:`SAR.observe`): per-sample gradient features taken analytically from the
last layer. For a linear head ``z = W h + b`` and cross-entropy, ``dL_n / dW[c, d] = (softmax(z_n) - onehot(y_n))_c
h_{n,d}``; only a fixed seeded subset of ``similarity_coords`` entries ``(c, d)`` is formed (no backward, no per-sample
gradient of the whole network), clamped to [-1, 1] and fed to the per-class EMAs
(:func:`~hf_budgetcl.methods.retrieval_math.similarity_ema_update`), from which ``S`` is rebuilt every step. The head is never
frozen, so all coordinates are always available, also under adaptive freezing. (``similarity_features=conv`` reads
the reference's coordinates instead: per-sample gradients of the residual blocks' ``conv2`` weights, after the
backward, from the unfrozen blocks only; :mod:`~hf_budgetcl.methods.conv_features`.) In the head space cross-class
cosines are mostly negative -- the two classes' own logit rows carry opposite signs -- and most so for confusable
classes: rehearsing class c then lowers ``c_hat`` of the classes it interferes with, so they are drawn more. The trainer's DataLoader fetches nothing ahead, so
the batch of step ``t`` is drawn after step ``t - 1`` has updated ``S`` and the counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..models.heads import find_head, logits_of
from ..utils.errors import ConfigError
from .base import ContinualMethod
from .conv_features import ConvGradientFeatures, coords_per_layer, residual_conv2s
from .options import MethodOptions
from .retrieval_math import (
    add_uses,
    class_balanced_draw,
    class_similarity,
    count_decay_factor,
    damp_immature_classes,
    decay_counts,
    draw_without_replacement,
    effective_use_frequency,
    retrieval_probabilities,
    similarity_ema_update,
)


@dataclass
class SAROptions(MethodOptions):
    RANGES: ClassVar[dict[str, str]] = {
        "sar_temperature": "> 0",
        "sar_decay_k": "> 0",
        "sar_warmup_samples": ">= 0",
        "similarity_ema": "(0, 1]",
        "similarity_coords": ">= 1",
    }
    FEATURES: ClassVar[tuple[str, ...]] = ("head", "conv")
    sar_temperature: float = field(default=0.125, metadata={"help": "Retrieval softmax temperature T (ex.sh)."})
    sar_decay_k: float = field(
        default=4.0, metadata={"help": "Use counts decay by 1 - B / (k |M|) per iteration (ex.sh: k = 4)."}
    )
    sar_warmup_samples: int = field(
        default=50, metadata={"help": "Class-balanced retrieval before this many arrivals."}
    )
    sar_scale_by_memory: bool = field(
        default=True, metadata={"help": "Use max(0, c_hat / |M|) as the official code (the scale T was tuned on)."}
    )
    sar_damp_new_classes: bool = field(
        default=False,
        metadata={
            "help": "Damp the burst of draws on a class that has just entered memory: a slot's effective use "
            "frequency is at least (1 - a_y / max a) times the maturity-weighted mean, so a class whose statistics "
            "are younger than the others' (a_y = 0: no row of S yet) is drawn about as often as under uniform "
            "replay, not almost exclusively; classes that arrived together are not damped."
        },
    )
    similarity_ema: float = field(default=0.001, metadata={"help": "EMA ratio of the class gradient statistics."})
    similarity_coords: int = field(
        default=64,
        metadata={"help": "Fixed random head-gradient coordinates per sample (not floor(1e-4 numel), pitfall 7)."},
    )
    similarity_features: str = field(
        default="head",
        metadata={
            "help": "Per-sample gradient features of the class similarity: head (similarity_coords head-weight "
            "coordinates, analytic, no backward needed) | conv (the authors': every residual block's conv2 weight "
            "at max(1, floor(1e-4 numel)) fixed coordinates, from hooks, unfrozen blocks only; CNNs only)."
        },
    )

    def validate(self) -> None:
        super().validate()
        if self.similarity_features not in self.FEATURES:
            raise ConfigError(
                f"similarity_features: expected one of {', '.join(self.FEATURES)}, got {self.similarity_features!r}"
            )


def head_gradient_features(
    logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Per-sample head-weight gradients of the cross-entropy on coordinates ``(rows[j], cols[j])``, clamped to [-1, 1].

    ``g_n[j] = (softmax(z_n)_{rows[j]} - [y_n = rows[j]]) * h_{n, cols[j]}``: the per-sample (not batch-mean)
    gradient; cosines ignore the scale but the clamp does not, so the unscaled per-sample form is the one to clamp.
    """
    p = torch.softmax(logits.float(), dim=-1)
    residual = p[:, rows] - (labels[:, None] == rows[None, :]).float()
    return (residual * features.float()[:, cols]).clamp_(-1.0, 1.0)


class SAR(ContinualMethod):
    """Replay with similarity-aware, frequency-based retrieval; every batch comes from memory."""

    name = "sar"
    stream_fraction = 0.0

    Options = SAROptions

    def __init__(self, config: Any = None, **options: Any):
        super().__init__(config, **options)
        o = self.options
        self.temperature, self.decay_k, self.warmup_samples = o.sar_temperature, o.sar_decay_k, o.sar_warmup_samples
        self.scale_by_memory, self.alpha, self.n_coords = o.sar_scale_by_memory, o.similarity_ema, o.similarity_coords
        self.features, self.damp_new_classes = o.similarity_features, o.sar_damp_new_classes
        self.seed = int(getattr(config, "seed", 0))  # the coordinates are drawn with the run's seed
        # Per-class state, indexed by label id and grown when a larger label appears.
        self.class_counts = np.zeros(0)  # U
        self.known = np.zeros(0, dtype=bool)  # classes introduced so far
        self.self_sim = np.zeros(0)  # s
        self.maturity = np.zeros(0)  # a
        self.class_mean = np.zeros((0, 0))  # gbar, (C, K): K is fixed when the head is found
        self.S = np.zeros((0, 0))
        self.coords: np.ndarray | None = None  # (K, 2): (class row, feature column) of the head weight
        self.conv_coords: np.ndarray | None = None  # (K, 2): (target layer, flat weight index), conv features
        self.similarity_updates = 0  # samples fed to the similarity EMAs
        self._head: nn.Module | None = None
        self._num_outputs = 0
        self._features: torch.Tensor | None = None
        self._warned_token_logits = False
        self._ctx: Any = None
        self._conv: ConvGradientFeatures | None = None
        self._labels: torch.Tensor | None = None  # of the training forward, for the conv features after backward

    def setup(self, ctx) -> None:
        """Find the head on the model's first forward (the profiler's measurement, before any training step), when
        the width of the logits is known. Conv features: hook the target convolutions and draw their coordinates."""
        self._ctx = ctx
        if self.features == "conv":
            self._conv = ConvGradientFeatures(ctx.model, lambda: ctx.in_training_pass)
            if self.conv_coords is None:  # else restored from a checkpoint, with its class vectors
                self.conv_coords = self._conv.draw(np.random.default_rng(self.seed))
                self.class_mean = np.zeros((self.class_counts.size, len(self.conv_coords)))
            return

        def attach_on_first_forward(module: nn.Module, args: tuple, output: Any) -> None:
            handle.remove()
            if self._head is None:
                self._attach(ctx.model, logits_of(output).shape[-1])

        handle = ctx.model.register_forward_hook(attach_on_first_forward)

    # ---- per-class arrays -------------------------------------------------------------------------------------
    def _grow(self, n_classes: int) -> None:
        pad = n_classes - self.class_counts.size
        if pad <= 0:
            return
        self.class_counts = np.pad(self.class_counts, (0, pad))
        self.known = np.pad(self.known, (0, pad))
        self.self_sim = np.pad(self.self_sim, (0, pad))
        self.maturity = np.pad(self.maturity, (0, pad))
        self.class_mean = np.pad(self.class_mean, ((0, pad), (0, 0)))
        # A new class has a = 0, so its row of S is 0 after the next rebuild; pad with that value right away
        # (the reference pads with mean values until the rebuild, one step later).
        self.S = np.pad(self.S, ((0, pad), (0, pad)))

    def _introduce(self, labels: np.ndarray) -> None:
        """New classes: gbar = 0, a = 0, s = mean s of the known classes (1 for the first class)."""
        if labels.size == 0:
            return
        self._grow(int(labels.max()) + 1)
        for c in np.unique(labels):
            if not self.known[c]:
                self.self_sim[c] = self.self_sim[self.known].mean() if self.known.any() else 1.0
                self.known[c] = True

    # ---- retrieval (called by the sampler, identically on every rank) -----------------------------------------
    def retrieve(self, memory, n: int, rng: np.random.Generator, samples_seen: int) -> np.ndarray:
        labels = np.asarray(memory.labels, dtype=np.int64)
        self._introduce(labels)
        m, c = len(memory), self.class_counts.size
        factor = count_decay_factor(n, m, self.decay_k)  # B = n: every row of a SAR batch is retrieved
        memory.use_counts[:] = decay_counts(memory.use_counts, factor).tolist()
        self.class_counts = decay_counts(self.class_counts, factor)
        flops = m + c  # the decay
        if samples_seen < self.warmup_samples:
            slots = class_balanced_draw(labels, n, rng)
            flops += 2 * min(n, m)
        else:
            c_hat = effective_use_frequency(
                memory.use_counts, labels, self.class_counts, self.S, paper_compat=self.scale_by_memory
            )
            if self.damp_new_classes:
                c_hat = damp_immature_classes(c_hat, labels, self.maturity)
            slots = draw_without_replacement(retrieval_probabilities(c_hat, self.temperature), n, rng)
            # S @ U (2C^2), c_hat per slot (4), softmax (4: scale, exp, sum, normalise), sequential draw (2 |M| per
            # drawn slot: a cumulative sum and a search over the remaining mass); damping: ratio, mean, floor, max (7).
            flops += 2 * c * c + 8 * m + 2 * min(n, m) * m + (7 * m if self.damp_new_classes else 0)
        if self._ctx is not None:  # the sampler runs on every rank
            self._ctx.charge("sar_retrieval", flops, on_every_rank=True)
        return slots

    def on_retrieved(self, memory, slots: np.ndarray) -> None:
        """``u_i += 1`` and ``U_{y_i} += 1`` for every retrieved slot (a slot drawn twice in warm-up counts twice)."""
        u, self.class_counts = add_uses(memory.use_counts, self.class_counts, slots, memory.labels)
        memory.use_counts[:] = u.tolist()

    # ---- class similarity (called from compute_loss after the forward) ----------------------------------------
    def _attach(self, model: nn.Module, num_outputs: int) -> None:
        """Find the head, hook its input (the penultimate features) and draw the fixed coordinates (seeded)."""
        try:
            self._head = find_head(model, num_outputs)
        except ValueError as err:  # e.g. a tied LM head: retrieval by use frequency only (S = 0), as for ViT
            warnings.warn(f"sar: {err}: class similarity disabled", stacklevel=2)
            self._head = nn.Identity()  # marks the set-up as done; never hooked
            return
        self._head.register_forward_hook(self._capture)
        self._num_outputs = num_outputs
        if self.coords is None:  # else restored from a checkpoint, with its class vectors
            d = self._head.in_features
            k = min(self.n_coords, num_outputs * d)
            flat = np.sort(np.random.default_rng(self.seed).choice(num_outputs * d, size=k, replace=False))
            self.coords = np.stack([flat // d, flat % d], axis=1)
            self.class_mean = np.zeros((self.class_counts.size, k))

    def _capture(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._features = args[0].detach()

    def observe(self, ctx, inputs: dict, outputs: Any) -> None:
        logits = logits_of(outputs)
        if self.features == "conv":  # the features come with the backward (after_backward)
            labels = inputs.get("labels")
            ok = labels is not None and logits.dim() == 2 and labels.dim() == 1
            self._labels = labels.detach() if ok else None
            return
        if self._head is None:  # not set up through a trainer: the features of this forward are missed
            self._attach(ctx.model, logits.shape[-1])
        h, self._features = self._features, None
        if logits.dim() != 2 and not self._warned_token_logits:
            self._warned_token_logits = True  # once per run, not per step
            warnings.warn(
                "sar: per-token logits (a language model): class similarity needs one prediction per "
                "sample, so it is off and retrieval uses the use frequencies only (S = 0)",
                stacklevel=2,
            )
        labels = inputs.get("labels")
        if labels is None or h is None or logits.dim() != 2 or h.dim() != 2 or h.shape[0] != logits.shape[0]:
            return  # not a classifier head: no statistics
        if self.coords is None:  # similarity disabled
            return
        with torch.no_grad():
            # Logits and features are forward activations: under AMP they carry no loss scale, so nothing needs to
            # be unscaled (the reference clamps scaled gradients, pitfall 5). Cast to fp32 inside.
            rows = torch.as_tensor(self.coords[:, 0], device=logits.device)
            cols = torch.as_tensor(self.coords[:, 1], device=logits.device)
            g = head_gradient_features(logits.detach(), h, labels, rows, cols)
            # Each rank holds its shard of the global batch: gather so every rank applies the same update in the
            # same (global batch) order and S stays identical across ranks.
            g, labels = ctx.gather((g, labels.detach()))
        # Softmax (3 per logit) + subtract and multiply per coordinate; each rank forms its shard's rows.
        ctx.charge("sar_features", float(labels.numel() * (3 * self._num_outputs + 2 * g.shape[1])))
        for item, flops in self.update_similarity(g.cpu().numpy(), labels.cpu().numpy(), ctx.world_size).items():
            ctx.charge(item, flops)

    def after_backward(self, ctx) -> None:
        """Conv features: per-sample gradients at the coordinates of the blocks the backward ran through."""
        if self._conv is None:
            return
        taken, labels, self._labels = self._conv.take(self.conv_coords), self._labels, None
        if taken is None or labels is None:  # every block frozen (or no labels): nothing to learn S from
            return
        g, cols, flops_per_row = taken
        with torch.no_grad():
            # The output gradients are of the (AMP-scaled) mean loss over the local rows: rescale to per-sample
            # gradients before the clamp, as the head features are (the clamp is where the scale matters).
            g = (g * (int((labels >= 0).sum()) / ctx.loss_scale)).clamp_(-1.0, 1.0)
            g, labels = ctx.gather((g, labels))
        ctx.charge("sar_features", float(labels.numel() * (flops_per_row + 2 * len(cols))))  # + rescale, clamp
        for item, flops in self.update_similarity(
            g.cpu().numpy(), labels.cpu().numpy(), ctx.world_size, cols=cols
        ).items():
            ctx.charge(item, flops)

    def update_similarity(
        self, g: np.ndarray, labels: np.ndarray, world_size: int = 1, cols: np.ndarray | None = None
    ) -> dict[str, float]:
        """Feed per-sample features ``g`` (N, K') of classes ``labels`` to the class EMAs, then rebuild ``S``;
        returns the FLOPs of that work (all ranks together). ``cols``: the K' columns of the class vectors that
        ``g`` holds (default: all).

        Conv features on a step with a frozen prefix lack the frozen blocks' columns. Then only the columns present
        move (gbar there; s from the cosine over them), as in the authors' code: skipping such steps would learn S
        only from the batches the freezing criterion found informative enough to train fully (the selection bias
        of aL's Fisher), and S is still rebuilt from the whole class vectors."""
        keep = labels >= 0  # -100: ignored rows
        g, labels = g[keep], labels[keep].astype(np.int64)
        self._introduce(labels)
        cols = np.arange(self.class_mean.shape[1]) if cols is None else np.asarray(cols)
        part, self.self_sim, self.maturity = similarity_ema_update(
            self.class_mean[:, cols], self.self_sim, self.maturity, g, labels, self.alpha
        )  # rows with NaN/inf are skipped there
        self.class_mean[:, cols] = part
        self.S = class_similarity(self.class_mean, self.self_sim, self.maturity)
        self.similarity_updates += int(labels.size)
        n, (c, k), kp = int(labels.size), self.class_mean.shape, int(cols.size)
        # EMAs per sample: gbar (3K'), cos(g, gbar) (6K'), s and a (6); S: row norms and normalisation (3CK), Gram
        # matrix (2C^2K), weights (3C^2). Replicated on every rank.
        return {"sar_similarity": float(world_size * (n * (9 * kp + 6) + 3 * c * k + 2 * c * c * k + 3 * c * c))}

    # ---- accounting -------------------------------------------------------------------------------------------
    def extra_state_bytes(self, model: nn.Module, num_classes: int) -> dict[str, int]:
        """float64: U (C), S (C x C), gbar (C x K), s (C), a (C); int64 coordinates (K x 2).
        (Per-slot counts u live in the memory, as for every method.)"""
        c = int(num_classes)
        k = sum(coords_per_layer(residual_conv2s(model))) if self.features == "conv" else self.n_coords
        return {"sar_statistics": 8 * (c + c * c + c * k + 2 * c) + 8 * 2 * k}

    # ---- checkpointing ----------------------------------------------------------------------------------------
    _STATE = (
        "class_counts",
        "known",
        "self_sim",
        "maturity",
        "class_mean",
        "S",
        "coords",
        "conv_coords",
        "similarity_updates",
    )

    def state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self._STATE}
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            if k in state:
                setattr(self, k, np.array(state[k]) if isinstance(state[k], (list, np.ndarray)) else state[k])
