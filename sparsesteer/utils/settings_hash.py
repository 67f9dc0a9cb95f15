"""Settings hashing and difference reporting, shared by everything that resumes or skips work.

A run (an activation cache, a training run, an experiment stage) records the settings that define
its result. `settings_sha256` hashes their canonical JSON, so equal settings give equal hashes;
when settings differ, `first_difference` names the first field that differs so that the refusal
to resume can say why.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ABSENT = "<absent>"
"""Stands for the value of a key that one side lacks."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Inf: equal JSON values give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def settings_sha256(obj: Any) -> str:
    """sha256 (hex) of `canonical_json(obj)`."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def _same(a: Any, b: Any) -> bool:
    # compare as JSON text, so that 1 and 1.0 or 1 and true differ as they would on disk
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first (field path, old value, new value) where two JSON values differ, or None when equal.

    Objects are walked in key order (old's keys, then keys only new has), lists of equal length
    element by element; paths read like `saes[0].k` or `dataset.name`. A key one side lacks
    has the value `ABSENT` there.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where, old.get(key, ABSENT), new.get(key, ABSENT)
            diff = difference(old[key], new[key], where)
            if diff:
                return diff
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            diff = difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if _same(old, new) else (path, old, new)


def first_difference(old: Any, new: Any) -> str | None:
    """'field: old vs new' for the first difference of two JSON values (see `difference`), or None."""
    diff = difference(old, new)
    if diff is None:
        return None
    where, a, b = diff
    show = lambda v: v if v is ABSENT else repr(v)  # noqa: E731
    return f"{where or '<value>'}: {show(a)} vs {show(b)}"
