"""Dataset specs -> datasets: the one place that knows the spec forms.

    cifar100              a built-in name, read from its canonical layout under the data root
                          (cifar10-sample is shipped with the package: no data root, no download)
    folder:PATH           PATH/SPLIT/CLASS/*.jpg|png
    hf:REPO_ID            a Hugging Face `datasets` repository
    typo:[OPTIONS:]SPEC   SPEC with a misleading class word rendered on every image (`typographic.py`)
    planted:[OPTIONS:]SPEC  SPEC with words and a spurious cue planted, ground truth per image (`planted.py`)

`open_dataset` opens a split; `ensure_dataset` also downloads a missing built-in first;
`available_splits` lists a spec's splits. All of them go through `parse_spec`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..utils.errors import SparsesteerError, did_you_mean, unknown
from .datasets import ImageDataset, default_data_root

log = logging.getLogger(__name__)

PREFIXES = ("folder:", "hf:", "typo:", "planted:")
WRAPPERS = {"typo": "typographic", "planted": "planted"}
"""Spec kinds that wrap another spec -> the module that holds their `split_spec` and `open_wrapped`."""


class Spec(NamedTuple):
    """A parsed dataset spec."""

    kind: str
    """'builtin', 'folder', 'hf', or a wrapper kind ('typo', 'planted')."""
    arg: str
    """The built-in name, the folder path, the hub repository id, or (a wrapper) `[OPTIONS:]SPEC`."""


def _builtins() -> dict[str, type[ImageDataset]]:
    from .builtin import BUILTINS
    from .sample import SHIPPED_DATASETS
    from .typo_sets import TYPO_SETS

    return {**BUILTINS, **SHIPPED_DATASETS, **TYPO_SETS}


def dataset_names() -> list[str]:
    """Built-in dataset names plus the prefix forms."""
    return [*_builtins(), "folder:PATH", "hf:REPO_ID", "typo:SPEC", "planted:SPEC"]


def _wrapper(kind: str) -> Any:
    import importlib

    return importlib.import_module(f".{WRAPPERS[kind]}", __package__)


def parse_spec(spec: str) -> Spec:
    """'folder:/x' -> Spec('folder', '/x'); an unknown built-in name is an error with a suggestion.
    For a wrapper ('typo:[OPTIONS:]SPEC', 'planted:[OPTIONS:]SPEC') the options and the inner SPEC are
    checked too."""
    spec = spec.strip()
    for prefix in PREFIXES:
        if spec.startswith(prefix):
            arg = spec[len(prefix) :]
            if prefix[:-1] in WRAPPERS:
                parse_spec(_wrapper(prefix[:-1]).split_spec(arg)[1])
            return Spec(prefix[:-1], arg)
    if spec not in _builtins():
        raise unknown("dataset", spec, dataset_names())
    return Spec("builtin", spec)


def _dataset_class(kind: str, arg: str) -> type[ImageDataset]:
    if kind == "folder":
        from .builtin import FolderDataset

        return FolderDataset
    if kind == "hf":
        from .hf import HFDataset

        return HFDataset
    return _builtins()[arg]


def _construct(cls: Callable[..., ImageDataset], spec: str, args: tuple, options: dict[str, Any]) -> ImageDataset:
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not accepts_any:
        allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        for key in options:
            if key not in allowed:
                raise SparsesteerError(
                    f"{spec}: unknown option {key!r}{did_you_mean(key, allowed)}; valid: {', '.join(allowed) or 'none'}"
                )
    return cls(*args, **options)


def open_dataset(spec: str, split: str, *, data_root: str | Path | None = None, **options: Any) -> ImageDataset:
    """Open split `split` of the dataset named by `spec`.

    spec: a built-in name (cifar10, cifar100, tiny-imagenet, cub200, celeba, waterbirds, rta100,
    disentangling, paint-typo) read from its canonical layout under `data_root` (default
    `default_data_root()`), cifar10-sample (shipped with the package), `folder:PATH`, `hf:REPO_ID`
    (options: image_column, label_column, and anything `datasets.load_dataset` takes), or
    `typo:[OPTIONS:]SPEC` (options seed, size, box, font; any other option goes to SPEC's dataset).
    """
    kind, arg = parse_spec(spec)
    if kind in WRAPPERS:
        inner = lambda s, sp, **o: open_dataset(s, sp, data_root=data_root, **o)  # noqa: E731
        return _wrapper(kind).open_wrapped(arg, split, inner, **options)
    cls = _dataset_class(kind, arg)
    if kind == "builtin":
        root = Path(data_root).expanduser() if data_root is not None else default_data_root()
        return _construct(cls, arg, (root, split), options)
    return _construct(cls, spec.strip(), (arg, split), options)


def ensure_dataset(spec: str, split: str, *, data_root: str | Path | None = None, **options: Any) -> ImageDataset:
    """`open_dataset`, downloading a built-in dataset first when it is not under the data root."""
    from . import download as dl

    kind, arg = parse_spec(spec)
    if kind in WRAPPERS:
        inner = lambda s, sp, **o: ensure_dataset(s, sp, data_root=data_root, **o)  # noqa: E731
        return _wrapper(kind).open_wrapped(arg, split, inner, **options)
    try:
        return open_dataset(spec, split, data_root=data_root, **options)
    except SparsesteerError:
        kind, name = parse_spec(spec)
        root = Path(data_root).expanduser() if data_root is not None else default_data_root()
        if kind != "builtin" or name not in dl.REGISTRY or dl.is_installed(name, root):
            raise
        log.info("dataset %s not found under %s: downloading it", name, root)
        dl.download(name, root)
        return open_dataset(spec, split, data_root=data_root, **options)


def available_splits(spec: str, data_root: str | Path | None = None) -> list[str]:
    """Splits `open_dataset(spec, split)` accepts."""
    kind, arg = parse_spec(spec)
    if kind in WRAPPERS:
        return available_splits(_wrapper(kind).split_spec(arg)[1], data_root)
    cls = _dataset_class(kind, arg)
    if kind == "builtin":
        return list(cls.SPLITS)  # type: ignore[attr-defined]
    return cls.available_splits(arg)  # type: ignore[attr-defined]
