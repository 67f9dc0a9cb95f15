"""Neighbour sets of VS2++ and its baselines: who the neighbours are, how they are labelled, which
are positives, and the per-query weights that turn them into a mean difference.

Every query (a test image's final-layer CLS x) retrieves its N nearest images of the unlabeled
TRAIN split (cosine on retrieval embeddings: DINOv2 or CLIP, the caller's choice), labels them, and
splits them into positives S+ and negatives S-:

- labels (`labels=`): "pseudo" = CLIP zero-shot labels of the train images; "oracle" = their
  true labels. The *query's* own label is always its zero-shot pseudo-label: no function here
  takes the queries' true labels, so test labels cannot leak.
- rule (`rule=`): "query" (default, Sec. 3.3 of the paper): S+ = neighbours whose label equals the
  query's pseudo-label; "mode" (Sec. 4.2): S+ = neighbours carrying the most frequent label among
  the N, ties going to the label of the nearest neighbour among the tied labels. S- = the rest.

Empty S+ or S- (`fallback=`): "group" (default) steers with the non-empty group alone
(+mean_{S+} or -mean_{S-}); "vs2" uses the query's plain VS2 direction (VS2++ only); "none"
leaves the query unsteered. Counts of each case come back with every result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..utils.errors import SparsesteerError, unknown
from .retrieval import Backend, Neighbours, knn
from .tuning import N_NEIGHBOURS

if TYPE_CHECKING:
    from .classify import CLSClassifier

LabelMode = Literal["pseudo", "oracle"]
Rule = Literal["query", "mode"]
Fallback = Literal["group", "vs2", "none"]
LABEL_MODES: tuple[LabelMode, ...] = ("pseudo", "oracle")
RULES = ("query", "mode")
FALLBACKS = ("group", "vs2", "none")
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
            indices_qn=self.indices_qn[rows],
            similarity_qn=self.similarity_qn[rows],
            labels_qn=self.labels_qn[rows],
            target_q=self.target_q[rows],
            positive_qn=self.positive_qn[rows],
            n_database=self.n_database,
            labels=self.labels,
            rule=self.rule,
        )


def labels_1d(t: Tensor, what: str, n: int | None = None) -> Tensor:
    """`t` as a 1-D int64 CPU tensor of class indices (of length `n` when given), else an error naming `what`."""
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
    query_pseudo_q = labels_1d(query_pseudo_q, "query pseudo-labels", Q)
    db_pseudo_n = labels_1d(db_pseudo_n, "database pseudo-labels")
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
        db_labels_n = labels_1d(db_labels_n, "true train labels (oracle mode)", n_db)
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
    train_pseudo_n = labels_1d(train_pseudo_n, "train pseudo-labels")
    return neighbour_sets(
        nb, train_pseudo_n[val_t], train_pseudo_n, labels=labels, db_labels_n=train_labels_n, rule=rule
    )


# ---------------------------------------------------------------------------- group weights
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
    counts = FallbackCounts(
        fallback=fallback, empty_positive=int((n_pos == 0).sum()), empty_negative=int((n_neg == 0).sum())
    )
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
    check_rows(values_nd, sets, "database vectors")
    w_qn, flagged_q, counts = group_weights(sets, fallback)
    return GroupDirection(
        direction_qd=weighted_sum(w_qn, sets.indices_qn, values_nd), fallback_q=flagged_q, counts=counts
    )


def check_rows(values_nd: Tensor, sets: NeighbourSets, what: str) -> None:
    """`values_nd` must hold one row per database item the sets index."""
    if values_nd.ndim != 2 or values_nd.shape[0] != sets.n_database:
        raise SparsesteerError(
            f"{what} have shape {tuple(values_nd.shape)}, but the neighbour sets index a database of {sets.n_database} rows"
        )


def check_queries(x_qd: Tensor, sets: NeighbourSets, d: int | None, what: str) -> None:
    """`x_qd` must hold one row (of width `d`, when given) per query of the sets."""
    if x_qd.ndim != 2 or x_qd.shape[0] != sets.n_queries or (d is not None and x_qd.shape[1] != d):
        want = f"[{sets.n_queries}, {d if d is not None else 'd'}]"
        raise SparsesteerError(
            f"{what} have shape {tuple(x_qd.shape)}, expected {want} (one row per query of the neighbour sets)"
        )


def pseudo_labels(classifier: CLSClassifier, cls_nd: Tensor) -> Tensor:
    """[N] int64 CLIP zero-shot labels (argmax of the logits) of final-layer CLS vectors."""
    return classifier.predict(cls_nd).long()
