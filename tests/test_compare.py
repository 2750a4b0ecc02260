import json

import pytest

from hf_budgetcl.cli import main
from hf_budgetcl.compare.cli import declare
from hf_budgetcl.compare.grid import GridError, fold_method_options, split_methods, variant_dirname
from hf_budgetcl.compare.summary import summarize
from hf_budgetcl.compare.tables import to_markdown


def _fake(method, seed, auc, flops, last=None):
    return {
        "method": method,
        "seed": seed,
        "A_auc": auc,
        "A_last": auc if last is None else last,
        "F_last": 0.1,
        "train_flops": flops,
        "wall_time_s": 10.0,
        "backward_flops_saved_fraction": 0.0,
        "memory_bytes": {"total": 2_000_000},
        "memory_budget_bytes": 2_500_000,
        "memory_slots": 50,
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


def test_every_method_is_paired_by_seed_with_the_first_one():
    runs = [
        _fake("er", 1, 0.5, 1e12),
        _fake("er", 2, 0.7, 1e12),
        _fake("alsar", 2, 0.6, 1e12),
        _fake("alsar", 1, 0.6, 1e12),
    ]
    summary = summarize(runs, ["er", "alsar"])
    # seed 1: 0.6 - 0.5, seed 2: 0.6 - 0.7
    assert summary["alsar"]["delta_A_auc"] == pytest.approx(0.0) and summary["alsar"][
        "delta_A_auc_std"
    ] == pytest.approx(0.141421, 1e-4)
    assert "paired_with" not in summary["er"]
    md = to_markdown(summary)
    assert "Δ A_AUC vs er, paired" in md and "| alsar | 2,1 | 60.00 ± 0.00 | 60.00 ± 0.00 | 0.00 ± 14.14 |" in md


def test_a_variant_is_also_paired_with_its_own_method():
    runs = [
        _fake("er", 1, 0.5, 1e12),
        _fake("alsar", 1, 0.6, 1e12, last=0.5),
        _fake("alsar", 2, 0.8, 3e12, last=0.5),
        _fake("alsar:x=1", 2, 0.7, 3e12, last=0.6),
        _fake("alsar:x=1", 1, 0.9, 1e12, last=0.6),
        _fake("er:x=1", 1, 0.4, 1e12),
        _fake("mir:x=1", 1, 0.4, 1e12),
        {"method": "mir", "seed": 1, "error": "boom"},
        _fake("remind", 1, 0.5, 0.0),
        _fake("remind:x=1", 1, 0.5, 1e12),
    ]
    summary = summarize(runs, ["er", "alsar:x=1", "alsar", "er:x=1", "mir", "mir:x=1", "remind", "remind:x=1"])
    row = summary["alsar:x=1"]  # listed before its method: paired all the same
    # A_AUC seed 1: 0.9 - 0.6, seed 2: 0.7 - 0.8; A_last +0.1 on both; FLOPs (1 + 3) / (1 + 3), not mean(1, 1)
    assert row["variant_of"] == "alsar" and row["variant_seeds"] == [2, 1]
    assert row["variant_delta_A_auc"] == pytest.approx(0.1) and row["variant_delta_A_auc_std"] == pytest.approx(
        0.282843, 1e-4
    )
    assert row["variant_delta_A_last"] == pytest.approx(0.1) and row["variant_delta_A_last_std"] == pytest.approx(0)
    assert row["variant_flops_ratio"] == pytest.approx(1.0)
    assert row["delta_A_auc"] == pytest.approx(0.4)  # and with the first method, on the seed er has
    assert "variant_of" not in summary["er:x=1"]  # its method is the first one: the Δ vs er says it already
    assert "variant_of" not in summary["alsar"] and "variant_of" not in summary["mir:x=1"]  # mir failed
    md = to_markdown(summary)
    assert "| alsar:x=1 | alsar | 2,1 | 10.00 ± 28.28 | 10.00 ± 0.00 | 1.00 |" in md
    assert "| remind:x=1 | remind | 1 | 0.00 | 0.00 | – |" in md  # a method that trained nothing: no ratio


def test_the_best_row_at_the_common_budget_is_paired_with_each_other_row():
    runs = [
        _fake("er", 1, 0.50, 1e12),
        _fake("er", 2, 0.60, 1e12),
        _fake("gdumb", 1, 0.70, 1e12, last=0.6),
        _fake("gdumb", 2, 0.74, 1e12, last=0.6),
        _fake("alsar", 1, 0.71, 1e12, last=0.5),
        _fake("alsar", 2, 0.65, 1e12, last=0.7),
        {**_fake("sar:flops_budget=2e12", 1, 0.99, 2e12), "flops_budget": 2e12},  # a budget of its own: no contest
        {"method": "mir", "seed": 1, "error": "boom"},
    ]
    summary = summarize(runs, ["er", "gdumb", "alsar", "sar:flops_budget=2e12", "mir"])
    # mean A_AUC: er 0.55, gdumb 0.72, alsar 0.68; the variant's 0.99 was bought with twice the FLOPs
    assert summary["gdumb"]["best_A_auc"] and not any(summary[m].get("best_A_auc") for m in ("er", "alsar", "mir"))
    versus = summary["gdumb"]["best_versus"]
    assert list(versus) == ["er", "alsar"]
    # vs alsar: A_AUC seed 1 -0.01, seed 2 +0.09; A_last +0.1, -0.1
    assert versus["alsar"]["delta_A_auc"] == pytest.approx(0.04)
    assert versus["alsar"]["delta_A_auc_std"] == pytest.approx(0.0707107, 1e-4)
    assert versus["alsar"]["delta_A_last"] == pytest.approx(0.0) and versus["alsar"]["higher_A_auc_seeds"] == 1
    assert versus["er"]["higher_A_auc_seeds"] == 2
    md = to_markdown(summary)
    assert "Best A_AUC at no FLOPs budget and 2,500,000 bytes: gdumb" in md
    assert "| alsar | 1,2 | 4.00 ± 7.07 | 0.00 ± 14.14 | 1/2 seeds |" in md


def test_the_best_row_skips_a_failed_first_method_and_a_run_without_evaluations():
    runs = [
        {"method": "er", "seed": 1, "error": "boom"},
        _fake("replay", 1, float("nan"), 1e12),  # no evaluation: A_AUC undefined, never "best"
        _fake("sar", 1, 0.6, 1e12),
        _fake("alsar", 1, 0.7, 1e12),
    ]
    summary = summarize(runs, ["er", "replay", "sar", "alsar"])
    assert summary["alsar"]["best_A_auc"] and list(summary["alsar"]["best_versus"]) == ["sar"]
    assert "best_A_auc" not in summary["replay"]
    assert "| sar | 1 | 10.00 | 10.00 | 1/1 seeds |" in to_markdown(summary)
    alone = summarize([_fake("er", 1, 0.5, 1e12)], ["er"])
    assert alone["er"]["best_versus"] == {} and "Best A_AUC" not in to_markdown(alone)


def test_methods_list_keeps_a_variants_options_together():
    assert split_methods("er,alsar:budget_matching=spend_savings,ema=0.01,replay") == [
        "er",
        "alsar:budget_matching=spend_savings,ema=0.01",
        "replay",
    ]
    assert split_methods("er,er:online_iter=2,freeze=static:1") == ["er", "er:online_iter=2,freeze=static:1"]
    with pytest.raises(GridError, match="ema=0.01"):
        split_methods("er,ema=0.01")


def test_an_escaped_comma_stays_inside_a_variants_value(tmp_path):
    entries = split_methods(r"er,er:method_options=sar_temperature=0.1\,sar_decay_k=2,online_iter=2,replay")
    assert entries == ["er", r"er:method_options=sar_temperature=0.1\,sar_decay_k=2,online_iter=2", "replay"]
    runs = declare("digits_er", entries, [1], str(tmp_path))
    variant = runs[1]
    assert variant.option("--method_options") == "sar_temperature=0.1,sar_decay_k=2"
    assert variant.option("--online_iter") == "2"
    assert variant.run_dir.name == "er_method_options=sar_temperature=0.1,sar_decay_k=2_online_iter=2_seed1"
    # entries without an escape keep the directory names of earlier versions, so finished runs are still reused
    assert (
        variant_dirname("alsar:budget_matching=spend_savings,ema=0.01")
        == "alsar+budget_matching=spend_savings+ema=0.01"
    )
    assert variant_dirname("er:freeze=static:1,model=a/b") == "er+freeze=static+1+model=a_b"
    # unescaped, the comma ends the value and what follows becomes an option of its own
    plain = declare("digits_er", split_methods("er:method_options=sar_temperature=0.1,sar_decay_k=2"), [1], "o")
    assert plain[0].option("--method_options") == "sar_temperature=0.1"
    assert plain[0].option("--sar_decay_k") == "2"


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
            "er,replay,er:memory_size=4",
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
    assert set(summary["summary"]) == {"er", "replay", "er:memory_size=4"}
    for run in summary["runs"]:
        assert run["train_flops"] <= run["flops_budget"] == pytest.approx(5e7 * 80)
        assert run["memory_bytes"]["total"] <= run["memory_budget_bytes"]
    slots = {run["method"]: run["memory_slots"] for run in summary["runs"]}
    assert slots["er:memory_size=4"] == 4 < slots["er"]  # the variant's option reached its run, and only its run
    assert "| er | 1 |" in (out / "summary.md").read_text()
    assert (out / "accuracy_vs_flops.png").stat().st_size > 1000
    assert (out / "per_class_accuracy.png").stat().st_size > 1000


def test_a_variants_method_option_reaches_the_method(tmp_path):
    from hf_budgetcl.methods import METHODS
    from hf_budgetcl.runs.image_classification import make_parser

    entries = split_methods(
        "derpp:derpp_alpha=0,eval_period=5,sar:sar_temperature=0.3,derpp:method_options=derpp_beta=0,derpp_alpha=2"
    )
    derpp, sar, both = declare("digits_er", entries, [1], str(tmp_path))
    # derpp_alpha is DER++'s own option, not a run setting: as a flag every run would stop on an unknown argument
    assert derpp.option("--derpp_alpha") is None and derpp.option("--method_options") == "derpp_alpha=0"
    assert derpp.option("--eval_period") == "5"
    assert sar.option("--sar_temperature") == "0.3" and sar.option("--method_options") is None  # a config field
    assert both.option("--method_options") == "derpp_beta=0,derpp_alpha=2"
    argv = ["--output_dir", str(tmp_path), *both.args]
    *_, config = make_parser().parse_with_config(argv, ignore_keys=("recipe",))
    options = METHODS["derpp"](config).options
    assert (options.derpp_alpha, options.derpp_beta) == (2.0, 0.0)
    # options given to every run are kept, not replaced by the variant's
    (common,) = declare("digits_er", ["derpp:derpp_alpha=0"], [1], "o", ["--method_options", "derpp_beta=0.3"])
    assert common.option("--method_options") == "derpp_beta=0.3,derpp_alpha=0"
    # nothing to fold: the arguments stay as they were, so finished runs are still reused
    plain = ["--config", "digits_er", "--method", "er", "--method_options", "a=1", "--eval_period", "5"]
    assert fold_method_options(plain) == plain


def test_compare_rejects_an_option_the_recipe_lacks_before_any_run(tmp_path, capsys):
    argv = ["compare", "--config", "digits_er", "--methods", "er,er:no_such_option=1", "--output_dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "'--no_such_option' is not an option of the image_classification recipe" in err
        and "er_no_such_option=1_seed1" in err
    )
    assert not list(tmp_path.iterdir())  # nothing ran, not even the valid row
    for methods, message in [
        ("derpp:derpp_alpa=0", "'--derpp_alpa' is not an option"),
        ("derpp:method_options=derpp_alpa=0", "'derpp_alpa' is not an option of method 'derpp'"),
        ("er:recipe=nope", "unknown recipe 'nope'"),
    ]:
        assert main([*argv[:4], methods, *argv[5:]]) == 2
        assert message in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_unknown_flag_knows_the_recipes_own_spellings():
    from hf_budgetcl.runs.arguments import recipe_parser

    image, vlm = recipe_parser("image_classification"), recipe_parser("vlm_instruction_stream")
    assert image.unknown_flag(["--eval_period=5", "--no_sar_scale_by_memory", "--seed", "1"]) is None
    assert image.unknown_flag(["--seed", "1", "--wat", "2"]) == "--wat"
    assert vlm.unknown_flag(["--lora_r", "4"]) is None and image.unknown_flag(["--lora_r", "4"]) == "--lora_r"


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


# ---- per-class accuracy plot --------------------------------------------------------------------------------------
def _with_classes(method, seed, per_class, class_order=(2, 0, 1)):
    curve = [
        {"samples": 10, "train_flops": 1e9, "accuracy": 0.5, "per_class": {str(k): v for k, v in per_class.items()}}
    ]
    return {**_fake(method, seed, 0.5, 1e9), "curve": curve, "stream": {"params": {"class_order": list(class_order)}}}


@pytest.fixture
def drawn_class_labels(monkeypatch):
    """The x tick labels of every figure saved, by file name (the PNG itself holds no text to read back)."""
    from matplotlib.figure import Figure

    drawn, savefig = {}, Figure.savefig

    def recording_savefig(fig, path, *args, **kwargs):
        drawn[str(path).rsplit("/", 1)[-1]] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return drawn


def test_per_class_plot_names_the_classes_in_stream_order_and_averages_the_seeds(tmp_path, drawn_class_labels):
    from hf_budgetcl.compare.plots import per_class_means, plot

    runs = [
        _with_classes("er", 1, {0: 0.2, 1: 0.4, 2: 1.0}),
        _with_classes("er", 2, {0: 0.4, 1: 0.6, 2: 0.0}),
        _with_classes("alsar", 1, {0: 1.0, 1: 0.5, 2: 0.25}),
        {"method": "mir", "seed": 1, "error": "boom"},
    ]
    names = {0: "circle", 1: "square", 2: "triangle"}
    labels, means = per_class_means(runs, names)
    assert labels == ["triangle", "circle", "square"]  # the stream's class order, [2, 0, 1]
    assert means["er"] == pytest.approx([0.5, 0.3, 0.5]) and means["alsar"] == pytest.approx([0.25, 1.0, 0.5])
    written = plot(runs, str(tmp_path), class_names=names)
    assert str(tmp_path / "per_class_accuracy.png") in written
    assert drawn_class_labels["per_class_accuracy.png"] == ["triangle", "circle", "square"]
    # Seeds that streamed the classes in different orders: by id; without names: the ids.
    runs[1]["stream"]["params"]["class_order"] = [0, 1, 2]
    assert per_class_means(runs)[0] == ["0", "1", "2"]


def test_compare_names_the_per_class_plot_by_the_runs_id2label(tmp_path, monkeypatch, drawn_class_labels):
    from hf_budgetcl.compare import cli

    out = tmp_path / "cmp"
    (out / "er_seed1").mkdir(parents=True)
    id2label = {"0": "circle", "1": "square", "2": "triangle"}
    (out / "er_seed1" / "config.json").write_text(json.dumps({"id2label": id2label}))  # what the run saved

    def finished_runs(runs, **kwargs):
        return [{**_with_classes("er", 1, {0: 1.0, 1: 0.5, 2: 0.0}), "label": dict(run.label)} for run in runs]

    monkeypatch.setattr(cli, "run_grid", finished_runs)
    cli.compare("recipes/configs/digits_er.yaml", ["er"], [1], str(out))
    assert drawn_class_labels["per_class_accuracy.png"] == ["triangle", "circle", "square"]
