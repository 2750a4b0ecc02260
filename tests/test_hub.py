"""Model card, Hub upload path and checkpoint round trip (issue 8). The Hub is never contacted: uploads go to a fake
``HfApi`` that records the calls, and the offline path must fail loudly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx2
import numpy as np
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_budgetcl.cli import main as cli_main
from hf_budgetcl.data.image_collator import ImageCollator
from hf_budgetcl.data.image_processing import image_processor_for
from hf_budgetcl.hub.model_card import build_model_card, template_path
from hf_budgetcl.hub.push import HubUnreachableError, push_output_dir

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_PUSH = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "results.json",
    "stream.json",
}


class FakeHfApi(HfApi):
    """Records ``create_repo`` / ``create_commit`` / ``upload_folder`` instead of calling the Hub."""

    def __init__(self, fail_with: BaseException | None = None):
        super().__init__()
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_with = fail_with

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", (repo_id,), kwargs))
        if self.fail_with is not None:
            raise self.fail_with
        return RepoUrl(f"https://huggingface.co/{repo_id}")  # parsed locally, never fetched

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", (repo_id, list(operations)), kwargs))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0",
            commit_message="m",
            commit_description="",
            oid="0" * 40,
        )

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir() if p.is_file())
        self.calls.append(("upload_folder", (repo_id, folder_path, files), kwargs))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/1",
            commit_message="m",
            commit_description="",
            oid="1" * 40,
        )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny real run of the image recipe: the whole digits stream, few iterations, two anytime evaluations."""
    from hf_budgetcl.runs.image_classification import run

    out = tmp_path_factory.mktemp("digits") / "digits-er"
    trainer = run(
        [
            "--config",
            str(ROOT / "recipes/configs/digits_er.yaml"),
            "--output_dir",
            str(out),
            "--online_iter",
            "0.02",
            "--eval_period",
            "1000",
            "--per_device_eval_batch_size",
            "128",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "1000",
        ]
    )
    return trainer, out, json.loads((out / "results.json").read_text())


def realistic_results() -> dict:
    """A results.json of an aL run with a FLOPs budget, an extra state item and a NaN A_last (no final eval)."""
    return {
        "method": "er",
        "freeze": {"mode": "adaptive", "fisher": [0.1, 0.2]},
        "stream": {"kind": "gaussian", "length": 5000, "params": {"sigma": 0.1, "repeat": 1, "seed": 3}},
        "seed": 3,
        "A_auc": 0.6123,
        "A_last": float("nan"),
        "F_last": 0.05,
        "train_flops": 1.25e12,
        "flops_budget": 2.5e12,
        "flops_items": {"train_forward": 5e11, "train_backward": 7e11, "freeze_decision": 5e10},
        "backward_flops_saved_fraction": 0.3125,
        "memory_bytes": {"model": 1000, "extra:fisher": 64, "replay_samples": 720, "total": 1784},
        "memory_budget_bytes": 2000,
        "memory_slots": 10,
        "samples_seen": 5000,
        "iterations": 4000,
        "online_iter": 1.0,
        "batch_size": 16,
        "stopped_by": "flops_budget",
        "curve": [{}, {}, {}],
    }


def test_package_template_is_a_copy_of_model_cards_template():
    source = ROOT / "model_cards" / "budgetcl_model_card.md"
    assert Path(template_path()).read_text() == source.read_text(), (
        "cp model_cards/budgetcl_model_card.md hf_budgetcl/templates/model_card.md"
    )


