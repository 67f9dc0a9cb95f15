"""Training: one pass over the data trains a sweep of SAEs on the same batches.

Each SAE has its own Adam optimiser, dead-latent counters and extra objectives (`objectives.py`:
PASS and its class prototypes); the batches, the learning-rate schedule and the input
normalisation are shared. The run directory:

    OUT/cfg.json + sae.safetensors      the trained SAE (one config), or OUT/<name>/... (a sweep)
    OUT/metrics.jsonl                   one JSON line per logged step
    OUT/train_config.json               the run's settings
    OUT/state/<step>/                   the latest checkpoint (safetensors + JSON), see `_save_state`;
                                        removed when the run finishes (`keep_state` keeps it)

A checkpoint holds weights, optimiser moments, the step, the stream position, dead/dense
counters, the objectives' state (PASS prototypes) and RNG states, so `resume=True` continues
exactly: on CPU a run killed with SIGKILL and resumed ends with bit-identical weights to an
uninterrupted one (tested). It is about 3x the SAE's size (weights and Adam's two moments) and only
an unfinished run needs it: once the SAEs are saved and read back equal, it is deleted. A finished
run is not continued (its learning-rate schedule has ended; more steps is another run), so
`resume=True` on it only reads its SAEs back.

A run starts only in an empty (or new) directory, or replaces one's contents with
`overwrite=True`; `resume=True` continues a run from its latest checkpoint (from step 0 when it
stopped before its first). Every logged number is checked: a NaN or Inf
stops the run with the step and, when an input row caused it, that row of the source.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..activations.loader import Batch, RowSource, ShuffledBatches, describe_row, open_source, sample_rows
from ..utils import distributed, io, outputs, precision
from ..utils.config import to_dict
from ..utils.device import resolve_device
from ..utils.errors import SparsesteerError
from ..utils.progress import progress
from ..utils.settings_hash import first_difference
from . import build, variants
from .base import SparseAutoencoder
from .config import FEW_STEPS, SAEConfig, TrainConfig, default_dead_after
from .init import geometric_median
from .losses import total_variance
from .objectives import Objective, build_objectives, count_classes, needs_labels
from .provenance import Provenance

log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    """What `train` returns."""

    paths: list[Path]
    """Directory of each trained SAE (loadable with SparseAutoencoder.load)."""
    saes: list[SparseAutoencoder]
    """The trained SAEs (weights folded, as saved)."""
    metrics: list[dict[str, float]]
    """Final logged metrics of each SAE."""
    steps: int
    """Steps taken in total."""


class Member:
    """One SAE of the sweep with its optimiser, counters and extra objectives."""

    def __init__(
        self,
        cfg: SAEConfig,
        device: torch.device,
        train: TrainConfig,
        n_classes: int,
        group: str | None = None,
        cols: tuple[int, int] | None = None,
    ):
        cfg = cfg.resolved(cfg.d_in) if cfg.d_in else cfg  # n_latents and the dead window filled in
        self.cfg = cfg
        self.dead_after: int = cfg.dead_after or default_dead_after(cfg.n_latents, cfg)
        """Samples without firing after which a latent counts as dead (AuxK trains it)."""
        self.group = group
        """The hook whose columns of the source this SAE reads (None: the whole row)."""
        self.cols = cols
        self.sae = build(cfg, device=device)
        self.opt = torch.optim.Adam(
            self.sae.parameters(), lr=train.peak_lr(cfg.n_latents), betas=train.adam_betas, **_adam_impl(device)
        )
        n = cfg.n_latents
        self.since_fired = torch.zeros(n, dtype=torch.long, device=device)
        self.fire_count = torch.zeros(n, dtype=torch.long, device=device)
        self.window_samples = 0
        # extra loss terms (objectives.py: PASS), added to the SAE's own loss with their weights
        self.objectives = torch.nn.ModuleList(build_objectives(cfg, n_classes=n_classes, device=device))
        self.sums: dict[str, float] = {}
        self.sum_steps = 0

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.sae.{k}": v for k, v in self.sae.state_dict().items()}
        names = dict(self.sae.named_parameters())
        for pname, p in names.items():
            for key, value in self.opt.state.get(p, {}).items():
                out[f"{prefix}.opt.{pname}.{key}"] = value
        out[f"{prefix}.since_fired"] = self.since_fired
        out[f"{prefix}.fire_count"] = self.fire_count
        out.update({f"{prefix}.objectives.{k}": v for k, v in self.objectives.state_dict().items()})
        return out

    def load_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        def get(key: str) -> torch.Tensor:
            if key not in tensors:
                raise SparsesteerError(
                    f"checkpoint is missing {key} (written by an older sparsesteer?): start the run again with --overwrite"
                )
            return tensors[key]

        with torch.no_grad():
            for k, v in self.sae.state_dict().items():
                v.copy_(get(f"{prefix}.sae.{k}"))
            for k, v in self.objectives.state_dict().items():
                v.copy_(get(f"{prefix}.objectives.{k}"))
        for pname, p in self.sae.named_parameters():
            state = {}
            for key in ("step", "exp_avg", "exp_avg_sq"):
                full = f"{prefix}.opt.{pname}.{key}"
                if full in tensors:
                    state[key] = tensors[full].to(p.device)
            if state:
                self.opt.state[p] = state
        self.since_fired.copy_(get(f"{prefix}.since_fired"))
        self.fire_count.copy_(get(f"{prefix}.fire_count"))


def _adam_impl(device: torch.device) -> dict[str, Any]:
    """Fused Adam where available (CPU and CUDA in recent PyTorch): one kernel per step."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


