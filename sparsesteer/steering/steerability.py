"""Steerability: how precisely one SAE latent (or residual neuron) moves the model's output in a
concept space (spec/clip-sae-steering.md, "Steerability metric").

The metric, on tensors: V [C, e] the L2-normalised concept embeddings, e0 / e the L2-normalised image
embeddings without / with steering,

    p0 = softmax(T e0 V^T),  p = softmax(T e V^T)          (T = 100 by default)
    Delta = mean over images of (p - p0)                   a vector over the C concepts
    S = sum_c Delta_c^2   (steerability, in [0, 2])        power = max_c Delta_c

and the top concepts are those with the largest Delta. A unit is *steerable* when S > threshold (0.10)
at strength 150; over a seeded random sample of latents (1/20) or all neurons this gives the steerable
fraction, and the number of distinct top-1 concepts among the steerable units is the *concept-space
coverage*.

The runner (`measure_steerability`) scores many units at many strengths over one image set without
rerunning what steering cannot change: for each image batch one forward computes the residual stream at
the resume block (`features.resume_point`), the activations at the hook and the unsteered embedding
e0; the SAE codes of the units at the hook are taken from those activations once. Each steered forward
then starts at the resume block (`Backbone.embed_from`) on `steer_batch` (unit, strength) pairs stacked
along the batch, the edit of each pair being the rank-one update x + (new - value) * direction (exactly
the SAE edit of `features.feature_edit` with the error term kept: only the steered latent's code changes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.hook_names import Tokens
from ..models.hooks import Intervention
from ..sae.base import SparseAutoencoder
from ..utils.errors import SparsesteerError
from ..utils.progress import progress
from . import edits
from .features import apply_rule, neuron_indices, resume_point, sae_tokens, steer_positions
from .settings import SteerabilitySettings

if TYPE_CHECKING:
    import os

    from ..data.vocab import Vocabulary
    from ..models.backbone import Backbone

_DENSE_BUDGET = 1 << 24  # elements of dense codes per chunk when reading the units' codes
_QUANTILE_BUDGET = 1 << 24  # torch.quantile refuses larger inputs


# ----------------------------------------------------------------------------- the metric on tensors
def concept_probs(embeds_be: Tensor, vocab_ce: Tensor, temperature: float = 100.0) -> Tensor:
    """p = softmax(T * normalise(e) normalise(V)^T) over the concepts: [..., B, e] -> [..., B, C] float32."""
    e = F.normalize(embeds_be.float(), dim=-1)
    v = F.normalize(vocab_ce.float().to(e.device), dim=-1)
    return torch.softmax(temperature * e @ v.T, dim=-1)


def mean_prob_change(e0_be: Tensor, e_be: Tensor, vocab_ce: Tensor, temperature: float = 100.0) -> Tensor:
    """Delta = mean over images of (p - p0): e [..., B, e] steered, e0 [B, e] unsteered -> [..., C]."""
    if e_be.shape[-2:] != e0_be.shape:
        raise SparsesteerError(
            f"steered embeddings {tuple(e_be.shape)} do not match the unsteered {tuple(e0_be.shape)}"
        )
    p0 = concept_probs(e0_be, vocab_ce, temperature)
    p = concept_probs(e_be, vocab_ce, temperature)
    return (p.double() - p0.double()).mean(dim=-2)


class Steerability(NamedTuple):
    """The metric of one or several mean probability changes Delta [..., C]."""

    score: Tensor
    """[...] S = sum over concepts of Delta^2."""
    power: Tensor
    """[...] max over concepts of Delta."""
    top: Tensor
    """[..., k] concept indices with the largest Delta, largest first."""


def steerability(delta_c: Tensor, top: int = 5) -> Steerability:
    """S, power and the top concepts of Delta [..., C]."""
    if delta_c.shape[-1] < 1:
        raise SparsesteerError("steerability of an empty concept vector")
    return Steerability(
        score=(delta_c.double() ** 2).sum(-1),
        power=delta_c.double().max(-1).values,
        top=delta_c.topk(min(top, delta_c.shape[-1]), dim=-1).indices,
    )


def is_steerable(score: Tensor, threshold: float = 0.10) -> Tensor:
    """S > threshold (bool, same shape)."""
    return score > threshold


def coverage(top1: Tensor, steerable: Tensor) -> int:
    """Concept-space coverage: the number of distinct top-1 concepts among the steerable units."""
    return int(top1[steerable.bool()].unique().numel())


def sample_units(n: int, fraction: float, seed: int = 0) -> Tensor:
    """A seeded random sample of round(n * fraction) (at least 1) of n units, sorted (fraction 1 = all)."""
    if not 0 < fraction <= 1:
        raise SparsesteerError(f"sample fraction must be in (0, 1], got {fraction!r}")
    if n < 1:
        raise SparsesteerError("no units to sample from")
    if fraction == 1:
        return torch.arange(n)
    k = max(1, round(n * fraction))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False))).long()


# ----------------------------------------------------------------------------- concept embeddings
def vocab_embeddings(
    backbone: Backbone,
    vocab: Vocabulary | Sequence[str],
    *,
    template: str = "{}",
    cache_dir: str | os.PathLike | None = None,
) -> Tensor:
    """V [C, e]: each concept embedded by the model's text tower (`template` filled with it) and
    L2-normalised, cached on disk like the zero-shot classifier's weights (same key: model, revision,
    dtype, names, template)."""
    from ..data.vocab import Vocabulary
    from ..models.zeroshot import ZeroShotClassifier

    concepts = vocab.concepts if isinstance(vocab, Vocabulary) else tuple(vocab)
    return ZeroShotClassifier.build(backbone, concepts, (template,), cache_dir=cache_dir).weights


# ----------------------------------------------------------------------------- units
class Units:
    """What the runner steers: K units with a value per activation row and a direction in the
    residual stream; new activation = base + (new value - value) * direction."""

    kind: str
    indices: Tensor
    """[K] latent or neuron indices."""
    directions_kd: Tensor
    """[K, d] float32 directions."""

    def values(self, x_nd: Tensor) -> Tensor:
        """[n, K] float32 values of the units on activation rows x [n, d]."""
        raise NotImplementedError

    def base(self, x_nd: Tensor) -> Tensor | None:
        """What the edit adds to: None = the activation itself (error term kept)."""
        return None


class LatentUnits(Units):
    """SAE latents: value f_j(x) (times |W_dec[j]| with `unit_direction`), direction W_dec[j] (or its
    unit vector). Without the error term the base is decode(encode(x))."""

    kind = "sae"

    def __init__(
        self, sae: SparseAutoencoder, latents: Tensor | Sequence[int] | None = None, *, keep_error: bool = True,
        unit_direction: bool = False,
    ):  # fmt: skip
        self.sae = sae
        self.indices = torch.arange(sae.n_latents) if latents is None else edits.latent_indices(sae, latents)
        self.keep_error = keep_error
        W = sae.W_dec.detach()[self.indices.to(sae.device)].float()
        self.norms_k = W.norm(dim=-1) if unit_direction else torch.ones(len(self.indices), device=W.device)
        self.directions_kd = W / self.norms_k.clamp_min(1e-12)[:, None] if unit_direction else W

    @torch.no_grad()
    def values(self, x_nd: Tensor) -> Tensor:
        cols = self.indices.to(self.sae.device)
        step = max(1, _DENSE_BUDGET // self.sae.n_latents)
        parts = [
            self.sae.encode_dense(x_nd[i : i + step].to(self.sae.device))[:, cols] for i in range(0, len(x_nd), step)
        ]
        f = torch.cat(parts) if parts else x_nd.new_zeros(0, len(cols))
        return f.float() * self.norms_k.to(f.device)

    @torch.no_grad()
    def base(self, x_nd: Tensor) -> Tensor | None:
        return None if self.keep_error else self.sae.reconstruct(x_nd.to(self.sae.device)).float()


class NeuronUnits(Units):
    """Residual dimensions: value x_j, direction the unit vector e_j."""

    kind = "neurons"

    def __init__(self, d_model: int, neurons: Tensor | Sequence[int] | None = None):
        self.indices = torch.arange(d_model) if neurons is None else neuron_indices(d_model, neurons)
        self.directions_kd = torch.eye(d_model)[self.indices]

    def values(self, x_nd: Tensor) -> Tensor:
        return x_nd[:, self.indices.to(x_nd.device)].float()


class UnitScale(NamedTuple):
    """Each unit's own activation scale on data: what a strength means for it. SAE codes carry the scale the
    SAE was trained at (a folded input normalisation, or none: raw activation units), residual dimensions
    the model's; "set f_j to 150" is large for one latent and small for another."""

    max: Tensor
    """[K] largest |value| over the rows."""
    p99: Tensor
    """[K] 99th percentile of |value| over the rows where the unit is non-zero (0 when it never is)."""
    active: Tensor
    """[K] fraction of the rows where the unit is non-zero."""

    @classmethod
    @torch.no_grad()
    def of(cls, parts: Sequence[Tensor]) -> UnitScale:
        """The scale of K units from their values on the rows of several batches ([n_i, K] each)."""
        n, K = sum(len(p) for p in parts), parts[0].shape[1]
        if n == 0:
            raise SparsesteerError("no activation rows to measure the units' scale on")
        step = max(1, _QUANTILE_BUDGET // n)
        out: list[list[Tensor]] = [[], [], []]
        for k in range(0, K, step):
            a = torch.cat([p[:, k : k + step].float() for p in parts]).abs()
            on = a != 0
            out[0].append(a.max(0).values.cpu())
            out[1].append(torch.nanquantile(a.masked_fill(~on, float("nan")), 0.99, dim=0).nan_to_num(0.0).cpu())
            out[2].append(on.double().mean(0).cpu())
        return cls(*(torch.cat(o) for o in out))

    def unit(self, strength_unit: str) -> Tensor:
        """[K] what a strength in `strength_unit` multiplies: 1 (absolute), the max or the p99."""
        if strength_unit == "absolute":
            return torch.ones_like(self.max)
        if strength_unit in ("max", "p99"):
            return getattr(self, strength_unit)
        raise SparsesteerError(f"unknown strength unit {strength_unit!r}; valid: absolute, max, p99")


# ----------------------------------------------------------------------------- the runner
class SteerabilityCurves(NamedTuple):
    """Steering curves of K units over nS strengths on one image set."""

    units: Tensor
    """[K] latent or neuron indices."""
    strengths: tuple[float, ...]
    """The nS strengths, increasing."""
    score: Tensor
    """[K, nS] float64 steerability S."""
    power: Tensor
    """[K, nS] float64 power (max Delta)."""
    top: Tensor
    """[K, nS, top] int64 concepts with the largest Delta, largest first."""
    n_images: int
    """Images the means run over."""
    scale: UnitScale | None = None
    """The units' own scale on the steered tokens of the images (what a relative strength multiplies)."""

    def column(self, strength: float) -> int:
        """Index of `strength` in `strengths`."""
        try:
            return self.strengths.index(float(strength))
        except ValueError:
            raise SparsesteerError(
                f"strength {strength} was not measured (strengths: {list(self.strengths)})"
            ) from None


class SteerabilitySummary(NamedTuple):
    """The steerable fraction and the distributions of S and power at one strength."""

    strength: float
    """The strength it is read at."""
    threshold: float
    n_units: int
    n_steerable: int
    steerable_fraction: float
    coverage: int
    """Distinct top-1 concepts among the steerable units."""
    top1_concepts: list[int]
    """Those concepts, most frequent first."""
    score_quantiles: dict[str, float]
    """S at quantiles 0.5, 0.9, 0.99 and its max."""
    power_median: float
    """Median power (interpolated, like the S quantiles)."""
    power_max: float


def summarize(
    curves: SteerabilityCurves, *, at_strength: float = 150.0, threshold: float = 0.10
) -> SteerabilitySummary:
    """Steerable fraction, coverage and the S / power distributions at `at_strength`."""
    c = curves.column(at_strength)
    score, power, top1 = curves.score[:, c], curves.power[:, c], curves.top[:, c, 0]
    steer = is_steerable(score, threshold)
    concepts, counts = top1[steer].unique(return_counts=True)
    order = sorted(zip(counts.tolist(), concepts.tolist()), key=lambda t: (-t[0], t[1]))
    q = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)
    quant = torch.quantile(score, q).tolist() if len(score) else [float("nan")] * 3
    return SteerabilitySummary(
        strength=float(at_strength),
        threshold=float(threshold),
        n_units=len(score),
        n_steerable=int(steer.sum()),
        steerable_fraction=float(steer.double().mean()) if len(score) else float("nan"),
        coverage=coverage(top1, steer),
        top1_concepts=[k for _, k in order],
        score_quantiles={
            "q50": quant[0],
            "q90": quant[1],
            "q99": quant[2],
            "max": float(score.max()) if len(score) else float("nan"),
        },
        power_median=float(torch.quantile(power, 0.5)) if len(power) else float("nan"),
        power_max=float(power.max()) if len(power) else float("nan"),
    )


