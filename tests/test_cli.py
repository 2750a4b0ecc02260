"""Bad input: one clear line naming the field or file, a non-zero exit, no traceback, earlier outputs intact."""

import json

import pytest

from hf_budgetcl.cli import main

BASE = ["--config", "recipes/configs/digits_er.yaml", "--report_to", "none", "--disable_tqdm", "true"]


def _run(capsys, *extra):
    code = main(["run", *BASE, *extra])
    err = capsys.readouterr().err
    return code, err


def _error_line(err):
    lines = [l for l in err.splitlines() if l.startswith("hf-budgetcl: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--method", "nope"], "method"),
        (["--stream", "sideways"], "stream"),
        (["--eval_period", "0"], "eval_period"),
        (["--eval_period", "-5"], "eval_period"),
        (["--online_iter", "0"], "online_iter"),
        (["--flops_budget", "-1"], "flops_budget"),
        (["--memory_size", "0"], "memory_size"),
        (["--freeze", "sometimes"], "freeze"),
        (["--flops_budget", "1000"], "flops_budget"),  # too small for one iteration
        (["--memory_size", "null", "--memory_budget_bytes", "1000"], "memory_budget_bytes"),  # below the model
        (["--stream_file", "does/not/exist.json"], "exist.json"),
    ],
)
def test_bad_values_name_the_field(capsys, tmp_path, extra, field):
    code, err = _run(capsys, "--output_dir", str(tmp_path), *extra)
    assert code != 0
    assert field in _error_line(err)


def test_unknown_config_key_names_key_and_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nmethod: er\nmemory_size: 10\nlearning_rat: 0.1\n")
    code = main(["run", "--config", str(cfg)])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "learning_rat" in line and str(cfg) in line


def test_malformed_yaml_names_the_file(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: [er\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "bad.yaml" in _error_line(capsys.readouterr().err)


def test_wrong_type_in_yaml_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("dataset: digits\nmemory_size: lots\n")
    with pytest.raises(SystemExit) as exit_info:  # argparse: "argument --memory_size: invalid int value"
        main(["run", "--config", str(cfg)])
    assert exit_info.value.code == 2
    assert "memory_size" in capsys.readouterr().err


def test_missing_dataset_path_and_label_column(capsys, tmp_path):
    code, err = _run(capsys, "--output_dir", str(tmp_path), "--dataset", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in _error_line(err)


def test_stream_json_with_unknown_indices(capsys, tmp_path):
    stream = tmp_path / "stream.json"
    stream.write_text(json.dumps({"kind": "json", "params": {}, "task_boundaries": [],
                                  "stream": [{"index": 10**6, "label": 0, "time": 0.0}]}))
    code, err = _run(capsys, "--output_dir", str(tmp_path), "--stream_file", str(stream))
    line = _error_line(err)
    assert code == 2 and "stream.json" in line


def test_a_failed_run_leaves_earlier_results_intact(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"A_auc": 0.5}')
    code, _ = _run(capsys, "--output_dir", str(out), "--flops_budget", "1000")
    assert code == 2
    assert json.loads((out / "results.json").read_text()) == {"A_auc": 0.5}


def test_cli_override_beats_yaml_and_runs(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", *BASE, "--method", "replay", "--seed", "2", "--output_dir", str(out),
                 "--per_class_train", "8", "--per_class_test", "5", "--eval_period", "40"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "replay" and results["seed"] == 2 and results["samples_seen"] == 80
    assert (out / "stream.json").exists() and (out / "model.safetensors").exists()
