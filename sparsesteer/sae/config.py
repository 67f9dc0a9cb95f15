"""What defines one SAE and its objective (`SAEConfig`), and the shared training loop (`TrainConfig`).

No torch here: the CLI builds its --help from these dataclasses without importing it."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from ..utils.errors import SparsesteerError, unknown
from ..utils.options import DeviceOptions

Arch = Literal["topk", "batchtopk", "relu", "jumprelu"]
"""The architectures: the one list. Each is implemented in `sae/<arch>.py` (see `sae.variants()`)."""
ARCHITECTURES: tuple[str, ...] = typing.get_args(Arch)

APPLIES_TO: dict[str, tuple[str, ...]] = {
    "k": ("topk", "batchtopk"),
    "select": ("topk",),
    "l1_coeff": ("relu",),
    "l1_weight_by_decoder_norm": ("relu",),
    "aux_k": ("topk", "batchtopk"),
    "aux_coeff": ("topk", "batchtopk"),
    "matryoshka": ("topk", "batchtopk"),
    "threshold_ema": ("batchtopk",),
    "pass_weight": ("topk", "batchtopk"),
    "pass_ema": ("topk", "batchtopk"),
}
"""SAEConfig fields that only some architectures read (every other field applies to all)."""

FEW_STEPS = 300
"""A training run with fewer optimiser steps than this logs a warning: its SAE is barely trained."""

DEAD_FIRINGS = 1000
"""The default dead window (`SAEConfig.dead_after`), in firings of an average latent: a latent silent
for 1000 x n_latents / k samples fires at most ~1/300 as often as the average one (95%: 3 / 1000).
On benchmarks/planted.py (docs/benchmarks.md) 1000 was the shortest window that did no harm, and with
rare atoms it recovered more of them than no AuxK; 250 x n/k let AuxK pull rarely firing latents onto
the residual, where they died; 4000 x n/k and longer gave the same SAE as no AuxK."""

RELU_L0 = 32
"""The L0 that stands in for k in relu's default dead window (relu fixes no k; the window only sets
what `dead_frac` counts, AuxK being topk/batchtopk only)."""


def default_dead_after(n_latents: int, cfg: SAEConfig) -> int:
    """The default `dead_after` of an SAE of `n_latents` latents: DEAD_FIRINGS x n_latents / k samples."""
    k = cfg.k if cfg.uses_k else RELU_L0
    return max(1, round(DEAD_FIRINGS * n_latents / k))


def _require(ok: bool, name: str, rule: str, value: object) -> None:
    if not ok:
        raise SparsesteerError(f"{name} must be {rule}, got {value!r}")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class SAEConfig:
    """One sparse autoencoder: architecture, size, sparsity rule and the terms of its loss."""

    arch: Arch = "topk"
    """topk: TopK(ReLU(W_enc (x - b_dec) + b_enc)); batchtopk: top k*B over the batch in training,
    a learned threshold at inference; relu: ReLU + L1 penalty; jumprelu: per-latent threshold
    (inference only; for SAEs imported from SAELens)."""
    d_in: int = 0
    """Input width; 0 = take it from the activations."""
    n_latents: int = 0
    """Number of latents; 0 = expansion * d_in."""
    expansion: int = 4
    """Latents per input dimension, used when n_latents is 0."""
    k: int = 32
    """Active latents per sample (topk), or on average per sample (batchtopk)."""
    select: Literal["relu", "abs"] = "relu"
    """topk selection rule: 'relu' keeps the k largest pre-activations and ReLUs them (non-negative
    codes, sparsify's rule); 'abs' keeps the k largest |pre-activations| with their sign."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (gradient component along each row removed before a step,
    rows renormalised after)."""
    l1_coeff: float = 1e-3
    """relu: weight of the L1 penalty mean_b sum_j |f_bj| (times ||W_dec_j|| if weighted), added
    to the FVU loss."""
    l1_weight_by_decoder_norm: bool = False
    """relu: weight each latent's L1 by its decoder row norm (use with normalize_decoder off)."""
    aux_k: int = 0
    """AuxK: dead latents used to model the residual per sample; 0 = d_in // 2 (Gao et al.)."""
    aux_coeff: float = 1 / 32
    """AuxK loss coefficient; 0 disables AuxK."""
    dead_after: int | None = None
    """A latent counts as dead (AuxK trains it, dead_frac counts it) after this many training samples
    without firing; None = 1000 x n_latents / k, the samples in which the average latent fires 1000
    times (relu: 1000 x n_latents / 32); chosen on benchmarks/planted.py (docs/sae.md)."""
    dense_threshold: float = 0.1
    """A latent counts as dense when it fires on more than this fraction of samples."""
    matryoshka: tuple[int, ...] = ()
    """Matryoshka prefix sizes (e.g. 128,512,1024): the loss averages the FVU of each prefix of
    latents and of all latents. topk/batchtopk only."""
    threshold_ema: float = 0.99
    """batchtopk: EMA decay of the inference threshold (mean of the batches' smallest selected
    activation)."""
    pass_weight: float = 0.0
    """PASS prototype alignment: weight of ||z_i - zbar_class(i)||^2 (0 = off; 0.8 in the VS2
    paper). Needs labels in the activations."""
    pass_ema: float = 0.99
    """PASS: EMA decay of the per-class mean codes (detached prototypes)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise unknown("SAE architecture", self.arch, ARCHITECTURES)
        if self.select not in ("relu", "abs"):
            raise unknown("selection rule", self.select, ("relu", "abs"))
        _require(self.d_in >= 0, "d_in", "non-negative (0 = from the activations)", self.d_in)
        _require(self.n_latents >= 0, "n_latents", "non-negative (0 = expansion * d_in)", self.n_latents)
        if self.n_latents == 0:
            _require(self.expansion >= 1, "expansion", ">= 1", self.expansion)
        if self.uses_k and self.k < 1:
            raise SparsesteerError(f"k must be >= 1, got {self.k}")
        if self.n_latents and self.uses_k and self.k >= self.n_latents:
            raise SparsesteerError(f"k must be smaller than n_latents, got k={self.k} >= n_latents={self.n_latents}")
        if self.matryoshka:
            if self.arch not in ("topk", "batchtopk"):
                raise SparsesteerError("matryoshka prefixes need arch topk or batchtopk")
            if list(self.matryoshka) != sorted(set(self.matryoshka)) or self.matryoshka[0] < 1:
                raise SparsesteerError(f"matryoshka prefixes must be increasing positive sizes, got {self.matryoshka}")
            if self.n_latents and self.matryoshka[-1] > self.n_latents:
                raise SparsesteerError(f"matryoshka prefix {self.matryoshka[-1]} exceeds n_latents={self.n_latents}")
        for name in ("threshold_ema", "pass_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SparsesteerError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("pass_weight", "aux_coeff", "l1_coeff"):
            value = getattr(self, name)
            _require(_finite(value) and value >= 0, name, "a non-negative number (loss coefficients)", value)
        _require(self.aux_k >= 0, "aux_k", "non-negative (0 = d_in // 2)", self.aux_k)
        if self.dead_after is not None:
            _require(self.dead_after >= 1, "dead_after", ">= 1 (training samples)", self.dead_after)
        _require(
            0 < self.dense_threshold <= 1, "dense_threshold", "in (0, 1] (a firing frequency)", self.dense_threshold
        )
        if self.pass_weight and not self.applies("pass_weight"):
            raise SparsesteerError(
                f"pass_weight (PASS) needs sparse codes: arch {', '.join(APPLIES_TO['pass_weight'])}, got {self.arch}"
            )

    def applies(self, name: str) -> bool:
        """Whether this config's architecture reads field `name` (see APPLIES_TO)."""
        return self.arch in APPLIES_TO.get(name, ARCHITECTURES)

    @property
    def uses_k(self) -> bool:
        return self.applies("k")

    def resolved(self, d_in: int) -> SAEConfig:
        """This config with d_in and n_latents filled in (checked against the data width)."""
        if self.d_in and self.d_in != d_in:
            raise SparsesteerError(f"SAE config says d_in={self.d_in} but the activations have width {d_in}")
        n = self.n_latents or self.expansion * d_in
        return dataclasses.replace(
            self, d_in=d_in, n_latents=n, dead_after=self.dead_after or default_dead_after(n, self)
        )

    @property
    def name(self) -> str:
        """Short run name for sweeps, e.g. 'topk-k64-n3072'."""
        parts: list[str] = [self.arch]
        if self.uses_k:
            parts.append(f"k{self.k}")
        if self.arch == "relu":
            parts.append(f"l1{self.l1_coeff:g}")
        parts.append(f"n{self.n_latents or str(self.expansion) + 'x'}")
        if self.matryoshka:
            parts.append("mat")
        if self.pass_weight:
            parts.append(f"pass{self.pass_weight:g}")
        return "-".join(parts)


