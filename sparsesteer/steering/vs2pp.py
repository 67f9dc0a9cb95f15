"""VS2++ (retrieval-augmented VS2, an upper-bound study): the direction, the steering and its tuning.

v = (gamma - 1) W_dec^T (mean_{S+} c_i - mean_{S-} c_j), c = SAE codes of the neighbours' final-layer
CLS (the neighbour sets S+/S-: `neighbours.py`), applied like VS2: x_hat = steer(x, v, lam). W_dec^T
is linear, so v = (gamma - 1) (mean_{S+} u_i - mean_{S-} u_j) with u_i = `sae_direction(sae, cls_i)`
computed once for the whole database. Baselines on the same sets: `baselines.py`; all of them
tuned and run together: `retrieval_suite.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from ..utils.errors import SparsesteerError
from .neighbours import (
    Fallback,
    FallbackCounts,
    GroupDirection,
    NeighbourSets,
    check_queries,
    group_direction,
    labels_1d,
)
from .tuning import DEFAULT_GAMMAS, DEFAULT_LAMS, GridSearch, grid_search
from .vs2 import check_finite, sae_direction, steer

if TYPE_CHECKING:
    from ..sae.base import SparseAutoencoder
    from .classify import CLSClassifier


@dataclass(frozen=True)
class SteeringResult:
    """Steered final-layer CLS vectors of VS2++ or CLIP steering (classify with `CLSClassifier`)."""

    steered_qd: Tensor
    """[Q, d] steered CLS vectors."""
    direction_qd: Tensor
    """[Q, d] the vector v that was added (x + lam * v, before the rescale)."""
    neighbours_qn: Tensor
    """[Q, N] database rows retrieved for each query."""
    n_positive_q: Tensor
    """[Q] |S+| per query."""
    fallbacks: FallbackCounts


def vs2pp_direction(
    sets: NeighbourSets,
    u_db_nd: Tensor,
    *,
    fallback: Fallback = "group",
    sae: SparseAutoencoder | None = None,
    x_qd: Tensor | None = None,
) -> GroupDirection:
    """W_dec^T (mean_{S+} c_i - mean_{S-} c_j) per query (VS2++'s v before the (gamma - 1) factor).

    `u_db_nd = sae_direction(sae, db_cls_nd)` (computed once per database). With fallback 'vs2',
    queries with an empty group get their own VS2 direction W_dec^T encode(x) (needs `sae`, `x_qd`)."""
    gd = group_direction(sets, u_db_nd, "none" if fallback == "vs2" else fallback)
    direction_qd = gd.direction_qd
    if fallback == "vs2" and bool(gd.fallback_q.any()):
        if sae is None or x_qd is None:
            raise SparsesteerError("VS2++ fallback 'vs2' needs the SAE and the query CLS vectors")
        rows = gd.fallback_q.nonzero().squeeze(1)
        direction_qd = direction_qd.clone()
        direction_qd[rows.to(direction_qd.device)] = sae_direction(sae, x_qd[rows.to(x_qd.device)]).to(direction_qd)
    return GroupDirection(
        direction_qd=direction_qd, fallback_q=gd.fallback_q, counts=gd.counts._replace(fallback=fallback)
    )


def vs2pp(
    sae: SparseAutoencoder,
    x_qd: Tensor,
    sets: NeighbourSets,
    lam: float,
    gamma: float,
    *,
    u_db_nd: Tensor,
    rescale: bool = True,
    fallback: Fallback = "group",
) -> SteeringResult:
    """VS2++-steered CLS vectors: steer(x, (gamma - 1) W_dec^T (mean_{S+} c - mean_{S-} c), lam).

    `u_db_nd`: `sae_direction(sae, db_cls_nd)` of the database (precompute once; it depends on
    neither the queries nor lam, gamma). With fallback 'none', queries with an empty group are
    returned unchanged."""
    check_finite(lam=lam, gamma=gamma)
    check_queries(x_qd, sets, sae.d_in, "query CLS vectors")
    gd = vs2pp_direction(sets, u_db_nd, fallback=fallback, sae=sae, x_qd=x_qd)
    v_qd = (gamma - 1.0) * gd.direction_qd.to(x_qd)
    return SteeringResult(
        steered_qd=steer(x_qd, v_qd, lam, rescale=rescale, what=f"VS2++ with lam = {lam:g}, gamma = {gamma:g}"),
        direction_qd=v_qd,
        neighbours_qn=sets.indices_qn,
        n_positive_q=sets.n_positive_q,
        fallbacks=gd.counts,
    )


# ---------------------------------------------------------------------------- tuning
def tune_vs2pp(
    classifier: CLSClassifier,
    sae: SparseAutoencoder,
    x_val_qd: Tensor,
    labels_val_q: Tensor,
    sets: NeighbourSets,
    u_db_nd: Tensor,
    lams: Sequence[float] = DEFAULT_LAMS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    *,
    rescale: bool = True,
    fallback: Fallback = "group",
    split: str = "validation split of train",
) -> GridSearch:
    """Validation accuracy of VS2++ over a (lam, gamma) grid. The direction is computed once; each
    grid point is one steer + head pass over the validation vectors. `labels_val_q` are the true
    labels of the validation items (train labels), used only to score."""
    check_queries(x_val_qd, sets, sae.d_in, "validation CLS vectors")
    labels_val_q = labels_1d(labels_val_q, "validation labels", sets.n_queries)
    dir_qd = vs2pp_direction(sets, u_db_nd, fallback=fallback, sae=sae, x_qd=x_val_qd).direction_qd.to(x_val_qd)

    def score(lam: float, gamma: float) -> float:
        what = f"VS2++ with lam = {lam:g}, gamma = {gamma:g}"
        return classifier.accuracy(
            steer(x_val_qd, (gamma - 1.0) * dir_qd, lam, rescale=rescale, what=what), labels_val_q
        )

    return grid_search(score, lams, gammas, split=split, n=sets.n_queries)