def _unique_names(cfgs: Sequence[SAEConfig]) -> list[str]:
    names = [c.name for c in cfgs]
    if len(set(names)) == len(names):
        return names
    return [f"{i:02d}-{n}" for i, n in enumerate(names)]


class Trainer:
    """Train one SAE or a sweep of SAEs on one activation source.

    trainer = Trainer(source, [SAEConfig(k=32), SAEConfig(k=64)], TrainConfig(), "runs/x")
    result = trainer.fit()
    """

    def __init__(
        self,
        source: RowSource | str | Path | torch.Tensor | np.ndarray,
        saes: SAEConfig | Sequence[SAEConfig],
        cfg: TrainConfig = TrainConfig(),
        out: str | Path = "runs/sae",
        *,
        metadata: dict[str, Any] | None = None,
    ):
        self.source = source if isinstance(source, RowSource) else open_source(source)
        cfgs = [saes] if isinstance(saes, SAEConfig) else list(saes)
        if not cfgs:
            raise SparsesteerError("nothing to train: no SAE configuration given")
        self.cfg = cfg
        # a source with column groups (one per hook: `activations.stream.ModelRows`) trains every
        # configuration on every group's columns, from the same batches
        groups = getattr(self.source, "column_groups", None) or {None: (0, self.source.d)}
        self.sae_cfgs, self.groups, self.cols, self.names = [], [], [], []
        for group, (a, b) in groups.items():
            resolved = [c.resolved(b - a) for c in cfgs]
            names = _unique_names(resolved)
            for c, name in zip(resolved, names):
                self.sae_cfgs.append(c)
                self.groups.append(group)
                self.cols.append(None if group is None else (a, b))
                self.names.append(name if group is None else group if len(cfgs) == 1 else f"{group}/{name}")
        classes = variants()
        for c in self.sae_cfgs:
            if not classes[c.arch].trainable:
                trainable = ", ".join(a for a, k in classes.items() if k.trainable)
                raise SparsesteerError(f"{c.arch} SAEs are inference-only here; train {trainable} instead")
        self.out = Path(out)
        # provenance from the source (a cache view names model, hook, tokens, dataset, split, classes);
        # explicit metadata wins
        described = Provenance.from_rows(self.source.describe()).to_metadata(known_only=True)
        self.metadata = {**described, **(metadata or {})}
        self.device = distributed.rank_device(resolve_device(cfg.device))
        self.world = distributed.world()
        if self.world.size > 1:
            _check_data_parallel(self.sae_cfgs, cfg, self.world.size)
        self.total = cfg.total_steps(self.source.n_rows)
        self.bf16 = precision.resolve_bf16(cfg.bf16, self.device)
        self.n_classes = 0
        if any(needs_labels(c) for c in self.sae_cfgs):
            self.n_classes = count_classes(self.source.labels(0, self.source.n_rows))

    # ------------------------------------------------------------------ setup
    def paths(self) -> list[Path]:
        """Where each SAE of the run is saved: --out itself for one SAE, --out/<name> for a sweep."""
        return [self.out] if len(self.names) == 1 else [self.out / name for name in self.names]

    def _settings(self) -> dict[str, Any]:
        return {
            "train": to_dict(self.cfg),
            "saes": [to_dict(c) for c in self.sae_cfgs],
            "names": self.names,
            "source": self.source.describe(),
            **({"hooks": self.groups} if self.groups[0] is not None else {}),
            "total_steps": self.total,
            "precision": precision.describe(self.bf16, self.device),
            "lr": {name: self.cfg.peak_lr(c.n_latents) for name, c in zip(self.names, self.sae_cfgs)},
        }

    def _init_stats(self) -> dict[str | None, tuple[float, torch.Tensor]]:
        """Per column group (hook): (input scale, initial b_dec) from a sample of the data."""
        # a model-backed source keeps the chunks it computes for the sample until the first epoch
        # reads them, up to the stream's buffer size (each image runs once, not twice)
        keeping = getattr(self.source, "keeping", None)
        with keeping(self.cfg.buffer_mb << 20) if keeping else contextlib.nullcontext():
            full = sample_rows(self.source, self.cfg.init_samples, seed=self.cfg.seed)
        if not bool(torch.isfinite(full).all()):
            _check_finite(full, "initialisation sample", None, self.source, _first_bad_row(self.source))
        stats = {}
        for group, cols in dict(zip(self.groups, self.cols)).items():
            sample = full if cols is None else full[:, cols[0] : cols[1]]
            scale = 1.0
            if self.cfg.normalize_input:
                mean_norm = float(sample.norm(dim=1).mean())
                if mean_norm == 0:
                    raise SparsesteerError("cannot normalise inputs: the activations are all zero")
                scale = math.sqrt(sample.shape[1]) / mean_norm
            sample = sample * scale
            if self.cfg.b_dec_init == "geometric_median":
                b_dec = geometric_median(sample)
            elif self.cfg.b_dec_init == "mean":
                b_dec = sample.mean(0)
            else:
                b_dec = torch.zeros(sample.shape[1])
            stats[group] = (scale, b_dec)
        return stats

    # ------------------------------------------------------------------ run
    def fit(
        self,
        *,
        resume: bool = False,
        overwrite: bool = False,
        on_log: Callable[[int, list[SparseAutoencoder]], None] | None = None,
        stop_at: int | None = None,
        keep_state: bool = False,
    ) -> TrainResult:
        """Run (or, with `resume`, continue) training; `overwrite` replaces what --out holds.
        `on_log(step, saes)` is called at every logged step with the SAEs in their training state
        (inputs scaled by `self.scale`). `stop_at`: checkpoint and return after that step (a
        time-boxed slot; `resume` continues); the result then holds no SAEs. `keep_state`: keep the
        last checkpoint of a finished run (by default it is deleted once the SAEs are saved).

        Under torchrun every rank runs this: each trains on its slice of every global batch (the
        stream and its position are global), gradients, firing counts and metrics are summed over
        the ranks, and only rank 0 writes to `out`."""
        cfg = self.cfg
        writer = self.world.rank == 0
        latest = check_run_dir(self.out, resume=resume, overwrite=overwrite)
        distributed.barrier()  # every rank has checked --out before rank 0 changes it
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        state_dir = self.out / "state"
        settings = self._settings()
        if resume and latest is None and _finished_run(self.out):  # its checkpoint already removed
            _check_same_settings(self.out, io.read_json(self.out / TRAIN_CONFIG), settings)
            return self._finished(self.total, keep_state=keep_state)
        if writer and (overwrite or (resume and latest is None)):
            outputs.clear_dir(self.out)  # --overwrite, or a run that stopped before its first checkpoint
        if writer:
            self.out.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        members: list[Member] = []
        for c, g, cols in zip(self.sae_cfgs, self.groups, self.cols):
            if members and g != members[-1].group:
                torch.manual_seed(cfg.seed)  # each hook's SAEs start as in a run of that hook alone
            members.append(Member(c, self.device, cfg, max(self.n_classes, 1), g, cols))
        step, position = 0, 0
        if resume and latest is not None:
            step, position, scales = self._load_state(latest[1], members, settings)
            if step >= self.total and all((p / "cfg.json").is_file() for p in self.paths()):
                return self._finished(step, keep_state=keep_state)  # nothing to do: outputs kept as they are
        else:
            stats = self._init_stats()
            scales = {g: s for g, (s, _) in stats.items()}
            for m in members:
                with torch.no_grad():
                    m.sae.b_dec.copy_(stats[m.group][1])
            if writer:
                io.write_json(self.out / TRAIN_CONFIG, settings)
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.scales = scales
        self.scale = scales[self.groups[0]]
        if writer:
            log.info(f"{self.out}: training in {precision.describe(self.bf16, self.device)} on {self.device}")
            _truncate_log(self.out / "metrics.jsonl", step)
        if self.total < FEW_STEPS and step < self.total and writer:
            passes = self.total * cfg.batch_size / self.source.n_rows
            log.warning(
                f"{self.out}: only {self.total} optimiser steps (batch size {cfg.batch_size}, {passes:.3g} x "
                f"{self.source.n_rows:,} rows); an SAE needs a few hundred steps or more to be usable: raise --steps "
                f"or --epochs, or lower --batch-size (runs under {FEW_STEPS} steps get this warning)"
            )
        sinks = _open_sinks(cfg, self.out, settings) if step < self.total and writer else []
        end = self.total if stop_at is None else min(self.total, max(stop_at, step))

        # a source whose reads are collectives or CPU model forwards (`train --model`) is read in
        # this thread (see ModelRows.reads_in_caller); a cache is prefetched in the background
        prefetch = not getattr(self.source, "reads_in_caller", False)
        stream = ShuffledBatches(
            self.source, cfg.batch_size, seed=cfg.seed, buffer_bytes=cfg.buffer_mb << 20, prefetch=prefetch
        )
        batches = self._device_batches(stream.iter_from(position), step)
        bar = progress(total=self.total, initial=step, desc="train", unit="step", disable=None if writer else True)
        last = self._logged_metrics(step)
        t0 = time.time()
        try:
            while step < end:
                batch, x_full, labels = next(batches)
                inputs = {g: _columns(x_full, cols, scales[g]) for g, cols in dict(zip(self.groups, self.cols)).items()}
                lr = cfg.lr_at(step, self.total, members[0].cfg.n_latents)  # logged: the first SAE's
                for name, m in zip(self.names, members):
                    x = inputs[m.group]
                    try:
                        train_step(m, x, labels, cfg.lr_at(step, self.total, m.cfg.n_latents), cfg, self.device)
                    except NonFiniteLoss as e:
                        raise SparsesteerError(self._non_finite(e, name, step + 1, x, batch.rows)) from None
                step += 1
                position += cfg.batch_size
                if step % cfg.log_every == 0 or step == self.total:
                    last = self._log(members, step, position, lr, sinks, time.time() - t0)
                    bar.set_postfix(_postfix(last[0]), refresh=False)
                    if on_log is not None:
                        on_log(step, [m.sae for m in members])
                bar.update(1)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step in (self.total, end):
                    if writer:
                        self._save_state(state_dir, members, step, position, scales)
        finally:
            bar.close()
            for s in sinks:
                s.close()
        if step < self.total:  # stopped at stop_at: the checkpoint holds the run
            distributed.barrier()
            return TrainResult(self.paths(), [], last, step)
        result = self._finish(members, last, step, time.time() - t0)
        if writer and not keep_state:
            _verify_saved(result, state_dir)
            _remove_state(state_dir)
        distributed.barrier()  # the SAEs are on disk before any rank returns
        return result

    def _device_batches(self, batches: Iterator[Batch], step: int) -> Iterator[tuple[Batch, torch.Tensor, Any]]:
        """Global batches -> (this rank's slice, x and labels on the device). The finiteness check
        runs on the whole global batch, so every rank stops at the same step with the same message.
        On CUDA the slice is pinned and its copy queued (non_blocking) one batch ahead, so it overlaps
        the step; window reads already run in a background thread (`ShuffledBatches`)."""
        per = self.cfg.batch_size // self.world.size
        lo, hi = self.world.rank * per, (self.world.rank + 1) * per
        cuda = self.device.type == "cuda"

        def prepare(batch: Batch, step: int) -> Any:
            try:
                _check_finite(batch.x, f"batch {step}", batch.rows, self.source)
            except SparsesteerError as e:
                return e  # raised when this batch's turn comes
            x = batch.x[lo:hi] if self.world.size > 1 else batch.x
            labels = batch.labels[lo:hi] if batch.labels is not None and self.world.size > 1 else batch.labels
            if cuda:
                x = x.pin_memory()
                labels = labels.pin_memory() if labels is not None else None
            on_device = (
                x.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True) if labels is not None else None,
            )
            return Batch(x, labels, batch.rows[lo:hi] if self.world.size > 1 else batch.rows), *on_device

        ahead: Any = prepare(next(batches), step) if cuda else None  # CUDA: one batch queued ahead
        while True:
            current = ahead if cuda else prepare(next(batches), step)
            step += 1
            if cuda:
                ahead = prepare(next(batches), step)
            if isinstance(current, Exception):
                raise current
            yield current

    def _non_finite(self, e: NonFiniteLoss, name: str, step: int, x: torch.Tensor, rows: np.ndarray) -> str:
        """The message for a NaN/Inf training metric: the step, the SAE, and what caused it."""
        who = f" of SAE {name}" if len(self.names) > 1 else ""
        head = f"training stopped at step {step}: {e.metric}{who} is {e.value}"
        with torch.no_grad():
            overflow = ~torch.isfinite(x.float().pow(2).sum(1))
            if bool(overflow.any()):
                r = int(overflow.nonzero()[0, 0])
                return (
                    f"{head}: input row {r} of the batch ({describe_row(self.source, int(rows[r]))}) is too large for "
                    "float32 arithmetic (its squared norm overflows); clean or rescale the activations"
                )
            if float(total_variance(x.float())) == 0:
                return f"{head}: every row of this batch is the same (zero variance), so the FVU is undefined"
        return f"{head} although its inputs are finite: the SAE diverged; lower --lr, or keep --grad-clip on"

    def _logged_metrics(self, step: int) -> list[dict[str, float]]:
        """Each SAE's metrics logged at `step` in metrics.jsonl (empty when none were)."""
        path = self.out / "metrics.jsonl"
        if step and path.is_file():
            for line in reversed(path.read_text().splitlines()):
                record = json.loads(line) if line.strip() else {}
                if record.get("step") == step:
                    return [dict(record.get(name, {})) for name in self.names]
        return [{} for _ in self.names]

    def _finished(self, step: int, *, keep_state: bool) -> TrainResult:
        """The result of a run that had already finished, read back from its outputs; its checkpoint
        (left by a run stopped between saving the SAEs and deleting it) goes unless `keep_state`."""
        paths = self.paths()
        saes = [SparseAutoencoder.load(p) for p in paths]
        metrics = [dict(sae.metadata.get("training", {}).get("final_metrics", {})) for sae in saes]
        if not keep_state and self.world.rank == 0:
            _remove_state(self.out / "state")
        return TrainResult(paths, saes, metrics, step)

    # ------------------------------------------------------------------ logging
    def _log(
        self, members: list[Member], step: int, position: int, lr: float, sinks: list, elapsed: float
    ) -> list[dict[str, float]]:
        rows = []
        record: dict[str, Any] = {"step": step, "samples": position, "lr": lr, "elapsed_s": round(elapsed, 3)}
        if self.world.size > 1:
            record["ranks"] = self.world.size
        for name, m in zip(self.names, members):
            metrics = {k: v / max(m.sum_steps, 1) for k, v in m.sums.items()}
            metrics.update(firing_metrics(m.since_fired, position, m.dead_after))
            if m.window_samples:
                freq = m.fire_count.float() / m.window_samples
                metrics["dense_frac"] = float((freq > m.cfg.dense_threshold).float().mean())
            rows.append(metrics)
            record[name] = metrics
            m.sums, m.sum_steps, m.window_samples = {}, 0, 0
            m.fire_count.zero_()
        if self.world.rank != 0:
            return rows
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for s in sinks:
            s.log(record, step)
        return rows

    # ------------------------------------------------------------------ checkpoints
    def _save_state(
        self, state_dir: Path, members: list[Member], step: int, position: int, scales: dict[str | None, float]
    ) -> None:
        """Write state/<step>/ completely, then remove older ones: the newest complete directory
        (with its state.json written last) is always a valid checkpoint."""
        target = state_dir / f"{step:09d}"
        tmp = state_dir / f".{step:09d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors: dict[str, torch.Tensor] = {}
        for i, m in enumerate(members):
            tensors.update(m.tensors(f"m{i}"))
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        with io.atomic_path(tmp / "state.safetensors") as file:  # the umask's mode, like every output
            save_file(tensors, str(file))
        meta = {
            "step": step,
            "position": position,
            **({"scale": scales[None]} if None in scales else {"scales": scales}),
            "settings": self._settings(),
            "python_random": _py_random_state(),
            "state_sha256": io.sha256_file(tmp / "state.safetensors"),
        }
        io.write_json(tmp / "state.json", meta)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        for old in state_dir.iterdir():
            if old != target and old.name[0].isdigit():
                shutil.rmtree(old, ignore_errors=True)

    def _load_state(
        self, path: Path, members: list[Member], settings: dict[str, Any]
    ) -> tuple[int, int, dict[str | None, float]]:
        meta = io.read_json(path / "state.json")
        _check_same_settings(self.out, meta["settings"], settings)
        file = path / "state.safetensors"
        if io.sha256_file(file) != meta["state_sha256"]:
            raise SparsesteerError(f"{file}: checksum mismatch, the checkpoint is corrupted")
        tensors = load_file(str(file))
        for i, m in enumerate(members):
            m.load_tensors(f"m{i}", {k: v.to(self.device) for k, v in tensors.items() if k.startswith(f"m{i}.")})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        random.setstate(_py_random_from_json(meta["python_random"]))
        scales: dict[str | None, float] = (
            {None: float(meta["scale"])} if "scale" in meta else {g: float(v) for g, v in meta["scales"].items()}
        )
        return int(meta["step"]), int(meta["position"]), scales

    # ------------------------------------------------------------------ output
    def _finish(self, members: list[Member], last: list[dict[str, float]], step: int, elapsed: float) -> TrainResult:
        paths, saes = [], []
        for path, m, metrics in zip(self.paths(), members, last):
            sae = build(m.cfg, device="cpu")
            sae.load_state_dict({k: v.detach().cpu() for k, v in m.sae.state_dict().items()})
            scale = self.scales[m.group]
            if scale != 1.0:
                sae.fold_input_scale(scale)
            sae.metadata = {
                **self.metadata,
                **({"hook": m.group} if m.group is not None else {}),
                "input_normalisation": {
                    "kind": "fixed_mean_norm" if self.cfg.normalize_input else "none",
                    "scale": scale,
                    "folded": True,
                },
                "training": {
                    "steps": step,
                    "samples": step * self.cfg.batch_size,
                    "batch_size": self.cfg.batch_size,
                    "lr": self.cfg.peak_lr(m.cfg.n_latents),
                    "precision": precision.describe(self.bf16, self.device),
                    "seed": self.cfg.seed,
                    "final_metrics": metrics,
                    "source": self.source.describe(),
                    "train_config": to_dict(self.cfg),
                    "seconds": round(elapsed, 1),
                },
            }
            if self.world.rank == 0:
                sae.save(path)
            sae.eval()
            paths.append(path)
            saes.append(sae)
        return TrainResult(paths, saes, last, step)


