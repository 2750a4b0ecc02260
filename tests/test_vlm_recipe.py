"""The vision-language instruction-stream recipe end to end (tiny models, a few dozen easy-vqa rows).

Covers: the CLI dispatching on the YAML ``recipe`` key, results.json with A_last next to the majority baseline,
LoRA-block discovery and freezing on the adapters, full fine-tuning blocks, a QLoRA (4-bit) run with its FLOPs
counted, Qwen2-VL through the same code, and the saved checkpoint reloading offline to the same answers.
(Data, prompt building and answer-only loss masking: tests/test_vqa_data.py; the tiny models: test_tiny_vlm.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("easy_vqa")

from hf_budgetcl.cli import main as cli_main  # noqa: E402
from hf_budgetcl.models.blocks import find_blocks
from hf_budgetcl.runs.vlm_instruction_stream import ModelArguments, prepare_model, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAVA_CONFIG = os.path.join(ROOT, "recipes", "configs", "easyvqa_llava_tiny_alsar.yaml")
QWEN_CONFIG = os.path.join(ROOT, "recipes", "configs", "easyvqa_qwen2vl_tiny_alsar.yaml")
# A few dozen rows, 2 decoder blocks: each run takes seconds, and still crosses all three concepts.
TINY = [
    "--max_train_images", "60", "--max_train_questions", "48", "--max_test_questions", "24",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "24", "--eval_period", "24",
    "--online_iter", "0.5", "--memory_size", "24", "--tiny_lm_layers", "2", "--tiny_lm_hidden", "32",
    "--tiny_vision_layers", "1", "--freeze_warmup_steps", "1", "--fisher_update_every", "100",
    "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1000",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _results(output_dir) -> dict:
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def alsar_run(tmp_path_factory):
    """aL-SAR with LoRA on the tiny LLaVA, through the recipe code (returns the trainer)."""
    out = tmp_path_factory.mktemp("alsar")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = run(["--config", LLAVA_CONFIG, *TINY, "--output_dir", str(out), "--lora_r", "4"])
    trainer.caught_warnings = [str(w.message) for w in caught]
    return trainer, str(out)


def test_results_report_a_last_next_to_the_majority_baseline(alsar_run):
    trainer, out = alsar_run
    results = _results(out)
    assert results["method"] == "alsar" and results["freeze"]["mode"] == "adaptive"
    assert 0.0 <= results["A_last"] <= 1.0 and 0.0 <= results["A_auc"] <= 1.0
    # The baseline is recomputed independently: the most frequent training answer of all concepts, on the test rows.
    evaluator = trainer.evaluator
    seen = np.unique(trainer.stream.labels)
    train_answers = [a.lower() for a in trainer.train_dataset["answer"]]
    values, counts = np.unique(train_answers, return_counts=True)
    top = min(values[counts == counts.max()].tolist())
    expected = np.mean([a.lower() == top for a in evaluator.test_answers])
    assert results["majority_baseline"] == pytest.approx(expected)
    assert len(results["majority_baseline_curve"]) == len(results["curve"])
    assert results["curve"][-1]["samples"] == results["stream"]["length"] == 48
    assert set(results["curve"][-1]["per_class"]) <= {str(c) for c in seen}
    # Memory counts the stored images and text next to the model and the optimizer state of the adapters only.
    memory = results["memory_bytes"]
    assert memory["replay_samples"] > 0 and memory["optimizer_state"] == 2 * 4 * sum(
        p.numel() for p in trainer.model.parameters() if p.requires_grad
    )
    assert os.path.isfile(os.path.join(out, "stream.json")) and os.path.isfile(os.path.join(out, "README.md"))
    # The base it started from: the tiny model built into base_model/, named by the hash of its weights file.
    base = os.path.join(out, "base_model")
    with open(os.path.join(base, "model.safetensors"), "rb") as f:
        digest = hashlib.sha256(b"model.safetensors\0" + f.read())
    assert results["base_model"] == {
        "path": base,
        "weights_sha256": digest.hexdigest()[:16],
        "weights_bytes": os.path.getsize(os.path.join(base, "model.safetensors")),
    }


def test_lora_blocks_are_the_decoder_adapters_and_adaptive_freezing_acts_on_them(alsar_run):
    trainer, _ = alsar_run
    blocks = trainer.blocks
    assert len(blocks) == 2 and not blocks.head_params  # the LM head is frozen under LoRA
    for name, params in zip(blocks.names, blocks.params):
        assert ".language_model.layers." in name
        assert len(params) == 2 * 7  # lora_A and lora_B of q, k, v, o, gate, up, down
    owned = {id(p) for ps in blocks.params for p in ps}
    for name, p in trainer.model.named_parameters():
        assert (id(p) in owned) == p.requires_grad == ("lora_" in name)
    fisher = np.asarray(trainer.freezing.fisher)
    assert fisher.shape == (2,) and np.isfinite(fisher).all() and (fisher > 0).all()
    histogram = _results(trainer.args.output_dir)["frozen_blocks_histogram"]
    assert sum(histogram.values()) == trainer.ledger.steps > 0
    assert set(histogram) <= {"0", "1"}  # without a trainable head, at most all blocks but the last freeze


def test_sar_takes_the_concept_as_class_and_warns_once_about_token_logits(alsar_run):
    trainer, _ = alsar_run
    # Retrieval statistics are per concept (the stream's label), not per vocabulary token.
    assert trainer.method.class_counts.size == len(np.unique(trainer.stream.labels)) == 3
    assert trainer.method.class_counts.sum() > 0
    # Per-token logits give no per-sample class gradient: similarity is off (S = 0), said once, not every step.
    assert sum(w.startswith("sar: per-token logits") for w in trainer.caught_warnings) == 1
    assert not np.any(trainer.method.S)


def test_static_freezing_leaves_the_frozen_adapters_untouched(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = run(
            [
                "--config",
                LLAVA_CONFIG,
                *TINY,
                "--output_dir",
                str(tmp_path),
                "--lora_r",
                "4",
                "--method",
                "er",
                "--freeze",
                "static:1",
            ]
        )
    results = _results(tmp_path)
    assert results["frozen_blocks_histogram"] == {"1": results["iterations"]}
    assert 0.0 < results["backward_flops_saved_fraction"] < 1.0
    # lora_B starts at zero: it stays zero exactly where the adapter never got a gradient.
    first, second = trainer.blocks.params
    lora_b = [p for p in first if p.shape[1] == 4], [p for p in second if p.shape[1] == 4]
    assert all(torch.count_nonzero(p) == 0 for p in lora_b[0])
    assert all(torch.count_nonzero(p) > 0 for p in lora_b[1])


def test_full_fine_tuning_blocks_are_the_decoder_layers(tmp_path):
    args = ModelArguments(
        model_name_or_path="tiny_llava", tiny_lm_layers=2, tiny_lm_hidden=32, tiny_vision_layers=1, lora_r=0
    )
    from hf_budgetcl.runs.vlm_instruction_stream import (
        DataArguments,
        build_base_model,
        load_data,
    )

    train, _ = load_data(DataArguments(max_train_images=10, max_test_questions=4))
    model, _ = prepare_model(args, build_base_model(args, train, str(tmp_path)))
    blocks = find_blocks(model)
    assert blocks.names[0] == "stem" and len(blocks) == 3  # token embeddings, then the 2 decoder layers
    assert blocks.names[1:] == ["model.language_model.layers.0", "model.language_model.layers.1"]
    assert {"lm_head.weight", "model.language_model.norm.weight"} <= set(blocks.head_names)
    vision = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    assert vision and not any(p.requires_grad for p in vision)  # frozen as a whole: no block, no gradient


def test_checkpoint_reloads_offline_to_the_same_answers(alsar_run):
    """Issue 8's round trip: adapter + processor from output_dir, base from its recorded path, same exact match."""
    from transformers import AutoModelForImageTextToText

    from hf_budgetcl.data.vlm_collator import VLMInstructionCollator
    from hf_budgetcl.evaluation.metrics import exact_match
    from hf_budgetcl.models.tiny_vlm import load_processor

    trainer, out = alsar_run
    assert os.path.isfile(os.path.join(out, "adapter_model.safetensors"))
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert any("lora_" in n for n, _ in model.named_parameters())
    evaluator = trainer.evaluator
    evaluator.collator = VLMInstructionCollator(load_processor(out))
    rows = [evaluator.test_dataset[i] for i in range(len(evaluator.test_dataset))]
    predictions = evaluator.generate(model, rows)
    accuracy = float(np.mean([exact_match(p, r["answer"]) for p, r in zip(predictions, rows)]))
    assert predictions == evaluator.last_predictions
    assert accuracy == pytest.approx(_results(out)["A_last"])


