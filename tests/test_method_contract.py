"""The method plug-in contract: options reach the method, unknown ones are refused, a method's pinned freezing is
enforced, internal errors keep their traceback, and a plug-in registered through an entry point runs in compare."""

import json
import os
from pathlib import Path

import pytest

from hf_budgetcl.cli import main
from hf_budgetcl.methods import METHODS, ContinualMethod, register_method

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_method"
BASE = ["--config", "recipes/configs/digits_er.yaml", "--report_to", "none", "--disable_tqdm", "true"]
SMALL = ["--per_class_train", "8", "--per_class_test", "5", "--eval_period", "40", "--flops_budget_per_sample", "5e7"]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("hf-budgetcl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_method_options_reach_sar_and_show_in_results(tmp_path):
    out = tmp_path / "sar"
    options = "sar_temperature=0.5,similarity_coords=8,sar_scale_by_memory=false"
    assert main(["run", *BASE, *SMALL, "--method", "sar", "--method_options", options, "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_options"] == {
        "sar_temperature": 0.5,
        "sar_decay_k": 4.0,
        "sar_warmup_samples": 50,
        "sar_scale_by_memory": False,
        "sar_damp_new_classes": False,
        "similarity_ema": 0.001,
        "similarity_coords": 8,
        "similarity_features": "head",
    }
    assert results["memory_bytes"]["extra:sar_statistics"] == 8 * (10 + 100 + 10 * 8 + 20) + 8 * 2 * 8


@pytest.mark.parametrize(
    "method, options, expected",
    [
        ("mir", "mir_candidate=5", "'mir_candidate' is not an option of method 'mir'"),
        ("er", "sar_temperature=0.5", "'sar_temperature' is not an option of method 'er'"),
        ("mir", "mir_candidates=many", "mir_candidates expects int"),
        ("sar", "sar_scale_by_memory=maybe", "sar_scale_by_memory expects bool"),
        ("mir", "mir_candidates", "expected key=value"),
    ],
)
def test_bad_method_options_are_one_line_errors(capsys, tmp_path, method, options, expected):
    code = main(["run", *BASE, "--method", method, "--method_options", options, "--output_dir", str(tmp_path)])
    assert code == 2 and expected in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "results.json").exists()


def test_a_method_that_pins_its_freezing_refuses_another(capsys, tmp_path):
    code = main(["run", *BASE, *SMALL, "--method", "remind", "--freeze", "none", "--output_dir", str(tmp_path)])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "remind" in line and "static:" in line and "'none'" in line


def test_gradient_accumulation_is_refused(capsys, tmp_path):
    code = main(["run", *BASE, "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path)])
    assert code == 2 and "gradient_accumulation_steps" in _error_line(capsys.readouterr().err)


class _Broken(ContinualMethod):
    name = "broken_observer"

    def observe(self, ctx, inputs, outputs):
        raise ValueError("an internal bug, not a configuration error")


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(METHODS, "_methods", dict(METHODS._methods))  # the registration ends with the test
    register_method(_Broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["run", *BASE, *SMALL, "--method", "broken_observer", "--output_dir", str(tmp_path)])


def test_an_entry_point_method_runs_in_compare(tmp_path, monkeypatch):
    # The plug-in is "installed" by putting its module and dist-info on the path, here and in compare's runs.
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(METHODS, "_methods", dict(METHODS._methods))
    monkeypatch.setattr(METHODS, "_loaded_entry_points", False)
    assert METHODS["quarter_stream"].stream_fraction == 0.25
    out = tmp_path / "cmp"
    args = ["--methods", "er,quarter_stream", "--seeds", "1", "--output_dir", str(out), "--jobs", "2"]
    assert main(["compare", "--config", "recipes/configs/digits_er.yaml", *args, "--", *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = {r["method"]: r for r in summary["runs"]}
    assert set(runs) == {"er", "quarter_stream"} and "error" not in runs["quarter_stream"]
    assert runs["quarter_stream"]["method_options"] == {"quarter_replay_weight": 1.0}
    assert (
        runs["quarter_stream"]["iterations"] > runs["er"]["iterations"]
    )  # 2 of 8 rows from the stream: earlier start
