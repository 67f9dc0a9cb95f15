"""The cache producer behind `sparsesteer cache`: run a model over a dataset split and write the
activations of some hook points into an activation cache (format: docs/formats.md).

One forward pass per batch captures every hook (stopping after the deepest); decoding runs in
DataLoader workers meanwhile (`data.batches.image_batches`). Rows are image-major in
`token_positions` order. Shards hold a fixed number of images, derived from a target shard size
(or taken from the shards already in --out), so shard boundaries never depend on when a run was
interrupted: a killed run, rerun with the same arguments, ends byte-identical to an uninterrupted
one. Each shard is filled in place in a preallocated buffer of the cache dtype, so memory is one
shard plus the batches in flight, whatever the dataset size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.hook_names import TOKEN_SELECTIONS, TokenSelection
from ..utils import distributed
from ..utils.errors import SparsesteerError, unknown
from ..utils.io import read_json, write_json
from ..utils.options import DataOptions, ModelOptions, RunOptions, positive_int
from .cache import DTYPES, MANIFEST, ActivationCache, CacheSettings, CacheWriter, DType
from .cache.settings import read_manifest

if TYPE_CHECKING:
    import torch

    from ..data.datasets import ImageDataset
    from ..models.backbone import Backbone, ModelShape

log = logging.getLogger(__name__)

DEFAULT_SHARD_MB = 64
"""Target size of one shard (all hooks together), in MiB; fixes the number of images per shard."""


@dataclass(frozen=True)
class HookPlan:
    """What one cache run captures: validated hook names, widths and the rows kept per image."""

    hooks: tuple[str, ...]
    """Hook names in the order given (normalised by `HookPoint`)."""
    d: dict[str, int]
    """Width of each hook (d_model for block hooks, d_embed for `head`)."""
    tokens: str
    """'cls', 'patch' or 'all'."""
    token_positions: tuple[int, ...]
    """Model token indices kept per image, in row order."""
    cls_position: int | None
    """Index of the CLS token, None for models without one."""

    @property
    def values_per_image(self) -> int:
        """Activation values stored per image, all hooks together (times the itemsize = bytes)."""
        return len(self.token_positions) * sum(self.d.values())


def check_hooks(hooks: list[str] | tuple[str, ...] | str, tokens: str, shape: ModelShape | Backbone) -> tuple[str, ...]:
    """The normalised hook names, after every check that needs only the flags and the model's shape
    (`models.backbone.model_shape`, read from its config before the load, or a loaded backbone):
    names, block range, duplicates, `head` with cls tokens, cls tokens on a model without a CLS.

    `head` is one vector per image, so it can only sit in a cache whose rows are one per image:
    tokens='cls' (its rows are indexed as the CLS token).
    """
    from ..models.hook_names import HookPoint

    if isinstance(hooks, str):
        hooks = [hooks]
    if not hooks:
        raise SparsesteerError("no hook point given: pass at least one --hook (e.g. blocks.11.resid_post)")
    if tokens not in TOKEN_SELECTIONS:
        raise unknown("token selection (--tokens)", str(tokens), TOKEN_SELECTIONS)
    names = [str(HookPoint.parse(h, shape.n_blocks)) for h in hooks]
    dup = sorted({h for h in names if names.count(h) > 1})
    if dup:
        raise SparsesteerError(f"hook {dup[0]!r} is given more than once")
    if "head" in names and tokens != "cls":
        raise SparsesteerError(
            f"hook 'head' gives one embedding per image, so it can only be cached with --tokens cls (got {tokens!r})"
        )
    if tokens == "cls" and not shape.has_cls:
        raise SparsesteerError(
            f"--tokens cls: {shape.model_id!r} ({shape.arch}) has no CLS token; use --tokens patch or all"
        )
    return tuple(names)


def plan_hooks(backbone: Backbone, hooks: list[str] | tuple[str, ...], tokens: str) -> HookPlan:
    """Validate hook names and the token selection for `backbone` (`check_hooks`) before any image is read."""
    names = check_hooks(hooks, tokens, backbone)
    positions = tuple(int(t) for t in backbone.token_indices(tokens).tolist())
    d = {h: backbone.d_embed if h == "head" else backbone.d_model for h in names}
    return HookPlan(names, d, tokens, positions, 0 if backbone.has_cls else None)


def shard_images_for(plan: HookPlan, dtype: str, shard_mb: float = DEFAULT_SHARD_MB) -> int:
    """Images per shard so that one shard (all hooks) is about `shard_mb` MiB; at least 1."""
    itemsize = 4 if dtype == "float32" else 2
    return max(1, int(shard_mb * 2**20 // (plan.values_per_image * itemsize)))


@dataclass(frozen=True, kw_only=True)
class CacheConfig(RunOptions, DataOptions, ModelOptions):  # flags in --help: model, data, run, own
    """Settings of `sparsesteer cache` (and of `cache_activations`)."""

    hooks: tuple[str, ...]
    """Hook points, repeatable: blocks.{i}.resid_post|resid_pre|mlp_out|attn_out (0-based) or head."""
    tokens: TokenSelection
    """Rows kept per image: cls (1), patch (the patch tokens) or all (CLS, registers, patches); head needs cls."""
    out: str
    """Cache directory (created; resumed when it holds this cache)."""
    dtype: DType = "float32"
    """Storage dtype (the model runs in float32)."""
    shard_images: int | None = None
    """Images per shard; None = about DEFAULT_SHARD_MB (64) MiB per shard, or what a resumed cache uses."""
    intra_op_threads: int | None = None
    """torch threads for the model forward while images decode in --workers processes; None = torch's
    own count (measured fastest with small images, whose decoding leaves the workers mostly idle:
    benchmarks/threads.py); lower it when decoding large images keeps the workers busy."""
    bf16: bool = False
    """Run the model forward under bfloat16 autocast (fast on CUDA and on CPUs with AVX-512 BF16 or
    AMX). The first batch also runs in float32 and the difference is logged and kept in
    manifest.json (checks.bf16_check). Off by default: a cache is reused by every later stage."""

    def __post_init__(self) -> None:
        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        object.__setattr__(self, "hooks", hooks)
        if not hooks:
            raise SparsesteerError("no hook point given: pass at least one --hook (e.g. blocks.11.resid_post)")
        if self.tokens not in TOKEN_SELECTIONS:
            raise unknown("token selection (--tokens)", str(self.tokens), TOKEN_SELECTIONS)
        if self.dtype not in DTYPES:
            raise unknown("cache dtype (--dtype)", str(self.dtype), DTYPES)
        if self.shard_images is not None:
            positive_int(self.shard_images, "--shard-images")
        if self.intra_op_threads is not None:
            positive_int(self.intra_op_threads, "--intra-op-threads")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    """Settings of `sparsesteer verify`."""

    dir: str
    """Activation cache directory (holds manifest.json)."""
    json: bool = False
    """Print the report as JSON instead of a sentence."""


def cache_activations(cfg: CacheConfig, *, backbone: Backbone | None = None) -> ActivationCache:
    """Cache the activations of `cfg.hooks` on `cfg.dataset`/`cfg.split` into `cfg.out`, resuming a
    run that stopped; return the finished cache.

    `backbone`: an already loaded model to use instead of loading `cfg.model` (its id must match).
    `cfg.limit` takes a class-stratified sample (`data.subset`), recorded in the manifest's dataset
    description.
    """
    from ..data import limit_dataset, open_dataset
    from ..models import load_backbone
    from ..utils.device import resolve_device

    if backbone is not None and backbone.model_id != str(cfg.model):
        raise SparsesteerError(
            f"cache_activations: the backbone is {backbone.model_id!r} but cfg.model is {cfg.model!r}"
        )
    if backbone is None:  # the flags against the model's config first: the load takes seconds to minutes
        from ..models.backbone import model_shape

        check_hooks(cfg.hooks, cfg.tokens, model_shape(cfg.model, cfg.revision))
        if cfg.shard_images is not None and (Path(cfg.out) / MANIFEST).is_file():
            manifest = read_manifest(Path(cfg.out))[0]
            if not manifest["completed"]:  # resuming: its shard size is fixed
                _committed_shard_images(Path(cfg.out), manifest, cfg.shard_images)
    ds = limit_dataset(open_dataset(cfg.dataset, cfg.split, data_root=cfg.data_root), cfg.limit, cfg.limit_seed)
    device = distributed.rank_device(resolve_device(cfg.device))
    bb = backbone or load_backbone(cfg.model, device=device, revision=cfg.revision)
    plan = plan_hooks(bb, cfg.hooks, cfg.tokens)
    pre = bb.preprocessor
    if pre.output_size != (bb.image_size, bb.image_size):
        raise SparsesteerError(
            f"{bb.model_id!r}: its preprocessing produces {pre.output_size or 'variable-size'} images but the "
            f"model runs at {bb.image_size}x{bb.image_size}; fix preprocessor_config.json (crop_size)"
        )
    settings = CacheSettings(
        hooks=plan.hooks,
        d=plan.d,
        tokens=plan.tokens,
        token_positions=plan.token_positions,
        cls_position=plan.cls_position,
        n_images=len(ds),
        dtype=cfg.dtype,
        model={"id": bb.model_id, "revision": bb.revision, "arch": bb.arch},
        dataset=ds.describe(),
        split=cfg.split,
        preprocessing=pre.to_dict(),
        classes=tuple(ds.classes) if ds.classes else None,
        forward="bfloat16" if cfg.bf16 else "float32",
    )
    if cfg.bf16:
        from ..utils import precision

        log.info("model forward in %s", precision.describe(True, bb.device))
        if bb.device.type == "cpu" and not precision.cpu_bf16_native():
            log.warning("this CPU has no native bfloat16 (AVX-512 BF16 / AMX): --bf16 runs slower than float32")
    if distributed.world().size > 1:
        _cache_data_parallel(cfg, settings, bb, ds, pre, plan)
        return ActivationCache.open(cfg.out)
    with CacheWriter.open(cfg.out, settings) as writer:
        if writer.completed:
            log.info("%s already holds this activation cache, completed; nothing to do", cfg.out)
        else:
            per_shard = (
                _resume_shard_images(writer, cfg.shard_images) or cfg.shard_images or shard_images_for(plan, cfg.dtype)
            )
            _produce(writer, cfg, bb, ds, pre, plan, per_shard)
            writer.finish(ds.labels())
    return ActivationCache.open(cfg.out)


def _resume_shard_images(writer: CacheWriter, asked: int | None) -> int | None:
    """Images per shard of the shards already committed (None for a new cache). A resumed cache
    keeps its shard size, which is what makes it byte-identical to an uninterrupted run."""
    return _committed_shard_images(writer.path, writer.manifest, asked)


def _committed_shard_images(path: Path, manifest: dict[str, Any], asked: int | None) -> int | None:
    shards = manifest["shards"]
    if not shards:
        return None
    existing = int(shards[0]["n_images"])
    if asked is not None and asked != existing:
        raise SparsesteerError(
            f"{path} was started with {existing} images per shard; resume it with that value "
            f"(or without --shard-images), or use another --out"
        )
    return existing


class _ShardBuffer:
    """Rows of the shard being filled, per hook, preallocated in the cache dtype."""

    def __init__(self, plan: HookPlan, dtype: str, max_images: int):
        import torch

        self.plan = plan
        self.tpi = len(plan.token_positions)
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        # torch.empty does not touch the pages: memory is used as rows are filled.
        self.acts = {h: torch.empty((max_images * self.tpi, w), dtype=torch_dtype) for h, w in plan.d.items()}
        self.images: list[np.ndarray] = []
        self.rows = 0

    def add(self, acts_rows: dict[str, torch.Tensor], images: np.ndarray) -> None:
        n = len(images) * self.tpi
        for h, rows in acts_rows.items():
            dest = self.acts[h][self.rows : self.rows + n]
            dest.copy_(rows)  # round-to-nearest-even into float16 / bfloat16
            _check_finite(dest, rows, h, images, self.plan.token_positions)
        self.images.append(images)
        self.rows += n

    def flush(self, writer: CacheWriter, n_images: int) -> None:
        images = np.concatenate(self.images) if self.images else np.zeros(0, dtype=np.int64)
        image_idx = np.repeat(images, self.tpi)
        token_idx = np.tile(np.asarray(self.plan.token_positions, dtype=np.int64), len(images))
        acts = {h: a[: self.rows] for h, a in self.acts.items()}
        writer.write_shard(acts, image_idx, token_idx, n_images=n_images, check_finite=False)
        self.images, self.rows = [], 0


def _check_finite(stored: torch.Tensor, source: torch.Tensor, hook: str, images: np.ndarray, positions) -> None:
    """NaN/Inf in a model's activations, or values beyond float16's range, are errors naming the row."""
    import torch

    finite = torch.isfinite(stored).all(dim=1)
    if bool(finite.all()):
        return
    r = int((~finite).nonzero()[0, 0])
    image, token = int(images[r // len(positions)]), positions[r % len(positions)]
    if bool(torch.isfinite(source[r]).all()):
        raise SparsesteerError(
            f"activations of hook {hook!r} at image {image}, token {token} overflow {stored.dtype} "
            f"(max |x| = {float(source[r].abs().max()):.4g}); cache with --dtype float32 or bfloat16"
        )
    raise SparsesteerError(f"the model produced NaN/Inf at hook {hook!r}, image {image}, token {token}")


def _cache_data_parallel(
    cfg: CacheConfig, settings: CacheSettings, bb: Backbone, ds: ImageDataset, pre: Any, plan: HookPlan
) -> None:
    """`torchrun ... cache`: the ranks take the shards still to write round-robin (shard i to rank
    i mod N), write their files in place and a part record (`.shard-NNNNN.tmp`, JSON); after each
    round rank 0 commits the round's shards in order. Shard boundaries are those of a
    single-process run, so the cache is the same one, byte for byte, and resumable like it."""
    import torch

    rank, size, _ = distributed.world()
    shared = torch.zeros(4, dtype=torch.long)
    writer = None
    try:
        if rank == 0:
            writer = CacheWriter.open(cfg.out, settings)
            per_shard = 1
            if not writer.completed:
                per_shard = (
                    _resume_shard_images(writer, cfg.shard_images)
                    or cfg.shard_images
                    or shard_images_for(plan, cfg.dtype)
                )
            shared = torch.tensor([per_shard, writer.next_image, int(writer.completed), writer.next_shard_index])
        distributed.all_reduce_sum([shared])  # rank 0's values (the others add zeros)
        per_shard, next_image, completed, first_index = (int(v) for v in shared)
        if completed:
            return
        # the other ranks write files through a lock-free writer on the same directory
        files = writer or CacheWriter(Path(cfg.out), settings, {"shards": [], "completed": False}, None)
        starts = list(range(next_image, settings.n_images, per_shard))
        for r0 in range(0, len(starts), size):
            mine = r0 + rank
            if mine < len(starts):
                first = starts[mine]
                stop = min(first + per_shard, settings.n_images)
                sink = _PartSink(files, first_index + mine, first)
                _produce(sink, cfg, bb, ds, pre, plan, per_shard, start=first, stop=stop, show=rank == 0)  # type: ignore[arg-type]
            distributed.barrier()
            if writer is not None:
                for i in range(r0, min(r0 + size, len(starts))):
                    part = Path(cfg.out) / _part_name(first_index + i)
                    record = read_json(part)
                    writer.commit_shard(record["record"], record["skipped"])
                    part.unlink()
        if writer is not None:
            writer.finish(ds.labels())
    finally:
        if writer is not None:
            writer.close()
        distributed.barrier()  # the cache is committed before any rank reads it


def _part_name(shard: int) -> str:
    return f".shard-{shard:05d}.tmp"  # a scratch name: a resumed writer removes leftovers


class _PartSink:
    """What `_produce` writes to on a rank of a data-parallel run: one shard's files, plus a JSON
    part record that rank 0 commits."""

    def __init__(self, writer: CacheWriter, index: int, first: int):
        self.writer, self.index, self.first = writer, index, first
        self.settings = writer.settings
        self.skipped: list[dict[str, Any]] = []

    def record_check(self, name: str, value: dict[str, Any]) -> None:
        """A rank's check (the bf16 difference of its first batch) is logged only; the manifest
        holds the checks of single-process runs."""

    def add_skipped(self, image: int, source: str, error: str) -> None:
        self.skipped.append({"image": int(image), "source": str(source), "error": str(error)})

    def write_shard(self, acts, image_idx, token_idx, *, n_images, check_finite) -> None:
        record, skipped = self.writer.write_shard_files(
            self.index,
            self.first,
            acts,
            image_idx,
            token_idx,
            n_images=n_images,
            check_finite=check_finite,
            skipped=self.skipped,
        )
        write_json(self.writer.path / _part_name(self.index), {"record": record, "skipped": skipped})


def _produce(
    writer: CacheWriter,
    cfg: CacheConfig,
    bb: Backbone,
    ds: ImageDataset,
    pre: Any,
    plan: HookPlan,
    shard_images: int,
    *,
    start: int | None = None,
    stop: int | None = None,
    show: bool = True,
) -> None:
    """Forward every image of [start, stop) (default: from `writer.next_image` to the end) and
    write full shards as they fill; batch size, workers, bad-image policy, intra-op threads and
    precision from `cfg`. With `cfg.bf16` the forward runs under bfloat16 autocast; the first batch
    also in float32, and the difference is logged and recorded (`bf16_check`)."""
    from ..data.batches import image_batches
    from ..utils import precision
    from ..utils import threads as thread_budget
    from ..utils.progress import progress

    n_images = writer.settings.n_images if stop is None else stop
    start = shard_start = writer.next_image if start is None else start
    shard_end = min(shard_start + shard_images, n_images)
    buf = _ShardBuffer(plan, writer.settings.dtype, min(shard_images, n_images - start))
    batches = image_batches(
        ds,
        pre,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        start=start,
        stop=n_images,
        on_bad_image=cfg.on_bad_image,
        chunk=shard_images,
        pin_memory=bb.device.type == "cuda",
    )
    checked = False
    with (
        thread_budget.limited(cfg.intra_op_threads),
        progress(
            total=n_images, initial=start, unit="img", desc="cache", smoothing=0.1, disable=None if show else True
        ) as bar,
    ):
        for batch in batches:  # batches never straddle a shard boundary (chunk=shard_images)
            for skipped in batch.skipped:
                writer.add_skipped(skipped.index, skipped.source, skipped.error)
            if len(batch.indices):
                with precision.autocast(cfg.bf16, bb.device):
                    out = bb.run(batch.pixels, plan.hooks, tokens=plan.tokens)
                if cfg.bf16 and not checked:
                    checked = True
                    _report_bf16(writer, bb.run(batch.pixels, plan.hooks, tokens=plan.tokens), out)
                # [B, d] (cls, head) or [B, T, d] -> image-major rows [B * T, d]
                buf.add({h: out[h].reshape(-1, plan.d[h]).cpu() for h in plan.hooks}, batch.indices)
            if batch.stop == shard_end:
                buf.flush(writer, shard_end - shard_start)
                shard_start, shard_end = shard_end, min(shard_end + shard_images, n_images)
            bar.update(batch.stop - batch.start)


def bf16_difference(fp32: dict[str, torch.Tensor], bf16: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per hook, how far activations of a bf16-autocast forward are from the float32 forward's:
    rows compared, relative RMS difference ||b - a|| / ||a||, largest |b - a|, smallest per-row
    cosine (float64 arithmetic)."""
    import torch

    out = {}
    for h, a in fp32.items():
        a64 = a.reshape(-1, a.shape[-1]).double().cpu()
        b64 = bf16[h].reshape(-1, a.shape[-1]).double().cpu()
        diff = b64 - a64
        out[h] = {
            "rows": int(a64.shape[0]),
            "rel_rms": float(diff.norm() / a64.norm().clamp_min(1e-300)),
            "max_abs": float(diff.abs().max()),
            "cos_min": float(torch.nn.functional.cosine_similarity(a64, b64, dim=1).min()),
        }
    return out


def _report_bf16(writer: Any, fp32: dict[str, torch.Tensor], bf16: dict[str, torch.Tensor]) -> None:
    check = bf16_difference(fp32, bf16)
    for h, c in check.items():
        log.info(
            "bf16 forward vs float32, first batch, %s (%d rows): relative RMS difference %.2e, max |diff| %.3g, "
            "min cosine %.6f",
            h, c["rows"], c["rel_rms"], c["max_abs"], c["cos_min"],
        )  # fmt: skip
    writer.record_check("bf16_check", check)
