"""Images -> pixel batches: the one loop every job uses to run a model over a dataset.

`image_batches(dataset, preprocessor)` yields `ImageBatch`es in dataset order. A torch `DataLoader`
runs the decoding and preprocessing in worker processes, so they overlap the model's forward pass
in the main process; memory stays bounded (each worker keeps at most `prefetch` batches ready), and
batches arrive in index order whatever the number of workers, so every consumer (the activation
cache, zero-shot evaluation) is deterministic. Pixels come back in pinned memory when CUDA is
available, ready for a non-blocking copy to the GPU.

Unreadable images (`UnreadableImage` from the dataset) either stop the job with an error naming the
file (`on_bad_image="error"`) or are left out of their batch and listed in `ImageBatch.skipped`
(`"skip"`). Workers never raise for them: each item carries its error back, so the message is the
same with and without workers (no worker traceback wrapped around it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from ..utils.errors import SparsesteerError, unknown
from .datasets import ImageDataset, UnreadableImage

if TYPE_CHECKING:
    from torch import Tensor

    from .preprocess import Preprocessor

ON_BAD_IMAGE = ("error", "skip")


class SkippedImage(NamedTuple):
    """An image left out of a batch because it could not be read (`on_bad_image="skip"`)."""

    # the public name (steering reports write it) shadows tuple.index(), which mypy flags
    index: int  # type: ignore[assignment]
    """Dataset index of the image."""
    source: str
    """File path or archive member (`dataset.source(index)`)."""
    error: str
    """Why it could not be read."""


class ImageBatch(NamedTuple):
    """A batch of preprocessed images covering the dataset indices [start, stop)."""

    pixels: Tensor
    """float32 [B, 3, H, W]; B = stop - start - len(skipped). In pinned memory when asked (default: with CUDA)."""
    labels: Tensor
    """int64 [B] labels (-1 = unlabeled)."""
    indices: np.ndarray
    """int64 [B] dataset index of each image, increasing."""
    skipped: list[SkippedImage]
    """Unreadable images of [start, stop), in index order (always empty with on_bad_image='error')."""
    start: int
    """First dataset index this batch covers."""
    stop: int
    """One past the last dataset index this batch covers (skipped images included)."""


def default_workers() -> int:
    """Decoding workers when none are asked for: half the CPUs this process may use, at most 8.

    The forward pass needs cores too; on a 2-core machine one worker decodes while the model runs.
    """
    from ..utils.threads import available_cpus

    cpus = available_cpus()
    return max(1, min(8, cpus // 2)) if cpus > 1 else 0


class _Item(NamedTuple):
    image: int
    label: int
    pixels: np.ndarray | None
    error: Exception | None


class _Decode:
    """Map-style dataset of decoded + preprocessed images; picklable for DataLoader workers."""

    def __init__(self, dataset: ImageDataset, preprocessor: Preprocessor):
        self.dataset = dataset
        self.preprocessor = preprocessor
        self.labels = dataset.labels()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> _Item:
        label = int(self.labels[i])
        try:
            return _Item(i, label, self.preprocessor(self.dataset[i].image), None)
        except UnreadableImage as e:
            return _Item(i, label, None, e)
        except SparsesteerError as e:  # e.g. an image mode the preprocessor cannot convert
            return _Item(i, label, None, SparsesteerError(f"{self.dataset.source(i)}: {e}"))


class _Collate:
    """Stack the readable images of one batch; keep the failures for the main process."""

    def __init__(self, empty_hw: tuple[int, int]):
        self.empty_hw = empty_hw

    def __call__(self, items: list[_Item]) -> dict[str, Any]:
        import torch

        good = [it for it in items if it.error is None]
        arrays = [it.pixels for it in good if it.pixels is not None]  # a readable item always has pixels
        if arrays:
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise SparsesteerError(
                    f"preprocessed images have different sizes {sorted(shapes)}: the preprocessor keeps aspect "
                    "ratios (no centre crop), so the images cannot be batched"
                )
            pixels = torch.from_numpy(np.stack(arrays))
        else:
            pixels = torch.zeros((0, 3, *self.empty_hw), dtype=torch.float32)
        return {
            "pixels": pixels,
            "labels": torch.tensor([it.label for it in good], dtype=torch.int64),
            "indices": np.array([it.image for it in good], dtype=np.int64),
            "failed": [(it.image, it.error) for it in items if it.error is not None],
            "start": items[0].image,
            "stop": items[-1].image + 1,
        }


class _BatchRanges:
    """The index lists of the batches, generated lazily (a list would grow with the dataset):
    batching restarts at each span and at every `chunk` images within it."""

    def __init__(self, spans: list[tuple[int, int]], batch_size: int, chunk: int | None):
        self.spans, self.batch_size, self.chunk = spans, batch_size, chunk

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.spans:
            for c in range(start, stop, self.chunk or stop - start):
                end = min(c + (self.chunk or stop - start), stop)
                for a in range(c, end, self.batch_size):
                    yield list(range(a, min(a + self.batch_size, end)))

    def __len__(self) -> int:
        n = 0
        for start, stop in self.spans:
            chunk = self.chunk or stop - start
            full, rest = divmod(stop - start, chunk)
            n += full * -(-chunk // self.batch_size) + -(-rest // self.batch_size)
        return n


def image_batches(
    dataset: ImageDataset,
    preprocessor: Preprocessor,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    start: int = 0,
    stop: int | None = None,
    on_bad_image: str = "error",
    chunk: int | None = None,
    prefetch: int = 2,
    pin_memory: bool | None = None,
    spans: list[tuple[int, int]] | None = None,
) -> Iterator[ImageBatch]:
    """Preprocessed batches of `dataset[start:stop]`, in index order.

    batch_size: images per batch (the last one may be smaller; with "skip", batches lack their
        unreadable images). workers: decoding processes (None: `default_workers()`; 0 decodes in this
        process). prefetch: batches each worker keeps ready (bounds memory). pin_memory: None = when
        CUDA is available. on_bad_image: "error" raises a `SparsesteerError` naming the file;
        "skip" leaves the image out and lists it in `ImageBatch.skipped`.
    chunk: no batch crosses `start + k * chunk`; batching restarts at each such boundary. The cache
        producer passes its shard size, so a run resumed at a shard boundary feeds the model exactly
        the batches an uninterrupted run would (same kernels, same bits).
    spans: several ranges [start, stop) instead of one, read in this order by the same workers; each
        is batched as if read alone (`train --model` reads a window's chunks in one pass).
    """
    import torch
    from torch.utils.data import DataLoader, Dataset

    if on_bad_image not in ON_BAD_IMAGE:
        raise unknown("--on-bad-image value", str(on_bad_image), ON_BAD_IMAGE)
    checks = [("batch size", batch_size), ("prefetch", prefetch)] + ([("chunk", chunk)] if chunk is not None else [])
    for name, value in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SparsesteerError(f"{name} must be an integer >= 1, got {value!r}")
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SparsesteerError(f"workers must be an integer >= 0, got {workers!r}")
    n = len(dataset)
    spans = [(start, n if stop is None else stop)] if spans is None else spans
    for a, b in spans:
        if not 0 <= a <= b <= n:
            raise SparsesteerError(f"image range [{a}, {b}) is outside the dataset's {n} images")
    spans = [(a, b) for a, b in spans if b > a]
    if not spans:
        return
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    ranges = _BatchRanges(spans, batch_size, chunk)
    workers = min(workers, len(ranges))
    # DataLoader needs only __getitem__ and __len__ of a map-style dataset; _Decode avoids importing torch
    items = cast("Dataset[_Item]", _Decode(dataset, preprocessor))
    loader = DataLoader(
        items,
        batch_sampler=ranges,
        num_workers=workers,
        collate_fn=_Collate(preprocessor.output_size or (0, 0)),
        pin_memory=pin,
        prefetch_factor=prefetch if workers else None,
    )
    for raw in loader:
        skipped = []
        for index, error in raw["failed"]:
            if on_bad_image == "error" or not isinstance(error, UnreadableImage):
                if isinstance(error, UnreadableImage):
                    raise SparsesteerError(
                        f"{error}; pass --on-bad-image skip (on_bad_image='skip') to leave unreadable "
                        "images out and list them in the results"
                    )
                raise error
            skipped.append(SkippedImage(index, error.source, str(error)))
        yield ImageBatch(raw["pixels"], raw["labels"], raw["indices"], skipped, raw["start"], raw["stop"])
