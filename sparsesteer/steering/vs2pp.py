"""VS2++ (retrieval-augmented VS2, an upper-bound study) and its baselines: CLIP steering, weighted RAG.

Every query (a test image's final-layer CLS x) retrieves its N nearest images of the unlabeled
TRAIN split (cosine on retrieval embeddings: DINOv2 or CLIP, the caller's choice), labels them, and
splits them into positives S+ and negatives S-:

- labels (`labels=`): "pseudo" = CLIP zero-shot labels of the train images; "oracle" = their
  true labels. The *query's* own label is always its zero-shot pseudo-label: no function here
  takes the queries' true labels, so test labels cannot leak.
- rule (`rule=`): "query" (default, Sec. 3.3 of the paper): S+ = neighbours whose label equals the
  query's pseudo-label; "mode" (Sec. 4.2): S+ = neighbours carrying the most frequent label among
  the N, ties going to the label of the nearest neighbour among the tied labels. S- = the rest.

Methods (all cheap given the neighbour sets; see `tune_*` for validation-time grids):

- VS2++: v = (gamma - 1) W_dec^T (mean_{S+} c_i - mean_{S-} c_j), c = SAE codes of the neighbours'
  final-layer CLS, applied like VS2: x_hat = steer(x, v, lam). W_dec^T is linear, so
  v = (gamma - 1) (mean_{S+} u_i - mean_{S-} u_j) with u_i = `sae_direction(sae, cls_i)` computed
  once for the whole database.
- CLIP steering: the same sets and the same `steer`, v = mean_{S+} x_i - mean_{S-} x_j over the
  neighbours' final-layer CLS vectors (not CLIP's output embeddings): the same space as VS2++, so
  that the SAE is the only difference between the two.
- Weighted RAG: E = alpha q + (1 - alpha) sum_j w_j r_j, w_j = s_j / sum s, q and r the
  L2-normalised CLIP image embeddings of the query and the neighbours, s the retrieval cosines;
  by default over S+ (so "oracle" and "pseudo" variants exist, like the paper's "Weighted RAG
  (oracle)" row), optionally over all N neighbours. E is classified by the zero-shot head.

Empty S+ or S- (`fallback=`): "group" (default) steers with the non-empty group alone
(+mean_{S+} or -mean_{S-}); "vs2" uses the query's plain VS2 direction (VS2++ only); "none"
leaves the query unsteered. Counts of each case come back with every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import SparsesteerError, unknown
from .retrieval import Backend, Neighbours, knn
from .tuning import DEFAULT_ALPHAS, DEFAULT_CLIP_LAMS, DEFAULT_GAMMAS, DEFAULT_LAMS, GridSearch, grid_search
from .vs2 import check_finite, sae_direction, steer

if TYPE_CHECKING:
    from ..sae.base import SparseAutoencoder
    from .classify import CLSClassifier

LabelMode = Literal["pseudo", "oracle"]
Rule = Literal["query", "mode"]
Fallback = Literal["group", "vs2", "none"]
RagOver = Literal["positives", "all"]
LABEL_MODES = ("pseudo", "oracle")
RULES = ("query", "mode")
FALLBACKS = ("group", "vs2", "none")
RAG_OVER = ("positives", "all")

N_NEIGHBOURS = 50
"""The paper's N (ablation: 10/25/50/100)."""
"""CLIP-steering strengths. VS2++'s default grid reaches lam * (gamma - 1) = 9, so the same reach;
0 first so that ties pick no steering."""
"""Weighted-RAG alphas, 1.0 (zero-shot) first so that ties pick the least retrieval."""
_CHUNK = 128  # queries per gather of neighbour rows ([chunk, N, d])