def _check_same_settings(out: Path, saved: dict[str, Any], settings: dict[str, Any]) -> None:
    """A run is resumed (or a finished one read back) only with the settings it was started with."""
    for key in ("train", "saes", "source", "hooks"):
        diff = first_difference(saved.get(key), settings.get(key))
        if diff is not None:
            raise SparsesteerError(
                f"cannot resume {out}: its {key} settings differ from this run's ({diff}); "
                "rerun with the original settings, choose another --out, or pass --overwrite to start over"
            )


def _verify_saved(result: TrainResult, state_dir: Path) -> None:
    """Read every saved SAE back (its checksum checked) and compare it with the trained one: the
    checkpoint, the only other copy of the weights, is deleted next."""
    for path, sae in zip(result.paths, result.saes):
        saved = SparseAutoencoder.load(path).state_dict()
        for key, value in sae.state_dict().items():
            if key not in saved or not torch.equal(saved[key].cpu(), value.cpu()):
                raise SparsesteerError(
                    f"{path}: the saved SAE does not read back as trained ({key}): its checkpoint stays in "
                    f"{state_dir}; check the disk, then pass --overwrite to train again"
                )


def _remove_state(state_dir: Path) -> None:
    """Delete a finished run's checkpoints: each is first renamed out of the names `_latest_state`
    reads (one atomic step), so a deletion cut short never leaves a half checkpoint that looks valid."""
    if not state_dir.is_dir():
        return
    for p in list(state_dir.iterdir()):
        if p.name[0].isdigit():
            p = p.rename(state_dir / f".{p.name}.removed")
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    state_dir.rmdir()


