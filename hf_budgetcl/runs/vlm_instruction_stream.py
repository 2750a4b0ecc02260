"""Vision-language instruction-stream recipe: budgeted online continual instruction tuning of an HF VLM.

A concept-incremental stream of (image, question, answer) rows is trained online, with LoRA (or QLoRA over a
bitsandbytes 4/8-bit base, or full fine-tuning of the language model with ``lora_r: 0``), under a FLOPs and a byte
budget; every ``eval_period`` arrivals the generated answers to held-out questions of the concepts seen so far are
scored by normalised exact match. Runs with ``hf-budgetcl run --config ...``, ``python recipes/vlm_instruction_stream.py
--config ...`` or ``accelerate launch recipes/vlm_instruction_stream.py --config ...``.

The embedded default needs no network: easy-vqa's real images and questions, split by answer type (shape, then
colour, then yes/no), and a tiny random-weight LLaVA built into ``<output_dir>/base_model`` (tokenizer trained on the
data's text) and loaded back through :func:`~hf_budgetcl.models.tiny_vlm.load_vlm`, the same path as a Hub checkpoint.
``dataset: multi_domain`` is the multi-domain instruction stream of :mod:`hf_budgetcl.data.instruction_tasks` (one task
per domain, task-incremental); on any stream with task boundaries every task is evaluated at every boundary
(:mod:`hf_budgetcl.evaluation.task_matrix`), for the accuracy matrix, forgetting and BWT.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..config import BudgetedCLConfig
from ..models.tiny_vlm_size import TinyVLMSize
from ..stream.orders import StreamOrder, build_stream
from ..utils.errors import ConfigError
from ..utils.mirrored_field import mirrored_field
from ..utils.validation import check_numbers
from .arguments import ConfigParser
from .dtype_field import check_torch_dtype, torch_dtype_field

TINY_MODELS = ("tiny_llava", "tiny_qwen2vl")  # random weights: unit tests only
STAGE1_MODELS = {"stage1_llava": "llava", "stage1_qwen2vl": "qwen2vl"}  # the cached pretrained bases
MULTI_DOMAIN = "multi_domain"  # the built-in multi-domain instruction stream (hf_budgetcl.data.instruction_tasks)
# Module-name parts of the vision side (tower + projector/merger) across LLaVA, Qwen2-VL, Idefics3, PaliGemma.
VISION_PARTS = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "connector")


@dataclass
class ModelArguments:
    RANGES: ClassVar[dict[str, str]] = {
        "lora_r": ">= 0",
        "lora_dropout": "[0, 1)",
        "lora_alpha": ">= 1",
        "max_new_tokens": ">= 1",
        "max_length": ">= 1",
        **{f"tiny_{name}": rule for name, rule in TinyVLMSize.RANGES.items()},
    }
    model_name_or_path: str = field(
        default="stage1_llava",
        metadata={
            "help": "stage1_llava | stage1_qwen2vl (the cached stage-1 pretrained base, built on first use), "
            "tiny_llava | tiny_qwen2vl (random-weight model built into <output_dir>/base_model, for tests), "
            "a local checkpoint or a Hub model id."
        },
    )
    base_size: str = field(
        default="default",
        metadata={"help": "stage1_* bases: tiny | default | wide (see hf_budgetcl.training.pretrained_base.SIZES)."},
    )
    quantization: str = field(default="none", metadata={"help": "none | 4bit (NF4) | 8bit: bitsandbytes base."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank on the decoder blocks; 0 = full fine-tuning."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names that get adapters, inside the language decoder's layers only (default: q_proj "
            "k_proj v_proj o_proj gate_proj up_proj down_proj); all-linear: peft's choice, vision tower included."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter, e.g. lm_head (peft modules_to_save)."},
    )
    use_dora: bool = field(default=False, metadata={"help": "DoRA: weight-decomposed LoRA (peft use_dora)."})
    use_rslora: bool = field(default=False, metadata={"help": "rsLoRA: scale alpha / sqrt(r) (peft use_rslora)."})
    lora_task_type: str | None = field(
        default=None, metadata={"help": "peft TaskType, e.g. CAUSAL_LM (default: a plain PeftModel)."}
    )
    torch_dtype: str = torch_dtype_field(
        "the checkpoint's",
        "; with quantization also bitsandbytes' compute dtype (auto: bfloat16 on a GPU, float32 on CPU)",
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager | sdpa | flash_attention_2 | ... (default: transformers' choice)."}
    )
    train_vision_tower: bool = field(
        default=False, metadata={"help": "Train the vision tower and projector too (default: frozen as a whole)."}
    )
    max_new_tokens: int = field(default=8, metadata={"help": "Generated tokens per answer at evaluation."})
    max_length: int | None = field(default=None, metadata={"help": "Cut training sequences to this many tokens."})
    tiny_lm_hidden: int = mirrored_field(TinyVLMSize, "lm_hidden", "Tiny model")
    tiny_lm_layers: int = mirrored_field(TinyVLMSize, "lm_layers", "Tiny model")
    tiny_vision_layers: int = mirrored_field(TinyVLMSize, "vision_layers", "Tiny model")
    tiny_image_size: int = mirrored_field(TinyVLMSize, "image_size", "Tiny model")
    tiny_patch_size: int = mirrored_field(TinyVLMSize, "patch_size", "Tiny model")
    tiny_vocab_size: int = mirrored_field(TinyVLMSize, "vocab_size", "Tiny model")
    tiny_init_std: float = field(
        default=0.2,
        metadata={
            "help": "Tiny model: std of the random weights. LoRA trains over a frozen random base, whose "
            "head must already span large logits (0.02 caps them near ±1: nothing can be learnt)."
        },
    )

    def __post_init__(self):
        check_numbers(self, self.RANGES)
        check_torch_dtype(self.torch_dtype)


@dataclass
class DataArguments:
    RANGES: ClassVar[dict[str, str]] = {
        "max_train_images": ">= 1",
        "max_train_questions": ">= 1",
        "max_test_questions": ">= 1",
        "task_train_size": ">= 1",
        "task_test_size": ">= 1",
        "task_image_size": ">= 1",
        "task_order_seed": ">= 0",
    }
    dataset: str = field(
        default="easy_vqa",
        metadata={
            "help": f"easy_vqa | {MULTI_DOMAIN} (one instruction task per domain, see tasks) | a local .jsonl | "
            "a local imagefolder | a Hub dataset name."
        },
    )
    test_dataset: str | None = field(default=None, metadata={"help": "Held-out questions (jsonl/imagefolder/Hub)."})
    test_split: str = field(default="test", metadata={"help": "Split of the held-out questions (imagefolder/Hub)."})
    concepts: str = field(default="answer_type", metadata={"help": "easy_vqa concepts: answer_type | answer."})
    concept_order: str = field(
        default="label", metadata={"help": "Disjoint stream order: label (concept id order) | random (by seed)."}
    )
    max_train_images: int | None = field(default=None, metadata={"help": "easy_vqa: images kept (all questions)."})
    max_train_questions: int | None = field(default=None, metadata={"help": "Random subset of training rows."})
    max_test_questions: int | None = field(default=None, metadata={"help": "Random subset of held-out rows."})
    image_column: str = field(default="image", metadata={"help": "Image column of a generic dataset."})
    question_column: str = field(default="question", metadata={"help": "Question/instruction column."})
    answer_column: str = field(default="answer", metadata={"help": "Answer column."})
    concept_column: str = field(
        default="concept",
        metadata={"help": "Concept/task column (the stream's class); a dataset without 'concept' may have 'task'."},
    )
    tasks: str | None = field(
        default=None,
        metadata={
            "help": f"{MULTI_DOMAIN}: comma list of tasks (default all: shape,color,yes_no,fashion,digits,words)."
        },
    )
    task_order: str = field(
        default="given",
        metadata={"help": f"{MULTI_DOMAIN}: given (the tasks list) | random (by task_order_seed, else the run seed)."},
    )
    task_order_seed: int | None = field(default=None, metadata={"help": "Seed of a random task order."})
    task_train_size: int = field(default=200, metadata={"help": f"{MULTI_DOMAIN}: training rows per task."})
    task_test_size: int = field(default=50, metadata={"help": f"{MULTI_DOMAIN}: held-out rows per task."})
    task_image_size: int = field(default=32, metadata={"help": f"{MULTI_DOMAIN}: image side in pixels."})
    accuracy_matrix: bool = field(
        default=True,
        metadata={"help": "Evaluate every task at each task boundary (accuracy matrix, forgetting, BWT)."},
    )
    allow_external_paths: bool = field(
        default=False,
        metadata={"help": "Let a jsonl's image paths point outside its folder (absolute, '..', symlinks)."},
    )

    def __post_init__(self):
        check_numbers(self, self.RANGES)
        if self.task_order not in ("given", "random"):
            raise ConfigError(f"task_order: expected given or random, got {self.task_order!r}")


def make_parser() -> ConfigParser:
    return ConfigParser((ModelArguments, DataArguments, BudgetedCLConfig))


def _subset(ds, n: int | None, seed: int):
    if ds is None or n is None or n >= len(ds):
        return ds
    return ds.select(np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False)))


def load_data(data_args: DataArguments, seed: int = 0):
    """(train, test) datasets with columns image, question, answer, concept, label."""
    from ..data.vqa import load_easy_vqa

    columns = dict(
        image_column=data_args.image_column,
        question_column=data_args.question_column,
        answer_column=data_args.answer_column,
        concept_column=data_args.concept_column,
        allow_external_paths=data_args.allow_external_paths,
    )
    if data_args.dataset == "easy_vqa":
        train = load_easy_vqa("train", data_args.max_train_images, seed=seed, concepts=data_args.concepts)
        test = load_easy_vqa("test", concepts=data_args.concepts)
    elif data_args.dataset == MULTI_DOMAIN:
        from ..data.instruction_tasks import build_instruction_tasks

        train, test = build_instruction_tasks(
            data_args.tasks,
            train_size=data_args.task_train_size,
            test_size=data_args.task_test_size,
            image_size=data_args.task_image_size,
            seed=seed,
        )
    else:
        train, names = _load_user_dataset(data_args.dataset, "train", columns)
        if data_args.test_dataset is not None:
            test, test_names = _load_user_dataset(data_args.test_dataset, data_args.test_split, columns)
        elif os.path.isfile(data_args.dataset):  # a single jsonl: hold out a fifth of the rows
            test, test_names = None, names
        else:
            test, test_names = _load_user_dataset(data_args.dataset, data_args.test_split, columns)
        if test is None:
            order = np.random.default_rng(seed).permutation(len(train))
            cut = max(len(train) // 5, 1)
            train, test = train.select(np.sort(order[cut:])), train.select(np.sort(order[:cut]))
        elif test_names != names:  # labels are indices into the sorted concept names: they must agree
            raise ConfigError(f"test_dataset: concepts {test_names} differ from the training concepts {names}")
    train = _subset(train, data_args.max_train_questions, seed)
    return train, _subset(test, data_args.max_test_questions, seed + 1)


def _load_user_dataset(name: str, split: str, columns: dict[str, str]):
    """``load_vqa_dataset``, with a ``task`` column standing in for a missing default ``concept`` column."""
    from ..data.vqa import load_vqa_dataset

    try:
        ds, names = load_vqa_dataset(name, split=split, **columns)
    except ConfigError as err:
        if columns["concept_column"] != "concept" or "'concept'" not in str(err).split(" missing")[0]:
            raise
        try:
            ds, names = load_vqa_dataset(name, split=split, **{**columns, "concept_column": "task"})
        except ConfigError as retry:
            # No task column either: the error names the column asked for; else what else is missing.
            raise (err if "'task'" in str(retry).split(" missing")[0] else retry) from None
    empty = [n for n in names if not n.strip() or n == "None"]
    if empty:
        raise ConfigError(f"{name}: rows with an empty concept/task ({empty[0]!r}); every row needs its task")
    return ds, names


def task_order(data_args: DataArguments, n_tasks: int, seed: int) -> np.ndarray:
    """The labels of the multi-domain tasks in arrival order: as listed, or a seeded permutation."""
    if data_args.task_order == "given":
        return np.arange(n_tasks)
    order_seed = data_args.task_order_seed if data_args.task_order_seed is not None else seed
    return np.random.default_rng(order_seed).permutation(n_tasks)


def make_stream(config: BudgetedCLConfig, labels: np.ndarray, data_args: DataArguments) -> StreamOrder:
    if config.stream_file:
        return StreamOrder.from_json(config.stream_file, labels=labels)
    if config.stream == "domain":
        raise ConfigError(f"stream: '{config.stream}' is not supported by the VLM recipe (no domain column)")
    seed, params = config.stream_arguments()
    if config.stream == "disjoint" and data_args.dataset == MULTI_DOMAIN:
        # Task-incremental: one task per domain, whatever n_tasks says.
        n = len(np.unique(labels))
        params.update(n_tasks=n, class_order=task_order(data_args, n, config.seed))
    elif config.stream == "disjoint" and data_args.concept_order == "label":
        params["class_order"] = np.unique(labels)  # shapes, then colours, then yes/no for easy_vqa
    elif data_args.concept_order not in ("label", "random"):
        raise ConfigError(f"concept_order: expected label or random, got {data_args.concept_order!r}")
    return build_stream(config.stream, labels, seed, **params)


def build_base_model(model_args: ModelArguments, train, output_dir: str, build: bool = True, seed: int = 0) -> str:
    """Path of the base checkpoint: the cached stage-1 base (``stage1_*``), a tiny random model saved into
    ``<output_dir>/base_model``, or ``model_name_or_path`` itself. Built only if ``build``: other ranks just read it.
    The stage-1 base does not depend on the run's seed: every seed continues from the same pretrained model."""
    name = model_args.model_name_or_path
    if name in STAGE1_MODELS:
        from ..training.pretrained_base import ensure_pretrained_base, pretrained_base_path

        resolve = ensure_pretrained_base if build else pretrained_base_path
        return resolve(STAGE1_MODELS[name], model_args.base_size)
    if name not in TINY_MODELS:
        return name
    # Absolute: the path is written into the adapter config, which must reload from anywhere.
    path = os.path.abspath(os.path.join(output_dir, "base_model"))
    if not build:
        return path
    from ..models.tiny_vlm import build_tiny_llava, build_tiny_qwen2vl

    corpus = sorted(set(train["question"])) + sorted(set(train["answer"]))
    builder = build_tiny_llava if name == "tiny_llava" else build_tiny_qwen2vl
    return builder(path, corpus, size=TinyVLMSize.read(model_args, prefix="tiny_"), seed=seed)


