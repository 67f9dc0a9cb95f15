"""Settings of `sparsesteer reproduce vs2` (no torch import: the CLI builds --help from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ...steering.settings import check_steer_value
from ...steering.tuning import DEFAULT_ALPHAS, DEFAULT_CLIP_LAMS, DEFAULT_GAMMAS, DEFAULT_LAMS, N_NEIGHBOURS
from ...utils.errors import SparsesteerError
from ...utils.options import RunOptions


@dataclass(frozen=True)
class VS2Config(RunOptions):
    """Settings of one `reproduce vs2` run. None means: the paper's value for this backbone."""

    model: str = "openai/clip-vit-base-patch32"
    """CLIP backbone: hub id or local directory."""
    dataset: str = "cifar100"
    """cifar100, cub200, tiny-imagenet, folder:PATH or hf:REPO (with class names)."""
    train_split: str = "train"
    """Split used for the SAEs, the validation part and the retrieval database (labels unused except by PASS and oracle rows)."""
    test_split: str = "test"
    """Split the table is reported on (tiny-imagenet: its val split, as in the paper)."""
    data_root: str | None = None
    """Where built-in datasets live (downloaded there when missing); None = SPARSESTEER_DATA or ~/.cache."""
    retriever: str = "facebook/dinov2-base"
    """VS2++ retrieval embeddings: a DINOv2 hub id/directory, or 'clip' for CLIP image embeddings."""
    neighbours: int = N_NEIGHBOURS
    """VS2++: neighbours retrieved per query."""
    positive_rule: Literal["query", "mode"] = "query"
    """VS2++ positives: neighbours sharing the query's pseudo-label, or carrying the most frequent label."""
    val_fraction: float = 0.1
    """Fraction of TRAIN held out for tuning (fixed seed); the SAEs are trained on the rest."""
    seed: int = 0
    """Seed of the validation split and SAE training."""
    sae_k: int | None = None
    """SAE k; None = paper's (64 B/32, 256 B/16, 128 L/14)."""
    sae_expansion: int | None = None
    """SAE expansion; None = paper's (4; 10 for L/14)."""
    sae_lr: float = 5e-4
    """SAE learning rate (paper: 5e-4, linear warm-up then linear decay)."""
    sae_batch_size: int = 1024
    """SAE batch size (unstated in the paper)."""
    sae_epochs: float = 100.0
    """Passes over the train CLS vectors (unstated in the paper)."""
    sae_dead_after_steps: int = 100
    """AuxK: a latent is dead after this many steps without firing (the paper's 'dead feature threshold 100', read as steps)."""
    pass_weight: float = 0.8
    """PASS prototype-alignment weight (paper: 0.8)."""
    gamma_rec: float = 1.5
    """gamma of the SAE_REC^{F+gamma} baseline (paper: 1.5)."""
    lams: tuple[float, ...] = DEFAULT_LAMS
    """VS2 / VS2++ lambda grid."""
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    """VS2 / VS2++ gamma grid."""
    clip_lams: tuple[float, ...] = DEFAULT_CLIP_LAMS
    """CLIP-steering lambda grid."""
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    """Weighted-RAG alpha grid (E = alpha q + (1 - alpha) sum w r; ties go to the first value)."""
    gate_quantiles: tuple[float, ...] = (0.90, 0.95, 0.99, 0.995)
    """FVU-gate quantiles q (tau = q-quantile of per-sample FVU on unlabeled train)."""
    in_forward: bool = True
    """Also run the rows that need model forwards with per-block SAEs: SAE_REC^A and VS2 on the last blocks."""
    multi_layer: tuple[int, ...] = (2, 3)
    """Table 7: steer the CLS of the last n blocks for each n."""
    limit_train: int | None = None
    """Use a class-stratified sample of N train images, drawn with `seed` (quick runs; recorded in the caches)."""
    limit_test: int | None = None
    """Use a class-stratified sample of N test images, drawn with `seed` (quick runs; see limit_train)."""
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype of cached activations."""

    def __post_init__(self) -> None:
        super().__post_init__()  # batch size, workers, device, on_bad_image
        if self.neighbours < 1:
            raise SparsesteerError(f"neighbours must be >= 1, got {self.neighbours}")
        for name in ("pass_weight", "gamma_rec", "sae_lr"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise SparsesteerError(f"{name} must be finite, got {value}")
        for name in ("lams", "gammas", "clip_lams", "alphas"):
            if not all(math.isfinite(v) for v in getattr(self, name)):
                raise SparsesteerError(f"{name} must be finite numbers")
            for v in getattr(self, name):
                check_steer_value(f"--{name.replace('_', '-')}", v)
        if not 0 < self.val_fraction < 1:
            raise SparsesteerError(
                f"--val-fraction must be in (0, 1) (the share of TRAIN held out for tuning), got {self.val_fraction}"
            )
        small = [n for n in self.multi_layer if n < 2]
        if self.in_forward and small:
            raise SparsesteerError(
                f"--multi-layer {small[0]}: Table 7 steers the last n >= 2 blocks (n = 1 is the VS2 row itself)"
            )
        if self.train_split == self.test_split:
            raise SparsesteerError(
                f"--train-split and --test-split are both {self.train_split!r}: the SAEs and the tuning would see "
                "the images they are measured on; use two splits"
            )