def test_qwen2vl_through_the_cli_and_the_same_recipe(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["run", "--config", QWEN_CONFIG, *TINY, "--output_dir", str(tmp_path), "--lora_r", "4"])
    assert code == 0
    results = _results(tmp_path)
    assert results["method"] == "alsar" and np.isfinite(results["majority_baseline"])
    assert results["train_flops"] > 0 and results["iterations"] > 0
    with open(os.path.join(tmp_path, "base_model", "config.json")) as f:
        assert json.load(f)["model_type"] == "qwen2_vl"


def test_bad_recipe_input_is_one_line(tmp_path, capsys):
    code = cli_main(
        [
            "run",
            "--config",
            LLAVA_CONFIG,
            *TINY,
            "--output_dir",
            str(tmp_path),
            "--quantization",
            "4bit",
            "--lora_r",
            "0",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-budgetcl: error: quantization:")


# ---- QLoRA ------------------------------------------------------------------------------------------------------
def test_quantized_flop_formulas_match_2mnk():
    bnb = pytest.importorskip("bitsandbytes")
    from hf_budgetcl.accounting.quantized_flops import register_quantized_flop_formulas

    assert "gemm_4bit" in register_quantized_flop_formulas()
    torch.manual_seed(0)
    m, k, n = 5, 64, 48
    dense = nn.Linear(k, n)
    q4 = bnb.nn.Linear4bit(k, n, quant_type="nf4", compute_dtype=torch.float32)
    q4.load_state_dict(dense.state_dict())
    q4 = q4.to("cpu")
    q8 = bnb.nn.Linear8bitLt(k, n, has_fp16_weights=False)
    q8.load_state_dict(dense.state_dict())
    q8 = q8.to("cpu").eval()
    for layer, rows in ((dense, m), (q4, m), (q4, 1), (q8, m)):  # 1 row: the 4-bit inference (gemv) path
        with FlopCounterMode(display=False) as counter, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer(torch.randn(rows, k))
        assert counter.get_total_flops() == 2 * rows * n * k, type(layer).__name__


def test_qlora_run_counts_the_quantized_matmuls(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from hf_budgetcl.accounting.flops import FlopsProfiler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = run(
            [
                "--config",
                LLAVA_CONFIG,
                *TINY,
                "--output_dir",
                str(tmp_path),
                "--lora_r",
                "4",
                "--method",
                "er",
                "--quantization",
                "4bit",
                "--max_train_questions",
                "16",
                "--eval_period",
                "16",
                "--max_test_questions",
                "8",
                "--tiny_lm_hidden",
                "64",
            ]
        )  # bnb's CPU 4-bit kernels need in_features >= 64 (its block)
    model = trainer.model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    results = _results(tmp_path)
    assert results["iterations"] > 0 and results["skipped_nonfinite_batches"] == 0
    # The same batch on the fp32 base: forward and backward FLOPs agree, so no quantised matmul went uncounted.
    args = ModelArguments(model_name_or_path="tiny_llava", lora_r=4, tiny_lm_hidden=64)
    dense, _ = prepare_model(args, os.path.join(str(tmp_path), "base_model"))
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    loss = lambda m, inputs: m(**inputs).loss  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_cost = FlopsProfiler(model, trainer.blocks, loss).measure(batch)
        d_cost = FlopsProfiler(dense, find_blocks(dense), loss).measure(batch)
    assert q_cost.forward == pytest.approx(d_cost.forward, rel=1e-3)
    assert q_cost.backward_by_prefix[0] == pytest.approx(d_cost.backward_by_prefix[0], rel=1e-3)


def test_derpp_keeps_top_k_answer_token_logits_and_pays_for_them_in_bytes(tmp_path):
    """DER++ on a causal LM: each slot keeps the top-k logits of its answer's first tokens, charged per slot in bytes
    (so fewer slots than ER under one byte budget), matched on replay, and charged in FLOPs."""
    common = [*TINY, "--lora_r", "4", "--freeze", "none", "--memory_size", "1000", "--memory_budget_bytes", "301000"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(["--config", LLAVA_CONFIG, *common, "--output_dir", str(tmp_path / "er"), "--method", "er"])
        derpp = run(
            ["--config", LLAVA_CONFIG, *common, "--output_dir", str(tmp_path / "derpp"), "--method", "derpp",
             "--method_options", "derpp_answer_tokens=3,derpp_token_topk=5"]
        )  # fmt: skip
    method = derpp.method
    assert method.vocab == derpp.model.config.get_text_config().vocab_size
    assert method.slot_bytes(1000) == 1000 + 3 * 5 * 8 + 4
    results, er_results = _results(tmp_path / "derpp"), _results(tmp_path / "er")
    assert results["memory_slots"] < er_results["memory_slots"]
    stored, kept = set(method.stored), set(derpp.memory.indices)
    assert stored & kept and len(stored - kept) <= 8  # pruned every step; arrivals after the last step may evict
    values, ids, count = next(iter(method.stored.values()))
    assert values.shape == ids.shape == (3, 5) and 1 <= count <= 3
    assert np.all(np.diff(values[:count], axis=1) <= 0)  # the largest logits, in order
    assert results["flops_items"]["derpp_loss"] > 0 and results["flops_items"]["derpp_store"] > 0
