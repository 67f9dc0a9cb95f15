"""Lazy package exports: `import sparsesteer.x` (done by the CLI to build --help) must not pull in
torch or transformers; names are imported from their module on first access instead."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` resolving `exports[name]` (a submodule of `package`) on demand."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
