"""A pretrained VLM base made offline: LLaVA-style stage 1 on synthetic scenes, built once and cached.

No VLM weights can be downloaded here, so the project makes the base a user would start from:
:func:`ensure_pretrained_base` builds a small LLaVA (CLIP + Llama) or Qwen2-VL through the tiny builders, with a
byte-level BPE tokenizer trained on the stage-1 text plus a generic English word list (so later tasks' text splits
sensibly), fully fine-tunes it (vision tower, projector and language model) with the plain ``transformers.Trainer``
and :class:`~hf_budgetcl.data.vlm_collator.VLMInstructionCollator` on :mod:`~hf_budgetcl.data.stage1_scenes`
(captions and general QA, disjoint from every continual stream), scores its own held-out questions per type, and
``save_pretrained`` model and processor. ``stage1.json`` in the folder records the build config, data sizes, seed,
training loss and that eval.

The cache is ``$HF_BUDGETCL_CACHE`` or ``~/.cache/hf_budgetcl``; the folder name holds the family, the size and a
hash of the build config, so a changed config builds a new base and an unchanged one is reused. A build runs in a
temporary folder renamed into place (a kill never leaves a half base) under a file lock (two processes building the
same base: one builds, the other waits and reuses it). Builds are deterministic on one machine: one thread and
``torch.use_deterministic_algorithms``, seeded model init, data and data order.

``python -m hf_budgetcl.training.pretrained_base --family llava --size default`` (or ``scripts/build_vlm_base.py``)
builds ahead of a run. The module sits in ``training``, not ``models``: it trains and evaluates (layers above models).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.errors import ConfigError

FAMILIES = ("llava", "qwen2vl")
# Bump when the build procedure changes in a way the config does not show: old cached bases are then not reused.
BUILD_FORMAT = 2  # 2: tower pretraining, tower frozen for the captions, no answer-length grouping
STAGE1_FILE = "stage1.json"
# Distributed launchers' variables: a build inside such a process runs in a clean subprocess (one rank trains alone).
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class BaseBuildConfig:
    """Architecture, stage-1 data and training of one base size (everything that decides its weights)."""

    lm_hidden: int
    lm_layers: int
    vision_layers: int
    vision_hidden: int  # Qwen2-VL's tower width (LLaVA's tower is as wide as its decoder)
    vocab_size: int
    image_size: int = 32
    patch_size: int = 8
    train_images: int = 4000
    eval_images: int = 100
    questions_per_image: int = 3
    letters_fraction: float = 0.4
    caption_fraction: float = 1.0
    max_steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    init_std: float = 0.02
    vision_steps: int = 0  # supervised tower pretraining before the captions (0: none)
    vision_learning_rate: float = 2e-3
    vision_eval_images: int = 500
    num_threads: int = 1  # part of the config: float sums, hence the weights, depend on it


SIZES: dict[str, BaseBuildConfig] = {
    # For tests: builds in seconds, learns next to nothing.
    "tiny": BaseBuildConfig(
        lm_hidden=32,
        lm_layers=2,
        vision_layers=1,
        vision_hidden=32,
        vocab_size=600,
        train_images=24,
        eval_images=4,
        max_steps=8,
        batch_size=8,
        learning_rate=3e-3,
        vision_steps=4,
        vision_eval_images=8,
    ),
    # The recipes' base, small enough that a LoRA continual run on it takes minutes. Measured (one thread, 1,500
    # caption steps): held-out exact match 0.40 against 0.16 for the first base, which never looked at the image.
    "default": BaseBuildConfig(
        lm_hidden=128,
        lm_layers=4,
        vision_layers=2,
        vision_hidden=64,
        vocab_size=1024,
        train_images=6000,
        eval_images=100,
        max_steps=2400,
        vision_steps=2000,
    ),
    # For timing at a realistic width only: a short stage 1.
    "wide": BaseBuildConfig(
        lm_hidden=512,
        lm_layers=8,
        vision_layers=2,
        vision_hidden=128,
        vocab_size=2048,
        max_steps=100,
        vision_steps=100,
    ),
}


def default_cache_dir() -> str:
    return os.environ.get("HF_BUDGETCL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_budgetcl")


def build_config(family: str, size: str, seed: int = 0) -> dict[str, Any]:
    """The full build config (what is hashed into the folder name and recorded in ``stage1.json``)."""
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    if size not in SIZES:
        raise ConfigError(f"base_size must be one of {list(SIZES)}, got {size!r}")
    return {"format": BUILD_FORMAT, "family": family, "size": size, "seed": seed, **dataclasses.asdict(SIZES[size])}


def pretrained_base_path(family: str, size: str = "default", cache_dir: str | None = None, seed: int = 0) -> str:
    """Where the base lives once built (no build)."""
    config = build_config(family, size, seed)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(os.path.abspath(cache_dir or default_cache_dir()), f"stage1_{family}_{size}_{digest}")


def ensure_pretrained_base(family: str, size: str = "default", cache_dir: str | None = None, seed: int = 0) -> str:
    """The folder of the cached stage-1 base of ``family`` ("llava" or "qwen2vl") and ``size`` ("tiny",
    "default", "wide"), built on first use. It reloads with :func:`~hf_budgetcl.models.tiny_vlm.load_vlm`."""
    from filelock import FileLock

    path = pretrained_base_path(family, size, cache_dir, seed)
    if os.path.isdir(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path + ".lock"):
        if os.path.isdir(path):  # another process built it while this one waited
            return path
        for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                _build_in_subprocess(family, size, seed, tmp)
            else:
                build_pretrained_base(family, size, tmp, seed)
            os.rename(tmp, path)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _build_in_subprocess(family: str, size: str, seed: int, save_dir: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
    cmd = [sys.executable, "-m", __name__, "--family", family, "--size", size, "--seed", str(seed)]
    subprocess.run([*cmd, "--save_dir", save_dir], env=env, check=True)


@contextlib.contextmanager
def _deterministic(num_threads: int) -> Iterator[None]:
    import torch

    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(flag)


def build_pretrained_base(family: str, size: str, save_dir: str, seed: int = 0) -> dict[str, Any]:
    """Build the base into ``save_dir`` (no cache, no lock) and return what ``stage1.json`` records."""
    import torch
    import transformers
    from transformers import Trainer, TrainingArguments, set_seed

    from ..data.english_words import english_words
    from ..data.stage1_scenes import stage1_corpus, stage1_scenes
    from ..data.vlm_collator import VLMInstructionCollator
    from ..models.tiny_vlm import TinyVLMSize, make_tiny_vlm, save_vlm

    config = build_config(family, size, seed)
    cfg = SIZES[size]
    start = time.perf_counter()
    with _deterministic(cfg.num_threads):
        set_seed(seed)
        data = dict(seed=seed, image_size=cfg.image_size, letters_fraction=cfg.letters_fraction)
        train = stage1_scenes(
            cfg.train_images,
            "train",
            questions_per_image=cfg.questions_per_image,
            caption_fraction=cfg.caption_fraction,
            **data,
        )
        test = stage1_scenes(cfg.eval_images, "test", questions_per_image=None, **data)
        arch = {"size": TinyVLMSize.read(cfg), "seed": seed}
        if family == "qwen2vl":
            arch["vision_hidden"] = cfg.vision_hidden
        # A leading space, as words stand inside a sentence: the byte-level BPE then learns "Ġword" merges.
        corpus = [*stage1_corpus(train), *(f" {w}" for w in english_words())]
        model, processor = make_tiny_vlm(family, corpus, **arch)
        vision = pretrain_vision(model, processor, cfg, seed) if cfg.vision_steps else None
        collator = VLMInstructionCollator(processor)
        args = TrainingArguments(
            output_dir=os.path.join(save_dir, "trainer"),
            per_device_train_batch_size=cfg.batch_size,
            max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(int(cfg.warmup_ratio * cfg.max_steps), 1),
            weight_decay=cfg.weight_decay,
            logging_steps=max(cfg.max_steps // 20, 1),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=seed,
            data_seed=seed,
            remove_unused_columns=False,  # the collator needs image, question and answer
            # Captions are ~3x longer than answers: batches of captions and batches of answers pad far less.
            train_sampling_strategy="group_by_length",
            length_column_name="length",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        # Grouped by "caption or not" only. Grouped by text length, a batch's rows shared their answer (the answer's
        # length is in the key): no contrast within a batch, and the decoder learnt the text prior, not the image.
        lengths = [int(concept == "caption") for concept in train["concept"]]
        trainer = Trainer(
            model=model, args=args, train_dataset=train.add_column("length", lengths), data_collator=collator
        )
        # As in LLaVA, the pretrained tower stays frozen while projector and decoder learn the captions. Trained
        # with them, Adam moves its weights a full step per iteration on its tiny, noisy gradients and the decoder
        # ends up reading noise (held-out answers at the majority level, measured).
        tower = vision_tower_parameters(model) if cfg.vision_steps else []
        for p in tower:
            p.requires_grad_(False)
        result = trainer.train()
        for p in tower:
            p.requires_grad_(True)
        train_seconds = time.perf_counter() - start
        evaluation = evaluate_stage1(model, collator, test, train)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    save_vlm(model, processor, save_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record = {
        "config": config,
        "data": {
            "train_images": cfg.train_images,
            "train_rows": len(train),
            "eval_images": cfg.eval_images,
            "eval_rows": len(test),
            "disjoint_from": "every continual stream: drawn scenes only; letter strings are never English words",
        },
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss": float(result.training_loss),
        "train_loss_first_logged": losses[0] if losses else None,
        "train_loss_last_logged": losses[-1] if losses else None,
        "vision_pretraining": vision,
        "eval": evaluation,
        "train_seconds": round(train_seconds, 1),
        "build_seconds": round(time.perf_counter() - start, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    with open(os.path.join(save_dir, STAGE1_FILE), "w") as f:
        json.dump(record, f, indent=2)
    return record


def vision_tower_parameters(model: Any) -> list[Any]:
    """The image encoder's parameters, without the projector (Qwen2-VL: ``visual`` less its patch merger)."""
    encoder = model.model
    if hasattr(encoder, "vision_tower"):
        return list(encoder.vision_tower.parameters())
    merger = {id(p) for p in encoder.visual.merger.parameters()}
    return [p for p in encoder.visual.parameters() if id(p) not in merger]


