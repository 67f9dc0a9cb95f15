"""Option groups several commands share, as config dataclasses: one home for each default.

A command's config inherits the groups it takes (`class CacheConfig(ModelOptions, DataOptions,
RunOptions)`); `utils.config.add_arguments` turns the fields into flags whose help is the field's
docstring and default. Fields are keyword-only, so required fields (no default) can follow
optional ones across groups. Torch-free: `--help` builds from these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .errors import SparsesteerError

OnBadImage = Literal["error", "skip"]


def positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SparsesteerError(f"{name} must be a positive integer, got {value!r}")


def _chain(obj: Any, cls: type) -> None:
    """Call the next `__post_init__` in the MRO (option groups validate cooperatively)."""
    nxt = getattr(super(cls, obj), "__post_init__", None)
    if nxt is not None:
        nxt()


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    model: str
    """Hugging Face hub id or save_pretrained directory (CLIP, SigLIP, DINOv2)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model; None = main."""

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise SparsesteerError("--model is empty: give a hub id or a save_pretrained directory")
        _chain(self, ModelOptions)


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    dataset: str
    """Built-in name (cifar10, cifar100, tiny-imagenet, cub200, celeba, waterbirds, rta100, disentangling,
    paint-typo; cifar10-sample is shipped, no download), folder:PATH, hf:REPO_ID, or typo:[OPTIONS:]SPEC (a
    misleading class word on every image)."""
    split: str
    """Dataset split, e.g. train or test."""
    data_root: str | None = None
    """Where built-in datasets live; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    limit: int | None = None
    """Use a class-stratified sample of N images, drawn with limit_seed (quick runs); None = all."""
    limit_seed: int = 0
    """Seed of the --limit sample."""

    def __post_init__(self) -> None:
        if self.limit is not None:
            positive_int(self.limit, "--limit")
        _chain(self, DataOptions)


@dataclass(frozen=True, kw_only=True)
class DeviceOptions:
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when available)."""

    def __post_init__(self) -> None:
        if not str(self.device).strip():
            raise SparsesteerError("--device is empty: use auto, cpu, cuda or cuda:N")
        _chain(self, DeviceOptions)


@dataclass(frozen=True, kw_only=True)
class RunOptions(DeviceOptions):
    """Running a model over images: batches, decoding workers, the device, unreadable images."""

    batch_size: int = 64
    """Images per model forward pass."""
    workers: int | None = None
    """Image-decoding processes, 0 = decode in the main process; None = half the CPUs, at most 8."""
    on_bad_image: OnBadImage = "error"
    """An unreadable image: stop with an error naming it, or skip it and list it in the outputs."""

    def __post_init__(self) -> None:
        positive_int(self.batch_size, "--batch-size")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 0):
            raise SparsesteerError(f"--workers must be >= 0, got {self.workers!r}")
        if self.on_bad_image not in ("error", "skip"):
            raise SparsesteerError(f"--on-bad-image must be error or skip, got {self.on_bad_image!r}")
        _chain(self, RunOptions)
