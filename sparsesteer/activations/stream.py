"""Activations computed by the model on demand: a row source for training without a cache.

`ModelRows` looks like a cache view to the trainer (`RowSource`: `n_rows`, `d`, `read`, `labels`,
`describe`) but `read(start, stop)` runs the model: rows are image-major (each image gives one row
per kept token, as in a cache), and the columns hold every hook side by side
(`column_groups[hook] = (first, last)`), so one forward pass, stopped after the deepest hook, feeds
the SAEs of all hooks. The trainer's `ShuffledBatches` then does the rest: it reads windows of
whole images (`chunk_rows`) in an order drawn from (seed, epoch), shuffles each window's rows in
its bounded buffer and prefetches the next window in a background thread, so the image order is a
function of seed and position (resuming is exact) and the forward passes overlap the SAE steps.
Images are decoded in DataLoader workers (`data.batches.image_batches`).

For users whose cache would not fit on disk (docs/scaling.md: when to cache and when to stream);
each pass over the data runs the model again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..utils import distributed, precision
from ..utils.errors import SparsesteerError
from .produce import plan_hooks

if TYPE_CHECKING:
    from ..data.datasets import ImageDataset
    from ..models.backbone import Backbone


class ModelRows:
    """Rows of `hooks` at `tokens` for every image of `dataset`, computed by `backbone` when read."""

    def __init__(
        self,
        backbone: Backbone,
        dataset: ImageDataset,
        hooks: list[str] | tuple[str, ...],
        tokens: str,
        *,
        split: str | None = None,
        image_batch_size: int = 64,
        workers: int | None = 0,
        images_per_chunk: int | None = None,
        bf16: bool | None = False,
    ):
        self.backbone, self.dataset = backbone, dataset
        self.plan = plan_hooks(backbone, hooks, tokens)
        pre = backbone.preprocessor
        if pre.output_size != (backbone.image_size, backbone.image_size):
            raise SparsesteerError(
                f"{backbone.model_id!r}: its preprocessing produces {pre.output_size or 'variable-size'} images but "
                f"the model runs at {backbone.image_size}x{backbone.image_size}; fix preprocessor_config.json"
            )
        self.pre = pre
        self.split = split
        self.tokens_per_image = len(self.plan.token_positions)
        self.n_images = len(dataset)
        if self.n_images == 0:
            raise SparsesteerError(f"{dataset.describe().get('name', 'the dataset')}: no images to train on")
        self.n_rows = self.n_images * self.tokens_per_image
        self.column_groups: dict[str, tuple[int, int]] = {}
        offset = 0
        for h in self.plan.hooks:
            self.column_groups[h] = (offset, offset + self.plan.d[h])
            offset += self.plan.d[h]
        self.d = offset
        self.image_batch_size = image_batch_size
        self.workers = workers
        # windows are read in whole images: 4 forward batches per chunk unless told
        self.chunk_rows = (images_per_chunk or 4 * image_batch_size) * self.tokens_per_image
        # the forward in bf16: when asked (True), or by default (None) on CUDA; on CPU the default
        # stays float32, so that rows streamed from the model equal a (float32) cache's rows
        dev = backbone.device
        self.bf16 = precision.resolve_bf16(bf16, dev) if bf16 is not None or dev.type == "cuda" else False
        self._kept: dict[tuple[int, int], torch.Tensor] = {}
        self._keep_budget = 0
        self._labels = np.repeat(dataset.labels().astype(np.int64), self.tokens_per_image)

    @property
    def collective_reads(self) -> bool:
        """Under torchrun every rank runs the forward of its share of the images of each read and
        the rows are all-gathered: reads are collectives, so the trainer makes them in its own
        thread, in the same order on every rank (no prefetch thread)."""
        return distributed.world().size > 1

    @property
    def reads_in_caller(self) -> bool:
        """Whether the trainer must read in its own thread: collectives (above), and model forwards
        on CPU, which in a prefetch thread would run a second team of intra-op threads beside the
        SAE step's on the same cores (oversubscribed: `benchmarks/threads.py`); on CUDA the
        forward's kernels are queued and the prefetch thread overlaps the decoding and the step."""
        return self.collective_reads or self.backbone.device.type == "cpu"

    def read(self, start: int, stop: int) -> torch.Tensor:
        """float32 rows [stop - start, d]: the model run on the images these rows belong to.

        The model always runs on whole chunks of the stream's grid (`chunk_rows`, whole images), in
        the same batches whoever reads them, so a row has the same bits whether it was computed for
        the initialisation sample, for the stream, or again after a resume."""
        c0, c1 = start // self.chunk_rows, -(-stop // self.chunk_rows)
        parts = self.read_many([self._chunk(c) for c in range(c0, c1)])
        rows = parts[0] if len(parts) == 1 else torch.cat(parts)
        return rows[start - c0 * self.chunk_rows : stop - c0 * self.chunk_rows]

    def _chunk(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min(self.n_rows, (c + 1) * self.chunk_rows)

    @contextlib.contextmanager
    def keeping(self, max_bytes: int) -> Iterator[None]:
        """Keep the chunks read inside this block (up to `max_bytes`) until the stream reads them:
        the trainer's initialisation sample is then not computed a second time by the first epoch."""
        self._keep_budget = max_bytes
        try:
            yield
        finally:
            self._keep_budget = 0

    def read_many(self, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Rows of several chunks of the grid (`(start, stop)` as `_chunk` gives them), computed in
        one pass of the decoding workers (one `DataLoader` per call, not per chunk), each chunk in
        the batches a read of it alone would use; chunks kept by `keeping` are handed over, once."""
        t = self.tokens_per_image
        out: dict[tuple[int, int], torch.Tensor] = {s: self._kept.pop(s) for s in spans if s in self._kept}
        todo = [s for s in dict.fromkeys(spans) if s not in out]
        for s in todo:
            if s[0] % t or s[1] % t:
                raise ValueError(f"rows {s} are not whole images of {t} rows")
        if self.collective_reads:
            computed = [self._shared_forward(a // t, b // t) for a, b in todo]
        else:
            computed = self._forward([(a // t, b // t) for a, b in todo], torch.device("cpu"))
        for s, rows in zip(todo, computed):
            out[s] = rows
            if rows.numel() * 4 <= self._keep_budget - self._kept_bytes():
                self._kept[s] = rows
        return [out[s] for s in spans]

    def _kept_bytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self._kept.values())

    def _shared_forward(self, first: int, last: int) -> torch.Tensor:
        """The rows of images [first, last), each rank computing a contiguous share, all-gathered
        (on the model's device: nccl gathers CUDA tensors, gloo CPU ones)."""
        import torch.distributed as dist

        rank, size, _ = distributed.world()
        t, n = self.tokens_per_image, last - first
        per = -(-n // size)
        bounds = [(first + min(n, r * per), first + min(n, (r + 1) * per)) for r in range(size)]
        device = self.backbone.device
        mine = self._forward([bounds[rank]], device)[0]
        padded = torch.zeros((per * t, self.d), dtype=torch.float32, device=device)
        padded[: mine.shape[0]] = mine
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: (b - a) * t] for p, (a, b) in zip(parts, bounds)]).cpu()

    def _forward(self, images: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """Rows of each image range [first, last) (all their tokens), on `device`; batching restarts
        at each range, so a range's rows do not depend on the others read with it."""
        from ..data.batches import image_batches

        t = self.tokens_per_image
        outs = [torch.empty(((b - a) * t, self.d), dtype=torch.float32, device=device) for a, b in images]
        spans = [(a, b) for a, b in images if b > a]
        if not spans:
            return outs
        cuda = self.backbone.device.type == "cuda"
        batches = image_batches(
            self.dataset, self.pre, batch_size=self.image_batch_size, workers=self.workers, spans=spans,
            pin_memory=cuda,
        )  # fmt: skip
        for batch in batches:
            pixels = batch.pixels.to(self.backbone.device, non_blocking=cuda)
            with precision.autocast(self.bf16, self.backbone.device):
                acts = self.backbone.run(pixels, self.plan.hooks, tokens=self.plan.tokens)
            i = next(j for j, (a, b) in enumerate(images) if a <= batch.start < b)  # batches never cross ranges
            row = (batch.start - images[i][0]) * t
            n = len(batch.indices) * t
            for h, (a, b) in self.column_groups.items():
                outs[i][row : row + n, a:b] = acts[h].reshape(n, b - a).float().to(device)
        return outs

    def labels(self, start: int, stop: int) -> np.ndarray | None:
        return self._labels[start:stop].copy()

    def cost(self, rows: int) -> str:
        """The line `train --model` logs before it starts: training on `rows` rows reruns the model on
        every pass over the images, which a cache would not (docs/scaling.md)."""
        passes = rows / self.n_rows
        forwards = -(-rows // self.tokens_per_image)  # whole images: a row's image runs whole
        head = (
            f"training from the model, without a cache: {passes:.3g} passes over {self.n_images:,} images "
            f"= about {forwards:,} image forward passes"
        )
        if passes <= 1:
            return head
        return (
            f"{head}: every pass runs the model again ({self.n_images:,} forwards per pass); a cache "
            "(`sparsesteer cache`, then --activations) runs it once per image"
        )

    def describe(self) -> dict[str, Any]:
        """What the rows are (compared on --resume, recorded in each SAE's provenance)."""
        bb = self.backbone
        return {
            "kind": "model",
            "model": {"id": bb.model_id, "revision": bb.revision, "arch": bb.arch},
            "dataset": self.dataset.describe(),
            "split": self.split,
            "hooks": list(self.plan.hooks),
            "tokens": self.plan.tokens,
            "token_positions": list(self.plan.token_positions),
            "n_rows": self.n_rows,
            "d": self.d,
            "classes": list(self.dataset.classes) if self.dataset.classes else None,
        }


def model_widths(run: Any) -> set[int]:
    """`train --model`: the widths of the hooks `run` asks for, from the model's config alone, after
    checking the hook and token flags against it: what the SAE settings are checked against before
    the model loads."""
    from ..models.backbone import model_shape
    from .produce import check_hooks

    shape = model_shape(run.model, run.revision)
    return {shape.d_embed if h == "head" else shape.d_model for h in check_hooks(run.hooks, run.tokens, shape)}


def open_model_rows(run: Any, train: Any) -> ModelRows:
    """`sparsesteer train --model`: load the model (on this rank's device) and the dataset split."""
    from ..data import limit_dataset, open_dataset
    from ..models import load_backbone
    from ..utils import distributed
    from ..utils.device import resolve_device

    device = distributed.rank_device(resolve_device(train.device))
    ds = limit_dataset(open_dataset(run.dataset, run.split, data_root=run.data_root), run.limit, 0)
    bb = load_backbone(run.model, device=device, revision=run.revision)
    return ModelRows(
        bb,
        ds,
        run.hooks,
        run.tokens,
        split=run.split,
        image_batch_size=run.image_batch_size,
        workers=run.workers,
        bf16=train.bf16,
    )