# ---------------------------------------------------------------------------- neighbour sets
@dataclass(frozen=True)
class NeighbourSets:
    """The N neighbours of each query, their labels and the positive/negative split."""

    indices_qn: Tensor
    """[Q, N] int64 database rows, nearest first."""
    similarity_qn: Tensor
    """[Q, N] float32 retrieval cosines."""
    labels_qn: Tensor
    """[Q, N] int64 labels of the neighbours under `labels` (pseudo or oracle)."""
    target_q: Tensor
    """[Q] int64 the label that defines S+: the query's pseudo-label (rule "query") or the
    neighbours' mode (rule "mode")."""
    positive_qn: Tensor
    """[Q, N] bool: neighbour in S+ (else in S-)."""
    n_database: int
    """Rows of the database the indices refer to (checked against the tensors given later)."""
    labels: str
    """'pseudo' or 'oracle'."""
    rule: str
    """'query' or 'mode'."""

    @property
    def n_queries(self) -> int:
        return int(self.indices_qn.shape[0])

    @property
    def n_neighbours(self) -> int:
        return int(self.indices_qn.shape[1])

    @property
    def n_positive_q(self) -> Tensor:
        """[Q] int64 |S+|."""
        return self.positive_qn.sum(1)

    @property
    def n_negative_q(self) -> Tensor:
        """[Q] int64 |S-|."""
        return (~self.positive_qn).sum(1)

    def subset(self, rows: Tensor) -> NeighbourSets:
        """The sets of some queries (e.g. one batch)."""
        rows = torch.as_tensor(rows).long()
        return NeighbourSets(
            self.indices_qn[rows],
            self.similarity_qn[rows],
            self.labels_qn[rows],
            self.target_q[rows],
            self.positive_qn[rows],
            self.n_database,
            self.labels,
            self.rule,
        )


def _labels_1d(t: Tensor, what: str, n: int | None = None) -> Tensor:
    t = torch.as_tensor(t)
    if t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise SparsesteerError(
            f"{what} must be a 1-D integer tensor of class indices, got {t.dtype} of shape {tuple(t.shape)}"
        )
    if n is not None and t.shape[0] != n:
        raise SparsesteerError(f"{what} has {t.shape[0]} entries, expected {n}")
    return t.long().cpu()


def mode_labels(labels_qn: Tensor) -> Tensor:
    """[Q] the most frequent label of each row; ties go to the tied label that occurs first (the
    nearest neighbour among those carrying a tied label)."""
    out_q = torch.empty(labels_qn.shape[0], dtype=labels_qn.dtype)
    for s in range(0, labels_qn.shape[0], 4096):
        lab = labels_qn[s : s + 4096]
        # count_qn[q, j] = how often lab[q, j] occurs in row q (an N x N comparison: N is ~50)
        count_qn = (lab[:, :, None] == lab[:, None, :]).sum(2)
        first_q = (count_qn == count_qn.max(1, keepdim=True).values).int().argmax(1)  # first maximal position
        out_q[s : s + 4096] = lab.gather(1, first_q[:, None]).squeeze(1)
    return out_q


def neighbour_sets(
    neighbours: Neighbours,
    query_pseudo_q: Tensor,
    db_pseudo_n: Tensor,
    *,
    labels: LabelMode = "pseudo",
    db_labels_n: Tensor | None = None,
    rule: Rule = "query",
) -> NeighbourSets:
    """Label each query's neighbours and split them into S+ / S-.

    `query_pseudo_q`: CLIP zero-shot labels of the queries (argmax of `CLSClassifier.logits`; never
    their true labels). `db_pseudo_n`: the same for the database (train) items. `db_labels_n`: true
    train labels, needed (only) by `labels="oracle"`; unlabeled items are -1.
    """
    if labels not in LABEL_MODES:
        raise unknown("VS2++ label mode", labels, LABEL_MODES)
    if rule not in RULES:
        raise unknown("VS2++ positive rule", rule, RULES)
    idx_qn = neighbours.indices.long().cpu()
    if idx_qn.ndim != 2 or idx_qn.shape[1] == 0:
        raise SparsesteerError(f"neighbour indices must be [Q, N] with N >= 1, got shape {tuple(idx_qn.shape)}")
    Q = idx_qn.shape[0]
    if neighbours.similarity.shape != idx_qn.shape:
        raise SparsesteerError(
            f"neighbour similarities have shape {tuple(neighbours.similarity.shape)}, indices {tuple(idx_qn.shape)}"
        )
    query_pseudo_q = _labels_1d(query_pseudo_q, "query pseudo-labels", Q)
    db_pseudo_n = _labels_1d(db_pseudo_n, "database pseudo-labels")
    n_db = int(db_pseudo_n.shape[0])
    if Q and (int(idx_qn.min()) < 0 or int(idx_qn.max()) >= n_db):
        raise SparsesteerError(
            f"neighbour indices reach row {int(idx_qn.max())}, but the database has {n_db} pseudo-labels"
        )
    if labels == "oracle":
        if db_labels_n is None:
            raise SparsesteerError(
                "VS2++ oracle mode (--labels oracle) needs the true train labels: cache a labelled train split, "
                "or use --labels pseudo"
            )
        db_labels_n = _labels_1d(db_labels_n, "true train labels (oracle mode)", n_db)
        table_n = db_labels_n
        if Q and bool((table_n[idx_qn] < 0).any()):
            raise SparsesteerError(
                "VS2++ oracle mode (--labels oracle) needs the true train labels, but some retrieved train items "
                "are unlabeled (-1): cache a labelled train split, or use --labels pseudo"
            )
    else:
        table_n = db_pseudo_n
    labels_qn = table_n[idx_qn]
    target_q = query_pseudo_q if rule == "query" else mode_labels(labels_qn)
    return NeighbourSets(
        indices_qn=idx_qn,
        similarity_qn=neighbours.similarity.float().cpu(),
        labels_qn=labels_qn,
        target_q=target_q,
        positive_qn=labels_qn == target_q[:, None],
        n_database=n_db,
        labels=labels,
        rule=rule,
    )