def prepare_model(model_args: ModelArguments, base_path: str):
    """Load the base through ``load_vlm``; wrap with LoRA (decoder only) or set up full fine-tuning."""
    from ..models.lora import apply_peft, lora_config
    from ..models.tiny_vlm import load_vlm

    quant = None if model_args.quantization == "none" else model_args.quantization
    if quant is not None and (model_args.lora_r <= 0 or model_args.train_vision_tower):
        raise ConfigError(
            "quantization: a bitsandbytes base cannot be trained itself; use lora_r > 0 and train_vision_tower false"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gemv_4bit.*")
        model, processor = load_vlm(
            base_path,
            quantization=quant,
            dtype=model_args.torch_dtype,
            attn_implementation=model_args.attn_implementation,
        )
    if quant is not None:  # FlopCounterMode has no formula for bitsandbytes' matmuls: count them analytically
        from ..accounting.quantized_flops import register_quantized_flop_formulas

        register_quantized_flop_formulas()
    if model_args.lora_r > 0:
        config = lora_config(
            r=model_args.lora_r,
            alpha=model_args.lora_alpha,
            dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
            modules_to_save=model_args.lora_modules_to_save,
            use_dora=model_args.use_dora,
            use_rslora=model_args.use_rslora,
            task_type=model_args.lora_task_type,
        )
        model = apply_peft(model, config)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    if model_args.train_vision_tower:
        for name, p in model.named_parameters():
            if any(part in name.split(".") for part in VISION_PARTS):
                p.requires_grad_(True)
    elif model_args.lora_r <= 0:
        for name, p in model.named_parameters():
            if any(part in name.split(".") for part in VISION_PARTS):
                p.requires_grad_(False)  # frozen as a whole, so it is no freezable block and has no gradient
    return model, processor


def main(model_args: ModelArguments, data_args: DataArguments, config: BudgetedCLConfig):
    from transformers import set_seed

    from ..data.vlm_collator import VLMInstructionCollator
    from ..data.vqa import vqa_sample_nbytes
    from ..evaluation.task_matrix import TaskMatrix
    from ..evaluation.vqa import VQAEvaluator
    from ..models.fingerprint import weights_fingerprint
    from ..training.trainer import BudgetedCLTrainer

    set_seed(config.seed)
    train, test = load_data(data_args, seed=config.seed)
    train.info.dataset_name = data_args.dataset  # named in the model card and its model-index
    labels = np.asarray(train["label"])
    stream = make_stream(config, labels, data_args)
    with config.main_process_first(desc="base model"):  # rank 0 writes base_model before the others read it
        base_path = build_base_model(
            model_args, train, config.output_dir, build=config.process_index == 0, seed=config.seed
        )
        model, processor = prepare_model(model_args, base_path)
    collator = VLMInstructionCollator(processor, max_length=model_args.max_length)
    evaluator = VQAEvaluator(
        test,
        collator,
        train["answer"],
        labels,
        batch_size=config.per_device_eval_batch_size,
        max_new_tokens=model_args.max_new_tokens,
    )
    matrix = None
    if data_args.accuracy_matrix and stream.task_boundaries:
        matrix = TaskMatrix(evaluator, stream, class_names=train.features["label"].names)
    trainer = BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=train,
        stream=stream,
        sample_nbytes=vqa_sample_nbytes,
        evaluator=evaluator,
        data_collator=collator,
        processing_class=processor,
    )
    if matrix is not None:
        trainer.add_callback(matrix.callback(trainer))
    # The card names the base the user gave (a Hub id or their path); a tiny model built here has none.
    trainer.card_kwargs["finetuned_from"] = (
        None if model_args.model_name_or_path in TINY_MODELS else model_args.model_name_or_path
    )
    trainer.run_facts["base_model"] = weights_fingerprint(base_path)
    trainer.run_arguments.record(model_args, data_args)  # a resume with another model or data refuses
    trainer.train()  # ends with the atomic finish: model (LoRA: the adapter), processor, results, card, stream.json
    return trainer


def run(argv: Sequence[str]):
    model_args, data_args, config = make_parser().parse_with_config(argv, ignore_keys=("recipe",))
    return main(model_args, data_args, config)
