"""The image recipe meets a user's own assets: a checkpoint's image processor is used and kept byte for byte, a flat
``<dir>/<class>/*.png`` imagefolder runs with --test_fraction, and the folder names become id2label."""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch

from hf_budgetcl.runs.image_classification import run

FAST = ["--per_device_train_batch_size", "8", "--memory_size", "20", "--eval_period", "1000"]
FAST += ["--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1000", "--use_cpu", "true"]


def test_vit_with_mean_std_half_trains_normalised_and_keeps_its_processor_file(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    ckpt = tmp_path / "vit"
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2)
    config.num_attention_heads, config.intermediate_size = 2, 64
    ViTForImageClassification(config).save_pretrained(ckpt)
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5])
    processor.save_pretrained(ckpt)
    original = (ckpt / "preprocessor_config.json").read_bytes()
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(ckpt), "--dataset", "digits", "--per_class_train", "3"]
    trainer = run([*argv, "--per_class_test", "2", "--output_dir", str(out), *FAST])
    collator = trainer.data_collator
    assert list(collator.mean) == [0.5] and list(collator.std) == [0.5]
    batch = collator([trainer.train_dataset[i] for i in range(4)])["pixel_values"]
    assert batch.min() < -0.9 and batch.max() <= 1.0  # (x - 0.5) / 0.5 of [0, 1] pixels, digits' 0 background
    assert (out / "preprocessor_config.json").read_bytes() == original


def test_flat_imagefolder_runs_and_id2label_carries_the_folder_names(tmp_path):
    from PIL import Image

    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square", "triangle")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 80, (8, 8), dtype=np.uint8) + 80 * c).save(root / name / f"{i}.png")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = run(
            ["--dataset", str(root), "--test_fraction", "0.34", "--model_name_or_path", "digits_resnet"]
            + ["--n_tasks", "3", "--output_dir", str(out), *FAST]
        )
    results = json.loads((out / "results.json").read_text())
    assert results["samples_seen"] == 12  # 4 of each class's 6 images stream, 2 are held out
    saved = json.loads((out / "config.json").read_text())
    assert saved["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    assert saved["label2id"] == {"circle": 0, "square": 1, "triangle": 2}
    assert isinstance(trainer.model(torch.zeros(1, 1, 8, 8)).logits, torch.Tensor)


# ---- torch_dtype --------------------------------------------------------------------------------------------------
def _save_tiny_vit(path):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2)
    config.num_attention_heads, config.intermediate_size = 2, 64
    ViTForImageClassification(config).save_pretrained(path)  # float32 weights
    return path


def _run_digits(tmp_path, model, *extra):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(model), "--dataset", "digits", "--per_class_train", "3", "--per_class_test"]
    return run([*argv, "2", "--output_dir", str(out), *extra, *FAST]), out


def test_torch_dtype_bfloat16_reaches_the_loaded_checkpoint_and_its_saved_weights(tmp_path):
    from safetensors import safe_open

    trainer, out = _run_digits(tmp_path, _save_tiny_vit(tmp_path / "vit"), "--torch_dtype", "bfloat16")
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert trainer.results["iterations"] > 0
    with safe_open(out / "model.safetensors", "pt") as saved:
        assert {saved.get_tensor(k).dtype for k in saved.keys()} == {torch.bfloat16}


def test_torch_dtype_auto_keeps_a_bfloat16_conv_checkpoint_and_feeds_it_bfloat16_pixels(tmp_path):
    from hf_budgetcl.models import build_image_classifier

    model = build_image_classifier("tiny_resnet", num_labels=10, num_channels=1, image_size=8)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "resnet")
    trainer, _ = _run_digits(tmp_path, tmp_path / "resnet")  # torch_dtype auto: the checkpoint's own
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert trainer.results["iterations"] > 0  # a conv net casts no input itself: float32 pixels would fail


def test_torch_dtype_bfloat16_casts_a_cifar_resnet_preset_and_feeds_it_bfloat16_pixels(tmp_path):
    trainer, _ = _run_digits(tmp_path, "digits_resnet", "--torch_dtype", "bfloat16")
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert trainer.data_collator([trainer.train_dataset[0]])["pixel_values"].dtype == torch.bfloat16
    assert trainer.results["iterations"] > 0 and np.isfinite(trainer.results["A_last"])


def test_torch_dtype_typo_is_a_one_line_error_naming_the_field():
    import pytest

    from hf_budgetcl.utils.errors import ConfigError

    with pytest.raises(
        ConfigError, match="^torch_dtype: expected one of auto, bfloat16, float16, float32, got 'bf16'$"
    ):
        run(["--torch_dtype", "bf16"])


def test_every_example_in_the_readmes_image_recipe_table_parses(tmp_path):
    import re
    from pathlib import Path

    from hf_budgetcl.runs.image_classification import make_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("### Your own images and checkpoints (image recipe)")[1].split("\n\n")[1]
    examples = [re.findall(r"`([^`]+)`", row.split(" | ")[1]) for row in table.splitlines()[2:]]
    assert ["--torch_dtype bfloat16"] in examples
    for (example,) in examples:
        model_args, data_args, _ = make_parser().parse_with_config(
            [*example.split(), "--memory_size", "20", "--output_dir", str(tmp_path)]
        )
        flag, value = example.split()[:2]
        assert str(getattr(model_args, flag[2:], getattr(data_args, flag[2:], None))) == value, example
