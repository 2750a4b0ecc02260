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
        # NaN, inf and out-of-range numbers (issue 15, case 5 and 7); every field is covered in test_validation.py
        (["--flops_budget_per_sample", "nan"], "flops_budget_per_sample"),
        (["--learning_rate", "inf"], "learning_rate"),
        (["--method", "derpp", "--method_options", "derpp_alpha=nan"], "derpp_alpha"),
        (["--fisher_ema", "-0.5"], "fisher_ema"),
        (["--per_class_train", "-3"], "per_class_train"),
        (["--pad", "-3"], "pad"),
        (["--per_class_test", "0"], "per_class_test"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
        (["--online_iter", "inf"], "online_iter"),
        (["--freeze", "static:99"], "static:99"),
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
    stream.write_text(
        json.dumps(
            {
                "kind": "json",
                "params": {},
                "task_boundaries": [],
                "stream": [{"index": 10**6, "label": 0, "time": 0.0}],
            }
        )
    )
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
    code = main(
        [
            "run",
            *BASE,
            "--method",
            "replay",
            "--seed",
            "2",
            "--output_dir",
            str(out),
            "--per_class_train",
            "8",
            "--per_class_test",
            "5",
            "--eval_period",
            "40",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "replay" and results["seed"] == 2 and results["samples_seen"] == 80
    assert (out / "stream.json").exists() and (out / "model.safetensors").exists()


# ---- data problems: corrupt images, bad labels, empty or inconsistent streams ---------------------------------
def _image_folder(root, per_class=6, corrupt=0, corrupt_only=False):
    """``root/{train,test}/class_{0,1}/*.png`` (8x8 grey), plus ``corrupt`` broken files in train/class_1 (in both
    train class folders, and no readable train image, with ``corrupt_only``)."""
    import numpy as np
    from PIL import Image

    for split, n in (("train", per_class), ("test", 2)):
        for c in range(2):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(0 if corrupt_only and split == "train" else n):
                Image.fromarray(np.full((8, 8), 100 * c + i, np.uint8)).save(folder / f"{i}.png")
    for j in range(corrupt):
        for c in (0, 1) if corrupt_only else (1,):
            (root / "train" / f"class_{c}" / f"broken{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


FOLDER_RUN = [
    "--model_name_or_path",
    "digits_resnet",
    "--method",
    "er",
    "--memory_size",
    "10",
    "--per_device_train_batch_size",
    "4",
    "--n_tasks",
    "2",
    "--eval_period",
    "6",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
]


def test_corrupt_images_are_skipped_with_one_warning_and_counted(tmp_path, capsys):
    """Documented choice (README, Bad input): unreadable images are skipped and counted, not fatal."""
    root = _image_folder(tmp_path / "imgs", corrupt=2)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        code = main(["run", "--dataset", str(root), *FOLDER_RUN, "--output_dir", str(out)])
    assert code == 0
    assert json.loads((out / "results.json").read_text())["samples_seen"] == 12  # the 12 readable images


def test_a_folder_of_only_corrupt_images_is_an_error(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs", corrupt=3, corrupt_only=True)
    code, err = (
        main(["run", "--dataset", str(root), *FOLDER_RUN, "--output_dir", str(tmp_path / "o")]),
        capsys.readouterr().err,
    )
    line = _error_line(err)
    assert code == 2 and "no readable images" in line and "imgs" in line


@pytest.mark.parametrize(
    "labels, message",
    [(["a", "b"], "non-negative integers"), ([0, -1], "non-negative"), ([0.5, 1.0], "non-negative integers")],
)
def test_non_integer_or_negative_dataset_labels(tmp_path, capsys, labels, message):
    import numpy as np
    from datasets import Dataset, DatasetDict

    pixels = [np.zeros((8, 8), np.uint8)] * 2
    split = Dataset.from_dict({"image": pixels, "label": labels})
    DatasetDict(train=split, test=split).save_to_disk(str(tmp_path / "saved"))
    code, err = _run(capsys, "--dataset", str(tmp_path / "saved"), "--output_dir", str(tmp_path / "o"))
    line = _error_line(err)
    assert code == 2 and "'label'" in line and message in line


def _stream_file(tmp_path, entries):
    path = tmp_path / "stream.json"
    path.write_text(json.dumps({"kind": "json", "params": {}, "task_boundaries": [], "stream": entries}))
    return path


@pytest.mark.parametrize(
    "entries, message",
    [
        ([], "empty stream"),
        ([{"index": 0, "label": "cat", "time": 0.0}], "integer"),
        ([{"index": 0, "label": 1.5, "time": 0.0}], "integer"),
        ([{"index": 0, "label": 99, "time": 0.0}], "has label 99 but dataset row 0"),  # out of the dataset's classes
        ([{"index": -3, "label": 0, "time": 0.0}], "outside"),
    ],
)
def test_bad_stream_files_name_the_file(tmp_path, capsys, entries, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"A_auc": 0.5}')
    code, err = _run(capsys, "--output_dir", str(out), "--stream_file", str(_stream_file(tmp_path, entries)))
    line = _error_line(err)
    assert code == 2 and "stream.json" in line and message in line
    assert json.loads((out / "results.json").read_text()) == {"A_auc": 0.5}  # earlier outputs intact


def test_an_abbreviated_option_is_not_taken_for_the_full_name(capsys):
    code, err = _run(capsys, "--learning_rat", "0.1")
    assert code != 0
    assert "--learning_rat" in err


def test_config_given_with_an_equals_sign_is_read(capsys, tmp_path):
    code, err = _run(capsys, "--eval_period", "0")  # the reference: the YAML is read and a bad override is named
    assert code == 2 and "eval_period" in _error_line(err)
    code = main(["run", "--config=recipes/configs/digits_er.yaml", "--eval_period", "0", "--report_to", "none"])
    assert code == 2
    assert "eval_period" in _error_line(capsys.readouterr().err)
