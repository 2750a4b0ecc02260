"""Outputs others can load: the card names the base the user gave (also in adapter_config.json), claims a
pipeline_tag only where pipeline() runs, says how to load hf_budgetcl's own architectures, and the README's API
example leaves a folder `hf-budgetcl push` accepts."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest
from huggingface_hub import ModelCard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--per_device_train_batch_size", "8", "--memory_size", "20", "--eval_period", "1000", "--use_cpu", "true"]
FAST += ["--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1000", "--per_class_test", "2"]


def test_vlm_card_and_adapter_config_name_the_base_the_user_gave(tmp_path):
    pytest.importorskip("easy_vqa")
    from hf_budgetcl.models.tiny_vlm import TinyVLMSize, build_tiny_llava
    from hf_budgetcl.runs.vlm_instruction_stream import run
    from tests.test_vlm_recipe import LLAVA_CONFIG, TINY

    FEWER = ["--max_train_questions", "16", "--max_test_questions", "8", "--method", "er", "--eval_period", "16"]
    base = build_tiny_llava(
        tmp_path / "my_base", ["what shape", "circle", "yes"], size=TinyVLMSize(lm_hidden=32, lm_layers=2)
    )
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(
            [
                "--config",
                LLAVA_CONFIG,
                *TINY,
                "--lora_r",
                "4",
                "--model_name_or_path",
                base,
                "--output_dir",
                str(out),
                *FEWER,
            ]
        )
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == base and card.data.library_name == "transformers"  # ours, written last
    assert "hf_budgetcl" in card.data.tags and card.data.pipeline_tag is None
    with open(out / "adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == base


def _image_run(tmp_path, model, *extra):
    from hf_budgetcl.runs.image_classification import run

    out = tmp_path / model
    run(
        ["--model_name_or_path", model, "--dataset", "digits", "--per_class_train", "2", "--output_dir", str(out)]
        + [*FAST, *extra]
    )
    return out, ModelCard.load(out / "README.md")


def test_pipeline_tag_only_where_pipeline_runs_and_preset_cards_say_how_to_load(tmp_path):
    from PIL import Image
    from transformers import pipeline

    out, card = _image_run(tmp_path, "tiny_resnet", "--channels", "3")  # transformers' ResNet, fed RGB
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "transformers"
    classify = pipeline(card.data.pipeline_tag, model=str(out))
    predictions = classify(Image.fromarray(np.zeros((8, 8), np.uint8)))
    assert len(predictions) == 5 and {p["label"] for p in predictions} <= set(map(str, range(10)))

    out, card = _image_run(tmp_path, "digits_resnet")  # hf_budgetcl's cifar_resnet, one grey channel
    assert card.data.pipeline_tag is None and card.data.library_name == "hf_budgetcl"
    assert "import hf_budgetcl.models" in card.text


def test_readme_api_example_produces_a_pushable_folder(tmp_path, monkeypatch):
    from hf_budgetcl.hub.push import push_output_dir

    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Using the trainer directly") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "trainer.save_model()" in code
    # The example as written, on 2 images per class (the full 1,437 take a minute).
    code = code.replace(
        "train, test = load_digits_dataset()",
        "from hf_budgetcl.runs.image_classification import first_per_class\n"
        "train, test = (first_per_class(d, 2) for d in load_digits_dataset())",
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})

    class Api:  # records what would be uploaded
        def create_repo(self, *a, **k):
            pass

        def create_commit(self, repo_id, operations, **k):
            return sorted(op.path_in_repo for op in operations)

    uploaded = push_output_dir(tmp_path / "out/api", "user/digits-er", api=Api())
    assert {"README.md", "results.json", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(
        uploaded
    )