def firing_metrics(since_fired: torch.Tensor, samples: int, dead_after: int) -> dict[str, float]:
    """What fired, from each latent's count of samples since it last fired, after `samples` training
    samples: `never_fired_frac` (silent over the whole run), `dead_frac` (silent over the last
    `dead_window` samples: `dead_after`, or the whole run while it is shorter, so a short run does
    not report 0 by construction) and `alive_frac` = 1 - dead_frac."""
    window = min(dead_after, samples)
    never = float((since_fired >= samples).float().mean()) if samples else 0.0
    dead = float((since_fired >= window).float().mean()) if window else 0.0
    return {"never_fired_frac": never, "dead_frac": dead, "dead_window": window, "alive_frac": 1.0 - dead}


def summary(metrics: dict[str, float]) -> str:
    """The line `sparsesteer train` prints for one SAE: FVU, L0 and what fired, with the windows stated."""
    parts = [f"{k}={metrics[k]:.4g}" for k in ("fvu", "l0") if k in metrics]
    if "never_fired_frac" in metrics:
        parts.append(f"never_fired_frac={metrics['never_fired_frac']:.4g} (over the whole run)")
    if "dead_window" in metrics:
        parts.append(
            f"dead_frac={metrics['dead_frac']:.4g} (no firing in the last {int(metrics['dead_window']):,} samples)"
        )
    elif "dead_frac" in metrics:
        parts.append(f"dead_frac={metrics['dead_frac']:.4g}")
    return ", ".join(parts)


