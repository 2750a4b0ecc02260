"""Issue #15's remaining cases: the earlier run survives a failed overwrite, resume refuses a changed or inexact
run, data that would give wrong numbers is refused (or reported truthfully), damaged inputs are one-line errors,
and VQA image paths stay inside the dataset folder."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hf_budgetcl.cli import main
from hf_budgetcl.training.checkpointing import find_resumable_checkpoint
from hf_budgetcl.training.trainer import BudgetedCLTrainer
from hf_budgetcl.utils.errors import ConfigError
from hf_budgetcl.utils.run_marker import MARKER_NAME
from tests.helpers import digits_run_args

RUN = ["run", *digits_run_args(5, 2)]
CHECKPOINTED = [*RUN, "--save_strategy", "steps", "--save_steps", "30", "--save_total_limit", "2"]


def _error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-budgetcl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished run with two checkpoints, the newest at its last step."""
    out = tmp_path_factory.mktemp("checks") / "run"
    assert main([*CHECKPOINTED, "--output_dir", str(out)]) == 0
    assert len(list(out.glob("checkpoint-*"))) == 2
    return out


def _newest(out):
    return Path(find_resumable_checkpoint(str(out)))


@pytest.fixture
def run_copy(checkpointed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(checkpointed, out)
    return out


# ---- 1/2: a finished run survives until the new one is complete --------------------------------------------------
def test_overwrite_keeps_the_earlier_run_until_the_new_one_is_complete(run_copy, capsys, monkeypatch):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the new run

    monkeypatch.setattr(BudgetedCLTrainer, "training_step", crash)
    with pytest.raises(KeyboardInterrupt):
        main([*RUN, "--output_dir", str(run_copy), "--overwrite_output_dir", "true"])
    after = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert after == before and MARKER_NAME in after  # results, weights, card, stream: the earlier run's
    assert not list(run_copy.glob("checkpoint-*"))  # its resume points are gone: a later --resume starts afresh


# ---- 3: a resume with other arguments refuses, naming each field ----------------------------------------------------
@pytest.mark.parametrize(
    "extra, shown",
    [
        (["--learning_rate", "0.5"], "learning_rate 0.0003 -> 0.5"),
        (["--memory_size", "50"], "memory_size 200 -> 50"),
        (["--flops_budget", "1e12"], "flops_budget null -> 1000000000000.0"),
        (["--method", "replay"], "method 'er' -> 'replay'"),
        (["--pad", "1"], "pad 0 -> 1"),  # a recipe (model) argument
    ],
)
def test_a_resume_with_changed_arguments_refuses(run_copy, capsys, extra, shown):
    assert main([*CHECKPOINTED, "--output_dir", str(run_copy), "--resume", "true", *extra]) == 2
    line = _error(capsys)
    assert shown in line


def test_harmless_fields_may_change_and_an_exact_resume_says_so(run_copy, capsys):
    os.remove(run_copy / "results.json")
    extra = ["--logging_steps", "7", "--save_steps", "40", "--dataloader_num_workers", "0", "--resume", "true"]
    assert main([*CHECKPOINTED, "--output_dir", str(run_copy), *extra]) == 0
    assert _results(run_copy)["exact_resume"] is True


# ---- 4: an inexact checkpoint (no optimizer state) ---------------------------------------------------------------
def test_an_inexact_checkpoint_is_refused_unless_allowed(run_copy, capsys):
    os.remove(_newest(run_copy) / "optimizer.pt")
    args = [*CHECKPOINTED, "--output_dir", str(run_copy), "--resume", "true"]
    assert main(args) == 2
    assert "optimizer.pt" in _error(capsys)
    with pytest.warns(UserWarning, match="INEXACT RESUME"):
        assert main([*args, "--allow_inexact_resume", "true"]) == 0
    assert _results(run_copy)["exact_resume"] is False


# ---- 7: damaged checkpoints are one line --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage, shown",
    [
        (lambda ck: (ck / "cl_state.json").write_text("[1, 2]"), "cl_state.json holds a list"),
        (lambda ck: (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:5000]), "damaged"),
        (lambda ck: (ck / "optimizer.pt").write_bytes(b"garbage" * 100), "optimizer.pt is damaged"),
    ],
)
def test_a_damaged_checkpoint_is_one_line(run_copy, capsys, damage, shown):
    damage(_newest(run_copy))
    assert main([*CHECKPOINTED, "--output_dir", str(run_copy), "--resume", "true"]) == 2
    assert shown in _error(capsys)