def test_card_model_index_round_trips(digits_run):
    _, out, results = digits_run
    assert len(results["curve"]) == 2 and results["A_auc"] != results["A_last"]  # both metrics are informative
    meta = metadata_load(out / "README.md")
    model_name, evals = model_index_to_eval_results(meta["model-index"])
    assert model_name == "digits-er"
    values = {e.metric_name: e.metric_value for e in evals}
    assert values == {"A_AUC": results["A_auc"], "A_last": results["A_last"]}
    for e in evals:
        assert (e.task_type, e.dataset_type, e.metric_type, e.dataset_split) == (
            "image-classification",
            "digits",
            "accuracy",
            "test",
        )
        assert e.dataset_name == "digits (disjoint stream, seed 1)"
        assert e.dataset_args["stream"] == "disjoint" and e.dataset_args["length"] == results["stream"]["length"]
    card = ModelCard.load(out / "README.md")
    # digits_resnet is hf_budgetcl's cifar_resnet: plain transformers cannot load it (tests/test_hub_outputs.py)
    assert card.data.library_name == "hf_budgetcl" and card.data.datasets == ["digits"]
    assert set(card.data.tags) >= {"hf_budgetcl", "continual-learning", "budgeted-cl", "er"}


def test_card_contains_budget_stream_method_versions_citation(digits_run):
    _, out, results = digits_run
    text = (out / "README.md").read_text()
    mem = results["memory_bytes"]
    assert f"| training FLOPs | {results['train_flops']:.4g} | unlimited |" in text
    for item in ("train_forward", "train_backward"):
        assert f"|   {item} | {results['flops_items'][item]:.4g} |" in text
    assert f"| model | {mem['model']:,} |" in text
    assert f"| replay_samples ({results['memory_slots']} samples) | {mem['replay_samples']:,} |" in text
    assert f"| **total** | {mem['total']:,} | {results['memory_budget_bytes']:,} |" in text
    assert "| backward FLOPs saved by freezing | 0.00 % |" in text
    assert f"| length | {results['stream']['length']} |" in text and "| seed | 1 |" in text
    assert "| online_iter | `0.02` |" in text and "| memory_size | `200` |" in text
    assert "Method `er`, freeze mode `none`" in text
    for lib in ("hf_budgetcl", "transformers", "torch", "accelerate", "peft", "datasets"):
        assert f"- {lib}: " in text
    assert "arxiv.org/abs/2410.15143" in text and "@inproceedings{seo2025budgeted" in text
    assert "AutoModelForImageClassification.from_pretrained" in text
    final = results["curve"][-1]["per_class"]
    per_class = text.split("## Accuracy per class")[1].split("##")[0]
    assert sum(line.endswith(" % |") for line in per_class.splitlines()) == len(final) == 10


def test_build_model_card_from_a_realistic_dict():
    card = build_model_card(
        realistic_results(),
        None,
        model_name="user/al-gaussian",
        base_model="user/base",
        dataset_name="cifar10",
        task_type="image-text-to-text",
    )
    text = str(card)
    assert "| training FLOPs | 1.25e+12 (50.0 %) | 2.5e+12 |" in text
    assert "| extra:fisher | 64 |" in text and "| **total** | 1,784 | 2,000 |" in text
    assert "| backward FLOPs saved by freezing | 31.25 % |" in text and "stopped by flops_budget" in text
    assert "| sigma | `0.1` |" in text and "| seed | 3 |" in text
    name, evals = model_index_to_eval_results(ModelCard(text).data.to_dict()["model-index"])
    # a NaN A_last is not published as a result
    assert name == "user/al-gaussian" and [(e.metric_name, e.metric_value) for e in evals] == [("A_AUC", 0.6123)]
    assert evals[0].task_type == "image-text-to-text" and ModelCard(text).data.base_model == "user/base"
    assert "AutoModelForImageTextToText" in text


def test_push_output_dir_sends_exactly_the_checkpoint_files(digits_run):
    _, out, _ = digits_run
    api = FakeHfApi()
    info = push_output_dir(out, "user/digits-er", token="hf_test", private=True, api=api)
    assert info.commit_url.endswith("/commit/0")
    (name, (repo,), kwargs), (name2, (repo2, ops), kwargs2) = api.calls
    assert (name, repo, kwargs["private"], kwargs["exist_ok"], kwargs["token"]) == (
        "create_repo",
        "user/digits-er",
        True,
        True,
        "hf_test",
    )
    assert (name2, repo2, kwargs2["token"]) == ("create_commit", "user/digits-er", "hf_test")
    assert {op.path_in_repo for op in ops} == EXPECTED_PUSH  # no training_args.bin pickle, no checkpoints
    for op in ops:
        assert Path(op.path_or_fileobj) == out / op.path_in_repo


