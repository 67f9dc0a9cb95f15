"""What the clipsteer experiments share about their SAEs: one SAE per block x token configuration,
trained on a cached split or loaded from --sae-dir (`reproduce sparsity`, `disentangle`, `typographic`).

    SAEOptions     the SAE and training flags (torch-free: a config inherits them, --help lists them)
    SAEKey         one SAE: a block and a token configuration; its directory name blockNN-TOKENS
    sae_provenance what an SAE directory records about its training data (for `check_agree`)
    train_sae      train one SAE on a `RowView` into a directory, unless it is there with these settings
    BlockSAEs      the run-context methods for those SAEs: where each lives, loading, checking --sae-dir
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from ...utils.errors import SparsesteerError
from ...utils.options import _chain, positive_int

if TYPE_CHECKING:
    from ...activations.cache import RowView
    from ...models.backbone import Backbone
    from ...sae import SparseAutoencoder
    from ...sae.provenance import Provenance

log = logging.getLogger(__name__)

SAE_FIELDS = (
    "arch",
    "k",
    "expansion",
    "l1_coeff",
    "sae_lr",
    "sae_batch_size",
    "sae_steps",
    "sae_epochs",
    "sae_warmup_steps",
    "normalize_input",
)
"""The fields of `SAEOptions` (what a stage that trains SAEs depends on, with the seed)."""


@dataclass(frozen=True, kw_only=True)
class SAEOptions:
    """The SAEs a clipsteer experiment trains (the paper's defaults: top-k 64, expansion 64)."""

    arch: Literal["topk", "batchtopk", "relu"] = "topk"
    """SAE architecture: topk (the paper's top-k variants), batchtopk, or relu (vanilla ReLU + L1, the released suite)."""
    k: int = 64
    """Active latents per token (topk, batchtopk)."""
    expansion: int = 64
    """Latents per input dimension (64: 49,152 latents at d 768, the paper's; use 4-8 on a CPU)."""
    l1_coeff: float = 1e-3
    """relu: L1 coefficient on top of the FVU loss (our loss normalisation, not the released suite's 1e-5)."""
    sae_lr: float = 5e-4
    """SAE learning rate (Adam; cosine decay after warm-up)."""
    sae_batch_size: int = 4096
    """Tokens per SAE training step (the paper's 4,096; capped at the rows of a small view)."""
    sae_steps: int | None = None
    """SAE training steps; None = sae_epochs passes, or (both None) at least 5,000 steps and one pass."""
    sae_epochs: float | None = None
    """Passes over the train rows of each SAE (ignored when sae_steps is set)."""
    sae_warmup_steps: int | None = None
    """Linear warm-up steps (the released suite: 200); None = 5% of the run."""
    normalize_input: bool = True
    """Rescale SAE inputs to a fixed mean norm (the paper normalises its inputs; folded into the saved weights)."""

    def __post_init__(self) -> None:
        for name in ("k", "expansion", "sae_batch_size"):
            positive_int(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.sae_steps is not None:
            positive_int(self.sae_steps, "--sae-steps")
        if self.sae_warmup_steps is not None and self.sae_warmup_steps < 0:
            raise SparsesteerError(f"--sae-warmup-steps must be >= 0, got {self.sae_warmup_steps}")
        for name in ("l1_coeff", "sae_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SparsesteerError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.sae_epochs is not None and not (math.isfinite(self.sae_epochs) and self.sae_epochs > 0):
            raise SparsesteerError(f"--sae-epochs must be a positive number, got {self.sae_epochs}")
        _chain(self, SAEOptions)

    def check_width(self, d_model: int, model: str) -> None:
        """Refuse a k the SAEs cannot have: at least their expansion x d_model latents (checked against
        the model's config before any work, not when the first SAE starts training)."""
        n_latents = self.expansion * d_model
        if self.arch in ("topk", "batchtopk") and self.k >= n_latents:
            raise SparsesteerError(
                f"--k {self.k}: k must be smaller than the SAEs' {n_latents} latents (--expansion {self.expansion} "
                f"x width {d_model} of {model!r})"
            )


class SAEKey(NamedTuple):
    """One SAE of a report: a block and a token configuration."""

    block: int
    tokens: str

    @property
    def name(self) -> str:
        """Its directory name under OUT/sae (and --sae-dir): blockNN-TOKENS."""
        return f"block{self.block:02d}-{self.tokens}"


def sae_provenance(path: Path) -> Provenance:
    """What an SAE directory records about its training data, from its cfg.json (foreign layouts:
    by loading it), without reading or hashing the weights of our own format."""
    from ...sae.checkpoint import FORMAT, load_sae
    from ...sae.provenance import Provenance
    from ...utils import io

    raw = io.read_json(path / "cfg.json")
    if raw.get("format") == FORMAT and isinstance(raw.get("d_in"), int):
        return Provenance.from_metadata(raw, d=raw["d_in"])
    return load_sae(path).provenance


def train_sae(view: RowView, opts: SAEOptions, out: Path, *, seed: int, device: str) -> None:
    """Train one SAE on `view` into `out`, unless it is there already with these settings (a stage
    interrupted after some SAEs keeps them); the trainer deletes its optimiser state when it finishes."""
    from ...sae import SAEConfig
    from ...sae.train import TrainConfig, Trainer
    from ...utils import io
    from ...utils.config import to_dict
    from ...utils.settings_hash import settings_sha256

    sae_cfg = SAEConfig(arch=opts.arch, k=opts.k, expansion=opts.expansion, l1_coeff=opts.l1_coeff)
    train_cfg = TrainConfig(
        batch_size=min(opts.sae_batch_size, view.n_rows),
        lr=opts.sae_lr,
        steps=opts.sae_steps,
        epochs=opts.sae_epochs,
        warmup_steps=opts.sae_warmup_steps,
        seed=seed,
        normalize_input=opts.normalize_input,
        device=device,
        bf16=False,  # the paper's tables train in float32: the numbers must not depend on the CPU or GPU model
    )
    digest = settings_sha256({"sae": to_dict(sae_cfg), "train": to_dict(train_cfg), "rows": view.describe()})
    out = Path(out)
    if (out / "cfg.json").is_file() and io.read_json(out / "cfg.json").get("run_settings_sha256") == digest:
        log.info("%s: trained with these settings already, kept", out)
        return
    shutil.rmtree(out, ignore_errors=True)
    Trainer(view, sae_cfg, train_cfg, out, metadata={"run_settings_sha256": digest}).fit()  # deletes state/


class BlockSAEs:
    """Mixin for a run context whose stages use one SAE per `SAEKey`: `OUT/sae/<key>` when trained,
    `--sae-dir/<key>` when loaded. The run provides `cfg.sae_dir`, `path()`, `backbone`, `keys()`
    and `expected(key)` (the provenance an SAE for `key` must have)."""

    def sae_path(self, key: SAEKey) -> Path:
        sae_dir = self.cfg.sae_dir  # type: ignore[attr-defined]
        return Path(sae_dir) / key.name if sae_dir is not None else self.path("sae", key.name)  # type: ignore[attr-defined]

    def load_sae(self, key: SAEKey) -> SparseAutoencoder:
        from ...sae import SparseAutoencoder

        backbone: Backbone = self.backbone  # type: ignore[attr-defined]
        return SparseAutoencoder.load(self.sae_path(key), device=backbone.device)

    def check_sae_dir(self) -> None:
        """Every SAE the run needs is in --sae-dir and was trained on what the run would feed it
        (model and revision, the block's hook, tokens, width): a mismatch names both sides."""
        from ...sae.provenance import check_agree

        keys: list[SAEKey] = self.keys()  # type: ignore[attr-defined]
        missing = [k.name for k in keys if not (self.sae_path(k) / "cfg.json").is_file()]
        if missing:
            raise SparsesteerError(
                f"--sae-dir {self.cfg.sae_dir}: no SAE for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "  # type: ignore[attr-defined]
                "(expected one SAE directory per block and token configuration, named blockNN-TOKENS, as OUT/sae "
                "of a training run)"
            )
        for key in keys:
            check_agree(
                f"the SAE {self.sae_path(key)}",
                sae_provenance(self.sae_path(key)),
                f"this run (block {key.block}, tokens {key.tokens})",
                self.expected(key),  # type: ignore[attr-defined]
            )