def _columns(x: torch.Tensor, cols: tuple[int, int] | None, scale: float) -> torch.Tensor:
    """One column group of a batch (all of it for None), times the group's input scale."""
    if cols is not None:
        x = x[:, cols[0] : cols[1]].contiguous()
    return x * scale if scale != 1.0 else x


def train_step(
    m: Member, x: torch.Tensor, labels: torch.Tensor | None, lr: float, cfg: TrainConfig, device: torch.device
) -> None:
    """One optimiser step of one SAE on a batch (the inner loop of `Trainer.fit`)."""
    sae, c = m.sae, m.cfg
    dead = m.since_fired >= m.dead_after if c.uses_k else None
    with precision.autocast(precision.resolve_bf16(cfg.bf16, device), device):
        out = sae(x, dead_mask=dead)
    loss = out.loss
    terms: list[tuple[str, torch.Tensor]] = []
    for module in m.objectives:
        objective = cast(Objective, module)  # ModuleList iterates as plain Modules
        term = objective.loss(out, labels, x)
        loss = loss + objective.weight * term
        terms.append((objective.name, term))
    ranks = distributed.world().size
    share = _variance_share(x) if ranks > 1 else 1.0
    if ranks > 1:  # this rank's part of the global batch's loss (the ranks' parts sum to it)
        loss = (out.loss - out.sparsity_loss) * share + out.sparsity_loss / ranks
    loss.backward()
    if ranks > 1:
        grads = []
        for p in sae.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        distributed.all_reduce_sum(grads)
    if c.normalize_decoder:
        sae.remove_gradient_parallel_to_decoder_directions()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
    for group in m.opt.param_groups:
        group["lr"] = lr
    m.opt.step()
    m.opt.zero_grad(set_to_none=True)
    if c.normalize_decoder:
        sae.set_decoder_norm_to_unit_norm()
    with torch.no_grad():
        B = x.shape[0] * ranks
        fire_counts = out.fire_counts
        stats = {
            "loss": loss,
            "fvu": out.fvu * share,
            "l0": out.l0 / ranks,
            "aux_loss": out.aux_loss * share,
            "sparsity_loss": out.sparsity_loss / ranks,
        }
        if c.matryoshka:
            stats["matryoshka_fvu"] = out.matryoshka_fvu * share
        stats.update(terms)
        if ranks > 1:  # global firing counts and metrics: sums of the ranks' shares
            fire_counts = fire_counts.clone()
            packed = torch.stack([v.detach().float().reshape(()) for v in stats.values()])
            distributed.all_reduce_sum([fire_counts, packed])
            stats = dict(zip(stats, packed.unbind()))
        m.since_fired += B
        m.since_fired[fire_counts > 0] = 0
        m.fire_count += fire_counts
        m.window_samples += B
        values = {k: float(v) for k, v in stats.items()}
        for k, v in values.items():
            if not math.isfinite(v):
                raise NonFiniteLoss(k, v)
        for k, v in values.items():
            m.sums[k] = m.sums.get(k, 0.0) + v
        m.sum_steps += 1


