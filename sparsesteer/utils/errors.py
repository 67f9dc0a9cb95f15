"""User-facing errors.

Every error a user can cause (bad input, bad file, bad flag) is a `SparsesteerError`: the CLI prints
its message and exits with status 2 instead of a traceback. Messages name the file, field or shape
at fault and, where possible, what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SparsesteerError(ValueError):
    """An error caused by the user's input, with a message meant to be read by them."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, word: str, choices: Iterable[str]) -> SparsesteerError:
    """Error for an unknown name, listing the valid ones and suggesting the closest."""
    choices = list(choices)
    return SparsesteerError(
        f"unknown {kind} {word!r}{did_you_mean(word, choices)}; valid: {', '.join(map(str, choices))}"
    )