def validation_neighbour_sets(
    train_embeds_ne: Tensor,
    val_idx: Tensor | np.ndarray,
    train_pseudo_n: Tensor,
    *,
    n_neighbours: int = N_NEIGHBOURS,
    labels: LabelMode = "pseudo",
    train_labels_n: Tensor | None = None,
    rule: Rule = "query",
    backend: Backend = "auto",
) -> NeighbourSets:
    """Neighbour sets of validation queries drawn from the train split (`tuning.validation_split`).

    Each validation item retrieves its neighbours from the whole train split except itself
    (`exclude_self`), the situation of a test query, whose own image is never in the database;
    its own label is its pseudo-label, like a test query's."""
    val_t = torch.as_tensor(np.asarray(val_idx)).long()
    nb = knn(
        train_embeds_ne[val_t], train_embeds_ne, n_neighbours, exclude_self=True, query_ids_q=val_t, backend=backend
    )
    train_pseudo_n = _labels_1d(train_pseudo_n, "train pseudo-labels")
    return neighbour_sets(
        nb, train_pseudo_n[val_t], train_pseudo_n, labels=labels, db_labels_n=train_labels_n, rule=rule
    )


# ---------------------------------------------------------------------------- group means
class FallbackCounts(NamedTuple):
    """How many queries had an empty group, and what was done about it."""

    fallback: str
    """The strategy used: 'group', 'vs2' or 'none'."""
    empty_positive: int
    """Queries with no positive neighbour (S+ empty)."""
    empty_negative: int
    """Queries whose neighbours were all positive (S- empty)."""

    @property
    def total(self) -> int:
        return self.empty_positive + self.empty_negative


class GroupDirection(NamedTuple):
    """mean_{S+} values - mean_{S-} values per query, with the fallback applied."""

    direction_qd: Tensor
    """[Q, d] the difference of means (or the one non-empty group's +/- mean); zero where
    `fallback_q` is set (the caller substitutes its own fallback there)."""
    fallback_q: Tensor
    """[Q] bool: a group was empty and the fallback is 'vs2' or 'none'."""
    counts: FallbackCounts


def group_weights(sets: NeighbourSets, fallback: Fallback = "group") -> tuple[Tensor, Tensor, FallbackCounts]:
    """Weights [Q, N] (float64) such that sum_j w_qj values[idx_qj] = mean_{S+} - mean_{S-}, the
    fallback mask [Q] and the counts. An empty group contributes nothing; with fallback 'group'
    the other group's mean stands alone, otherwise the row is zero and flagged."""
    if fallback not in FALLBACKS:
        raise unknown("VS2++ fallback", fallback, FALLBACKS)
    pos = sets.positive_qn.double()
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(1, keepdim=True), neg.sum(1, keepdim=True)
    w_qn = pos / n_pos.clamp_min(1) - neg / n_neg.clamp_min(1)
    empty_q = (n_pos == 0).squeeze(1) | (n_neg == 0).squeeze(1)
    flagged_q = empty_q if fallback != "group" else torch.zeros_like(empty_q)
    w_qn[flagged_q] = 0.0
    counts = FallbackCounts(fallback, int((n_pos == 0).sum()), int((n_neg == 0).sum()))
    return w_qn, flagged_q, counts