def test_deepspeed_without_deepspeed_is_one_line(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    assert main([*RUN, "--output_dir", str(tmp_path / "o"), "--deepspeed", str(ds)]) == 2
    assert "deepspeed" in _error(capsys)


# ---- 6: data that would give wrong numbers -------------------------------------------------------------------------
def _folder(root, sizes=None, test_classes=(0, 1)):
    """``root/{train,test}/class_c/*.png``, grey; ``sizes`` maps split -> image size (default 8)."""
    from PIL import Image

    sizes = sizes or {}
    for split, classes in (("train", (0, 1)), ("test", test_classes)):
        for c in classes:
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                size = sizes.get(split, 8)
                Image.fromarray(np.full((size, size), 40 * c + i, np.uint8)).save(folder / f"{i}.png")
    return root


FOLDER = [
    "run",
    "--model_name_or_path",
    "digits_resnet",
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


def test_train_and_test_classes_must_match(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", test_classes=(0,))
    assert main([*FOLDER, "--dataset", str(root), "--output_dir", str(tmp_path / "o")]) == 2
    line = _error(capsys)
    assert "different classes" in line and "only in train: [1]" in line


def test_test_images_of_another_size_are_an_error_unless_image_size(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", sizes={"test": 10})
    assert main([*FOLDER, "--dataset", str(root), "--output_dir", str(tmp_path / "o")]) == 2
    assert "differ in size" in _error(capsys)
    assert main([*FOLDER, "--dataset", str(root), "--output_dir", str(tmp_path / "o"), "--image_size", "8"]) == 0
    assert _results(tmp_path / "o")["A_auc"] == _results(tmp_path / "o")["A_auc"]  # a number, not NaN


def test_a_short_run_reports_what_it_trained_and_what_stopped_it(tmp_path, capsys):
    """A memory smaller than a batch: warned, and the rows really trained reported; max_steps named as the stop."""
    out = tmp_path / "o"
    with pytest.warns(UserWarning, match="fewer than a batch of 16"):
        assert main([*RUN, "--output_dir", str(out), "--memory_size", "4", "--max_steps", "5"]) == 0
    results = _results(out)
    assert results["batch_size"] == 16 and 0 < results["batch_rows_mean"] < 16
    assert results["iterations"] == 5 and results["stopped_by"] == "max_steps"


def test_a_byte_budget_with_no_room_for_a_sample_is_an_error(tmp_path, capsys):
    from hf_budgetcl.accounting.memory_budget import model_bytes
    from hf_budgetcl.models import build_image_classifier

    fixed = model_bytes(build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8))
    extra = ["--memory_size", "null", "--memory_budget_bytes", str(fixed + 10)]  # a digit takes 72 bytes
    assert main([*RUN, "--output_dir", str(tmp_path / "o"), *extra]) == 2
    assert "no room for one sample" in _error(capsys)


# ---- 7/10: VQA files -----------------------------------------------------------------------------------------------
def _jsonl(path, images):
    rows = [{"image": im, "question": "what?", "answer": "a", "concept": f"c{i % 2}"} for i, im in enumerate(images)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def vqa_root(tmp_path):
    from PIL import Image

    root = tmp_path / "vqa"
    (root / "img").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / "img" / f"{i}.png")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, root / "img" / "link.png")
    return root, outside


@pytest.mark.parametrize("bad", ["absolute", "dotdot", "symlink"])
def test_vqa_image_paths_stay_inside_the_dataset_folder(vqa_root, bad):
    from hf_budgetcl.data.vqa import load_vqa_dataset

    root, outside = vqa_root
    image = {"absolute": str(outside), "dotdot": "../secret.png", "symlink": "img/link.png"}[bad]
    path = _jsonl(root / f"{bad}.jsonl", ["img/0.png", image])
    with pytest.raises(ConfigError, match="allow_external_paths"):
        load_vqa_dataset(path)
    import datasets

    ds, _ = load_vqa_dataset(path, allow_external_paths=True)
    second = ds.cast_column("image", datasets.Image(decode=False))[1]["image"]["path"]
    assert os.path.realpath(second) == os.path.realpath(outside)


def test_vqa_imagefolder_symlink_outside_is_refused(vqa_root):
    from hf_budgetcl.data.vqa import load_vqa_dataset

    root, _ = vqa_root
    rows = [{"file_name": n, "question": "q", "answer": "a", "concept": "c"} for n in ("0.png", "link.png")]
    (root / "img" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="outside the dataset folder"):
        load_vqa_dataset(root / "img")


@pytest.mark.parametrize("text, shown", [("", "holds no rows"), ('{"image": "x.png", \n', "malformed")])
def test_an_empty_or_malformed_vqa_jsonl_is_one_line(tmp_path, text, shown):
    from hf_budgetcl.data.vqa import load_vqa_dataset

    path = tmp_path / "q.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=shown):
        load_vqa_dataset(path)


def test_an_option_added_since_the_checkpoint_is_no_change_at_its_default():
    """A checkpoint written before a recipe gained an option (e.g. the image recipe's torch_dtype) resumes while the
    option keeps its default, and is refused once the option is set to anything else."""
    import dataclasses

    from hf_budgetcl.training.resume_guard import RunArguments
    from hf_budgetcl.utils.errors import ConfigError

    @dataclasses.dataclass
    class Config:
        seed: int = 1

        def to_dict(self):
            return dataclasses.asdict(self)

    @dataclasses.dataclass
    class Model:
        model_name_or_path: str = "digits_resnet"
        torch_dtype: str = "auto"

    old = RunArguments(Config())
    old.values.update({"model_name_or_path": "digits_resnet"})  # what an older recipe recorded: no torch_dtype
    saved = old.state_dict()

    at_default = RunArguments(Config())
    at_default.record(Model())
    at_default.load_state_dict(saved)
    assert at_default.exact

    changed = RunArguments(Config())
    changed.record(Model(torch_dtype="bfloat16"))
    with pytest.raises(ConfigError, match=r"torch_dtype \(not recorded\) -> 'bfloat16'"):
        changed.load_state_dict(saved)
    renamed = RunArguments(Config())
    renamed.record(Model(model_name_or_path="other"))
    with pytest.raises(ConfigError, match="model_name_or_path 'digits_resnet' -> 'other'"):
        renamed.load_state_dict(saved)