def _variance_share(x: torch.Tensor) -> torch.Tensor:
    """total_variance(this rank's rows) / total_variance(the global batch's rows): FVU-type terms
    divide by the batch's total variance, so a rank's FVU times its share is its part of the global
    FVU. The global variance comes from summed float64 moments (sum x, sum ||x||^2, rows)."""
    with torch.no_grad():
        x64 = x.detach().double()
        moments = torch.cat([x64.sum(0), (x64 * x64).sum().reshape(1), x64.new_tensor([x.shape[0]])])
        distributed.all_reduce_sum([moments])
        s1, s2, n = moments[:-2], moments[-2], moments[-1]
        global_tv = (s2 - s1.dot(s1) / n).clamp_min(torch.finfo(torch.float64).tiny)
        return (total_variance(x.detach().float()).double() / global_tv).to(x.dtype)


def _check_data_parallel(cfgs: Sequence[SAEConfig], cfg: TrainConfig, ranks: int) -> None:
    """What data-parallel training reproduces exactly: per-row selections (topk, relu) without
    per-batch state; a global batch that splits evenly over the ranks."""
    if cfg.batch_size % ranks:
        raise SparsesteerError(
            f"--batch-size {cfg.batch_size} (the global batch) must split evenly over the {ranks} ranks"
        )
    for c in cfgs:
        if c.arch == "batchtopk":
            raise SparsesteerError(
                "batchtopk selects the top k x B codes of the whole batch, which no rank sees: train it in one "
                "process (or use arch topk across ranks)"
            )
        if c.pass_weight:
            raise SparsesteerError(
                "PASS keeps per-class prototypes updated from each batch; it is not data-parallel yet: train it "
                "in one process"
            )


