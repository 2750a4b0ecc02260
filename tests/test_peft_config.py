"""TRL-style model configuration: ``BudgetedCLTrainer(peft_config=..., model="path")``, DoRA, modules_to_save, dtype."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from peft import LoraConfig

from hf_budgetcl.utils.errors import ConfigError
from tests.helpers import tiny_config


def _digits_trainer(tmp_path, model, **kwargs):
    from hf_budgetcl.data.image_collator import ImageCollator
    from hf_budgetcl.data.image_datasets import load_digits_dataset
    from hf_budgetcl.data.image_rows import ImageRows, sample_nbytes
    from hf_budgetcl.runs.image_classification import first_per_class
    from hf_budgetcl.stream.orders import disjoint_stream
    from hf_budgetcl.training.trainer import BudgetedCLTrainer

    config = tiny_config(
        tmp_path, freeze="adaptive", freeze_warmup_steps=4, fisher_update_every=4, eval_period=1000, learning_rate=1e-2
    )
    train, test = load_digits_dataset()
    train = first_per_class(train, 6).with_format("numpy")
    test = first_per_class(test, 4).with_format("numpy")
    return BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=ImageRows.from_dataset(train),
        eval_dataset=test,
        stream=disjoint_stream(np.asarray(train["label"]), 5, seed=0),
        sample_nbytes=sample_nbytes,
        data_collator=ImageCollator(),
        **kwargs,
    )


def _tiny_vit():
    from hf_budgetcl.models import build_image_classifier

    torch.manual_seed(0)  # the random init decides whether aL freezes on this short stream: not the suite's order
    return build_image_classifier("tiny_vit", num_labels=10, num_channels=1, image_size=8)


def test_dora_peft_config_trains_with_adaptive_freezing_and_logs_its_blocks(tmp_path, caplog):
    peft_config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, modules_to_save=["classifier"]
    )
    with caplog.at_level(logging.INFO, logger="hf_budgetcl.training.trainer"):
        trainer = _digits_trainer(tmp_path, _tiny_vit(), peft_config=peft_config)
    blocks = trainer.blocks
    # Four ViT layers, each holding exactly its DoRA tensors (A, B, magnitude) of query and value.
    assert [n.split(".")[-1] for n in blocks.names] == ["0", "1", "2", "3"]
    for names in blocks.param_names:
        assert len(names) == 6 and sum("lora_magnitude_vector" in n for n in names) == 2
        assert all(".attention." in n and "_proj." in n for n in names)
    # modules_to_save: the classifier's trained copy is the head, and the log says so.
    assert blocks.head_names and all(n.startswith("classifier.modules_to_save.") for n in blocks.head_names)
    log = caplog.text
    assert "freezable blocks" in log and all(name in log for name in blocks.names)
    assert "modules_to_save: classifier" in log

    before = [[p.detach().clone() for p in ps] for ps in blocks.params]
    trainer.train()
    hist = {int(k): v for k, v in trainer.results["frozen_blocks_histogram"].items()}
    assert sum(hist.values()) == trainer.results["iterations"] > 0
    assert sum(v for k, v in hist.items() if k > 0) > 0  # aL froze DoRA blocks on some steps
    assert trainer.results["freeze"]["mode"] == "adaptive"
    fisher = np.asarray(trainer.results["freeze"]["fisher"])
    assert fisher.shape == (4,) and np.isfinite(fisher).all() and (fisher > 0).all()
    # Block i's tensors (DoRA magnitudes included) moved exactly when some step left it unfrozen (fewer than i+1
    # blocks frozen): graph pruning gives a frozen block no gradient, so the optimizer cannot touch it.
    for i, (old, new) in enumerate(zip(before, blocks.params)):
        moved = any(not torch.equal(a, b) for a, b in zip(old, new))
        assert moved == any(v > 0 for k, v in hist.items() if k <= i), (i, hist)


def test_model_given_as_a_path_loads_with_model_init_kwargs(tmp_path):
    _tiny_vit().save_pretrained(tmp_path / "vit")
    trainer = _digits_trainer(tmp_path, str(tmp_path / "vit"), model_init_kwargs={"dtype": "bfloat16"})
    assert type(trainer.model).__name__ == "ViTForImageClassification"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}


def test_model_init_kwargs_without_a_model_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="model_init_kwargs"):
        _digits_trainer(tmp_path, _tiny_vit(), model_init_kwargs={"dtype": "bfloat16"})


# ---- the VLM recipe's fields ------------------------------------------------------------------------------------
def _model_parser():
    from hf_budgetcl.runs.arguments import ConfigParser
    from hf_budgetcl.runs.vlm_instruction_stream import ModelArguments

    return ConfigParser((ModelArguments,))


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    from hf_budgetcl.models.tiny_vlm import TinyVLMSize, build_tiny_llava

    path = tmp_path_factory.mktemp("llava") / "base"
    return build_tiny_llava(
        path, ["what shape is it", "circle", "red"], size=TinyVLMSize(lm_hidden=32, lm_layers=2, vision_layers=1)
    )


def test_vlm_recipe_fields_build_peft_lora_config_and_reach_the_loaded_model(tiny_llava_dir):
    from hf_budgetcl.models.blocks import describe, find_blocks
    from hf_budgetcl.runs.vlm_instruction_stream import prepare_model

    argv = ["--lora_r", "4", "--use_dora", "true", "--use_rslora", "true", "--lora_dropout", "0.1"]
    argv += ["--lora_target_modules", "q_proj", "v_proj", "--lora_modules_to_save", "lm_head"]
    argv += ["--lora_task_type", "CAUSAL_LM", "--torch_dtype", "bfloat16", "--attn_implementation", "eager"]
    (model_args,) = _model_parser().parse_with_config(argv)
    model, _ = prepare_model(model_args, tiny_llava_dir)

    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and config.lora_dropout == 0.1 and config.task_type == "CAUSAL_LM"
    assert type(model).__name__ == "PeftModelForCausalLM"
    wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_magnitude_vector"))
    # q and v of both decoder layers only: the CLIP tower's q_proj/v_proj keep no adapter.
    assert len(wrapped) == 4 and all(
        ".language_model.layers." in n and n[-6:] in ("q_proj", "v_proj") for n in wrapped
    )
    base = model.get_base_model()
    assert base.dtype == torch.bfloat16 and base.config._attn_implementation == "eager"
    blocks = find_blocks(model)
    assert all(n.startswith("lm_head.modules_to_save.") for n in blocks.head_names)  # lm_head belongs to the head
    assert "modules_to_save: lm_head" in describe(blocks)


def test_vlm_recipe_rejects_an_unknown_dtype_and_task_type(tiny_llava_dir):
    from hf_budgetcl.runs.vlm_instruction_stream import prepare_model

    with pytest.raises(ConfigError, match="torch_dtype"):
        _model_parser().parse_with_config(["--torch_dtype", "bf16"])
    (model_args,) = _model_parser().parse_with_config(["--lora_task_type", "LM"])
    with pytest.raises(ConfigError, match="lora_task_type"):
        prepare_model(model_args, tiny_llava_dir)
