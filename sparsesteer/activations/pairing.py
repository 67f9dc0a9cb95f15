"""Which images a cache describes, and the one check that a dataset (or another cache) holds the same ones.

Everything downstream names an image by its index in the cached split: top images, montages, the
browser, the spliced and monosemanticity suites, VS2's per-image rows. A cache paired with another
dataset, or with a cache of other images, shows or scores other pictures without any error. So every
command that is given a cache together with a dataset (`--dataset`, `--split`, `--data-root`), or two
caches that must hold the same images, compares their `ImageSet`s with `check_same_images`:

    spec      the dataset spec as the opened dataset names itself (folder paths resolved)
    split     the split
    n_images  the number of images (of the `--limit` sample when there is one)
    classes   sha256 of the class names
    labels    sha256 of the per-image labels (int64), which pins the order of the classes too
    subset    the `--limit` sample (its indices' sha256)

A manifest records all of these already: `settings.dataset` is the dataset's `describe()` (spec, len,
classes_sha256, subset), `settings.n_images`, and labels.npy the labels. What a side does not know (a
cache written by hand, an incomplete cache without labels.npy, statistics from an older version) is
not compared, and a warning names it. The content (number of images, class names, labels, sample)
must agree; a different spec or split with the same content (the images moved) is refused too, but
`--allow-mismatch` turns that refusal into a note the command writes into its outputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from ..data.datasets import ImageDataset
    from .cache import ActivationCache

log = logging.getLogger(__name__)

NAMING = ("spec", "split")
"""Fields that name the images: a mismatch alone is overridable (--allow-mismatch: the images moved)."""
CONTENT = ("n_images", "classes_sha256", "labels_sha256", "subset_sha256")
"""Fields that are the images: a mismatch is always refused (indices would point at other pictures)."""
_LABELS = {
    "spec": "dataset",
    "split": "split",
    "n_images": "number of images",
    "classes_sha256": "class names",
    "labels_sha256": "labels",
    "subset_sha256": "--limit sample",
}


def labels_sha256(labels: np.ndarray) -> str:
    """sha256 of per-image labels as little-endian int64 (-1 = unlabeled)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels), dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class ImageSet:
    """The identity of a set of indexed images (None = not known, hence not compared)."""

    spec: str | None = None
    """Dataset spec as the dataset names itself ('cifar10', 'folder:/abs/path', 'hf:org/name', 'typo:...')."""
    split: str | None = None
    """Dataset split."""
    n_images: int | None = None
    """Number of images (of the `--limit` sample, when there is one)."""
    classes_sha256: str | None = None
    """sha256 of the class names (`data.datasets.classes_sha256`)."""
    labels_sha256: str | None = None
    """sha256 of the per-image labels (`labels_sha256`)."""
    subset: dict[str, Any] | None = None
    """The `--limit` sample as `describe()["subset"]` records it (limit, seed, indices_sha256), or None."""

    @property
    def subset_sha256(self) -> str | None:
        return None if self.subset is None else self.subset.get("indices_sha256")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def of_dataset(cls, ds: ImageDataset) -> ImageSet:
        """The images of an opened (and possibly `--limit`ed) dataset split."""
        desc = ds.describe()
        return cls(
            spec=ds.name,
            split=ds.split,
            n_images=len(ds),
            classes_sha256=desc.get("classes_sha256"),
            labels_sha256=labels_sha256(ds.labels()),
            subset=desc.get("subset"),
        )

    @classmethod
    def of_cache(cls, cache: ActivationCache) -> ImageSet:
        """The images a cache was made from, as its manifest records them (labels: labels.npy of a
        completed cache, checked against its sha256 on first read)."""
        s = cache.settings
        desc = s.dataset or {}
        classes = desc.get("classes_sha256")
        if classes is None and s.classes is not None:
            from ..data.datasets import classes_sha256

            classes = classes_sha256(s.classes)
        labels = cache.labels
        return cls(
            spec=desc.get("name"),
            split=s.split,
            n_images=s.n_images,
            classes_sha256=classes,
            labels_sha256=None if labels is None else labels_sha256(labels),
            subset=desc.get("subset"),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageSet:
        return cls(
            **{k: data.get(k) for k in ("spec", "split", "n_images", "classes_sha256", "labels_sha256", "subset")}
        )

    # ---- description -------------------------------------------------------------------------
    def value(self, field: str) -> Any:
        return getattr(self, field)

    def describe(self) -> str:
        """'folder:/x [train], 7 images, class names 1a2b3c4d5e6f, labels 9f8e7d6c5b4a' (known fields)."""
        where = f"{self.spec or 'unknown dataset'} [{self.split or '?'}]"
        parts = [where]
        if self.n_images is not None:
            parts.append(f"{self.n_images} images")
        if self.subset_sha256:
            parts.append(f"--limit sample {self.subset_sha256[:12]}")
        for f in ("classes_sha256", "labels_sha256"):
            v = self.value(f)
            if v:
                parts.append(f"{_LABELS[f]} {v[:12]}")
        return ", ".join(parts)


def check_same_images(
    left: str,
    a: ImageSet,
    right: str,
    b: ImageSet,
    *,
    allow: bool = False,
    fields: tuple[str, ...] = (*NAMING, *CONTENT),
) -> list[str]:
    """Refuse (SparsesteerError naming both sides) when `a` and `b` are not the same images (on
    `fields`; `fields=("classes_sha256",)` for two splits that must share their classes). Fields one
    side does not know are skipped, with a warning naming them. A mismatch of the spec or split alone
    is returned as a note instead when `allow` (--allow-mismatch); one of the content never is."""
    content: list[str] = []
    naming: list[str] = []
    unknown: list[str] = []
    for f in fields:
        x, y = a.value(f), b.value(f)
        if x is None or y is None:
            if f != "subset_sha256":  # a whole split has no sample: n_images says enough
                unknown.append(_LABELS[f])
            continue
        if x != y:
            shown = f"{x!r} vs {y!r}" if f in ("spec", "split", "n_images") else f"{str(x)[:12]} vs {str(y)[:12]}"
            (naming if f in NAMING else content).append(f"{_LABELS[f]}: {shown}")
    if unknown:
        log.warning("%s vs %s: could not compare the %s (not recorded)", left, right, ", ".join(unknown))
    if not content and not naming:
        return []
    what = "the same images" if set(fields) - {"classes_sha256"} else "the same classes"
    note = f"{left} and {right} are not {what} ({'; '.join(content + naming)})"
    if not content and allow:
        return [note]
    detail = f"{left}: {a.describe()}; {right}: {b.describe()}"
    if content:
        why = (
            "image indices would point at other pictures"
            if what == "the same images"
            else "labels would name other classes"
        )
        raise SparsesteerError(f"{note}: {why}. {detail}")
    raise SparsesteerError(
        f"{note}. {detail}. Use the images the cache was made from, or pass --allow-mismatch if they are the "
        "same images under another name (the outputs then say so)"
    )


def open_images(
    images: ImageSet,
    left: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    data_root: str | os.PathLike | None = None,
    allow: bool = False,
) -> tuple[ImageDataset, list[str]]:
    """Open the images `images` records (`dataset` / `split` override its spec and split), draw the
    same `--limit` sample, and check that they are the same images (`check_same_images`); returns
    (dataset, notes). A dataset that cannot be opened is one error naming the spec."""
    from ..data.registry import open_dataset
    from ..data.subset import limit_dataset

    spec, name = dataset or images.spec, split or images.split
    if not spec or not name:
        raise SparsesteerError(f"no dataset spec and split are recorded for {left}: pass --dataset")
    try:
        ds = open_dataset(spec, name, data_root=None if data_root is None else Path(data_root))
    except (OSError, SparsesteerError) as e:
        raise SparsesteerError(f"the images of {left} ({spec!r}, split {name!r}) cannot be opened: {e}") from None
    sub = images.subset
    if sub:  # a --limit cache: its image indices are the sample's; draw the same sample again
        ds = limit_dataset(ds, int(sub["limit"]), int(sub["seed"]))
    given = f"--dataset {spec} [{name}]" if dataset or split else f"the dataset it records ({spec} [{name}])"
    notes = check_same_images(left, images, given, ImageSet.of_dataset(ds), allow=allow)
    return ds, notes


def check_cache_dataset(cache: ActivationCache, ds: ImageDataset, *, what: str, allow: bool = False) -> list[str]:
    """`check_same_images` of a cache and an opened dataset that must be its images."""
    return check_same_images(
        f"the cache {cache.path}", ImageSet.of_cache(cache), what, ImageSet.of_dataset(ds), allow=allow
    )


def check_same_cached_images(
    left: str, a: ActivationCache, right: str, b: ActivationCache, *, allow: bool = False
) -> list[str]:
    """`check_same_images` of two caches that must hold the same images (e.g. a retriever's and CLIP's)."""
    return check_same_images(
        f"{left} ({a.path})", ImageSet.of_cache(a), f"{right} ({b.path})", ImageSet.of_cache(b), allow=allow
    )
