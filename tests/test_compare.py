import json

import pytest

from hf_budgetcl.cli import main
from hf_budgetcl.compare.summary import summarize
from hf_budgetcl.compare.tables import to_markdown


def _fake(method, seed, auc, flops):
    return {
        "method": method,
        "seed": seed,
        "A_auc": auc,
        "A_last": auc,
        "F_last": 0.1,
        "train_flops": flops,
        "wall_time_s": 10.0,
        "backward_flops_saved_fraction": 0.0,
        "memory_bytes": {"total": 2_000_000},
        "memory_budget_bytes": 2_500_000,
        "flops_budget": None,
        "iterations": 100,
        "samples_seen": 100,
        "train_time_s": 9.0,
        "eval_time_s": 1.0,
        "curve": [],
    }


def test_summary_mean_and_sample_std():
    runs = [_fake("er", 1, 0.5, 1e12), _fake("er", 2, 0.7, 3e12), {"method": "mir", "seed": 1, "error": "boom"}]
    summary = summarize(runs, ["er", "mir"])
    assert summary["er"]["A_auc"] == pytest.approx(0.6) and summary["er"]["A_auc_std"] == pytest.approx(0.141421, 1e-4)
    assert summary["er"]["train_flops"] == 2e12 and summary["er"]["train_samples_per_s"] == pytest.approx(12.5)
    md = to_markdown(summary)
    assert "| er | 1,2 | 60.00 ± 14.14 |" in md and "failed: boom" in md


def test_summary_of_one_seed_without_forgetting_shows_no_spread():
    run = {**_fake("er", 1, 0.5, 1e12), "F_last": float("nan")}  # a single evaluation: forgetting undefined
    md = to_markdown(summarize([run], ["er"]))
    assert "| er | 1 | 50.00 | " in md and "| – |" in md and "±" not in md and "nan" not in md


def test_compare_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--config",
            "recipes/configs/digits_er.yaml",
            "--methods",
            "er,replay",
            "--seeds",
            "1",
            "--output_dir",
            str(out),
            "--jobs",
            "2",
            "--",
            "--per_class_train",
            "8",
            "--per_class_test",
            "5",
            "--eval_period",
            "40",
            "--flops_budget_per_sample",
            "5e7",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"er", "replay"}
    for run in summary["runs"]:
        assert run["train_flops"] <= run["flops_budget"] == pytest.approx(5e7 * 80)
        assert run["memory_bytes"]["total"] <= run["memory_budget_bytes"]
    assert "| er | 1 |" in (out / "summary.md").read_text()
    assert (out / "accuracy_vs_flops.png").stat().st_size > 1000


def test_compare_rejects_unknown_method(tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                "--config",
                "recipes/configs/digits_er.yaml",
                "--methods",
                "er,wat",
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "wat" in capsys.readouterr().err
