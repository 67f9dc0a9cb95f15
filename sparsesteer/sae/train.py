"""Training: one pass over the data trains a sweep of SAEs on the same batches.

Each SAE has its own Adam optimiser, dead-latent counters and (for PASS) class prototypes; the
batches, the learning-rate schedule and the input normalisation are shared. The run directory:

    OUT/cfg.json + sae.safetensors      the trained SAE (one config), or OUT/<name>/... (a sweep)
    OUT/metrics.jsonl                   one JSON line per logged step
    OUT/train_config.json               the run's settings
    OUT/state/<step>/                   the latest checkpoint (safetensors + JSON), see `_save_state`

A checkpoint holds weights, optimiser moments, the step, the stream position, dead/dense
counters, prototypes and RNG states, so `resume=True` continues exactly: on CPU a run killed with
SIGKILL and resumed ends with bit-identical weights to an uninterrupted one (tested).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..activations.loader import RowSource, ShuffledBatches, open_source, sample_rows
from ..utils import io
from ..utils.config import to_dict
from ..utils.device import resolve_device
from ..utils.errors import SparsesteerError
from ..utils.progress import progress
from . import build
from .base import SparseAutoencoder
from .config import SAEConfig, TrainConfig
from .init import geometric_median


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
    """One SAE of the sweep with its optimiser and counters."""

    def __init__(self, cfg: SAEConfig, device: torch.device, train: TrainConfig, n_classes: int):
        self.cfg = cfg
        self.sae = build(cfg, device=device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=train.lr, betas=train.adam_betas, **_adam_impl(device))
        n = cfg.n_latents
        self.since_fired = torch.zeros(n, dtype=torch.long, device=device)
        self.fire_count = torch.zeros(n, dtype=torch.long, device=device)
        self.window_samples = 0
        self.prototypes = torch.zeros(n_classes, n, device=device) if cfg.pass_weight else None
        self.proto_seen = torch.zeros(n_classes, dtype=torch.bool, device=device) if cfg.pass_weight else None
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
        if self.prototypes is not None:
            out[f"{prefix}.prototypes"] = self.prototypes
            out[f"{prefix}.proto_seen"] = self.proto_seen
        return out

    def load_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        def get(key: str) -> torch.Tensor:
            if key not in tensors:
                raise SparsesteerError(f"checkpoint is missing {key}")
            return tensors[key]

        with torch.no_grad():
            for k, v in self.sae.state_dict().items():
                v.copy_(get(f"{prefix}.sae.{k}"))
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
        if self.prototypes is not None:
            self.prototypes.copy_(get(f"{prefix}.prototypes"))
            self.proto_seen.copy_(get(f"{prefix}.proto_seen"))


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
        self.sae_cfgs = [c.resolved(self.source.d) for c in cfgs]
        self.names = _unique_names(self.sae_cfgs)
        self.out = Path(out)
        self.metadata = dict(metadata or {})
        self.device = resolve_device(cfg.device)
        self.total = cfg.total_steps(self.source.n_rows)
        self.n_classes = 0
        if any(c.pass_weight for c in self.sae_cfgs):
            self.n_classes = self._count_classes()

    # ------------------------------------------------------------------ setup
    def _count_classes(self) -> int:
        labels = self.source.labels(0, self.source.n_rows)
        if labels is None:
            raise SparsesteerError(
                "PASS (--pass-weight) needs class labels, but these activations have none: cache a labelled "
                "dataset split (labels.npy in the cache) or pass labels with the array"
            )
        known = labels[labels >= 0]
        if known.size == 0:
            raise SparsesteerError("PASS (--pass-weight) needs class labels, but every row is unlabeled (-1)")
        return int(known.max()) + 1

    def _settings(self) -> dict[str, Any]:
        return {
            "train": to_dict(self.cfg),
            "saes": [to_dict(c) for c in self.sae_cfgs],
            "names": self.names,
            "source": self.source.describe(),
            "total_steps": self.total,
        }

    def _init_stats(self) -> tuple[float, torch.Tensor]:
        """(input scale, initial b_dec) from a sample of the data."""
        sample = sample_rows(self.source, self.cfg.init_samples, seed=self.cfg.seed)
        _check_finite(sample, "initialisation sample", None)
        scale = 1.0
        if self.cfg.normalize_input:
            mean_norm = float(sample.norm(dim=1).mean())
            if mean_norm == 0:
                raise SparsesteerError("cannot normalise inputs: the activations are all zero")
            scale = math.sqrt(self.source.d) / mean_norm
        sample = sample * scale
        if self.cfg.b_dec_init == "geometric_median":
            b_dec = geometric_median(sample)
        elif self.cfg.b_dec_init == "mean":
            b_dec = sample.mean(0)
        else:
            b_dec = torch.zeros(self.source.d)
        return scale, b_dec

    # ------------------------------------------------------------------ run
    def fit(
        self, *, resume: bool = False, on_log: Callable[[int, list[SparseAutoencoder]], None] | None = None
    ) -> TrainResult:
        """Run (or, with `resume`, continue) training. `on_log(step, saes)` is called at every
        logged step with the SAEs in their training state (inputs scaled by `self.scale`)."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        state_dir = self.out / "state"
        settings = self._settings()
        latest = _latest_state(state_dir)
        if latest is not None and not resume:
            raise SparsesteerError(
                f"{self.out} already holds a training run (checkpoint at step {latest[0]}): pass --resume to continue it, "
                "or choose another --out"
            )
        if resume and latest is None and (self.out / "metrics.jsonl").exists():
            raise SparsesteerError(f"{self.out}: --resume given but no checkpoint was found under {state_dir}")
        self.out.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        members = [Member(c, self.device, cfg, max(self.n_classes, 1)) for c in self.sae_cfgs]
        step, position = 0, 0
        if resume and latest is not None:
            step, position, scale = self._load_state(latest[1], members, settings)
        else:
            scale, b_dec = self._init_stats()
            for m in members:
                with torch.no_grad():
                    m.sae.b_dec.copy_(b_dec)
            io.write_json(self.out / "train_config.json", settings)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.scale = scale
        _truncate_log(self.out / "metrics.jsonl", step)
        sinks = _open_sinks(cfg, self.out, settings) if step < self.total else []

        stream = ShuffledBatches(self.source, cfg.batch_size, seed=cfg.seed, buffer_bytes=cfg.buffer_mb << 20)
        batches = stream.iter_from(position)
        bar = progress(total=self.total, initial=step, desc="train", unit="step")
        last: list[dict[str, float]] = [{} for _ in members]
        t0 = time.time()
        try:
            while step < self.total:
                batch = next(batches)
                x = batch.x.to(self.device, non_blocking=True)
                _check_finite(x, f"batch {step}", batch.rows)
                if scale != 1.0:
                    x = x * scale
                labels = batch.labels.to(self.device) if batch.labels is not None else None
                lr = cfg.lr_at(step, self.total)
                for m in members:
                    train_step(m, x, labels, lr, cfg, self.device)
                step += 1
                position += cfg.batch_size
                if step % cfg.log_every == 0 or step == self.total:
                    last = self._log(members, step, position, lr, sinks, time.time() - t0)
                    bar.set_postfix(_postfix(last[0]), refresh=False)
                    if on_log is not None:
                        on_log(step, [m.sae for m in members])
                bar.update(1)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == self.total:
                    self._save_state(state_dir, members, step, position, scale)
        finally:
            bar.close()
            for s in sinks:
                s.close()
        return self._finish(members, last, step, time.time() - t0)

    # ------------------------------------------------------------------ logging
    def _log(
        self, members: list[Member], step: int, position: int, lr: float, sinks: list, elapsed: float
    ) -> list[dict[str, float]]:
        rows = []
        record: dict[str, Any] = {"step": step, "samples": position, "lr": lr, "elapsed_s": round(elapsed, 3)}
        for name, m in zip(self.names, members):
            metrics = {k: v / max(m.sum_steps, 1) for k, v in m.sums.items()}
            metrics["dead_frac"] = float((m.since_fired >= m.cfg.dead_after).float().mean())
            if m.window_samples:
                freq = m.fire_count.float() / m.window_samples
                metrics["dense_frac"] = float((freq > m.cfg.dense_threshold).float().mean())
            metrics["alive_frac"] = 1.0 - metrics["dead_frac"]
            rows.append(metrics)
            record[name] = metrics
            m.sums, m.sum_steps, m.window_samples = {}, 0, 0
            m.fire_count.zero_()
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for s in sinks:
            s.log(record, step)
        return rows

    # ------------------------------------------------------------------ checkpoints
    def _save_state(self, state_dir: Path, members: list[Member], step: int, position: int, scale: float) -> None:
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
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {
            "step": step,
            "position": position,
            "scale": scale,
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

    def _load_state(self, path: Path, members: list[Member], settings: dict[str, Any]) -> tuple[int, int, float]:
        meta = io.read_json(path / "state.json")
        saved = meta["settings"]
        for key in ("train", "saes", "source"):
            if json.dumps(saved[key], sort_keys=True) != json.dumps(settings[key], sort_keys=True):
                diff = _first_difference(saved[key], settings[key])
                raise SparsesteerError(
                    f"cannot resume {self.out}: its {key} settings differ from this run's ({diff}); "
                    "rerun with the original settings or choose another --out"
                )
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
        return int(meta["step"]), int(meta["position"]), float(meta["scale"])

    # ------------------------------------------------------------------ output
    def _finish(self, members: list[Member], last: list[dict[str, float]], step: int, elapsed: float) -> TrainResult:
        paths, saes = [], []
        single = len(members) == 1
        for name, m, metrics in zip(self.names, members, last):
            sae = build(m.cfg, device="cpu")
            sae.load_state_dict({k: v.detach().cpu() for k, v in m.sae.state_dict().items()})
            if self.scale != 1.0:
                sae.fold_input_scale(self.scale)
            sae.metadata = {
                **self.metadata,
                "input_normalisation": {
                    "kind": "fixed_mean_norm" if self.cfg.normalize_input else "none",
                    "scale": self.scale,
                    "folded": True,
                },
                "training": {
                    "steps": step,
                    "samples": step * self.cfg.batch_size,
                    "batch_size": self.cfg.batch_size,
                    "lr": self.cfg.lr,
                    "seed": self.cfg.seed,
                    "final_metrics": metrics,
                    "source": self.source.describe(),
                    "train_config": to_dict(self.cfg),
                    "seconds": round(elapsed, 1),
                },
            }
            path = self.out if single else self.out / name
            sae.save(path)
            sae.eval()
            paths.append(path)
            saes.append(sae)
        return TrainResult(paths, saes, last, step)


def train_step(
    m: Member, x: torch.Tensor, labels: torch.Tensor | None, lr: float, cfg: TrainConfig, device: torch.device
) -> None:
    """One optimiser step of one SAE on a batch (the inner loop of `Trainer.fit`)."""
    sae, c = m.sae, m.cfg
    dead = m.since_fired >= c.dead_after if c.uses_k else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"):
        out = sae(x, dead_mask=dead)
    loss = out.loss
    pass_loss = None
    if c.pass_weight:
        pass_loss = _pass_loss(m, out, labels, x)
        loss = loss + c.pass_weight * pass_loss
    loss.backward()
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
        B = x.shape[0]
        m.since_fired += B
        m.since_fired[out.fire_counts > 0] = 0
        m.fire_count += out.fire_counts
        m.window_samples += B
        stats = {
            "loss": loss,
            "fvu": out.fvu,
            "l0": out.l0,
            "aux_loss": out.aux_loss,
            "sparsity_loss": out.sparsity_loss,
        }
        if c.matryoshka:
            stats["matryoshka_fvu"] = out.matryoshka_fvu
        if pass_loss is not None:
            stats["pass_loss"] = pass_loss
        for k, v in stats.items():
            m.sums[k] = m.sums.get(k, 0.0) + float(v)
        m.sum_steps += 1


def _pass_loss(m: Member, out, labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """PASS prototype alignment; prototypes are a detached per-class EMA of the codes, updated
    with this batch before the loss is taken.

    The paper's objective is ||x - x_hat||^2 + w ||z - zbar||^2; our reconstruction term is the
    FVU, i.e. the squared error divided by the batch's per-sample variance, so the alignment term
    is divided by the same number to keep the paper's ratio between the two.
    """
    from .losses import prototype_alignment, total_variance

    if labels is None:
        raise SparsesteerError("PASS (--pass-weight) needs labels in every batch")
    if out.codes is None:
        raise SparsesteerError("PASS needs a topk or batchtopk SAE")
    known = labels >= 0
    if not bool(known.any()):
        return out.fvu.new_zeros(())
    values, indices, lab = out.codes.values[known], out.codes.indices[known], labels[known]
    with torch.no_grad():
        C, n = m.prototypes.shape
        sums = torch.zeros(C, n, device=values.device, dtype=values.dtype)
        sums.index_put_((lab[:, None].expand_as(indices), indices), values.detach(), accumulate=True)
        counts = torch.bincount(lab, minlength=C).to(values.dtype)
        present = counts > 0
        means = sums[present] / counts[present, None]
        ema = m.cfg.pass_ema
        fresh = ~m.proto_seen[present]
        updated = torch.where(fresh[:, None], means, ema * m.prototypes[present] + (1 - ema) * means)
        m.prototypes[present] = updated
        m.proto_seen |= present
    per_sample_var = total_variance(x) / x.shape[0]
    return prototype_alignment(values, indices, m.prototypes, lab) / per_sample_var.clamp_min(1e-12)


def train(
    activations: RowSource | str | Path | torch.Tensor | np.ndarray,
    saes: SAEConfig | Sequence[SAEConfig],
    cfg: TrainConfig = TrainConfig(),
    out: str | Path = "runs/sae",
    *,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train SAE(s) on activations (tensor, .npy file or cache directory); see `Trainer`."""
    return Trainer(activations, saes, cfg, out, metadata=metadata).fit(resume=resume)


# ---------------------------------------------------------------------- helpers
def _check_finite(x: torch.Tensor, what: str, rows: np.ndarray | None) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        r = int(bad.any(1).nonzero()[0, 0])
        src = f" (source row {int(rows[r])})" if rows is not None else ""
        raise SparsesteerError(f"NaN or Inf in {what}, row {r}{src}: clean the activations before training")


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


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b or json.dumps(a[k], sort_keys=True) != json.dumps(b[k], sort_keys=True):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if json.dumps(x, sort_keys=True) != json.dumps(y, sort_keys=True):
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: {a!r} vs {b!r}"


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


__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]