class _Batch(NamedTuple):
    hidden_btd: Tensor  # residual stream entering the resume block
    p0_bc: Tensor  # unsteered concept probabilities
    values_rk: Tensor  # [B * T_sel, K] unit values at the hook
    base_rd: Tensor | None  # what edits add to (None: the activation itself)


@torch.no_grad()
def measure_steerability(
    backbone: Backbone,
    hook: str,
    pixel_batches: Iterable[Tensor],
    vocab_ce: Tensor,
    *,
    sae: SparseAutoencoder | None = None,
    units: Tensor | Sequence[int] | None = None,
    settings: SteerabilitySettings | None = None,
    tokens: Tokens | None = None,
    desc: str = "steerability",
) -> SteerabilityCurves:
    """Steering curves of SAE latents (`sae` given) or residual neurons (`sae=None`) at `hook`, over
    the images of `pixel_batches` and every strength of `settings.all_strengths` (in
    `settings.strength_unit`: a relative strength multiplies each unit's own scale, measured on the same
    tokens of the same images); `units` = latent or neuron indices (None = all). `tokens`: the selection
    steered, resolved (`features.steer_positions` or `features.sae_tokens`); None = `settings.tokens`, or
    when that is None too the SAE's own tokens ('all' for neurons).
    The SAE is not checked against the model here (see `features.check_sae`)."""
    from ..models.hook_names import hook_name
    from .settings import parse_tokens

    cfg = settings or SteerabilitySettings()
    hp = backbone.hook_point(hook)
    start = resume_point(backbone, hp)
    if start is None:
        raise SparsesteerError("steerability steers a block hook (blocks.{i}.*), not 'head'")
    if sae is not None and sae.d_in != backbone.d_model:
        raise SparsesteerError(f"the SAE reads width d_in={sae.d_in}, but {hp} has width {backbone.d_model}")
    unit_set: Units = (
        LatentUnits(sae, units, keep_error=cfg.keep_error, unit_direction=cfg.unit_direction)
        if sae is not None
        else NeuronUnits(backbone.d_model, units)
    )
    if tokens is None and cfg.tokens is not None:
        tokens = steer_positions(backbone, parse_tokens(cfg.tokens), hp)
    elif tokens is None:
        tokens = sae_tokens(backbone, sae, hp) if sae is not None else "all"
    vocab_ce = vocab_ce.to(backbone.device)
    strengths = cfg.all_strengths
    pre = hook_name(start.block, "resid_pre")

    batches: list[_Batch] = []
    for px in pixel_batches:
        out = backbone.run(px, [pre, str(hp), "head"])
        acts = out[str(hp)]
        pos = backbone.token_indices(tokens, acts.shape[1]).to(acts.device)
        rows = acts[:, pos].reshape(-1, acts.shape[-1])
        base = unit_set.base(rows)
        batches.append(
            _Batch(out[pre], concept_probs(out["head"], vocab_ce, cfg.temperature), unit_set.values(rows), base)
        )
    n_images = sum(len(b.hidden_btd) for b in batches)
    if n_images == 0:
        raise SparsesteerError("steerability: no images")

    scale = UnitScale.of([b.values_rk for b in batches])
    per_unit = scale.unit(cfg.strength_unit).to(backbone.device, torch.float32)
    K, nS = len(unit_set.indices), len(strengths)
    pairs = [(k, si) for k in range(K) for si in range(nS)]
    score = torch.zeros(K, nS, dtype=torch.float64)
    power = torch.zeros(K, nS, dtype=torch.float64)
    top = torch.zeros(K, nS, min(cfg.top, vocab_ce.shape[0]), dtype=torch.int64)
    dirs = unit_set.directions_kd.to(backbone.device)
    strength_t = torch.tensor(strengths, dtype=torch.float32, device=backbone.device)
    groups = [pairs[i : i + cfg.steer_batch] for i in range(0, len(pairs), cfg.steer_batch)]
    for group in progress(groups, desc=desc, unit="forward group"):
        k_g = torch.tensor([k for k, _ in group], device=backbone.device)
        s_g = strength_t[torch.tensor([si for _, si in group], device=backbone.device)]
        if cfg.strength_unit != "absolute":
            s_g = s_g * per_unit[k_g]
        delta_sum = torch.zeros(len(group), vocab_ce.shape[0], dtype=torch.float64, device=backbone.device)
        for b in batches:
            iv = Intervention(start.hook, _pair_edit(cfg.mode, b, k_g, s_g, dirs), tokens)
            G, B = len(group), len(b.hidden_btd)
            hidden = b.hidden_btd.repeat(G, 1, 1)
            e = backbone.embed_from(start.block, hidden, interventions=[iv]).reshape(G, B, -1)
            _check_pairs(e, group, unit_set, strengths, s_g, cfg.strength_unit)
            p = concept_probs(e, vocab_ce, cfg.temperature)
            delta_sum += (p.double() - b.p0_bc.double()).sum(dim=1)
        m = steerability(delta_sum / n_images, cfg.top)
        for g, (k, si) in enumerate(group):
            score[k, si], power[k, si], top[k, si] = m.score[g].cpu(), m.power[g].cpu(), m.top[g].cpu()
    return SteerabilityCurves(unit_set.indices.cpu(), strengths, score, power, top, n_images, scale)


