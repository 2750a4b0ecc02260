"""The model card of a run: the budget, the stream, the method and the anytime metrics, rendered for the Hub.

* :func:`build_model_card` renders ``templates/model_card.md`` (source: ``model_cards/budgetcl_model_card.md``) with
  ``huggingface_hub.ModelCardData`` and one ``EvalResult`` each for A_AUC and A_last, so the Hub (and
  ``huggingface_hub.metadata_load`` / ``model_index_to_eval_results``) read the anytime metrics from the model-index.
* :func:`write_trainer_model_card` is what ``BudgetedCLTrainer.create_model_card`` runs: at the end of ``train()``
  and inside ``Trainer.push_to_hub``.
* :func:`push_output_dir` uploads weights, config, processor files, ``README.md`` and ``results.json`` in one commit;
  it never skips silently: offline or unreachable Hub raises :class:`HubUnreachableError`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import (
    EvalResult,
    ModelCard,
    ModelCardData,
)

__all__ = [
    "CITATION",
    "build_model_card",
    "framework_versions",
    "hyperparameters",
    "template_path",
    "write_trainer_model_card",
]


from ..evaluation.per_class import class_names_from_id2label, final_class_accuracies
from .push import REPO_ID

CITATION = """@inproceedings{seo2025budgeted,
  title     = {Budgeted Online Continual Learning by Adaptive Layer Freezing and Frequency-based Sampling},
  author    = {Seo, Minhyuk and Koh, Hyunseo and Choi, Jonghyun},
  booktitle = {The Thirteenth International Conference on Learning Representations (ICLR)},
  year      = {2025},
  eprint    = {2410.15143},
  archivePrefix = {arXiv},
  url       = {https://arxiv.org/abs/2410.15143}
}"""


FRAMEWORKS = ("hf_budgetcl", "transformers", "torch", "accelerate", "peft", "datasets", "huggingface_hub")


# Always listed in the card, default or not: they define the budget and the method.
KEY_ARGUMENTS = (
    "method",
    "freeze",
    "online_iter",
    "per_device_train_batch_size",
    "learning_rate",
    "optim",
    "memory_size",
    "memory_budget_bytes",
    "count_optimizer_state",
    "flops_budget",
    "flops_budget_per_sample",
    "eval_period",
    "seed",
)


# Not hyper-parameters: paths, logging, credentials.
_SKIP_ARGUMENTS = {
    "output_dir",
    "run_name",
    "report_to",
    "disable_tqdm",
    "push_to_hub",
    "accelerator_config",  # filled in by __post_init__
    "ignore_data_skip",  # always True: the stream sampler resumes the data itself
}


_SKIP_PREFIXES = ("logging_", "hub_", "save_")


def template_path() -> str:
    """Path of the card template shipped in the package."""
    return str(files("hf_budgetcl.hub") / "templates" / "model_card.md")


def framework_versions() -> dict[str, str]:
    """Installed versions of the libraries a checkpoint depends on ("not installed" where absent)."""
    out = {}
    for name in FRAMEWORKS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def field_defaults(config: Any) -> dict[str, Any]:
    """The class defaults of a config dataclass, read from its fields (building a second TrainingArguments would
    reset accelerate's process-wide state under a live trainer)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = getattr(value, "value", value)  # enums as to_dict() writes them
    return out


def _same(value: Any, default: Any) -> bool:
    """Equal, or both unset: ``__post_init__`` turns some None defaults into False or [] (e.g. report_to, debug)."""

    def unset(x: Any) -> bool:
        return x is None or x is False or (isinstance(x, (str, list, dict)) and not x)

    return value == default or (unset(value) and unset(default))


def hyperparameters(config: Any) -> dict[str, Any]:
    """:data:`KEY_ARGUMENTS` plus every other argument of ``config`` that differs from its class defaults."""
    if config is None:
        return {}
    values = config.to_dict()
    defaults = field_defaults(config)
    skip = {k for k in values if k in _SKIP_ARGUMENTS or k.startswith(_SKIP_PREFIXES) or k.endswith("_token")}
    keep = {
        k: v
        for k, v in values.items()
        if k in KEY_ARGUMENTS or (k in defaults and not _same(v, defaults[k]) and k not in skip)
    }
    return dict(sorted(keep.items()))


def _fmt_flops(x: float | None) -> str:
    return "unlimited" if x is None else f"{x:.4g}"


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


def _budget_rows(results: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(FLOPs rows, memory rows) of the card's budget tables."""
    budget = results.get("flops_budget")
    used = results["train_flops"]
    share = f" ({100 * used / budget:.1f} %)" if budget else ""
    flops = [("training FLOPs", _fmt_flops(used) + share, _fmt_flops(budget))]
    flops += [(f"  {item}", _fmt_flops(v), "") for item, v in results.get("flops_items", {}).items()]
    flops += [
        ("backward FLOPs saved by freezing", _pct(results.get("backward_flops_saved_fraction", 0.0)), ""),
        (
            "iterations",
            f"{results['iterations']} (batch {results['batch_size']}, online_iter {results['online_iter']})",
            f"stopped by {results['stopped_by']}",
        ),
        ("samples seen", f"{results['samples_seen']} of {results['stream']['length']}", ""),
    ]
    mem = dict(results["memory_bytes"])
    total = mem.pop("total")
    memory = [
        (item + (f" ({results.get('memory_slots')} samples)" if item == "replay_samples" else ""), f"{v:,}", "")
        for item, v in mem.items()
    ]
    memory.append(("**total**", f"{total:,}", f"{results['memory_budget_bytes']:,}"))
    return flops, memory


def _task_matrix(results: dict[str, Any]) -> dict[str, Any] | None:
    """The card's accuracy-matrix tables (rows: after each task; columns: the tasks), or None without a matrix."""
    matrix, names = results.get("accuracy_matrix"), results.get("task_names")
    if not matrix or not names:
        return None
    baselines = results.get("majority_baseline_per_task", {})
    metrics = [
        ("A_last (mean over tasks)", _pct(results.get("A_last_tasks"))),
        ("average forgetting", _pct(results.get("forgetting"))),
        ("BWT", _pct(results.get("BWT"))),
        ("majority baseline (mean over tasks)", _pct(results.get("majority_baseline_task_mean"))),
    ]
    metrics += [(f"  majority baseline, {name}", _pct(baselines.get(name))) for name in names]
    return {
        "names": list(names),
        "rows": [(names[i] if i < len(names) else str(i), [_pct(v) for v in row]) for i, row in enumerate(matrix)],
        "metrics": metrics,
    }


def _class_rows(results: dict[str, Any], class_names: Mapping[int, str] | None) -> list[tuple[str, str]] | None:
    """(class, accuracy) of the last evaluation, in the order the stream brought the classes (the class ids where
    no names are given), or None without per-class accuracies."""
    final = final_class_accuracies(results)
    names = class_names or {}
    return [(str(names.get(c, c)).replace("|", "\\|"), _pct(acc)) for c, acc in final.items()] or None


def class_names_of(model: Any) -> dict[int, str] | None:
    """The model's ``id2label``, unless it holds only transformers' placeholders (``LABEL_0`` ...)."""
    return class_names_from_id2label(getattr(getattr(model, "config", None), "id2label", None))


def _load_snippet(repo_id: str, task_type: str, native: bool = True) -> str:
    if task_type == "image-classification":
        return (
            (
                ""
                if native
                else "# pip install hf-budgetcl: this architecture is hf_budgetcl's, not in transformers itself\n"
                "import hf_budgetcl.models  # registers it (e.g. cifar_resnet) with the Auto classes\n"
            )
            + "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
            f'processor = AutoImageProcessor.from_pretrained("{repo_id}")\n'
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}").eval()\n'
            'logits = model(**processor(images, return_tensors="pt")).logits'
        )
    return (
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'processor = AutoProcessor.from_pretrained("{repo_id}")\n'
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}")'
    )


def build_model_card(
    results: dict[str, Any],
    config: Any,
    model_name: str | None,
    base_model: str | None,
    dataset_name: str,
    task_type: str = "image-classification",
    tags: list[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    native: bool = True,
    pipeline: bool = True,
    class_names: Mapping[int, str] | None = None,
) -> ModelCard:
    """Render the hf_budgetcl model card of a run.

    Args:
        results: the run's ``results.json`` dict (:meth:`BudgetedCLTrainer.build_results`).
        config: the run's :class:`~hf_budgetcl.BudgetedCLConfig` (``None``: no hyper-parameter table).
        model_name: card title and model-index name (default ``"<method>-<stream kind>"``).
        base_model: Hub id (or the local path the user gave) of the model training started from, if any.
        dataset_name: the dataset the stream is drawn from (``datasets`` metadata and model-index ``dataset.type``).
        task_type: ``image-classification`` or ``image-text-to-text``.
        repo_id: Hub repository shown in the loading snippet (default: ``model_name`` when it is a repo id).
        native: plain transformers loads the architecture (else the card says to import hf_budgetcl first and does
            not claim ``library_name: transformers``).
        pipeline: ``transformers.pipeline(task_type)`` runs on the saved folder (else no ``pipeline_tag``).
        class_names: class id -> name for the per-class table of an image classifier (default: the ids).
    """
    model_name = model_name or f"{results['method']}-{results['stream']['kind']}"
    stream = results["stream"]
    params = {k: v for k, v in stream.get("params", {}).items() if k != "seed"}
    stream_seed = stream.get("params", {}).get("seed", results.get("seed"))
    scalar_params = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}
    eval_results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_name,
            dataset_name=f"{dataset_name} ({stream['kind']} stream, seed {stream_seed})",
            dataset_split="test",
            dataset_args={"stream": stream["kind"], "length": stream["length"], "seed": stream_seed, **scalar_params},
            metric_type="accuracy",
            metric_name=name,
            metric_value=float(results[key]),
        )
        for name, key in (("A_AUC", "A_auc"), ("A_last", "A_last"))
        if results.get(key) is not None and math.isfinite(results[key])  # a NaN is not a result
    ]
    method = results["method"]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name],
        library_name="transformers" if native else "hf_budgetcl",
        pipeline_tag=task_type if pipeline else None,
        language=language,
        license=license,
        tags=list(dict.fromkeys(["hf_budgetcl", "continual-learning", "budgeted-cl", method, *(tags or [])])),
        eval_results=eval_results or None,
        # machine-readable budget next to the model-index (sentence-transformers keeps its extras the same way)
        hf_budgetcl={
            "method": method,
            "freeze": results["freeze"]["mode"],
            "stream": stream["kind"],
            "stream_length": stream["length"],
            "stream_seed": stream_seed,
            "train_flops": results["train_flops"],
            "flops_budget": results.get("flops_budget"),
            "memory_bytes": results["memory_bytes"]["total"],
            "memory_budget_bytes": results["memory_budget_bytes"],
        },
    )
    flops_rows, memory_rows = _budget_rows(results)
    return ModelCard.from_template(
        card_data,
        template_path=template_path(),
        model_name=model_name,
        base_model=base_model,
        base_model_on_hub=bool(base_model and REPO_ID.match(base_model) and not os.path.exists(base_model)),
        dataset_name=dataset_name,
        method=method,
        freeze_mode=results["freeze"]["mode"],
        stream={"kind": stream["kind"], "length": stream["length"], "seed": stream_seed, "params": params},
        n_evaluations=len(results.get("curve", [])),
        accuracy={k: _pct(results.get(k)) for k in ("A_auc", "A_last", "F_last")},
        task_matrix=_task_matrix(results),
        class_rows=_class_rows(results, class_names) if task_type == "image-classification" else None,
        flops_rows=flops_rows,
        memory_rows=memory_rows,
        hyperparameters=hyperparameters(config),
        load_snippet=_load_snippet(
            repo_id or (model_name if REPO_ID.match(model_name) else f"<user>/{model_name}"), task_type, native
        ),
        framework_versions=framework_versions(),
        citation=CITATION,
    )


