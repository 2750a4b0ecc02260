"""``HfArgumentParser`` with ``--config file.yaml``: the YAML gives the values, the command line overrides them.

YAML values are passed through argparse as if typed on the command line, so they get the same type checks; a key
that no dataclass field declares is an error that names the key and the file.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser

from ..utils.errors import ConfigError
from .yaml_config import RECIPE_NAMES, pop_option, read_yaml_config, split_equals_config

__all__ = ["ConfigParser", "read_yaml_config", "split_equals_config"]


def _yaml_to_argv(values: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            import json

            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


class ConfigParser(HfArgumentParser):
    """Parse dataclasses from an optional ``--config`` YAML plus command-line overrides."""

    def __init__(self, dataclass_types, **kwargs):
        # No prefix matching: `--learning_rat 0.1` must be an error, not the learning rate.
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)
        # Shown in --help; taken out of argv before the dataclasses are parsed (SUPPRESS: absent unless given).
        group = self.add_argument_group("config file")
        group.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            help="YAML file whose keys are any of the options below (the command line overrides them), or the "
            "name of a shipped config, e.g. digits_er",
        )
        group.add_argument(
            "--recipe",
            default=argparse.SUPPRESS,
            help=f"{' | '.join(RECIPE_NAMES)} (default: the config's recipe key, else image_classification)",
        )

    def parse_with_config(self, argv: Sequence[str], ignore_keys: Sequence[str] = ()) -> tuple:
        try:
            return self.parse_args_into_dataclasses(args=self.merged_argv(argv, ignore_keys))
        except ValueError as err:  # raised by a dataclass __post_init__: already names the field
            raise ConfigError(str(err).splitlines()[0]) from None

    def flags(self) -> set[str]:
        """Every option string this parser accepts (``--no_x`` and dash spellings included)."""
        return {s for action in self._actions for s in action.option_strings}

    def unknown_flag(self, argv: Sequence[str]) -> str | None:
        """The first ``--flag`` in ``argv`` that this parser does not accept, without parsing anything."""
        known = self.flags()
        return next((a for a in (x.split("=", 1)[0] for x in argv) if a.startswith("--") and a not in known), None)

    def merged_argv(self, argv: Sequence[str], ignore_keys: Sequence[str] = ()) -> list[str]:
        """The YAML's values as arguments, then the command line's (which win), ``--key null`` applied."""
        argv = split_equals_config(argv)
        pop_option(argv, "--recipe")  # chose the recipe (hf_budgetcl.cli), not one of its options
        config_values: dict[str, Any] = {}
        path = pop_option(argv, "--config")
        if path is not None:
            config_values = {k: v for k, v in read_yaml_config(path).items() if k not in ignore_keys}
            known = {action.dest for action in self._actions} - {"config", "recipe"}
            unknown = sorted(set(config_values) - known)
            if unknown:
                raise ConfigError(f"config key '{unknown[0]}' in {path} does not exist")
        # `--key null` on the command line unsets a YAML value (back to the field's default, e.g. None).
        nulls = {
            argv[i][2:] for i in range(len(argv) - 1) if argv[i].startswith("--") and argv[i + 1] in ("null", "None")
        }
        argv = [
            a
            for i, a in enumerate(argv)
            if not (a[2:] in nulls and a.startswith("--"))
            and not (i > 0 and argv[i - 1][2:] in nulls and a in ("null", "None"))
        ]
        config_values = {k: v for k, v in config_values.items() if k not in nulls}
        return _yaml_to_argv(config_values) + argv


@functools.cache
def recipe_parser(name: str) -> ConfigParser:
    """The argument parser of recipe ``name``, built once (its module is imported only when asked for)."""
    if name == "image_classification":
        from .image_classification import make_parser
    elif name == "vlm_instruction_stream":
        from .vlm_instruction_stream import make_parser
    else:
        raise ConfigError(f"recipe: unknown recipe '{name}'; choose one of: {', '.join(RECIPE_NAMES)}")
    return make_parser()
