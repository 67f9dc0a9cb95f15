"""Baselines of VS2++ on the same neighbour sets (`neighbours.py`): CLIP steering and weighted RAG.

- CLIP steering: the same sets and the same `steer`, v = mean_{S+} x_i - mean_{S-} x_j over the
  neighbours' final-layer CLS vectors (not CLIP's output embeddings): the same space as VS2++, so
  that the SAE is the only difference between the two.
- Weighted RAG: E = alpha q + (1 - alpha) sum_j w_j r_j, w_j = s_j / sum s, q and r the
  L2-normalised CLIP image embeddings of the query and the neighbours, s the retrieval cosines;
  by default over S+ (so "oracle" and "pseudo" variants exist, like the paper's "Weighted RAG
  (oracle)" row), optionally over all N neighbours. E is classified by the zero-shot head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import SparsesteerError, unknown
from .neighbours import Fallback, NeighbourSets, check_queries, check_rows, group_direction, labels_1d, weighted_sum
from .tuning import DEFAULT_ALPHAS, DEFAULT_CLIP_LAMS, LineSearch, line_search
from .vs2 import check_finite, steer
from .vs2pp import SteeringResult

if TYPE_CHECKING:
    from .classify import CLSClassifier

RagOver = Literal["positives", "all"]
RAG_OVER = ("positives", "all")


# ---------------------------------------------------------------------------- CLIP steering
def clip_steering(
    x_qd: Tensor,
    sets: NeighbourSets,
    db_x_nd: Tensor,
    lam: float,
    *,
    rescale: bool = True,
    fallback: Fallback = "group",
) -> SteeringResult:
    """steer(x, mean_{S+} x_i - mean_{S-} x_j, lam) with x_i the neighbours' final-layer CLS vectors.

    No SAE: the baseline that shows what the SAE adds to VS2++ (same sets, same space, same steer).
    Fallback 'vs2' does not exist here (no SAE); 'none' leaves such queries unchanged."""
    check_finite(lam=lam)
    if fallback == "vs2":
        raise SparsesteerError("CLIP steering has no SAE, so no 'vs2' fallback: use fallback 'group' or 'none'")
    check_queries(x_qd, sets, db_x_nd.shape[1] if db_x_nd.ndim == 2 else None, "query CLS vectors")
    gd = group_direction(sets, db_x_nd, fallback)
    v_qd = gd.direction_qd.to(x_qd)
    return SteeringResult(
        steered_qd=steer(x_qd, v_qd, lam, rescale=rescale),
        direction_qd=v_qd,
        neighbours_qn=sets.indices_qn,
        n_positive_q=sets.n_positive_q,
        fallbacks=gd.counts,
    )


# ---------------------------------------------------------------------------- weighted RAG
@dataclass(frozen=True)
class RAGResult:
    """Weighted-RAG logits."""

    logits_qc: Tensor
    """[Q, C] zero-shot logits of the fused embeddings E."""
    embeddings_qe: Tensor
    """[Q, e] E = alpha q + (1 - alpha) sum_j w_j r_j (before the classifier's L2 normalisation)."""
    neighbours_qn: Tensor
    """[Q, N] database rows retrieved for each query."""
    n_used_q: Tensor
    """[Q] neighbours that entered the weighted sum (|S+| or N)."""
    n_empty: int
    """Queries with no neighbour to use (empty S+): E = q, i.e. their zero-shot prediction."""
    n_uniform: int
    """Queries whose used similarities summed to <= 0 (unrelated neighbours): uniform weights."""


def rag_weights(sets: NeighbourSets, over: RagOver = "positives") -> tuple[Tensor, Tensor, Tensor]:
    """(w [Q, N] float64 summing to 1 over the used neighbours (0 elsewhere), used-count [Q],
    uniform-fallback mask [Q]). w_j = s_j / sum s over the used set; rows with no neighbour are
    all zero; rows whose used similarities sum to <= 0 get uniform weights."""
    if over not in RAG_OVER:
        raise unknown("weighted-RAG neighbour set", over, RAG_OVER)
    used_qn = sets.positive_qn if over == "positives" else torch.ones_like(sets.positive_qn)
    s_qn = sets.similarity_qn.double() * used_qn
    total_q = s_qn.sum(1, keepdim=True)
    n_used_q = used_qn.sum(1)
    uniform_q = (total_q.squeeze(1) <= 0) & (n_used_q > 0)
    w_qn = torch.where(total_q > 0, s_qn / total_q.clamp_min(1e-300), used_qn.double() / n_used_q.clamp_min(1)[:, None])
    return w_qn, n_used_q, uniform_q


def weighted_rag(
    classifier: CLSClassifier,
    query_embeds_qe: Tensor,
    sets: NeighbourSets,
    db_embeds_ne: Tensor,
    alpha: float,
    *,
    over: RagOver = "positives",
) -> RAGResult:
    """Logits of E = alpha q + (1 - alpha) sum_j w_j r_j, w_j = s_j / sum s (s = retrieval cosine).

    q, r: CLIP image embeddings of the query and the database (e.g. `classifier.embed(cls)`;
    L2-normalised here). `over`: "positives" (S+ of the sets' label mode; a query without positives
    keeps E = q, its zero-shot prediction) or "all" N neighbours."""
    parts = _rag_parts(query_embeds_qe, sets, db_embeds_ne, over)
    E_qe = parts.fuse(alpha)
    return RAGResult(
        logits_qc=classifier.logits_of_embeddings(E_qe),
        embeddings_qe=E_qe,
        neighbours_qn=sets.indices_qn,
        n_used_q=parts.n_used_q,
        n_empty=int((parts.n_used_q == 0).sum()),
        n_uniform=int(parts.uniform_q.sum()),
    )


class _RAGParts(NamedTuple):
    q_qe: Tensor  # unit query embeddings
    r_qe: Tensor  # sum_j w_j r_j
    n_used_q: Tensor
    uniform_q: Tensor

    def fuse(self, alpha: float) -> Tensor:
        check_finite(alpha=alpha)
        if not 0.0 <= alpha <= 1.0:
            raise SparsesteerError(f"weighted-RAG alpha must be in [0, 1] (1 = zero-shot), got {alpha}")
        E_qe = alpha * self.q_qe + (1.0 - alpha) * self.r_qe
        return torch.where((self.n_used_q == 0).to(E_qe.device)[:, None], self.q_qe, E_qe)


def _rag_parts(query_embeds_qe: Tensor, sets: NeighbourSets, db_embeds_ne: Tensor, over: RagOver) -> _RAGParts:
    """Everything of weighted RAG that does not depend on alpha."""
    check_rows(db_embeds_ne, sets, "database image embeddings")
    check_queries(query_embeds_qe, sets, db_embeds_ne.shape[1], "query image embeddings")
    w_qn, n_used_q, uniform_q = rag_weights(sets, over)
    r_qe = weighted_sum(w_qn, sets.indices_qn, F.normalize(db_embeds_ne.float(), dim=-1))
    q_qe = F.normalize(query_embeds_qe.float(), dim=-1).to(r_qe.device)
    return _RAGParts(q_qe=q_qe, r_qe=r_qe, n_used_q=n_used_q, uniform_q=uniform_q)


# ---------------------------------------------------------------------------- tuning
def tune_clip_steering(
    classifier: CLSClassifier,
    x_val_qd: Tensor,
    labels_val_q: Tensor,
    sets: NeighbourSets,
    db_x_nd: Tensor,
    lams: Sequence[float] = DEFAULT_CLIP_LAMS,
    *,
    rescale: bool = True,
    fallback: Fallback = "group",
    split: str = "validation split of train",
) -> LineSearch:
    """Validation accuracy of CLIP steering over lam (the mean difference computed once)."""
    if fallback == "vs2":
        raise SparsesteerError("CLIP steering has no SAE, so no 'vs2' fallback: use fallback 'group' or 'none'")
    check_queries(x_val_qd, sets, db_x_nd.shape[1], "validation CLS vectors")
    labels_val_q = labels_1d(labels_val_q, "validation labels", sets.n_queries)
    v_qd = group_direction(sets, db_x_nd, fallback).direction_qd.to(x_val_qd)
    return line_search(
        lambda lam: classifier.accuracy(steer(x_val_qd, v_qd, lam, rescale=rescale), labels_val_q),
        lams,
        param="lam",
        split=split,
        n=sets.n_queries,
    )


def tune_weighted_rag(
    classifier: CLSClassifier,
    query_embeds_qe: Tensor,
    labels_val_q: Tensor,
    sets: NeighbourSets,
    db_embeds_ne: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    over: RagOver = "positives",
    split: str = "validation split of train",
) -> LineSearch:
    """Validation accuracy of weighted RAG over alpha (the weighted neighbour sum computed once)."""
    labels_val_q = labels_1d(labels_val_q, "validation labels", sets.n_queries)
    parts = _rag_parts(query_embeds_qe, sets, db_embeds_ne, over)

    def score(alpha: float) -> float:
        pred_q = classifier.logits_of_embeddings(parts.fuse(alpha)).argmax(-1)
        return float((pred_q == labels_val_q).double().mean())

    return line_search(score, alphas, param="alpha", split=split, n=sets.n_queries)