@dataclass(frozen=True)
class TrainConfig(DeviceOptions):
    """The shared training loop."""

    batch_size: int = 1024
    """Samples (activation rows) per step."""
    lr: float | None = None
    """Peak learning rate (Adam); None = from the SAE's width, `default_lr(n_latents)`:
    1e-3 * sqrt(16384 / n_latents) (5.7e-3 at 512 latents, 2.3e-3 at 3,072, 5.8e-4 at 49,152)."""
    warmup_steps: int | None = None
    """Linear warm-up steps; None = 5% of the run."""
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up, down to min_lr_ratio * lr at the last step."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    epochs: float | None = None
    """Passes over the activations (ignored when steps is set); None = as many as min_steps needs, at
    least one."""
    steps: int | None = None
    """Training steps; None = epochs * rows / batch_size, or (epochs unset) the larger of min_steps
    and one pass."""
    min_steps: int = 5000
    """With neither steps nor epochs set: train at least this many steps, passing over a small cache
    several times (5000 steps of 1024 rows is about 100 passes over 50,000 CLS rows)."""
    grad_clip: float = 1.0
    """Clip each SAE's gradient norm to this value; 0 = off."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    seed: int = 0
    """Seed for initialisation and data order."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initial decoder bias: geometric median or mean of a data sample, or zeros."""
    normalize_input: bool = False
    """Scale inputs by a fixed factor so their mean norm is sqrt(d_in); the factor is folded into the
    saved weights, so a saved SAE takes raw activations."""
    init_samples: int = 65536
    """Rows sampled for the initialisation statistics (b_dec, input scale)."""
    bf16: bool | None = None
    """bfloat16 autocast for the encoder matmul (weights, optimiser state, selected codes and loss
    stay float32); None = on where the hardware runs it fast (CUDA with bf16, CPUs with AVX-512 BF16
    or AMX), off elsewhere. The run's log and train_config.json say which precision ran. With
    `train --model`, the model forward too: when True, or by default on CUDA (on CPU the default
    forward stays float32, like a default cache)."""
    tf32: bool = True
    """Allow TF32 matmuls (CUDA only)."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every N steps (and at the end); 0 = only at the end."""
    log_every: int = 20
    """Append metrics to metrics.jsonl every N steps."""
    buffer_mb: int = 512
    """Shuffle buffer: rows held in memory at once (two windows at most, with prefetch)."""
    log_to: tuple[str, ...] = ()
    """Extra metric sinks: wandb, tensorboard (when installed)."""
    wandb_project: str = "sparsesteer"
    """Weights & Biases project (with log_to=wandb)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise SparsesteerError(f"lr must be a positive number, got {self.lr}")
        if self.steps is not None and self.steps < 1:
            raise SparsesteerError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise SparsesteerError(f"epochs must be positive, got {self.epochs}")
        _require(self.min_steps >= 1, "min_steps", ">= 1", self.min_steps)
        if self.warmup_steps is not None:
            _require(
                self.warmup_steps >= 0, "warmup_steps", "non-negative (or unset for 5% of the run)", self.warmup_steps
            )
        if self.decay not in ("cosine", "linear", "constant"):
            raise unknown("learning-rate decay", self.decay, ("cosine", "linear", "constant"))
        _require(
            _finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]", self.min_lr_ratio
        )
        _require(_finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "non-negative (0 = off)", self.grad_clip)
        betas = tuple(self.adam_betas)
        if len(betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in betas):
            raise SparsesteerError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        _require(self.seed >= 0, "seed", "non-negative", self.seed)
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise unknown("b_dec initialisation", self.b_dec_init, ("geometric_median", "mean", "zeros"))
        _require(self.init_samples >= 1, "init_samples", ">= 1", self.init_samples)
        _require(
            self.checkpoint_every >= 0, "checkpoint_every", "non-negative (0 = only at the end)", self.checkpoint_every
        )
        _require(self.log_every >= 1, "log_every", ">= 1", self.log_every)
        _require(self.buffer_mb >= 1, "buffer_mb", ">= 1", self.buffer_mb)
        for sink in self.log_to:
            if sink not in ("wandb", "tensorboard"):
                raise SparsesteerError(f"unknown log sink {sink!r}; valid: wandb, tensorboard")

    def total_steps(self, n_rows: int) -> int:
        """Steps of a run over `n_rows` rows: steps, else epochs * n_rows / batch_size, else the larger
        of min_steps and one pass."""
        if self.steps:
            return self.steps
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_rows / self.batch_size))
        return max(self.min_steps, math.ceil(n_rows / self.batch_size))

    def peak_lr(self, n_latents: int | None = None) -> float:
        """The peak learning rate of an SAE with `n_latents` latents: `lr`, or `default_lr`."""
        if self.lr is not None:
            return self.lr
        if n_latents is None:
            raise SparsesteerError("lr is unset (chosen from the SAE's width): the number of latents is needed")
        return default_lr(n_latents)

    def lr_at(self, step: int, total: int, n_latents: int | None = None) -> float:
        """Learning rate for step `step` (0-based) of `total`: linear warm-up, then decay."""
        lr = self.peak_lr(n_latents)
        warm = self.warmup_steps if self.warmup_steps is not None else max(1, round(0.05 * total))
        if step < warm:
            return lr * (step + 1) / warm
        if self.decay == "constant" or total <= warm:
            return lr
        frac = min(1.0, (step - warm + 1) / (total - warm))
        lo = self.min_lr_ratio
        if self.decay == "linear":
            return lr * (1 - (1 - lo) * frac)
        return lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac)))


def default_lr(n_latents: int) -> float:
    """Default peak Adam learning rate for an SAE of `n_latents` latents: 1e-3 * sqrt(16384 / n).

    Wider SAEs take smaller steps: each latent sees a smaller share of the samples, and Adam's
    step size is per parameter. The 1/sqrt(n) shape is sparsify's rule (2e-4 * sqrt(16384 / n));
    the constant is 5x sparsify's, which on the planted-dictionary benchmark (512 latents)
    recovers the atoms (MMCS >= 0.95) within 4M samples where sparsify's constant reaches about
    0.92 (docs/benchmarks.md)."""
    if n_latents < 1:
        raise SparsesteerError(f"n_latents must be >= 1 for a learning rate, got {n_latents}")
    return 1e-3 * math.sqrt(16384 / n_latents)


@dataclass(frozen=True, kw_only=True)
class TrainData:
    """What `sparsesteer train` reads and where it writes (the SAE and loop settings are SAEConfig
    and TrainConfig)."""

    activations: str | None = None
    """Activation cache directory, or a .npy file [N, d]; or leave it out and give --model (no cache)."""
    hooks: tuple[str, ...] = ()
    """Hook point: with a cache, the one to train on when it holds several (None = its only hook); with
    --model, repeatable: one SAE (per sweep member) per hook, all from the same forward passes."""
    tokens: str | None = None
    """Train on these rows: cls, patch or all; None = every cached row (with --model: required)."""
    model: str | None = None
    """Train straight from this model (hub id or directory) on --dataset/--split, without a cache:
    activations are computed on the fly into the shuffle buffer (docs/scaling.md)."""
    revision: str | None = None
    """--model: hub revision; None = main."""
    dataset: str | None = None
    """--model: the images (a dataset spec as for `sparsesteer cache`)."""
    split: str = "train"
    """--model: dataset split."""
    data_root: str | None = None
    """--model: where built-in datasets live; None = the default data root."""
    limit: int | None = None
    """--model: a class-stratified sample of N images (drawn with seed 0); None = all."""
    image_batch_size: int = 64
    """--model: images per forward pass (a shuffle-buffer chunk is 4 of them)."""
    workers: int | None = None
    """--model: image-decoding processes, 0 = decode in the training process; None = half the CPUs, at most 8."""
    labels: str | None = None
    """Labels .npy [N] for a .npy activations file (PASS needs labels); None = none."""
    verify: bool = True
    """Check the cache shards' checksums as they are read (--no-verify skips it)."""
    allow_incomplete: bool = False
    """Train on a cache whose writing has not finished."""
    out: str
    """Run directory: cfg.json + sae.safetensors (or one folder per sweep member), metrics, checkpoints."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    overwrite: bool = False
    """Replace what --out holds (by default a run starts only in a new or empty directory)."""
    stop_at: int | None = None
    """Checkpoint and stop after this step (a time-boxed slot); --resume continues, with the same or
    another number of torchrun ranks. None = run to the end."""
    keep_state: bool = False
    """Keep the last checkpoint (state/: weights, Adam moments, counters; about 3x the SAE's size) once the
    run has finished, e.g. to inspect the optimiser; by default it is deleted after the SAE is saved and
    read back. A finished run is not continued either way (--resume only reads it back; more steps is a new run)."""

    def __post_init__(self) -> None:
        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        object.__setattr__(self, "hooks", hooks)
        if (self.activations is None) == (self.model is None):
            raise SparsesteerError(
                "give --activations (a cache or .npy file) or --model (train without a cache), not both"
            )
        if self.model is None:
            if len(hooks) > 1:
                raise SparsesteerError(
                    f"--hook given {len(hooks)} times: a cache trains one hook per run (several hooks at once "
                    "need --model)"
                )
            for flag, value in (("--dataset", self.dataset), ("--limit", self.limit), ("--revision", self.revision)):
                if value is not None:
                    raise SparsesteerError(f"{flag} goes with --model; --activations already names the rows")
        else:
            needed: tuple[tuple[str, object], ...] = (
                ("--dataset", self.dataset),
                ("--hook", hooks),
                ("--tokens", self.tokens),
            )
            for flag, given in needed:
                if not given:
                    raise SparsesteerError(f"--model needs {flag} (which images, hook points and token rows)")
        _require(self.image_batch_size >= 1, "image_batch_size", ">= 1", self.image_batch_size)
        if self.stop_at is not None:
            _require(self.stop_at >= 1, "stop_at", ">= 1", self.stop_at)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(DeviceOptions):
    """Settings of `sparsesteer evaluate`."""

    sae: list[str]
    """SAE: a directory, a checkpoint file in one, or hf:REPO[/SUBFOLDER][@REVISION], in our layout or
    a published one (SAELens, sparsify, ViT-Prisma, dictionary_learning / sae-for-vlm, ViSAEBench;
    docs/sae.md); repeat (--sae A --sae B) to compare several side by side (needs --suite)."""
    activations: str
    """Activation cache directory or .npy file."""
    suite: str | None = None
    """Judge with these suites (comma list): reconstruction, preservation, sparse_probing, localisation,
    spliced, monosemanticity (these two run models), or default (those the data allows, no model); writes judge.json/.md. None = the reconstruction report (eval.json)."""
    hook: str | None = None
    """Hook point of a multi-hook cache; None = the SAE's hook."""
    tokens: str | None = None
    """cls, patch or all rows of the cache; None = the SAE's token selection (or every cached row)."""
    batch_size: int = 4096
    """Rows per batch (does not change the metrics)."""
    max_rows: int | None = None
    """Evaluate only the first N rows; None = all."""
    out: str | None = None
    """Metrics JSON file or directory; None = SAE_DIR/eval.json."""
    allow_mismatch: bool = False
    """Evaluate even when the SAE and the activations (or --model) disagree on model, revision, hook or
    tokens, or when --dataset names the cache's images under another spec or split; the report then
    lists the disagreements."""
    max_images: int = 10_000
    """--suite: the probe suites keep at most this many images (their memory bound)."""
    seed: int = 0
    """--suite: seed of the probes' train/test split."""
    min_active_patches: int = 3
    """--suite localisation: an image counts for a latent if it fires on at least this many patches ..."""
    max_active_frac: float = 0.5
    """--suite localisation: ... and on at most this fraction of them."""
    images_per_latent: int = 32
    """--suite localisation: qualifying images per latent (the first ones)."""
    model: str | None = None
    """--suite spliced: the model to splice into (hub id or directory); None = the cache's model (its provenance)."""
    dataset: str | None = None
    """--suite spliced/monosemanticity: dataset spec of the cached images (checked to hold them: split,
    number, class names, labels); None = the cache's recorded spec."""
    data_root: str | None = None
    """Root directory of local datasets; None = the default data root."""
    templates: str = "ensemble"
    """--suite spliced: zero-shot prompt templates (single, ensemble, ensemble7)."""
    image_batch_size: int = 64
    """--suite spliced/monosemanticity: images per model forward (does not change the metrics)."""
    mono_model: str = "facebook/dinov2-base"
    """--suite monosemanticity: the backbone whose `head` embeddings judge each latent's top images."""
    mono_images: int = 10
    """--suite monosemanticity: top images per latent (by max activation)."""
    mono_latents: int = 512
    """--suite monosemanticity: latents scored (a sample drawn with --seed when more fire on >= 2 images)."""

    def __post_init__(self) -> None:
        if isinstance(self.sae, str):
            self.sae = [self.sae]
        _require(len(self.sae) >= 1, "--sae", "given", self.sae)
        _require(self.batch_size >= 1, "--batch-size", ">= 1", self.batch_size)
        _require(self.image_batch_size >= 1, "--image-batch-size", ">= 1", self.image_batch_size)
        _require(self.mono_images >= 2, "--mono-images", ">= 2", self.mono_images)
        _require(self.mono_latents >= 1, "--mono-latents", ">= 1", self.mono_latents)
        if self.max_rows is not None:
            _require(self.max_rows >= 1, "--max-rows", ">= 1", self.max_rows)
        super().__post_init__()


@dataclass(frozen=True)
class ExportConfig:
    """`sparsesteer export`: write one of our SAEs in another library's layout."""

    sae: str
    """The SAE to write: ours, or any published layout --sae reads (a directory, a checkpoint file or
    hf:REPO[/SUBFOLDER][@REVISION])."""
    format: Literal["saelens", "sparsify"]
    """Target layout: saelens (cfg.json + sae_weights.safetensors) or sparsify (cfg.json + sae.safetensors)."""
    out: str
    """Output directory (new or empty; --overwrite replaces what it holds)."""
    hook: str | None = None
    """saelens: the hook to record (cfg.json hook_name, where SAELens attaches the SAE) when the SAE
    records none (trained on a bare .npy, converted from sparsify, built in Python), e.g.
    blocks.9.resid_post (written blocks.9.hook_resid_post) (default: the SAE's own)."""
