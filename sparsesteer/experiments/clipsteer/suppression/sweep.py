"""The two passes of a suppression run (torch).

`rank_units`: one pass over the selection images that ranks, per swept block, the SAE's latents and
the residual neurons at the block's hook (`interpret.associations`, streamed: per-group running
sums only) and the attention heads by their CLS output (`models.heads`): head h's CLS contribution
c_h is projected on the unit vector of mean_P(c_h) - mean_N(c_h), and that scalar is scored with
the same association score, so every method is ranked by one rule.

`predictions`: per image batch, one clean forward captures the `resid_pre` of every swept block
and the clean embedding; every setting (method x block x n) then resumes at its block
(`Backbone.embed_from`, bit-identical to a full forward), so a block-b edit of `resid_post` costs
the blocks after b (a head ablation: from b on). `naive=True` runs a full forward per setting instead (the benchmark's reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ....interpret.associations import AssociationAccumulator, Associations
from ....models.backbone import Backbone
from ....models.heads import HeadAblation, ablate_heads, capture_head_inputs, head_outputs, n_heads
from ....models.hook_names import HookPoint
from ....models.hooks import Intervention
from ....models.zeroshot import ZeroShotClassifier
from ....sae.base import SparseAutoencoder
from ....steering.edits import zero_latents
from ....steering.features import moved, neuron_edit, resume_point


@dataclass(frozen=True)
class Setting:
    """One edit of the table: `method` at `block` on `n` units (none: the unedited model)."""

    method: str
    block: int
    n: int
    interventions: tuple[Intervention, ...] = ()
    heads: HeadAblation | None = None

    @property
    def name(self) -> str:
        return f"{self.method}/b{self.block}/n{self.n}"


def build_settings(
    bb: Backbone,
    hook: dict[int, str],
    saes: dict[int, SparseAutoencoder],
    units: dict[int, dict[str, list[int]]],
    ns: Sequence[int],
    tokens: str,
) -> list[Setting]:
    """Every (method, block, n) of the sweep; n above a method's ranked units is left out."""
    out: list[Setting] = []
    for b, sae in saes.items():
        for n in ns:
            for method in ("sae", "random", "neurons", "heads"):
                ranked = units[b][method]
                if n > len(ranked):
                    continue
                chosen = [int(u) for u in ranked[:n]]
                if method in ("sae", "random"):
                    out.append(Setting(method, b, n, (zero_latents(hook[b], sae, chosen, tokens=tokens),)))
                elif method == "neurons":
                    out.append(
                        Setting(method, b, n, (neuron_edit(hook[b], bb.d_model, chosen, 0.0, "set", tokens=tokens),))
                    )
                else:
                    out.append(Setting(method, b, n, heads=HeadAblation(b, tuple(chosen))))
    return out


