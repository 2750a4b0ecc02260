"""A pip user's install: the wheel built from this tree, installed (not editable) into a folder of its own, runs the
shipped recipes by name and by a path outside the repository, from another directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--per_class_train", "3", "--per_class_test", "2", "--report_to", "none", "--disable_tqdm", "true"]
TINY += ["--logging_steps", "1000"]


def _quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the test run's PYTHONPATH is the source tree
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PIP_NO_INDEX": "1", **extra}


def _check(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder holding the installed wheel, its console script). Built from a copy of the files a source
    distribution holds, so the build leaves nothing (build/, *.egg-info) in the working tree."""
    pytest.importorskip("setuptools", reason="building the wheel offline (--no-build-isolation) needs setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("hf_budgetcl", "recipes"):  # hf_budgetcl/recipes stays a link to ../recipes, as in the repository
        shutil.copytree(os.path.join(ROOT, name), source / name, symlinks=True, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _check(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)], env=_quiet_env()
    )
    (wheel,) = (tmp / "dist").glob("hf_budgetcl-*.whl")
    site = tmp / "site"
    _check([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], env=_quiet_env())
    return site, site / "bin" / "hf-budgetcl"


def test_the_installed_copy_is_imported_and_ships_the_recipes(installed, tmp_path):
    site, _ = installed
    code = (
        "import hf_budgetcl; from hf_budgetcl.runs.yaml_config import resolve_config; "
        "print(hf_budgetcl.__file__); print(resolve_config('digits_er'))"
    )
    out = _check([sys.executable, "-c", code], cwd=tmp_path, env=_quiet_env(PYTHONPATH=str(site))).stdout.split()
    package = os.path.join(str(site), "hf_budgetcl", "")
    assert out[0].startswith(package), out  # not the source tree, not the venv's editable install
    assert out[1] == os.path.join(package, "recipes", "configs", "digits_er.yaml")
    assert not os.path.islink(os.path.join(package, "recipes"))  # the wheel holds the files, not the link


@pytest.mark.parametrize("how", ["by name", "by a path outside the repository"])
def test_the_installed_console_script_runs_a_shipped_config(installed, tmp_path, how):
    site, script = installed
    if how == "by name":
        config = ["--config", "digits_er"]
    else:
        shutil.copy(site / "hf_budgetcl" / "recipes" / "configs" / "digits_er.yaml", tmp_path / "mine.yaml")
        config = [f"--config={tmp_path / 'mine.yaml'}"]
    env = _quiet_env(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    _check([str(script), "run", *config, *TINY, "--output_dir", "out"], cwd=tmp_path, env=env)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["method"] == "er" and results["samples_seen"] == 30  # digits_er.yaml's method, 3 rows x 10
