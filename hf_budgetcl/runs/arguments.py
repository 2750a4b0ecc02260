"""``HfArgumentParser`` with ``--config file.yaml``: the YAML gives the values, the command line overrides them.

YAML values are passed through argparse as if typed on the command line, so they get the same type checks; a key
that no dataclass field declares is an error that names the key and the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..utils.errors import ConfigError


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


def read_yaml_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of argument names to values")
    return values


def split_equals_config(argv: Sequence[str]) -> list[str]:
    """``--config=path`` -> ``--config path`` (argparse spelling both ways)."""
    out: list[str] = []
    for arg in argv:
        out += ["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg]
    return out


class ConfigParser(HfArgumentParser):
    """Parse dataclasses from an optional ``--config`` YAML plus command-line overrides."""

    def __init__(self, dataclass_types, **kwargs):
        # No prefix matching: `--learning_rat 0.1` must be an error, not the learning rate.
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)

    def parse_with_config(self, argv: Sequence[str], ignore_keys: Sequence[str] = ()) -> tuple:
        try:
            return self.parse_args_into_dataclasses(args=self.merged_argv(argv, ignore_keys))
        except ValueError as err:  # raised by a dataclass __post_init__: already names the field
            raise ConfigError(str(err).splitlines()[0]) from None

    def merged_argv(self, argv: Sequence[str], ignore_keys: Sequence[str] = ()) -> list[str]:
        """The YAML's values as arguments, then the command line's (which win), ``--key null`` applied."""
        argv = split_equals_config(argv)
        config_values: dict[str, Any] = {}
        if "--config" in argv:
            i = argv.index("--config")
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file path")
            path = argv[i + 1]
            del argv[i : i + 2]
            config_values = {k: v for k, v in read_yaml_config(path).items() if k not in ignore_keys}
            known = {action.dest for action in self._actions}
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
