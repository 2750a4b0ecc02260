"""A method's hyper-parameters: one dataclass per method, filled from ``method_options``, config fields or defaults.

Each field carries ``metadata={"help": ...}``. Precedence: a keyword given in code > ``method_options``
("key=value,key=value") > a config field of the same name (e.g. ``--sar_temperature``) > the field's default. A key
the method does not know is a configuration error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from ..utils.errors import ConfigError
from ..utils.validation import check_numbers

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclasses.dataclass
class MethodOptions:
    """A method without hyper-parameters. Subclasses add fields (with ``metadata={"help": ...}``) and state the
    range of each number in ``RANGES`` (see :mod:`hf_budgetcl.utils.validation`)."""

    RANGES: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option when a value is NaN, infinite or outside the ``range`` its
        field's metadata states; subclasses add checks that involve several options."""
        check_numbers(self, self.RANGES)


def parse_method_options(text: str | None) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (values are cast by :func:`build_options`)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method_options: expected key=value pairs separated by commas, got {item.strip()!r}")
        out[key.strip()] = value.strip()
    return out


def _cast(key: str, value: Any, hint: Any) -> Any:
    """``value`` (a string from the command line, or a Python value) as type ``hint`` (int, float, bool, str,
    or one of them | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        text = str(value).lower()
        if isinstance(value, bool) or text in _TRUE + _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
    else:
        try:
            if not (hint is int and isinstance(value, float) and not value.is_integer()):
                return hint(value)
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"method_options: {key} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def option_fields(cls: type[MethodOptions]) -> dict[str, Any]:
    """Field name -> resolved type of an options dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_options(
    cls: type[MethodOptions], method: str, config: Any = None, explicit: dict[str, Any] | None = None
) -> MethodOptions:
    """Fill ``cls`` for ``method`` from ``explicit`` keywords, ``config.method_options``, config fields, defaults."""
    explicit = dict(explicit or {})
    given = parse_method_options(getattr(config, "method_options", None))
    fields = option_fields(cls)
    unknown = sorted((set(given) | set(explicit)) - set(fields))
    if unknown:
        known = ", ".join(fields) if fields else "none"
        raise ConfigError(
            f"method_options: '{unknown[0]}' is not an option of method '{method}' (its options: {known})"
        )
    values = {}
    for name, hint in fields.items():
        if name in explicit:
            values[name] = _cast(name, explicit[name], hint)
        elif name in given:
            values[name] = _cast(name, given[name], hint)
        elif config is not None and hasattr(config, name):
            values[name] = _cast(name, getattr(config, name), hint)
    options = cls(**values)
    options.validate()
    return options
