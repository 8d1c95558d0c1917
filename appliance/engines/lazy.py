"""Lazy re-exports for engine packages.

An engine package's ``__init__`` names what it offers, but the API process imports
those packages only for settings models and signatures: loading the engine itself
(neonize's Go library, the Graph client) there would cost memory and break the layering
(``api-not-engine-implementations``). A name is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` loading ``name`` from ``package.<exports[name]>`` once."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value  # later lookups find it without coming here
        return value

    return __getattr__