class NonFiniteLoss(Exception):
    """A training metric of one step is NaN or Inf (`Trainer.fit` turns it into a SparsesteerError
    naming the step and the cause)."""

    def __init__(self, metric: str, value: float):
        super().__init__(f"{metric} is {value}")
        self.metric = metric
        self.value = value


def train(
    activations: RowSource | str | Path | torch.Tensor | np.ndarray,
    saes: SAEConfig | Sequence[SAEConfig],
    cfg: TrainConfig = TrainConfig(),
    out: str | Path = "runs/sae",
    *,
    resume: bool = False,
    overwrite: bool = False,
    keep_state: bool = False,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train SAE(s) on activations (tensor, .npy file or cache directory); see `Trainer`."""
    return Trainer(activations, saes, cfg, out, metadata=metadata).fit(
        resume=resume, overwrite=overwrite, keep_state=keep_state
    )


# ---------------------------------------------------------------------- helpers
def check_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> tuple[int, Path] | None:
    """Refuse a run directory that would lose work or cannot be written, before any work starts;
    return its latest checkpoint (step, path), if any.

    The output policy of every command (`utils.outputs.claim`): a new run needs `out` to be new or
    empty, or `overwrite` (which replaces its contents). A training run there is continued only with
    `resume`: from its latest checkpoint, or from step 0 when it stopped before its first one (its
    train_config.json is there, nothing else worth keeping); a finished one is only read back.
    """
    out = Path(out)
    if resume and overwrite:
        raise SparsesteerError("--resume continues the run in --out and --overwrite replaces it: give only one")
    io.check_writable_dir(out)
    latest = _latest_state(out / "state")
    if resume:
        if latest is None and not _stopped_early(out) and not _finished_run(out):
            raise SparsesteerError(
                f"--resume: {out} holds no training run to resume (no checkpoint under {out / 'state'}); "
                "check --out, or leave out --resume to start a run"
            )
        return latest
    outputs.claim(out, overwrite=overwrite, own=TRAINING_RUN, clear=False)  # fit() clears on rank 0
    return None


TRAIN_CONFIG = "train_config.json"
"""Written first by every run (`Trainer.fit`), before its first checkpoint."""


def _stopped_early(out: Path) -> bool:
    """A run that stopped before its first checkpoint: its train_config.json, no checkpoint and no
    saved SAE (a finished run, whose checkpoint is deleted, is not one: restarting it would lose the SAE)."""
    if not (out / TRAIN_CONFIG).is_file() or _latest_state(out / "state") is not None:
        return False
    return not _saved_sae(out)


def _finished_run(out: Path) -> bool:
    """A finished run whose checkpoint was deleted (the default): its train_config.json and saved
    SAE(s), no checkpoint. (The checkpoint goes only after every SAE of the run is saved.)"""
    return (out / TRAIN_CONFIG).is_file() and _latest_state(out / "state") is None and _saved_sae(out)


def _saved_sae(out: Path) -> bool:
    return any((p / "cfg.json").is_file() for p in (out, *(q for q in out.iterdir() if q.is_dir())))


def _training_run_refusal(out: Path) -> str:
    latest = _latest_state(out / "state")
    if latest is None and _finished_run(out):
        return (
            f"{out} already holds a finished training run (its SAE is saved; nothing to resume): choose another "
            "--out, or pass --overwrite to replace it"
        )
    if latest is None:
        return (
            f"{out} holds a training run that stopped before its first checkpoint: pass --resume to run it again "
            "from step 0, choose another --out, or pass --overwrite to replace it"
        )
    return (
        f"{out} already holds a training run (checkpoint at step {latest[0]}): pass --resume to continue it, "
        "choose another --out, or pass --overwrite to replace it"
    )


TRAINING_RUN = outputs.OwnRun(
    "training run to resume",
    holds=lambda out: _latest_state(out / "state") is not None or _stopped_early(out) or _finished_run(out),
    refusal=_training_run_refusal,
)


def _check_finite(
    x: torch.Tensor, what: str, rows: np.ndarray | None, source: RowSource | None = None, row: int | None = None
) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        r = int(bad.any(1).nonzero()[0, 0])
        if rows is not None:
            row = int(rows[r])
        src = ""
        if row is not None:
            src = f" ({describe_row(source, row)})" if source is not None else f" (source row {row})"
        raise SparsesteerError(f"NaN or Inf in {what}, row {r}{src}: clean the activations before training")


def _first_bad_row(source: RowSource, chunk: int = 65536) -> int | None:
    """The first source row holding a NaN or Inf (a scan that stops there), or None."""
    for start in range(0, source.n_rows, chunk):
        x = source.read(start, min(source.n_rows, start + chunk)).to(torch.float32)
        bad = ~torch.isfinite(x).all(1)
        if bool(bad.any()):
            return start + int(bad.nonzero()[0, 0])
    return None


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    keys = ("loss", "fvu", "l0", "dead_frac")
    return {k: f"{metrics[k]:.4g}" for k in keys if k in metrics}


def _latest_state(state_dir: Path) -> tuple[int, Path] | None:
    if not state_dir.is_dir():
        return None
    done = [p for p in state_dir.iterdir() if p.name[0].isdigit() and (p / "state.json").is_file()]
    if not done:
        return None
    best = max(done, key=lambda p: int(p.name))
    return int(best.name), best


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    io.write_text(path, "".join(line + "\n" for line in keep))


def _py_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_random_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


class _Sink:
    def log(self, record: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


def _open_sinks(cfg: TrainConfig, out: Path, settings: dict[str, Any]) -> list[_Sink]:
    sinks: list[_Sink] = []
    flat = lambda r: {  # noqa: E731
        (f"{k}/{kk}" if isinstance(v, dict) else k): vv
        for k, v in r.items()
        for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])
    }
    if "wandb" in cfg.log_to:
        try:
            import wandb
        except ImportError:
            raise SparsesteerError("log_to=wandb needs Weights & Biases: pip install wandb") from None
        run = wandb.init(project=cfg.wandb_project, dir=str(out), config=settings, resume="allow")

        class W(_Sink):
            def log(self, record, step):
                run.log(flat(record), step=step)

            def close(self):
                run.finish()

        sinks.append(W())
    if "tensorboard" in cfg.log_to:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SparsesteerError("log_to=tensorboard needs TensorBoard: pip install tensorboard") from None
        writer = SummaryWriter(str(out / "tensorboard"))

        class T(_Sink):
            def log(self, record, step):
                for k, v in flat(record).items():
                    if isinstance(v, (int, float)):
                        writer.add_scalar(k, v, step)

            def close(self):
                writer.close()

        sinks.append(T())
    return sinks


__all__ = [
    "Member",
    "NonFiniteLoss",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "check_run_dir",
    "firing_metrics",
    "summary",
    "train",
]