def weighted_sum(w_qn: Tensor, idx_qn: Tensor, values_nd: Tensor) -> Tensor:
    """sum_j w_qj values[idx_qj] -> [Q, d], in the dtype of `values_nd`, gathering [chunk, N, d] at a time."""
    Q = idx_qn.shape[0]
    out = torch.empty(Q, values_nd.shape[1], dtype=values_nd.dtype, device=values_nd.device)
    for s in range(0, Q, _CHUNK):
        rows = values_nd[idx_qn[s : s + _CHUNK].to(values_nd.device)].double()  # [c, N, d]
        w = w_qn[s : s + _CHUNK].to(rows.device)
        out[s : s + _CHUNK] = torch.bmm(w[:, None, :], rows).squeeze(1).to(values_nd.dtype)
    return out


def group_direction(sets: NeighbourSets, values_nd: Tensor, fallback: Fallback = "group") -> GroupDirection:
    """mean_{S+} values_i - mean_{S-} values_j for every query (float64 accumulation)."""
    _check_rows(values_nd, sets, "database vectors")
    w_qn, flagged_q, counts = group_weights(sets, fallback)
    return GroupDirection(weighted_sum(w_qn, sets.indices_qn, values_nd), flagged_q, counts)


def _check_rows(values_nd: Tensor, sets: NeighbourSets, what: str) -> None:
    if values_nd.ndim != 2 or values_nd.shape[0] != sets.n_database:
        raise SparsesteerError(
            f"{what} have shape {tuple(values_nd.shape)}, but the neighbour sets index a database of {sets.n_database} rows"
        )


def _check_queries(x_qd: Tensor, sets: NeighbourSets, d: int | None, what: str) -> None:
    if x_qd.ndim != 2 or x_qd.shape[0] != sets.n_queries or (d is not None and x_qd.shape[1] != d):
        want = f"[{sets.n_queries}, {d if d is not None else 'd'}]"
        raise SparsesteerError(
            f"{what} have shape {tuple(x_qd.shape)}, expected {want} (one row per query of the neighbour sets)"
        )


# ---------------------------------------------------------------------------- results
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


# ---------------------------------------------------------------------------- VS2++
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
    return GroupDirection(direction_qd, gd.fallback_q, gd.counts._replace(fallback=fallback))


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
    _check_queries(x_qd, sets, sae.d_in, "query CLS vectors")
    gd = vs2pp_direction(sets, u_db_nd, fallback=fallback, sae=sae, x_qd=x_qd)
    v_qd = (gamma - 1.0) * gd.direction_qd.to(x_qd)
    return SteeringResult(steer(x_qd, v_qd, lam, rescale=rescale), v_qd, sets.indices_qn, sets.n_positive_q, gd.counts)


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
    _check_queries(x_qd, sets, db_x_nd.shape[1] if db_x_nd.ndim == 2 else None, "query CLS vectors")
    gd = group_direction(sets, db_x_nd, fallback)
    v_qd = gd.direction_qd.to(x_qd)
    return SteeringResult(steer(x_qd, v_qd, lam, rescale=rescale), v_qd, sets.indices_qn, sets.n_positive_q, gd.counts)


# ---------------------------------------------------------------------------- weighted RAG
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
        classifier.logits_of_embeddings(E_qe),
        E_qe,
        sets.indices_qn,
        parts.n_used_q,
        int((parts.n_used_q == 0).sum()),
        int(parts.uniform_q.sum()),
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
    _check_rows(db_embeds_ne, sets, "database image embeddings")
    _check_queries(query_embeds_qe, sets, db_embeds_ne.shape[1], "query image embeddings")
    w_qn, n_used_q, uniform_q = rag_weights(sets, over)
    r_qe = weighted_sum(w_qn, sets.indices_qn, F.normalize(db_embeds_ne.float(), dim=-1))
    q_qe = F.normalize(query_embeds_qe.float(), dim=-1).to(r_qe.device)
    return _RAGParts(q_qe, r_qe, n_used_q, uniform_q)


