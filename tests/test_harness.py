"""The benchmark harness (hf_budgetcl.compare): grid validation, argument-checked reuse, and the generated docs."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_budgetcl.compare import grid as grid_module
from hf_budgetcl.compare import publish
from hf_budgetcl.compare.cli import declare
from hf_budgetcl.compare.cli import main as compare_main
from hf_budgetcl.compare.grid import GridError, Run, run_grid, variant_flags

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
DIGITS = str(ROOT / "recipes/configs/digits_er.yaml")
TINY = ["--per_class_train", "8", "--per_class_test", "5", "--eval_period", "40", "--flops_budget_per_sample", "5e7"]


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(grid_module.subprocess, "Popen", refuse)


@pytest.fixture
def count_subprocesses(monkeypatch):
    calls = []
    real = subprocess.Popen

    def counted(cmd, *args, **kwargs):
        calls.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(grid_module.subprocess, "Popen", counted)
    return calls


def test_unknown_method_fails_the_whole_grid_before_anything_runs(tmp_path, no_subprocess):
    runs = declare(DIGITS, ["er", "wat", "replay"], [1, 2], str(tmp_path / "cmp"))
    with pytest.raises(GridError, match=r"run wat_seed1: unknown method 'wat'"):
        run_grid(runs, jobs=2)
    assert not (tmp_path / "cmp").exists() and list(tmp_path.iterdir()) == []


def test_compare_rejects_an_unknown_method_without_creating_a_run_dir(tmp_path, capsys, no_subprocess):
    with pytest.raises(GridError, match="unknown method 'wat'"):  # hf-budgetcl turns it into one line, exit 2
        compare_main(["--config", DIGITS, "--methods", "er,wat", "--output_dir", str(tmp_path / "cmp")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "runs, message",
    [
        (lambda d: [Run(d / "a", ["--config", d / "missing.yaml", "--method", "er"])], "run a: config file not found"),
        (lambda d: [Run(d / "a", ["--method", "er"]), Run(d / "a", ["--method", "sar"])], "run a: run directory"),
        (lambda d: [Run(d / "a", ["--method=nope"])], "run a: unknown method 'nope'"),
    ],
)
def test_invalid_grids_name_the_entry(tmp_path, no_subprocess, runs, message):
    with pytest.raises(GridError, match=message):
        run_grid(runs(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_malformed_variants_are_rejected():
    assert variant_flags("sar:sar_temperature=0.03,similarity_ema=0.01") == (
        "sar",
        ["--sar_temperature", "0.03", "--similarity_ema", "0.01"],
    )
    for bad in ("sar:temperature", "sar:=3", ":a=1"):
        with pytest.raises(GridError, match=re.escape(repr(bad))):
            variant_flags(bad)


def test_a_benchmark_script_with_an_invalid_grid_runs_nothing(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark_sar.py", "--methods", "replay", "sar:oops", "--work_dir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "variant 'sar:oops'" in proc.stderr.strip().splitlines()[-1]
    assert not work.exists()


def test_table_only_without_raw_results_is_a_one_line_error(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark_fmd5.py", "--table_only", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"scripts/benchmark_fmd5.py: error: --table_only: no raw results at {out.with_suffix('.json')} (give --raw, or run the grid first)"
    )
    assert not out.exists()


def test_a_merge_into_a_table_of_other_parameters_fails_before_anything_runs(tmp_path):
    work, out = tmp_path / "work", tmp_path / "t.md"
    params = {"threads": 2, "stream": "mcit", "family": "llava", "overrides": [], "commands": ["x"]}
    publish.write_raw(out.with_suffix(".json"), "scripts/benchmark_vlm.py", params, [])
    cmd = [sys.executable, "scripts/benchmark_vlm.py", "--merge", "--work_dir", str(work), "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "other parameters" in proc.stderr.strip().splitlines()[-1]
    assert not work.exists() and not out.exists()


def test_a_finished_run_is_reused_with_the_same_arguments(tmp_path, count_subprocesses):
    args = ["--config", DIGITS, "--method", "er", "--seed", "1", *TINY]
    run = Run(tmp_path / "er", args, {"method": "er"})
    first = run_grid([run])[0]  # a real hf-budgetcl run
    assert "error" not in first and first["label"] == {"method": "er"} and len(count_subprocesses) == 1
    assert first["train_flops"] <= first["flops_budget"]
    assert json.loads((tmp_path / "er/cmd.json").read_text()) == args
    again = run_grid([run])[0]
    assert len(count_subprocesses) == 1 and again["A_auc"] == first["A_auc"]  # reused, not run again


WRITE = "import json, sys; json.dump({'value': sys.argv[2]}, open(sys.argv[1], 'w'))"


def _writer(run_dir: Path, value: str) -> Run:
    return Run(run_dir, [run_dir / "out.json", value], command=(sys.executable, "-c", WRITE), result_name="out.json")


def test_changed_arguments_or_rerun_run_again(tmp_path, count_subprocesses):
    assert run_grid([_writer(tmp_path / "r", "a")])[0]["value"] == "a" and len(count_subprocesses) == 1
    assert run_grid([_writer(tmp_path / "r", "a")])[0]["value"] == "a" and len(count_subprocesses) == 1
    assert run_grid([_writer(tmp_path / "r", "b")])[0]["value"] == "b" and len(count_subprocesses) == 2
    assert run_grid([_writer(tmp_path / "r", "b")], rerun={"other"}) and len(count_subprocesses) == 2
    assert run_grid([_writer(tmp_path / "r", "b")], rerun={"r"}) and len(count_subprocesses) == 3
    assert run_grid([_writer(tmp_path / "r", "b")], rerun=True) and len(count_subprocesses) == 4


def test_unrecorded_runs_are_reused_only_when_asked(tmp_path, count_subprocesses):
    run = _writer(tmp_path / "r", "new")
    (tmp_path / "r").mkdir()
    (tmp_path / "r/out.json").write_text('{"value": "old"}')  # a finished run from before cmd.json was recorded
    assert run_grid([run], reuse_unrecorded=True)[0]["value"] == "old" and not count_subprocesses
    assert run_grid([run])[0]["value"] == "new" and len(count_subprocesses) == 1


def test_a_failed_run_does_not_stop_the_others(tmp_path):
    write = "import json, sys; json.dump({'ok': 1}, open(sys.argv[1], 'w'))"
    fail = "import sys; print('boom', file=sys.stderr); sys.exit(3)"
    runs = [
        Run(tmp_path / "bad", [], {"n": 0}, command=(sys.executable, "-c", fail)),
        Run(tmp_path / "good", [tmp_path / "good/results.json"], {"n": 1}, command=(sys.executable, "-c", write)),
    ]
    bad, good = run_grid(runs, jobs=1)
    assert bad["error"] == "boom" and good["ok"] == 1
    assert "boom" in (tmp_path / "bad/log.txt").read_text()
    with pytest.raises(SystemExit, match="boom"):
        grid_module.completed([bad, good])


CHILD = (
    "import json, sys, time; open(sys.argv[2], 'w').write('up'); time.sleep(1.5); print('x' * 100000, flush=True); "
    "json.dump({'ok': 1}, open(sys.argv[1], 'w'))"
)


def test_a_run_outlives_its_killed_driver(tmp_path):
    """A grid driver killed mid-run leaves the run to finish (its output goes to log.txt, not to the driver's pipe,
    whose closing would kill it at its next print); a later invocation then reuses the result."""
    run_dir, started = tmp_path / "r", tmp_path / "started"
    driver = (
        "import sys; from pathlib import Path; from hf_budgetcl.compare.grid import Run, run_grid; "
        f"run_grid([Run(Path({str(run_dir)!r}), [{str(run_dir / 'out.json')!r}, {str(started)!r}], "
        f"command=(sys.executable, '-c', {CHILD!r}), result_name='out.json')])"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT)
    for _ in range(300):
        if started.exists():
            break
        time.sleep(0.05)
    assert started.exists(), "the run never started"
    proc.kill()
    proc.wait()
    for _ in range(200):
        if (run_dir / "out.json").exists():
            break
        time.sleep(0.05)
    assert json.loads((run_dir / "out.json").read_text()) == {"ok": 1}
    assert (run_dir / "log.txt").read_text().startswith("x" * 1000)


def test_a_run_still_running_from_a_killed_driver_is_not_started_twice(tmp_path, count_subprocesses):
    run = _writer(tmp_path / "r", "a")
    (tmp_path / "r").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "r/running.pid").write_text(str(sleeper.pid))
        result = run_grid([run])[0]
        assert f"still running as pid {sleeper.pid}" in result["error"] and len(count_subprocesses) == 1  # the sleeper
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run_grid([run])[0]["value"] == "a" and len(count_subprocesses) == 2  # a stale pid file: runs
    assert not (tmp_path / "r/running.pid").exists()


GENERATED = re.compile(r"^_Generated by `([^`]+)`(?: from \[([^]]+)\]\(\2\))?; do not edit\._\n\n")


def test_every_results_page_is_generated():
    pages = sorted(RESULTS.glob("*.md"))
    assert pages
    for page in pages:
        match = GENERATED.match(page.read_text())
        assert match, f"{page.name} lacks the generated header"
        script = match.group(1)
        assert (ROOT / script).is_file(), f"{page.name}: {script} does not exist"


def test_tables_with_raw_data_regenerate_byte_identically(tmp_path):
    regenerated = []
    for page in sorted(RESULTS.glob("*.md")):
        raw = page.with_suffix(".json")
        if not raw.exists():
            continue
        script = GENERATED.match(page.read_text()).group(1)
        out = tmp_path / page.name
        proc = subprocess.run(
            [sys.executable, script, "--table_only", "--raw", str(raw), "--output", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == page.read_bytes(), f"{page.name} does not regenerate from {raw.name}"
        regenerated.append(page.name)
    for summary in sorted(RESULTS.glob("*/summary.json")):
        copy = tmp_path / summary.parent.name
        copy.mkdir()
        shutil.copy(summary, copy / "summary.json")
        compare_main(["--table_only", "--output_dir", str(copy)])
        assert (copy / "summary.md").read_bytes() == (summary.parent / "summary.md").read_bytes()
        regenerated.append(summary.parent.name)
    assert {"fmd5.md", "compare_digits_disjoint"} <= set(regenerated)


def test_results_index_is_up_to_date(tmp_path):
    out = tmp_path / "README.md"
    subprocess.run([sys.executable, "scripts/make_results_page.py", "--output", str(out)], cwd=ROOT, check=True)
    assert out.read_bytes() == (RESULTS / "README.md").read_bytes(), "run scripts/make_results_page.py"


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_findings_links_resolve_to_generated_results():
    text = (DOCS / "findings.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    files = [link for link in links if not link.startswith("#")]
    assert files and all(not link.startswith(("http:", "https:")) for link in files)
    for link in files:
        target = (DOCS / link.split("#")[0]).resolve()
        assert target.is_file(), f"findings.md links to missing {link}"
        assert RESULTS.resolve() in target.parents, f"findings.md links outside docs/results/: {link}"
    for link in links:
        if link.startswith("#"):
            assert link[1:] in anchors, f"findings.md links to a missing section {link}"
    sections = re.split(r"^## ", text, flags=re.M)[2:]  # after the title and the summary
    for section in sections:
        assert "](results/" in section, f"section '{section.splitlines()[0]}' cites no table"


def test_merge_puts_rerun_runs_in_place_of_the_old_ones(tmp_path):
    raw = tmp_path / "t.json"
    old = [{"method": m, "seed": s, "A_auc": 0.5} for m, s in (("plain", 1), ("er", 1), ("er", 2))]
    publish.write_raw(raw, "scripts/x.py", {"n": 1}, old)
    key = lambda r: (r["method"], r["seed"])
    _, runs = publish.merged(
        raw, {"n": 1}, [{"method": "er", "seed": 1, "A_auc": 0.9}, {"method": "er", "seed": 3}], key
    )
    assert [key(r) for r in runs] == [("plain", 1), ("er", 1), ("er", 2), ("er", 3)] and runs[1]["A_auc"] == 0.9
    with pytest.raises(GridError, match="other parameters"):
        publish.merged(raw, {"n": 2}, [], key)


def test_merge_joins_the_accumulated_parameters_and_compares_the_rest(tmp_path):
    raw = tmp_path / "t.json"
    publish.write_raw(raw, "scripts/x.py", {"n": 1, "commands": ["a"]}, [{"method": "er", "seed": 1}])
    key = lambda r: (r["method"], r["seed"])
    params, runs = publish.merged(raw, {"n": 1, "commands": ["b"]}, [{"method": "er", "seed": 2}], key, ("commands",))
    assert params == {"n": 1, "commands": ["a", "b"]} and [key(r) for r in runs] == [("er", 1), ("er", 2)]
    params, _ = publish.merged(raw, {"n": 1, "commands": ["a"]}, [], key, ("commands",))
    assert params["commands"] == ["a"]
    with pytest.raises(GridError, match="other parameters"):
        publish.merged(raw, {"n": 2, "commands": ["a"]}, [], key, ("commands",))
    length = lambda r: r.get("length", 100)  # noqa: E731
    publish.merged(raw, {"n": 1, "commands": ["a"]}, [{"method": "er", "seed": 2}], key, ("commands",), length)
    with pytest.raises(GridError, match="differ in their setting"):
        publish.merged(raw, {"n": 1, "commands": ["a"]}, [{"method": "er", "seed": 2, "length": 9}], key, (), length)


def test_readme_names_only_paths_that_exist():
    text = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"`((?:hf_budgetcl|scripts|recipes|docs|tests|model_cards)/[^`\s*<>]+)`", text))
    assert paths, "the README names no repository paths"
    missing = sorted(p for p in paths if not (ROOT / p.split("(")[0].rstrip(":")).exists())
    assert not missing, f"README.md names missing paths: {missing}"


def test_paired_difference_pairs_runs_by_seed_not_by_position():
    from hf_budgetcl.compare.summary import paired_difference

    er = [{"seed": 1, "A_auc": 0.5}, {"seed": 2, "A_auc": 0.6}, {"seed": 3, "A_auc": 0.7}]
    alsar = [{"seed": 3, "A_auc": 0.71}, {"seed": 1, "A_auc": 0.51}]  # seed 2 missing, another order
    assert paired_difference(alsar, er) == "1.00 ± 0.00"  # by position it would read 21.00 and -9.00
    assert paired_difference(er, er) == "–" and paired_difference([{"seed": 4, "A_auc": 1.0}], er) == "–"


def test_fmd5_merge_keeps_a_methods_runs_beside_its_variants(tmp_path):
    """A variant's results.json names only its method: merged into a table by that name, the variant's runs replaced
    the method's own (seen once with alsar and alsar:budget_matching=spend_savings)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_fmd5", ROOT / "scripts/benchmark_fmd5.py")
    fmd5 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fmd5)
    run = {"method": "alsar", "seed": 1, "A_auc": 0.8, "A_last": 0.7, "curve": [0.8], "iterations": 10}
    old = [{**run, "label": {"method": "alsar", "seed": 1}}]
    variant = {**run, "A_auc": 0.9, "label": {"method": "alsar:budget_matching=spend_savings", "seed": 1}}
    raw = tmp_path / "t.json"
    publish.write_raw(raw, "scripts/benchmark_fmd5.py", {"p": 1}, old)
    _, runs = publish.merged(raw, {"p": 1}, [variant], key=lambda r: (fmd5.system(r), r["seed"]))
    assert [fmd5.system(r) for r in runs] == ["alsar", "alsar:budget_matching=spend_savings"]
