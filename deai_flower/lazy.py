"""Names a package exports, imported on first use (PEP 562).

Flower starts a ClientApp process for every message a deployed silo gets: a package that
imported all it exports would make the lightest message (an identity query) load torch,
Opacus and web3.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(module_globals: dict[str, Any], where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from the (relative) module ``where[name]``
    names on first access and keeps it in ``module_globals``."""
    package, module_name = module_globals["__package__"], module_globals["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = module_globals[name] = getattr(import_module(where[name], package), name)
        return value

    return __getattr__