# ---------------------------------------------------------------------------- tuning
@dataclass
class LineSearch:
    """Accuracy over one hyper-parameter and the chosen value (ties: the first, i.e. the weakest)."""

    param: str
    values: list[float]
    accuracy: list[float]
    """accuracy[i] for values[i] (fraction in [0, 1])."""
    best_value: float
    best_accuracy: float
    split: str
    """Where it was evaluated (a validation split of train)."""
    n: int
    """Number of samples it was evaluated on."""

    def to_json(self) -> dict:
        return asdict(self)


def line_search(score, values: Sequence[float], *, param: str, split: str, n: int) -> LineSearch:
    """Evaluate `score(value)` for each value; the first best wins."""
    if not values:
        raise SparsesteerError(f"the {param} grid is empty")
    acc = [float(score(float(v))) for v in values]
    i = int(np.argmax(acc))
    return LineSearch(param, [float(v) for v in values], acc, float(values[i]), acc[i], split, n)


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
    _check_queries(x_val_qd, sets, sae.d_in, "validation CLS vectors")
    labels_val_q = _labels_1d(labels_val_q, "validation labels", sets.n_queries)
    dir_qd = vs2pp_direction(sets, u_db_nd, fallback=fallback, sae=sae, x_qd=x_val_qd).direction_qd.to(x_val_qd)

    def score(lam: float, gamma: float) -> float:
        return classifier.accuracy(steer(x_val_qd, (gamma - 1.0) * dir_qd, lam, rescale=rescale), labels_val_q)

    return grid_search(score, lams, gammas, split=split, n=sets.n_queries)


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
    _check_queries(x_val_qd, sets, db_x_nd.shape[1], "validation CLS vectors")
    labels_val_q = _labels_1d(labels_val_q, "validation labels", sets.n_queries)
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
    labels_val_q = _labels_1d(labels_val_q, "validation labels", sets.n_queries)
    parts = _rag_parts(query_embeds_qe, sets, db_embeds_ne, over)

    def score(alpha: float) -> float:
        pred_q = classifier.logits_of_embeddings(parts.fuse(alpha)).argmax(-1)
        return float((pred_q == labels_val_q).double().mean())

    return line_search(score, alphas, param="alpha", split=split, n=sets.n_queries)


def pseudo_labels(classifier: CLSClassifier, cls_nd: Tensor) -> Tensor:
    """[N] int64 CLIP zero-shot labels (argmax of the logits) of final-layer CLS vectors."""
    return classifier.predict(cls_nd).long()


# ---------------------------------------------------------------------------- the `reproduce vs2` rows
# Row keys of the paper's Table 1 (experiments/vs2_paper.py) produced here, per label mode.
ROW_KEYS = {"vs2pp": "vs2pp_{}", "clip_steer": "clip_steer_{}", "rag": "rag_{}"}


def _sets_by_mode(
    neighbours: Neighbours,
    pseudo_q: Tensor,
    pseudo_db: Tensor,
    labels_db: Tensor | None,
    rule: Rule,
    modes: Sequence[str] = LABEL_MODES,
) -> dict[str, NeighbourSets]:
    return {
        mode: neighbour_sets(neighbours, pseudo_q, pseudo_db, labels=mode, db_labels_n=labels_db, rule=rule)
        for mode in modes
    }


def _common_settings(cfg: Any, sets: NeighbourSets) -> dict[str, Any]:
    return {
        "labels": sets.labels,
        "rule": sets.rule,
        "neighbours": sets.n_neighbours,
        "retriever": getattr(cfg, "retriever", None),
    }


