"""Flags that expose another dataclass's settings keep that dataclass's default and help (one copy of each)."""

import dataclasses

import pytest

from hf_budgetcl.config import BudgetedCLConfig
from hf_budgetcl.freezing.adaptive import AdaptiveFreezingSettings
from hf_budgetcl.methods.sar import SAROptions
from hf_budgetcl.models.tiny_vlm_size import TinyVLMSize
from hf_budgetcl.runs.vlm_instruction_stream import ModelArguments
from hf_budgetcl.utils.mirrored_field import mirrored_field


def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    "target, source, prefix",
    [
        (BudgetedCLConfig, SAROptions, ""),
        (BudgetedCLConfig, AdaptiveFreezingSettings, ""),
        (ModelArguments, TinyVLMSize, "tiny_"),
    ],
)
def test_exposed_flags_keep_the_source_default_and_help(target, source, prefix):
    exposed = _fields(target)
    shared = [f for f in dataclasses.fields(source) if prefix + f.name in exposed]
    assert shared, "nothing exposed: the check would be empty"
    for f in shared:
        flag = exposed[prefix + f.name]
        if flag.name == "tiny_init_std":  # the recipe's random base needs large logits (see its help)
            assert flag.default != f.default
            continue
        assert flag.default == f.default, flag.name
        assert flag.metadata["help"].endswith(f.metadata["help"]), flag.name


def test_a_field_without_default_cannot_be_mirrored():
    @dataclasses.dataclass
    class Source:
        width: int = dataclasses.field(metadata={"help": "w"})

    with pytest.raises(TypeError, match="Source.width has no default"):
        mirrored_field(Source, "width", "X")


def test_tiny_size_read_from_prefixed_attributes():
    args = ModelArguments(tiny_lm_hidden=48, tiny_lm_layers=3)
    size = TinyVLMSize.read(args, prefix="tiny_")
    assert (size.lm_hidden, size.lm_layers, size.vocab_size) == (48, 3, TinyVLMSize().vocab_size)
    assert size.init_std == args.tiny_init_std
