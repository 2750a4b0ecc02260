"""The VLM recipe on the multi-domain stream end to end (a random tiny LLaVA, 8 rows per task), and the user-data
path: a ``task`` column as the concept column, missing columns, unknown or empty tasks as one-line errors."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("easy_vqa")

from hf_budgetcl.cli import main as cli_main  # noqa: E402
from hf_budgetcl.runs.vlm_instruction_stream import DataArguments, load_data, run  # noqa: E402
from hf_budgetcl.utils.errors import ConfigError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "recipes", "configs", "mcit_llava_alsar.yaml")
TINY = [
    "--task_train_size", "8", "--task_test_size", "3", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "18", "--eval_period", "24", "--online_iter", "0.5", "--memory_size", "16",
    "--tiny_lm_layers", "2", "--tiny_lm_hidden", "32", "--tiny_vision_layers", "1", "--max_new_tokens", "4",
    "--freeze_warmup_steps", "1", "--fisher_update_every", "100", "--report_to", "none", "--disable_tqdm", "true",
    "--logging_steps", "1000", "--model_name_or_path", "tiny_llava",
]  # fmt: skip


@pytest.fixture(scope="module")
def mcit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mcit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = run(["--config", CONFIG, *TINY, "--output_dir", str(out), "--task_order_seed", "7"])
    finally:
        torch.set_num_threads(threads)
    with open(os.path.join(out, "results.json")) as f:
        return trainer, json.load(f), str(out)


def test_the_run_records_a_full_task_matrix_in_stream_order(mcit_run):
    trainer, results, _ = mcit_run
    names = trainer.train_dataset.features["label"].names
    assert names == ["shape", "color", "yes_no", "fashion", "digits", "words"]
    order = results["stream"]["params"]["class_order"]
    assert sorted(order) == list(range(6)) and order == np.random.default_rng(7).permutation(6).tolist()
    assert results["task_names"] == [names[c] for c in order]
    matrix = np.asarray(results["accuracy_matrix"])
    assert matrix.shape == (6, 6) and ((0 <= matrix) & (matrix <= 1)).all()
    assert results["accuracy_matrix_samples"] == [8, 16, 24, 32, 40, 48]
    for key in ("A_last_tasks", "forgetting", "BWT", "A_auc", "A_last", "majority_baseline_task_mean"):
        assert np.isfinite(results[key]), key
    # The last row and the final anytime evaluation score the same model on the same questions.
    final = results["curve"][-1]["per_class"]
    assert [final[str(c)] for c in order] == pytest.approx(matrix[-1].tolist())


def test_per_task_majority_baselines_match_a_count_over_the_data(mcit_run):
    trainer, results, _ = mcit_run
    test = trainer.evaluator.test_dataset
    for name, value in results["majority_baseline_per_task"].items():
        train_answers = [r["answer"] for r in trainer.train_dataset if r["concept"] == name]
        counts = Counter(train_answers)
        top = min(a for a, k in counts.items() if k == max(counts.values()))
        test_answers = [a for a, c in zip(test["answer"], test["concept"]) if c == name]
        assert value == pytest.approx(np.mean([a == top for a in test_answers])), name


def test_the_model_card_shows_the_matrix(mcit_run):
    _, results, out = mcit_run
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert "## Accuracy matrix" in card
    assert "| after task | " + " | ".join(results["task_names"]) + " |" in card
    for name in results["task_names"]:
        assert f"| {name} | " in card  # one row after each task
    assert "| average forgetting |" in card and "| BWT |" in card


def _write_jsonl(tmp_path, rows):
    from PIL import Image

    for k in range(len(rows)):
        Image.new("RGB", (8, 8), (40 * k % 255, 0, 0)).save(tmp_path / f"{k}.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"image": f"{k}.png", **r}) + "\n" for k, r in enumerate(rows)))
    return str(path)


def test_a_user_task_column_serves_as_the_concept(tmp_path):
    rows = [{"question": "q?", "answer": str(k % 3), "task": ["ocr", "count"][k % 2]} for k in range(10)]
    train, test = load_data(DataArguments(dataset=_write_jsonl(tmp_path, rows)))
    assert train.features["label"].names == ["count", "ocr"]
    assert len(train) + len(test) == 10 and set(train["concept"]) == {"count", "ocr"}


def test_missing_columns_and_empty_tasks_in_user_data_are_one_line_errors(tmp_path):
    no_answer = _write_jsonl(tmp_path, [{"question": "q?", "task": "a"} for _ in range(4)])
    with pytest.raises(ConfigError, match=r"column\(s\) \['answer'\] missing"):
        load_data(DataArguments(dataset=no_answer))
    neither = _write_jsonl(tmp_path, [{"question": "q?", "answer": "x"} for _ in range(4)])
    with pytest.raises(ConfigError, match=r"\['concept'\] missing"):
        load_data(DataArguments(dataset=neither))
    empty = _write_jsonl(tmp_path, [{"question": "q?", "answer": "x", "task": ["a", ""][k % 2]} for k in range(4)])
    with pytest.raises(ConfigError, match="empty concept/task"):
        load_data(DataArguments(dataset=empty))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "shape,sudoku"], "hf-budgetcl: error: tasks: unknown task 'sudoku'"),
        (["--tasks", "shape,"], "hf-budgetcl: error: tasks: empty task name"),
        (["--task_train_size", "0"], "hf-budgetcl: error: task_train_size must be >= 1"),
        (["--task_order", "shuffled"], "hf-budgetcl: error: task_order: expected given or random"),
    ],
)
def test_bad_multi_domain_input_is_one_line(tmp_path, capsys, args, message):
    code = cli_main(["run", "--config", CONFIG, *TINY, "--output_dir", str(tmp_path), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message)