def _check_pairs(
    e_gbe: Tensor, group: list[tuple[int, int]], units: Units, strengths: tuple[float, ...], s_g: Tensor, unit: str
) -> None:
    """Refuse the first (unit, strength) pair of a forward whose embeddings overflowed, naming both."""
    bad = (~torch.isfinite(e_gbe)).reshape(len(group), -1).any(1)
    if not bool(bad.any()):
        return
    g = int(bad.nonzero()[0, 0])
    k, si = group[g]
    name = "latent" if units.kind == "sae" else "neuron"
    given = f"{strengths[si]:g}" + ("" if unit == "absolute" else f" x {unit} = {float(s_g[g]):g}")
    edits.check_finite_result(e_gbe[g], f"steering {name} {int(units.indices[k])} at s = {given}")


def _pair_edit(mode: str, batch: _Batch, k_g: Tensor, s_g: Tensor, dirs_kd: Tensor):
    """The intervention function of one forward: pair g of the stacked batch gets unit k_g[g] at s_g[g]."""
    G = len(k_g)

    def fn(acts_btd: Tensor, positions_t: Tensor) -> Tensor:
        n, t, d = acts_btd.shape
        x = acts_btd.reshape(G, (n // G) * t, d).float()
        v = batch.values_rk[:, k_g].T.to(x.device)  # [G, R]
        if v.shape[1] != x.shape[1]:
            raise SparsesteerError(f"internal: {v.shape[1]} unit values for {x.shape[1]} activation rows")
        new = apply_rule(mode, v, s_g[:, None])
        base = x if batch.base_rd is None else batch.base_rd.to(x.device)[None].expand_as(x)
        out = base + (new - v)[..., None] * dirs_kd[k_g][:, None, :]
        return out.reshape(n, t, d).to(acts_btd.dtype)

    return fn
