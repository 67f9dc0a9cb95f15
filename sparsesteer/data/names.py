"""Readable class names shipped with the package (`sparsesteer/data/classnames/*.txt`).

One name per line in label order; lines starting with `#` are comments (each file cites its
source there). `tiny-imagenet.txt` has two tab-separated columns, `wnid<TAB>name`, sorted by wnid,
which is the label order sparsesteer uses for Tiny-ImageNet. `imagenet1k.txt` (OpenAI's cleaned CLIP names,
in ILSVRC-2012 label order) has no dataset here; it serves as a concept vocabulary (`data/vocab.py`).
"""

from __future__ import annotations

import functools
from importlib import resources

from ..utils.errors import SparsesteerError, unknown

SHIPPED = ("cifar10", "cifar100", "tiny-imagenet", "cub200", "waterbirds", "imagenet1k")


@functools.cache
def _rows(name: str) -> tuple[tuple[str, ...], ...]:
    if name not in SHIPPED:
        raise unknown("class-name list", name, SHIPPED)
    text = (resources.files(__package__) / "classnames" / f"{name}.txt").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t")) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise SparsesteerError(f"classnames/{name}.txt: rows have different numbers of columns {sorted(widths)}")
    return rows


def classnames(name: str) -> list[str]:
    """Readable class names of a built-in dataset, index = label."""
    return [row[-1] for row in _rows(name)]


def tiny_imagenet_wnids() -> list[str]:
    """The 200 Tiny-ImageNet wnids in label order (sorted)."""
    return [row[0] for row in _rows("tiny-imagenet")]
