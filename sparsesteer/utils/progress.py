"""Progress bars that are on by default and silent when asked (SPARSESTEER_QUIET=1 or quiet=True)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar, overload

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("SPARSESTEER_QUIET", "") not in ("", "0")


@overload
def progress(iterable: Iterable[T], *, disable: bool | None = None, **kwargs: Any) -> tqdm[T]: ...
@overload
def progress(iterable: None = None, *, disable: bool | None = None, **kwargs: Any) -> tqdm[NoReturn]: ...
def progress(iterable: Iterable[T] | None = None, *, disable: bool | None = None, **kwargs: Any) -> tqdm[Any]:
    """A tqdm bar on stderr; `disable=None` means: off when SPARSESTEER_QUIET is set."""
    if disable is None:
        disable = quiet()
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, disable=disable, **kwargs)
