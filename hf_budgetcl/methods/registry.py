"""The method registry: the built-in methods, plus plug-ins found through the ``hf_budgetcl.methods`` entry point.

A plug-in package declares, in its ``pyproject.toml``::

    [project.entry-points."hf_budgetcl.methods"]
    my_method = "my_package.my_module:MyMethod"

and ``--method my_method`` then works everywhere, including in ``hf-budgetcl compare``, whose runs are fresh
processes: each finds the plug-in through the installed package's metadata. :func:`register_method` adds a class
within one process (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points

from ..utils.errors import ConfigError
from .base import ContinualMethod

ENTRY_POINT_GROUP = "hf_budgetcl.methods"


class MethodRegistry(Mapping[str, type[ContinualMethod]]):
    """Name -> method class; entry points are loaded on first lookup, so importing the package stays cheap."""

    def __init__(self, builtin: list[type[ContinualMethod]]):
        self._methods = {cls.name: cls for cls in builtin}
        self._loaded_entry_points = False

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._methods:
                continue  # a built-in name cannot be taken over by a plug-in
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, ContinualMethod)):
                raise TypeError(f"entry point {ep.name} = {ep.value} is not a ContinualMethod subclass")
            if cls.name != ep.name:
                raise TypeError(f"entry point {ep.name} = {ep.value} names a method called {cls.name!r}")
            self._methods[ep.name] = cls

    def register(self, cls: type[ContinualMethod]) -> type[ContinualMethod]:
        self._methods[cls.name] = cls
        return cls

    def __getitem__(self, name: str) -> type[ContinualMethod]:
        if name not in self._methods:
            self._load_entry_points()
        return self._methods[name]

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(self._methods)

    def __len__(self) -> int:
        self._load_entry_points()
        return len(self._methods)

    def __contains__(self, name: object) -> bool:
        if name not in self._methods:
            self._load_entry_points()
        return name in self._methods

    def get_class(self, name: str) -> type[ContinualMethod]:
        """The class of ``name``; an unknown name is a configuration error listing the choices."""
        if name not in self:
            raise ConfigError(f"method: unknown method '{name}'; choose one of: {', '.join(sorted(self))}")
        return self[name]