def projector_parameters(model: Any) -> list[Any]:
    encoder = model.model
    return list(
        (encoder.multi_modal_projector if hasattr(encoder, "vision_tower") else encoder.visual.merger).parameters()
    )


def pretrain_vision(model: Any, processor: Any, cfg: BaseBuildConfig, seed: int) -> dict[str, Any]:
    """Supervised pretraining of the vision tower and projector, as a user's base starts from a pretrained image
    encoder: a linear head on the image's visual tokens (``get_image_features``, what the decoder will read)
    predicts the scene's :data:`~hf_budgetcl.data.stage1_scenes.ATTRIBUTE_CLASSES` (cross-entropy, AdamW, cosine).
    The head is dropped afterwards. Without this phase the decoder learns the answers' text prior and ignores the
    image: a random tower's gradients are ~100× smaller than the language model's (measured on the first base).
    Returns the held-out accuracy per attribute group (background, shape, color, size, letters)."""
    import numpy as np
    import torch

    from ..data.stage1_scenes import ATTRIBUTE_CLASSES, stage1_attribute_images

    data = dict(seed=seed, image_size=cfg.image_size, letters_fraction=cfg.letters_fraction)
    encoder = model.model  # LlavaModel / Qwen2VLModel: both expose get_image_features

    def encode(images: list[Any]) -> dict[str, torch.Tensor]:
        return dict(processor.image_processor(images=images, return_tensors="pt"))

    def features(pixels: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        if "image_grid_thw" in pixels:  # Qwen2-VL: flattened patches, the same count per image
            grid = pixels["image_grid_thw"][rows]
            per_image = int(grid[0].prod())
            patches = pixels["pixel_values"].view(-1, per_image, pixels["pixel_values"].shape[-1])[rows]
            out = encoder.get_image_features(patches.flatten(0, 1), image_grid_thw=grid).pooler_output
        else:
            out = encoder.get_image_features(pixels["pixel_values"][rows]).pooler_output
        return torch.stack(list(out)).flatten(1)

    eval_images = cfg.vision_eval_images
    images, targets = stage1_attribute_images(cfg.train_images, "train", **data)
    test_images, test_targets = stage1_attribute_images(eval_images, "test", **data)
    train_pixels, test_pixels = encode(images), encode(test_images)
    sizes = [n for _, n in ATTRIBUTE_CLASSES]
    width = features(train_pixels, torch.arange(1)).shape[1]
    head = torch.nn.Linear(width, sum(sizes))
    params = [*vision_tower_parameters(model), *projector_parameters(model)]
    optimizer = torch.optim.AdamW([*params, *head.parameters()], lr=cfg.vision_learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.vision_learning_rate, total_steps=cfg.vision_steps)
    y = torch.from_numpy(targets)
    generator = torch.Generator().manual_seed(seed)

    def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = torch.split(logits, sizes, dim=1)
        return sum(torch.nn.functional.cross_entropy(p, target[:, i]) for i, p in enumerate(parts)) / len(sizes)

    model.train()
    losses = []
    for _ in range(cfg.vision_steps):
        rows = torch.randint(len(images), (cfg.batch_size,), generator=generator)
        loss = loss_of(head(features(train_pixels, rows)), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = head(features(test_pixels, torch.arange(eval_images)))
    predicted = np.stack([p.argmax(1).numpy() for p in torch.split(logits, sizes, dim=1)], axis=1)
    correct = predicted == test_targets
    groups: dict[str, list[np.ndarray]] = {}
    for i, (name, _) in enumerate(ATTRIBUTE_CLASSES):
        group, present = name.split("@")[0].split("_")[0], test_targets[:, i] > 0
        if name == "background":
            present = np.ones(eval_images, bool)
        groups.setdefault(group, []).append(correct[present, i])  # scored where the attribute exists
    return {
        "steps": cfg.vision_steps,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-20:])),
        "held_out_images": eval_images,
        "held_out_accuracy": {g: round(float(np.concatenate(v).mean()), 4) for g, v in groups.items()},
    }