def tune_all(
    *,
    sae: SparseAutoencoder,
    clf: CLSClassifier,
    x_db: Tensor,
    emb_db: Tensor,
    pseudo_db: Tensor,
    labels_db: Tensor,
    x_q: Tensor,
    emb_q: Tensor,
    pseudo_q: Tensor,
    labels_q: Tensor,
    cfg: Any,
    split: str,
    modes: Sequence[str] = LABEL_MODES,
) -> dict[str, Any]:
    """Tune VS2++, CLIP steering and weighted RAG, oracle and pseudo, on validation queries.

    The validation queries (`x_q`, `emb_q`, `pseudo_q`, true labels `labels_q` for scoring only)
    must not be rows of the database (`x_db`, ...), e.g. the validation and fit parts of train.
    `cfg` supplies `neighbours`, `positive_rule`, `lams`, `gammas`, `clip_lams`, `alphas` (and
    optionally `retriever`). Neighbours, SAE directions and mean differences are computed once.
    Returns JSON-able {row key: grid or line search + settings}."""
    nb = knn(emb_q, emb_db, cfg.neighbours)
    u_db = sae_direction(sae, x_db)
    emb_img_db, emb_img_q = clf.embed(x_db), clf.embed(x_q)
    out: dict[str, Any] = {}
    for mode, sets in _sets_by_mode(nb, pseudo_q, pseudo_db, labels_db, cfg.positive_rule, modes).items():
        common = _common_settings(cfg, sets)
        counts = group_weights(sets, "group")[2]
        grid = tune_vs2pp(clf, sae, x_q, labels_q, sets, u_db, cfg.lams, cfg.gammas, split=split)
        out[ROW_KEYS["vs2pp"].format(mode)] = {**grid.to_json(), **common, "fallbacks": counts._asdict()}
        line = tune_clip_steering(clf, x_q, labels_q, sets, x_db, cfg.clip_lams, split=split)
        out[ROW_KEYS["clip_steer"].format(mode)] = {**line.to_json(), **common}
        rag = tune_weighted_rag(clf, emb_img_q, labels_q, sets, emb_img_db, cfg.alphas, split=split)
        out[ROW_KEYS["rag"].format(mode)] = {**rag.to_json(), **common, "over": "positives"}
    return out


def evaluate_all(
    *,
    tuned: dict[str, Any],
    sae: SparseAutoencoder,
    clf: CLSClassifier,
    x_db: Tensor,
    emb_db: Tensor,
    pseudo_db: Tensor,
    labels_db: Tensor,
    x_q: Tensor,
    emb_q: Tensor,
    pseudo_q: Tensor,
    cfg: Any,
    modes: Sequence[str] = LABEL_MODES,
) -> dict[str, dict[str, Any]]:
    """Test predictions of the six retrieval rows with the settings chosen by `tune_all`.

    The test queries' true labels are not an input. Returns {row key: {"pred": int64 array [Q],
    "settings": dict}}."""
    nb = knn(emb_q, emb_db, cfg.neighbours)
    u_db = sae_direction(sae, x_db)
    emb_img_db, emb_img_q = clf.embed(x_db), clf.embed(x_q)
    rows: dict[str, dict[str, Any]] = {}
    for mode, sets in _sets_by_mode(nb, pseudo_q, pseudo_db, labels_db, cfg.positive_rule, modes).items():
        common = _common_settings(cfg, sets)
        t = tuned[ROW_KEYS["vs2pp"].format(mode)]
        r = vs2pp(sae, x_q, sets, t["best_lam"], t["best_gamma"], u_db_nd=u_db)
        rows[ROW_KEYS["vs2pp"].format(mode)] = {
            "pred": clf.predict(r.steered_qd).numpy(),
            "settings": {
                "lam": t["best_lam"],
                "gamma": t["best_gamma"],
                **common,
                "fallbacks": r.fallbacks._asdict(),
                "tuned_on": t["split"],
            },
        }
        t = tuned[ROW_KEYS["clip_steer"].format(mode)]
        c = clip_steering(x_q, sets, x_db, t["best_value"])
        rows[ROW_KEYS["clip_steer"].format(mode)] = {
            "pred": clf.predict(c.steered_qd).numpy(),
            "settings": {"lam": t["best_value"], **common, "fallbacks": c.fallbacks._asdict(), "tuned_on": t["split"]},
        }
        t = tuned[ROW_KEYS["rag"].format(mode)]
        g = weighted_rag(clf, emb_img_q, sets, emb_img_db, t["best_value"])
        rows[ROW_KEYS["rag"].format(mode)] = {
            "pred": g.logits_qc.argmax(-1).numpy(),
            "settings": {
                "alpha": t["best_value"],
                **common,
                "over": "positives",
                "n_empty": g.n_empty,
                "tuned_on": t["split"],
            },
        }
    return rows