def _first(value: str | list[str] | None) -> str | None:
    return value[0] if isinstance(value, (list, tuple)) and value else (value or None)


def pipeline_support(model: Any, task: str) -> tuple[bool, bool]:
    """(plain transformers loads this architecture, ``pipeline(task)`` runs on the saved folder).

    The image-classification pipeline feeds RGB images, so a model with other than 3 input channels cannot take them;
    the image-text-to-text pipeline is not claimed (the tiny Qwen2-VL processor needs torchvision, adapters need the
    base): tests/test_hub_outputs.py runs ``pipeline()`` on every card that claims one.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    native = model_type in CONFIG_MAPPING_NAMES
    if task != "image-classification":
        return native, False
    return native, native and getattr(config, "num_channels", 3) == 3


def write_trainer_model_card(trainer: Any, output_dir: str | None = None, **kwargs: Any) -> str | None:
    """Write the card of a finished run to ``output_dir/README.md`` (default: ``trainer.args.output_dir``, the folder
    that names the model); returns its path.

    Takes ``Trainer.create_model_card``'s keyword arguments: ``model_name`` (default: the Hub repo name or the output
    directory name), ``finetuned_from`` (default: the model's ``name_or_path`` when it is a Hub id), ``dataset``
    (default: ``train_dataset.info.dataset_name``), ``tasks`` (default: inferred from the model's main input),
    ``tags``, ``language``, ``license``. Returns ``None`` before ``train()`` has produced results.
    """
    if trainer.results is None:
        return None
    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name_or_path = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    base_model = kwargs.get("finetuned_from") or (
        name_or_path if REPO_ID.match(name_or_path) and not os.path.exists(name_or_path) else None
    )
    info = getattr(trainer.train_dataset, "info", None)
    dataset = _first(kwargs.get("dataset")) or getattr(info, "dataset_name", None) or "custom"
    dataset = Path(dataset).name if os.path.exists(dataset) else dataset  # a local folder: no paths on the Hub
    task = _first(kwargs.get("tasks")) or (
        "image-classification" if getattr(base, "main_input_name", "") == "pixel_values" else "image-text-to-text"
    )
    native, pipeline = pipeline_support(base, task)
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id  # set by Trainer.init_hf_repo
    model_name = kwargs.get("model_name") or (repo_id or Path(args.output_dir).absolute().name).split("/")[-1]
    tags = kwargs.get("tags")
    card = build_model_card(
        trainer.results,
        args,
        model_name=model_name,
        base_model=base_model,
        dataset_name=dataset,
        task_type=task,
        tags=[tags] if isinstance(tags, str) else tags,
        language=kwargs.get("language"),
        license=kwargs.get("license"),
        repo_id=repo_id if repo_id and REPO_ID.match(repo_id) else None,
        native=native,
        pipeline=pipeline,
        class_names=class_names_of(base),
    )
    output_dir = output_dir or args.output_dir
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    card.save(path)
    return path
