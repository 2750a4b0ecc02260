"""Reading a recipe's YAML config, by path or by the name of a config shipped with the package (no heavy imports:
``hf-budgetcl --help`` and the recipe dispatch use it before torch or transformers load).

``hf_budgetcl/recipes`` is the repository's ``recipes/`` folder (a link in the source tree, real files in a wheel), so
``--config digits_er`` and ``--config recipes/configs/digits_er.yaml`` also work from any directory after a
``pip install``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ..utils.errors import ConfigError

RECIPE_NAMES = ("image_classification", "vlm_instruction_stream")


def shipped_recipes_dir() -> str:
    """The recipes folder installed with the package (configs/, accelerate/ and the recipe scripts)."""
    return str(resources.files("hf_budgetcl") / "recipes")


def shipped_configs(kind: str = "configs") -> list[str]:
    """Names of the shipped YAML configs (``kind``: configs, or accelerate for the launch configs)."""
    folder = os.path.join(shipped_recipes_dir(), kind)
    if not os.path.isdir(folder):
        return []
    return sorted(f[: -len(".yaml")] for f in os.listdir(folder) if f.endswith(".yaml"))


def resolve_config(value: str, kind: str = "configs") -> str:
    """A config file path: ``value`` itself if it is a file, else the shipped config it names (``digits_er``, or
    ``recipes/configs/digits_er.yaml`` from outside a checkout)."""
    if os.path.isfile(value):
        return value
    root = shipped_recipes_dir()
    candidates = []
    if value.replace("\\", "/").startswith("recipes/"):
        candidates.append(os.path.join(root, value.split("/", 1)[1]))
    if os.sep not in value and "/" not in value:
        name = value[: -len(".yaml")] if value.endswith(".yaml") else value
        candidates.append(os.path.join(root, kind, f"{name}.yaml"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    names = ", ".join(shipped_configs(kind)) or "none"
    raise ConfigError(f"config file not found: {value} (shipped {kind}: {names})")


def read_yaml_config(path: str) -> dict[str, Any]:
    import yaml

    path = resolve_config(path)
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


def split_equals_config(argv: Sequence[str], options: Sequence[str] = ("--config", "--recipe")) -> list[str]:
    """``--config=path`` -> ``--config path`` (argparse spelling both ways; also ``--recipe=name``)."""
    out: list[str] = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        out += [key, arg.split("=", 1)[1]] if "=" in arg and key in options else [arg]
    return out


def pop_option(argv: list[str], option: str) -> str | None:
    """Remove ``option VALUE`` from ``argv`` (in place) and return VALUE (None when absent)."""
    if option not in argv:
        return None
    i = argv.index(option)
    if i + 1 >= len(argv):
        raise ConfigError(f"{option} needs a value")
    value = argv[i + 1]
    del argv[i : i + 2]
    return value


def recipe_of(argv: Sequence[str]) -> str:
    """The recipe: ``--recipe`` on the command line, else the config's ``recipe`` key, else image_classification."""
    argv = split_equals_config(argv)
    name = pop_option(list(argv), "--recipe")
    if name is None and "--config" in argv:
        name = pop_option(list(argv), "--config")
        name = str(read_yaml_config(name).get("recipe", "image_classification")) if name else None
    name = name or "image_classification"
    if name not in RECIPE_NAMES:
        raise ConfigError(f"recipe: unknown recipe '{name}'; choose one of: {', '.join(RECIPE_NAMES)}")
    return name
