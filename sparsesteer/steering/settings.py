"""Settings of the `sparsesteer steer` commands and of the steerability measurement (torch-free:
`--help` is built from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ..models.templates import TemplateSet
from ..models.zeroshot_run import DEFAULT_TEXT_CACHE
from ..utils.config import REPEATABLE
from ..utils.errors import SparsesteerError
from ..utils.options import DataOptions, DeviceOptions, ModelOptions, RunOptions, _chain, positive_int
from .tuning import N_NEIGHBOURS

SteerMode = Literal["set", "add", "scale", "zero"]
"""How an edit changes a latent or neuron: set it to s, add s (s times the decoder direction), scale
it by s, or zero it (suppression; no strength)."""
STEER_MODES: tuple[str, ...] = get_args(SteerMode)
SteerabilityMode = Literal["set", "add", "scale"]
"""The modes a steerability curve runs over strengths with (zero has no strength)."""

DEFAULT_STRENGTHS = (-20.0, -5.0, 0.0, 5.0, 10.0, 20.0, 50.0, 150.0)
"""The paper's steering-curve strengths."""

StrengthUnit = Literal["absolute", "max", "p99"]
"""What a strength is measured in: `absolute` = the value of the latent (neuron) itself, in whatever
scale the SAE's (model's) activations have; `max` / `p99` = a multiple of that unit's own scale on the
steered tokens of the images: its largest |value|, or the 99th percentile of |value| where it is non-zero."""
STRENGTH_UNITS: tuple[str, ...] = get_args(StrengthUnit)

MAX_STEER = 1e6
"""The largest |value| a steering number may take: --strength(s), --at-strength, VS2's --lam / --gamma and
the tuning grids, the browser's steering API. ViT activations and SAE codes are orders of magnitude
smaller; a larger edit only saturates the model's softmaxes (the outputs stop changing), and beyond about
1e20 (a unit decoder row, a tiny CLIP) the next layer norm overflows float32 into NaN probabilities. Within
the bound the results are still checked for finiteness (a float16 model, or an SAE with huge decoder rows,
overflows earlier)."""


def check_steer_value(name: str, value: Any) -> float:
    """A steering number as a float: finite and within +-MAX_STEER, else a one-line error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SparsesteerError(f"{name} must be a finite number, got {value!r}")
    if abs(value) > MAX_STEER:
        raise SparsesteerError(
            f"{name} {value:g} is out of range: steering values must lie within +-{MAX_STEER:g} (activations and "
            "SAE codes are far smaller; a larger edit only saturates or overflows the model)"
        )
    return float(value)


def _check_unit(unit: Any, mode: str, given: str) -> None:
    """A relative strength multiplies the unit's scale: it applies to the modes that take a value."""
    if unit not in STRENGTH_UNITS:
        raise SparsesteerError(f"--strength-unit must be one of {', '.join(STRENGTH_UNITS)}, got {unit!r}")
    if unit != "absolute" and mode not in ("set", "add"):
        raise SparsesteerError(
            f"--strength-unit {unit} measures a value set or added in multiples of the unit's {unit} on the images; "
            f"--mode {mode} takes {given}: use --strength-unit absolute"
        )


def parse_tokens(text: Any) -> str | tuple[int, ...] | np.ndarray:
    """The --tokens grammar: 'cls' | 'patch' | 'all', 'patch:I,J,...' (patch indices, 0-based, row-major
    over the patch grid) or 'mask:FILE' (a boolean / 0-1 grid shaped like the patch grid: .npy, or a
    text file with one grid row per line). Patch indices and masks are checked against the model
    later (`features.steer_positions`)."""
    if not isinstance(text, str):
        raise SparsesteerError(f"--tokens must be a string, got {text!r}")
    t = text.strip()
    if t in ("cls", "patch", "all"):
        return t
    if t.startswith("patch:"):
        parts = [p.strip() for p in t[len("patch:") :].split(",") if p.strip()]
        try:
            idx = tuple(int(p) for p in parts)
        except ValueError:
            raise SparsesteerError(f"--tokens {text!r}: patch indices must be integers, e.g. patch:0,1,7") from None
        if not idx:
            raise SparsesteerError(f"--tokens {text!r}: give at least one patch index, e.g. patch:0,1,7")
        return idx
    if t.startswith("mask:"):
        return _read_mask(Path(t[len("mask:") :]).expanduser())
    raise SparsesteerError(
        f"--tokens {text!r}: expected cls, patch, all, patch:I,J,... (patch indices) or mask:FILE (a patch-grid mask)"
    )