@torch.no_grad()
def predictions(
    bb: Backbone,
    clf: ZeroShotClassifier,
    batches: Iterable[Tensor],
    settings: Sequence[Setting],
    *,
    naive: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(clean logits argmax [N], setting name -> edited argmax [N]) over pixel batches."""
    resumed = {s.name: _resumed(bb, s) for s in settings}
    starts = {b: str(HookPoint.resid_pre(b)) for b, _ in resumed.values()}
    clean: list[Tensor] = []
    edited: dict[str, list[Tensor]] = {s.name: [] for s in settings}
    for pixels in batches:
        acts = bb.run(pixels, [*starts.values(), "head"])
        clean.append(clf.logits(acts["head"]).argmax(-1).cpu())
        for s in settings:
            with ablate_heads(bb, *([s.heads] if s.heads else [])):
                if naive:
                    emb = bb.embed_images(pixels, interventions=s.interventions)
                else:
                    block, ivs = resumed[s.name]
                    emb = bb.embed_from(block, acts[starts[block]], interventions=ivs)
            edited[s.name].append(clf.logits(emb).argmax(-1).cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(clean), {k: cat(v) for k, v in edited.items()}


def _resumed(bb: Backbone, s: Setting) -> tuple[int, tuple[Intervention, ...]]:
    """Where setting `s` resumes, and its edits there. An edit of `blocks.{b}.resid_post` is an edit
    of `blocks.{b+1}.resid_pre` (the same tensor), so block b itself is not rerun
    (`steering.features.resume_point`); a head ablation needs block b's attention, so it resumes at b."""
    points = {resume_point(bb, iv.hook) for iv in s.interventions}
    point = points.pop() if len(points) == 1 else None
    if s.heads is not None or point is None:
        return s.block, s.interventions
    return point.block, tuple(moved(iv, point.hook) for iv in s.interventions)


@dataclass
class Ranking:
    """Per block: units ranked by association (best first) for each method, with the scores."""

    units: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    scores: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _rank(assoc: Associations, k: int, *, score: str, sign: str, reduce: str) -> tuple[list[int], list[float]]:
    top = assoc.top(k, by=score, sign=sign, reduce=reduce, positive=1, negative=0)
    return top.units.tolist(), [float(v) for v in top.values]


@torch.no_grad()
def rank_units(
    bb: Backbone,
    hook: dict[int, str],
    saes: dict[int, SparseAutoencoder],
    batches: Iterable[tuple[Tensor, np.ndarray]],
    groups: np.ndarray,
    *,
    tokens: str,
    score: str,
    sign: str,
    reduce: str,
    n_max: int,
    seed: int,
    attribute: str,
) -> Ranking:
    """Rank latents, neurons and heads of every block by their association with `groups` (1 vs 0)
    over (pixels, image ids) batches, image ids increasing."""
    blocks = sorted(saes)
    reds = (reduce,)
    ctx = {"attribute": attribute}
    lat = {
        b: AssociationAccumulator(saes[b].n_latents, groups, unit="latent", reductions=reds, context=ctx)
        for b in blocks
    }
    neu = {b: AssociationAccumulator(bb.d_model, groups, unit="neuron", reductions=reds, context=ctx) for b in blocks}
    head_out: dict[int, list[Tensor]] = {b: [] for b in blocks}
    ids: list[np.ndarray] = []
    for pixels, image_ids in batches:
        with capture_head_inputs(bb, blocks) as z:
            acts = bb.run(pixels, [hook[b] for b in blocks], tokens=tokens)
        ids.append(image_ids)
        for b in blocks:
            x = acts[hook[b]]
            x = x[:, None] if x.dim() == 2 else x  # cls: [B, d]
            rows = x.reshape(-1, x.shape[-1]).float()
            row_ids = np.repeat(image_ids, x.shape[1])
            lat[b].add_codes(saes[b].encode(rows.to(saes[b].device)), row_ids)
            neu[b].add_dense(rows, row_ids)
            head_out[b].append(head_outputs(bb, b, z[b][0]).to(torch.float16).cpu())
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    g = np.asarray(groups)[all_ids]
    out = Ranking(counts={"positive": int((g == 1).sum()), "negative": int((g == 0).sum())})
    for b in blocks:
        sae_units, sae_scores = _rank(
            lat[b].result(), min(n_max, saes[b].n_latents), score=score, sign=sign, reduce=reduce
        )
        neu_units, neu_scores = _rank(neu[b].result(), min(n_max, bb.d_model), score=score, sign=sign, reduce=reduce)
        c = torch.cat(head_out[b]).double()  # [N, H, d]
        pos, neg = torch.from_numpy(g == 1), torch.from_numpy(g == 0)
        direction = c[pos].mean(0) - c[neg].mean(0)  # [H, d]
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj = torch.einsum("nhd,hd->nh", c, direction)
        acc = AssociationAccumulator(n_heads(bb), groups, unit="neuron", reductions=("mean",), context=ctx)
        acc.add_dense(proj, all_ids)
        head_units, head_scores = _rank(acc.result(), n_heads(bb), score=score, sign="positive", reduce="mean")
        rng = np.random.default_rng([seed, b])
        random_units = rng.permutation(saes[b].n_latents)[: min(n_max, saes[b].n_latents)].tolist()
        out.units[b] = {"sae": sae_units, "random": random_units, "neurons": neu_units, "heads": head_units}
        out.scores[b] = {"sae": sae_scores, "neurons": neu_scores, "heads": head_scores}
    return out
