"""Every number of every configuration dataclass and method option: NaN, inf and out-of-range values are refused
with an error naming the field. The cases are generated from the fields, not written one by one."""

import dataclasses
import math
import typing

import pytest

from hf_budgetcl.config import BudgetedCLConfig
from hf_budgetcl.methods import BUILTIN_METHODS
from hf_budgetcl.methods.options import build_options
from hf_budgetcl.runs import image_classification, vlm_instruction_stream
from hf_budgetcl.utils.errors import ConfigError
from hf_budgetcl.utils.validation import RANGES

BASE = dict(output_dir="unused", memory_size=10, use_cpu=True, report_to="none")


def _numeric_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if args[0] in (int, float) else None


def bad_values(cls):
    """(field, value) for every numeric field of ``cls``: NaN and inf for floats, -1 and 0 where the range
    excludes them."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _numeric_type(hints[f.name])
        if kind is None or not f.init:
            continue
        if kind is float:
            yield f.name, math.nan
            yield f.name, math.inf
        rule = cls.RANGES.get(f.name)
        for value in (-1, 0):
            if rule is not None and not RANGES[rule](value):
                yield f.name, kind(value)


CONFIG_CASES = list(bad_values(BudgetedCLConfig))
ARGUMENT_CLASSES = [
    image_classification.ModelArguments,
    image_classification.DataArguments,
    vlm_instruction_stream.ModelArguments,
    vlm_instruction_stream.DataArguments,
]
ARGUMENT_CASES = [(cls, name, value) for cls in ARGUMENT_CLASSES for name, value in bad_values(cls)]
OPTION_CASES = [(m, name, value) for m in BUILTIN_METHODS for name, value in bad_values(m.Options)]


def test_the_generated_cases_cover_the_fields_that_matter():
    names = {name for name, _ in CONFIG_CASES}
    assert {"learning_rate", "flops_budget", "fisher_ema", "online_iter", "per_device_train_batch_size"} <= names
    assert {"sar_temperature", "mir_candidates", "derpp_alpha", "ewc_fisher_ema"} <= {n for _, n, _ in OPTION_CASES}
    assert {"per_class_test", "pad", "lora_dropout"} <= {n for _, n, _ in ARGUMENT_CASES}


@pytest.mark.parametrize("name, value", CONFIG_CASES)
def test_config_refuses_bad_numbers(name, value):
    with pytest.raises(ConfigError, match=name):
        BudgetedCLConfig(**{**BASE, name: value})


@pytest.mark.parametrize("cls, name, value", ARGUMENT_CASES)
def test_recipe_arguments_refuse_bad_numbers(cls, name, value):
    with pytest.raises(ConfigError, match=name):
        cls(**{name: value})


@pytest.mark.parametrize("method, name, value", OPTION_CASES)
def test_method_options_refuse_bad_numbers(method, name, value):
    with pytest.raises(ConfigError, match=name):
        build_options(method.Options, method.name, None, {name: str(value)})


def test_values_in_range_pass():
    config = BudgetedCLConfig(**{**BASE, "freeze_warmup_steps": 0, "blurry_ratio": 1.0, "max_grad_norm": 0.0})
    assert config.freeze_warmup_steps == 0 and config.blurry_ratio == 1.0
    assert image_classification.ModelArguments(pad=0).pad == 0