def _read_mask(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SparsesteerError(f"--tokens mask: no such file {path}")
    try:
        arr = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
    except ValueError as e:
        raise SparsesteerError(f"--tokens mask: cannot read {path} as a grid of 0/1 ({e})") from None
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.isin(arr, (0, 1)).all():
        raise SparsesteerError(
            f"--tokens mask: {path} must hold a 2-D grid of 0/1 (or booleans), got shape {arr.shape}"
        )
    return arr.astype(bool)


def _finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SparsesteerError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SteerabilitySettings:
    """How a steerability measurement steers and scores one latent or neuron over an image set."""

    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    """Strengths s of the steering curves (give negative values as --strengths=-20,-5,0,...)."""
    at_strength: float = 150.0
    """Strength at which S decides 'steerable' (measured even when not in --strengths)."""
    threshold: float = 0.10
    """A unit is steerable when S = sum over concepts of (mean probability change)^2 exceeds this."""
    temperature: float = 100.0
    """T in p = softmax(T * cos(image embedding, concept)) (CLIP's logit scale)."""
    mode: SteerabilityMode = "set"
    """set the latent / neuron to s (the paper), add s (s times the decoder direction), or scale it by s."""
    strength_unit: StrengthUnit = "absolute"
    """Unit of --strengths and --at-strength: absolute (the unit's own value), or a multiple of each unit's
    max or p99 (of its non-zero |values|) on the steered tokens of the images (set and add modes)."""
    tokens: str | None = None
    """Tokens steered: cls, patch, all, patch:I,J,... or mask:FILE; None = the tokens each SAE was trained on
    (neurons: those of the SAE at their hook; 'all' without an SAE)."""
    keep_error: bool = True
    """Keep the SAE error term x - decode(encode(x)) (only the latent's change enters)."""
    unit_direction: bool = False
    """Steer along the unit decoder direction W_dec[j]/|W_dec[j]| (value f_j |W_dec[j]|) instead of W_dec[j]."""
    steer_batch: int = 8
    """(unit, strength) pairs steered in one forward pass, each over one image batch."""
    top: int = 5
    """Concepts recorded per unit and strength (largest mean probability increase)."""

    def __post_init__(self) -> None:
        if not self.strengths:
            raise SparsesteerError("--strengths: give at least one strength")
        for s in self.strengths:
            check_steer_value("--strengths", s)
        check_steer_value("--at-strength", self.at_strength)
        for name in ("threshold", "temperature"):
            _finite(name, getattr(self, name))
        if self.temperature <= 0:
            raise SparsesteerError(f"--temperature must be > 0, got {self.temperature}")
        if self.threshold < 0:
            raise SparsesteerError(f"--threshold must be >= 0, got {self.threshold}")
        if self.mode not in get_args(SteerabilityMode):
            raise SparsesteerError(f"--mode must be one of {', '.join(get_args(SteerabilityMode))}, got {self.mode!r}")
        _check_unit(self.strength_unit, self.mode, "factors")
        positive_int(self.steer_batch, "--steer-batch")
        positive_int(self.top, "--top")
        if self.tokens is not None:
            parse_tokens(self.tokens)
        _chain(self, SteerabilitySettings)

    @property
    def all_strengths(self) -> tuple[float, ...]:
        """The strengths measured: --strengths plus --at-strength, sorted, without repeats."""
        return tuple(sorted({float(s) for s in (*self.strengths, self.at_strength)}))


@dataclass(frozen=True, kw_only=True)
class SteerImages(RunOptions, DataOptions, ModelOptions):
    """What `steer features` and `steer neurons` share: the images, the edit's place and rule, the readout."""

    split: str = "test"
    """Dataset split of the images."""
    hook: str | None = None
    """Hook point to steer at (blocks.{i}.resid_pre|attn_out|mlp_out|resid_post); features: None = the SAE's
    hook; neurons: required."""
    tokens: str | None = None
    """Tokens steered: cls, patch, all, patch:I,J,... (patch indices, 0-based, row-major over the patch
    grid) or mask:FILE (.npy or text 0/1 grid shaped like the patch grid); None = the SAE's own tokens
    (features) or all (neurons)."""
    mode: SteerMode = "set"
    """set to s (the paper's rule), add s (s times the decoder direction), scale by s, or zero (no strength)."""
    strength: float | None = None
    """Steering strength s (not with --mode zero)."""
    strength_unit: StrengthUnit = "absolute"
    """Unit of --strength: absolute (the latent's / neuron's own value), or a multiple of each one's max or
    p99 (of its non-zero |values|) on the steered tokens of these images (set and add modes)."""
    vocab: str | None = None
    """Read out against a concept vocabulary (a text file, one concept per line, or imagenet1k / cifar100)
    instead of the dataset's classes; None = zero-shot over the classes."""
    vocab_limit: int | None = None
    """Keep the first N concept lines of --vocab (e.g. 5000 for CLIP-Dissect's 20k.txt)."""
    vocab_template: str = "{}"
    """Text embedded for each concept ('{}' = the bare word)."""
    temperature: float = 100.0
    """Vocabulary readout: p = softmax(T * cos(image, concept)). Zero-shot uses the model's own logit rule."""
    templates: TemplateSet = "single"
    """Zero-shot prompts: single ('a photo of a {}.'), ensemble (CLIP's 80) or ensemble7."""
    top: int = 5
    """Classes / concepts listed with the largest mean probability increase and decrease."""
    show: int = 20
    """Images listed one by one in the printout and results.md (the JSON lists every image)."""
    text_cache: str | None = DEFAULT_TEXT_CACHE
    """Directory caching text embeddings per (model, names, templates); 'none' or None disables it."""
    out: str | None = None
    """Output directory (steer_features.json/.md); None = print only."""

    def __post_init__(self) -> None:
        if self.mode not in STEER_MODES:
            raise SparsesteerError(f"--mode must be one of {', '.join(STEER_MODES)}, got {self.mode!r}")
        if self.mode == "zero":
            if self.strength is not None:
                raise SparsesteerError("--mode zero takes no --strength (it sets the latents to 0)")
        elif self.strength is None:
            raise SparsesteerError(f"--mode {self.mode} needs --strength S")
        else:
            check_steer_value("--strength", self.strength)
        _check_unit(self.strength_unit, self.mode, "a factor" if self.mode == "scale" else "no strength")
        _finite("temperature", self.temperature)
        if self.temperature <= 0:
            raise SparsesteerError(f"--temperature must be > 0, got {self.temperature}")
        if self.vocab_limit is not None:
            positive_int(self.vocab_limit, "--vocab-limit")
        if self.vocab_template.count("{}") != 1:
            raise SparsesteerError(f"--vocab-template must contain one '{{}}', got {self.vocab_template!r}")
        positive_int(self.top, "--top")
        if isinstance(self.show, bool) or not isinstance(self.show, int) or self.show < 0:
            raise SparsesteerError(f"--show must be >= 0, got {self.show!r}")
        if self.tokens is not None:
            parse_tokens(self.tokens)
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class SteerFeaturesConfig(SteerImages):
    """`sparsesteer steer features`: SAE latents edited during the forward pass, predictions before and after."""

    sae: str
    """SAE directory (its hook, tokens and model are checked against the model and the edit)."""
    latent: tuple[int, ...] = field(metadata=REPEATABLE)
    """Latent index to steer; repeat the flag (or give a comma list) for several."""
    keep_error: bool = True
    """Keep the SAE error term x - decode(encode(x)) (only the edited latents change the activation)."""
    unit_direction: bool = False
    """Steer along the unit decoder direction W_dec[j]/|W_dec[j]| (value f_j |W_dec[j]|)."""
    allow_mismatch: bool = False
    """Run even when the SAE's model, revision, hook or tokens disagree with the model and the edit; the
    outputs then list every disagreement (a width mismatch is always refused)."""

    def __post_init__(self) -> None:
        if not self.latent:
            raise SparsesteerError("--latent: give at least one latent index")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class SteerNeuronsConfig(SteerImages):
    """`sparsesteer steer neurons`: residual-stream dimensions edited directly, predictions before and after."""

    neuron: tuple[int, ...] = field(metadata=REPEATABLE)
    """Residual dimension to steer; repeat the flag (or give a comma list) for several."""

    def __post_init__(self) -> None:
        if self.hook is None:
            raise SparsesteerError("steer neurons needs --hook (e.g. blocks.5.resid_post)")
        if not self.neuron:
            raise SparsesteerError("--neuron: give at least one residual dimension")
        super().__post_init__()


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
            if value is not None:
                check_steer_value(f"--{name}", value)
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