def test_push_fails_loudly_offline_and_when_unreachable(digits_run, monkeypatch, capsys):
    _, out, _ = digits_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE is set"):
        push_output_dir(out, "user/digits-er")
    assert cli_main(["push", str(out), "user/digits-er", "--private"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-budgetcl: error: push: HF_HUB_OFFLINE is set") and "\n" not in err
    with pytest.raises(HubUnreachableError, match="unreachable"):
        push_output_dir(out, "user/digits-er", api=FakeHfApi(fail_with=httpx2.ConnectError("no route")))


def test_push_refuses_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing model weights .*README\.md, results\.json"):
        push_output_dir(tmp_path, "user/x", api=FakeHfApi())
    assert cli_main(["push", str(tmp_path), "user/x"]) == 2
    assert "not a finished hf_budgetcl run" in capsys.readouterr().err


def test_trainer_push_to_hub_goes_through_our_card(digits_run, tmp_path, monkeypatch):
    import transformers.trainer

    trainer, out, results = digits_run
    trainer = copy.copy(trainer)  # leave the shared fixture's args and output_dir alone
    trainer.args = copy.deepcopy(trainer.args)
    trainer.args.output_dir = str(tmp_path / "pushed")
    trainer.args.hub_model_id = "user/digits-er-hub"
    api = FakeHfApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    trainer.push_to_hub(dataset="digits")
    (_, (repo, folder, files), _) = api.calls[-1]
    assert api.calls[-1][0] == "upload_folder" and repo == "user/digits-er-hub" and folder == trainer.args.output_dir
    assert {"README.md", "model.safetensors", "config.json", "preprocessor_config.json"} <= set(files)
    name, evals = model_index_to_eval_results(metadata_load(tmp_path / "pushed" / "README.md")["model-index"])
    assert name == "digits-er-hub" and {e.metric_name: e.metric_value for e in evals}["A_last"] == results["A_last"]
    assert 'from_pretrained("user/digits-er-hub")' in (tmp_path / "pushed" / "README.md").read_text()


def test_checkpoint_round_trip_reproduces_a_last(digits_run):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_budgetcl.models  # noqa: F401  (registers cifar_resnet with the Auto classes)
    from hf_budgetcl.data.image_datasets import load_digits_dataset
    from hf_budgetcl.data.image_rows import dataset_arrays

    _, out, results = digits_run
    processor = AutoImageProcessor.from_pretrained(out)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    images, labels = dataset_arrays(load_digits_dataset()[1])  # the final evaluation covers every class
    pixel_values = processor(list(images), return_tensors="pt")["pixel_values"]
    assert torch.equal(pixel_values, ImageCollator().process(torch.from_numpy(images)))
    with torch.no_grad():
        predictions = model(pixel_values=pixel_values).logits.argmax(-1).numpy()
    assert float(np.mean(predictions == labels)) == results["A_last"]


@pytest.mark.parametrize(
    "collator, shape",
    [
        (ImageCollator(), (1, 8, 8)),
        (ImageCollator(pad=2), (1, 28, 28)),
        (ImageCollator(pad=2, channels=3, mean=[0.5] * 3, std=[0.25] * 3), (1, 28, 28)),
        (ImageCollator(mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.3]), (3, 16, 16)),
        (ImageCollator(resize=32), (1, 28, 28)),
    ],
)
def test_image_processor_reproduces_the_collator(collator, shape, tmp_path):
    from transformers import AutoImageProcessor

    image_processor_for(collator, shape).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    images = np.random.RandomState(0).randint(0, 256, (4, *shape), dtype=np.uint8)
    got = processor(list(images), return_tensors="pt")["pixel_values"]
    want = collator.process(torch.from_numpy(images))
    # PIL resizes uint8 before rescaling: one grey level of rounding; everything else is exact
    tolerance = 1 / 255 + 1e-6 if collator.resize else 0.0
    assert got.shape == want.shape and float((got - want).abs().max()) <= tolerance


def test_image_processor_pad_and_resize_is_approximate_but_shaped_right(tmp_path):
    collator = ImageCollator(pad=2, resize=64)
    with pytest.warns(UserWarning, match="approximately"):
        processor = image_processor_for(collator, (1, 28, 28))
    images = np.random.RandomState(0).randint(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    got = processor(list(images), return_tensors="pt")["pixel_values"]
    want = collator.process(torch.from_numpy(images))
    assert got.shape == want.shape and float((got - want).abs().mean()) < 0.05


def test_image_processor_rejects_unsupported_channel_change():
    with pytest.raises(ValueError, match="only turn 1 channel into 3"):
        image_processor_for(ImageCollator(channels=4), (1, 8, 8))


def test_card_hyperparameters_are_the_key_ones_and_what_differs_from_defaults(tmp_path):
    from accelerate.state import PartialState

    from hf_budgetcl.config import BudgetedCLConfig
    from hf_budgetcl.hub.model_card import hyperparameters

    config = BudgetedCLConfig(
        output_dir=str(tmp_path), memory_size=7, report_to="none", weight_decay=0.05, use_cpu=True
    )
    before = dict(PartialState._shared_state)
    params = hyperparameters(config)
    assert dict(PartialState._shared_state) == before  # accelerate's process-wide state untouched
    assert params["weight_decay"] == 0.05 and params["memory_size"] == 7 and params["method"] == "er"
    assert "gradient_checkpointing" not in params and "debug" not in params  # unset either way
    assert "adam_beta1" not in params and "accelerator_config" not in params


def test_card_lists_the_final_accuracy_per_class_by_name_in_stream_order():
    results = realistic_results()
    results["stream"]["params"]["class_order"] = [2, 0, 1]
    results["curve"] = [{"per_class": {"0": 0.5}}, {"per_class": {"0": 0.25, "1": 1.0, "2": 0.125}}]
    names = {0: "T-shirt/top", 1: "Trouser", 2: "a|b"}
    text = str(build_model_card(results, None, model_name="m", base_model=None, dataset_name="d", class_names=names))
    table = text.split("## Accuracy per class")[1].split("##")[0]
    assert [line for line in table.splitlines() if line.startswith("| ") and "%" in line] == [
        "| a\\|b | 12.50 % |",
        "| T-shirt/top | 25.00 % |",
        "| Trouser | 100.00 % |",
    ]
    plain = str(build_model_card(results, None, model_name="m", base_model=None, dataset_name="d"))
    assert "| 2 | 12.50 % |" in plain
    results["stream"]["params"]["class_order"] = None  # a user's stream JSON: no usable order, ids sorted
    results["curve"][-1]["per_class"]["concept"] = 0.5  # not a class id: left out
    odd = str(build_model_card(results, None, model_name="m", base_model=None, dataset_name="d"))
    assert odd.index("| 0 | 25.00 % |") < odd.index("| 2 | 12.50 % |") and "concept" not in odd
    vlm = build_model_card(
        results, None, model_name="m", base_model=None, dataset_name="d", task_type="image-text-to-text"
    )
    assert "Accuracy per class" not in str(vlm)


def test_class_names_come_from_id2label_but_not_its_placeholders():
    from types import SimpleNamespace

    from hf_budgetcl.hub.model_card import class_names_of

    named = SimpleNamespace(config=SimpleNamespace(id2label={"0": "cat", "1": "dog"}))
    placeholder = SimpleNamespace(config=SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1"}))
    assert class_names_of(named) == {0: "cat", 1: "dog"} and class_names_of(placeholder) is None