def evaluate_stage1(model: Any, collator: Any, test: Any, train: Any, batch_size: int = 64) -> dict[str, Any]:
    """Exact match of greedy answers per question type on the held-out scenes, next to each type's majority
    baseline (the most frequent training answer of that type)."""
    import numpy as np

    from ..data.stage1_scenes import QUESTION_TYPES
    from ..evaluation.metrics import exact_match
    from ..evaluation.vqa import VQAEvaluator

    evaluator = VQAEvaluator(test, collator, train["answer"], train["label"], batch_size=batch_size)
    labels = np.asarray(test["label"])
    per_type: dict[str, dict[str, float | int]] = {}
    correct_all: list[bool] = []
    model.eval()
    for label in np.unique(labels):
        rows = [test[int(i)] for i in np.flatnonzero(labels == label)]
        answers = [r["answer"] for r in rows]
        # Room for the longest answer of the type (+2 for end of turn and slack); captions need far more than QA.
        evaluator.max_new_tokens = max(
            len(collator.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers
        )
        evaluator.max_new_tokens += 2
        correct = [bool(exact_match(p, a)) for p, a in zip(evaluator.generate(model, rows), answers)]
        correct_all += correct
        per_type[QUESTION_TYPES[int(label)]] = {
            "exact_match": float(np.mean(correct)),
            "majority_baseline": float(evaluator.majority_baseline(np.array([label]))),
            "questions": len(rows),
        }
    return {"exact_match": float(np.mean(correct_all)), "per_type": per_type}


def read_stage1(path: str) -> dict[str, Any]:
    """The ``stage1.json`` of a built base."""
    with open(os.path.join(path, STAGE1_FILE)) as f:
        return json.load(f)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Build (or find) the cached stage-1 VLM base.")
    parser.add_argument("--family", choices=FAMILIES, default="llava")
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=None, help="default: $HF_BUDGETCL_CACHE or ~/.cache/hf_budgetcl")
    parser.add_argument("--save_dir", default=None, help="build into this folder, bypassing the cache")
    args = parser.parse_args(argv)
    if args.save_dir is not None:
        build_pretrained_base(args.family, args.size, args.save_dir, args.seed)
        path = args.save_dir
    else:
        path = ensure_pretrained_base(args.family, args.size, args.cache_dir, args.seed)
    print(path)
    return path


if __name__ == "__main__":
    main()
