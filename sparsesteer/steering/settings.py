"""Settings of the `sparsesteer steer` commands (torch-free: `--help` is built from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..models.templates import TemplateSet
from ..utils.errors import SparsesteerError
from ..utils.options import DeviceOptions, ModelOptions
from .tuning import N_NEIGHBOURS


@dataclass(frozen=True, kw_only=True)
class ScoredSplit(DeviceOptions, ModelOptions):
    """What every steer command reads: the model, an SAE on its final-block CLS, a cached split."""

    sae: str
    """SAE directory: an SAE trained on the final block's CLS (blocks.{last}.resid_post, tokens cls)."""
    activations: str
    """Activation cache of the split to score (final-block CLS, labelled), made with --model."""
    dataset: str | None = None
    """Dataset whose class names to use; None = the names stored in the cache (or its recorded dataset)."""
    data_root: str | None = None
    """Data root of a built-in --dataset; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    val_fraction: float = 0.1
    """Fraction of the TRAIN cache held out as validation queries for tuning (fixed seed)."""
    seed: int = 0
    """Seed of the validation split."""
    allow_mismatch: bool = False
    """Run even when the SAE, the caches and the model disagree on model, revision, hook, tokens, width or
    classes; the outputs then list every disagreement."""
    out: str | None = None
    """Write the JSON and Markdown results (and plots) here; None = print only."""

    def __post_init__(self) -> None:
        if not (isinstance(self.val_fraction, float | int) and 0 < self.val_fraction < 1):
            raise SparsesteerError(f"--val-fraction must be in (0, 1), got {self.val_fraction!r}")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class SteerVS2Config(ScoredSplit):
    """`sparsesteer steer vs2`: VS2 with given (lam, gamma), or tuned on a validation part of TRAIN."""

    lam: float | None = None
    """Steering strength lambda (give with --gamma), or None to tune it with --tune-on."""
    gamma: float | None = None
    """Feature scale gamma (give with --lam), or None to tune it with --tune-on."""
    tune_on: str | None = None
    """TRAIN activation cache: tune (lam, gamma) on a validation part of it (excludes --lam/--gamma)."""
    gate_quantile: float | None = None
    """Steer only samples whose per-sample FVU <= this quantile of the FVU on unlabeled TRAIN
    (the fit part of --tune-on, or --gate-on); None = steer every sample."""
    gate_on: str | None = None
    """TRAIN activation cache for the FVU gate's threshold when --lam/--gamma are given (with --tune-on,
    the gate uses the fit part of that cache)."""
    rescale: bool = True
    """Rescale steered vectors to the original norm (VS2's default)."""
    templates: TemplateSet = "single"
    """Zero-shot prompts: single ('a photo of a {}.'), ensemble (CLIP's 80) or ensemble7."""

    def __post_init__(self) -> None:
        if self.tune_on and (self.lam is not None or self.gamma is not None):
            raise SparsesteerError(
                "--lam/--gamma and --tune-on exclude each other: give --lam and --gamma to steer with them, "
                "or --tune-on TRAIN_CACHE to tune both on validation"
            )
        if (self.lam is None) != (self.gamma is None):
            raise SparsesteerError("give both --lam and --gamma, or neither and --tune-on")
        if self.lam is None and not self.tune_on:
            raise SparsesteerError("give --lam and --gamma, or --tune-on TRAIN_CACHE to tune them on validation")
        for name in ("lam", "gamma"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise SparsesteerError(f"--{name} must be finite, got {value}")
        if self.gate_on and self.tune_on:
            raise SparsesteerError(
                "--gate-on and --tune-on exclude each other: with --tune-on the gate uses its fit part"
            )
        if self.gate_quantile is not None:
            if not self.tune_on and not self.gate_on:
                raise SparsesteerError(
                    "--gate-quantile learns its threshold on unlabeled train data: give --tune-on or --gate-on TRAIN_CACHE"
                )
            if not 0 < self.gate_quantile <= 1:
                raise SparsesteerError(f"--gate-quantile must be in (0, 1], got {self.gate_quantile}")
        elif self.gate_on:
            raise SparsesteerError("--gate-on needs --gate-quantile Q")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class SteerVS2ppConfig(ScoredSplit):
    """`sparsesteer steer vs2pp`: VS2++ and its retrieval baselines, each tuned on validation queries."""

    database: str
    """TRAIN activation cache (final-block CLS): the retrieval database; validation queries are carved from it."""
    retrieval_activations: str | None = None
    """Retriever `head` cache of the scored split (e.g. DINOv2); None = CLIP image embeddings."""
    retrieval_database: str | None = None
    """Retriever `head` cache of the database split (give with --retrieval-activations)."""
    neighbours: int = N_NEIGHBOURS
    """Neighbours retrieved per query."""
    positive_rule: Literal["query", "mode"] = "query"
    """Positives: neighbours sharing the query's pseudo-label, or carrying the most frequent label."""
    labels: Literal["both", "pseudo", "oracle"] = "both"
    """Neighbour labels: CLIP pseudo-labels and/or the true train labels."""

    def __post_init__(self) -> None:
        if (self.retrieval_activations is None) != (self.retrieval_database is None):
            raise SparsesteerError(
                "give both --retrieval-activations and --retrieval-database, or neither (CLIP embeddings)"
            )
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise SparsesteerError(f"--neighbours must be a positive integer, got {self.neighbours!r}")
        super().__post_init__()
