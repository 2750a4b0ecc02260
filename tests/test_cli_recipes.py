"""The CLI a fine-tuning user expects: shipped recipes run by name from anywhere, --config/--recipe in --help, every
recipe and compare option described, `launch` wrapping accelerate, a --help that loads no torch, eval/ metrics."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from hf_budgetcl.cli import main
from hf_budgetcl.runs.yaml_config import resolve_config, shipped_recipes_dir
from hf_budgetcl.utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DIGITS = ["--per_class_train", "3", "--per_class_test", "2", "--report_to", "none", "--disable_tqdm", "true"]


def test_package_data_ships_every_recipe_file():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["hf_budgetcl"]
    package = os.path.join(ROOT, "hf_budgetcl")
    shipped = {os.path.relpath(p, package) for pat in patterns for p in glob.glob(os.path.join(package, pat))}
    recipes = {
        os.path.join("recipes", os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "recipes")))
        for d, _, files in os.walk(os.path.join(ROOT, "recipes"))
        if "__pycache__" not in d
        for f in files
    }
    assert recipes and recipes <= shipped
    assert os.path.samefile(os.path.join(package, "recipes"), os.path.join(ROOT, "recipes"))


def test_shipped_configs_resolve_by_name_or_repository_path_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = resolve_config("digits_er")
    assert os.path.samefile(by_name, os.path.join(shipped_recipes_dir(), "configs", "digits_er.yaml"))
    assert os.path.samefile(resolve_config("recipes/configs/digits_er.yaml"), by_name)
    assert os.path.samefile(
        resolve_config("multi_gpu", kind="accelerate"), os.path.join(ROOT, "recipes/accelerate/multi_gpu.yaml")
    )
    (tmp_path / "digits_er").write_text("method: replay\n")  # a file of that name in the cwd wins
    assert resolve_config("digits_er") == "digits_er"
    with pytest.raises(ConfigError, match="config file not found: nope.*digits_er"):
        resolve_config("nope")


@pytest.mark.parametrize("config", ["digits_er", "--config=recipes/configs/digits_er.yaml"])
def test_run_a_shipped_config_from_another_directory(tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    argv = ["--config", config] if not config.startswith("--") else [config]
    assert main(["run", *argv, *TINY_DIGITS, "--output_dir", "out"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["method"] == "er" and results["samples_seen"] == 30  # digits_er.yaml's method, 3 rows x 10


def test_help_shows_config_recipe_and_shipped_names(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--recipe" in out and "digits_er" in out and "launch" in out


def test_recipe_options_are_listed_without_a_yaml(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--recipe", "vlm_instruction_stream", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "--lora_target_modules" in out and "--use_dora" in out and "--torch_dtype" in out
    assert "--config" in out and "--recipe" in out and "digits_er" in out


def test_every_compare_option_is_described_and_the_passthrough_mentioned():
    from hf_budgetcl.compare.cli import make_parser

    parser = make_parser()
    options = [a for a in parser._actions if a.option_strings]
    assert len(options) >= 7 and all(a.help for a in options)
    assert "lone `--`" in parser.format_help()


def test_top_level_help_loads_neither_torch_nor_transformers():
    code = "import sys; from hf_budgetcl.cli import main; main(['--help']); print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_launch_wraps_accelerate_launch_around_run(monkeypatch):
    import accelerate.commands.launch as launch

    seen = []
    monkeypatch.setattr(launch, "launch_command", seen.append)
    argv = ["launch", "--config_file", "multi_cpu_2proc", "--", "--config", "digits_er", "--seed", "2"]
    assert main(argv) == 0
    (args,) = seen
    assert os.path.samefile(args.config_file, os.path.join(ROOT, "recipes/accelerate/multi_cpu_2proc.yaml"))
    assert args.module and args.training_script == "hf_budgetcl.cli"
    assert args.training_script_args == ["run", "--config", "digits_er", "--seed", "2"]
    assert main(["launch", "--", "--config", "nope"]) == 2 and len(seen) == 1  # one line, nothing launched


def test_anytime_metrics_are_logged_under_eval(tmp_path):
    from transformers.integrations.integration_utils import rewrite_logs

    from tests.helpers import digits_trainer

    trainer = digits_trainer(tmp_path, per_class_train=3, per_class_test=2, eval_period=10)
    trainer.train()
    logged = [log for log in trainer.state.log_history if any("anytime_accuracy" in k for k in log)]
    assert len(logged) == len(trainer.curve) >= 3
    assert all("eval/anytime_accuracy" in rewrite_logs(log) for log in logged)  # how TensorBoard/W&B file them
