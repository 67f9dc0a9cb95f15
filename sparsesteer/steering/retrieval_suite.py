"""The retrieval rows of the VS2 paper's Table 1, together: VS2++, CLIP steering and weighted RAG, each
with pseudo and/or oracle neighbour labels, tuned on validation queries (`tune_all`), then run on
test queries with the chosen settings (`evaluate_all`).

Used by `sparsesteer steer vs2pp` and by `sparsesteer reproduce vs2`. The neighbours, the SAE
directions of the database and the CLIP image embeddings are computed once per call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ..utils.errors import SparsesteerError, unknown
from .baselines import clip_steering, tune_clip_steering, tune_weighted_rag, weighted_rag
from .neighbours import LABEL_MODES, RULES, LabelMode, NeighbourSets, Rule, group_weights, neighbour_sets
from .retrieval import Neighbours, knn
from .settings import check_steer_value
from .tuning import DEFAULT_ALPHAS, DEFAULT_CLIP_LAMS, DEFAULT_GAMMAS, DEFAULT_LAMS, N_NEIGHBOURS
from .vs2 import sae_direction
from .vs2pp import tune_vs2pp, vs2pp

if TYPE_CHECKING:
    from ..sae.base import SparseAutoencoder
    from .classify import CLSClassifier

ROW_KEYS = {"vs2pp": "vs2pp_{}", "clip_steer": "clip_steer_{}", "rag": "rag_{}"}
"""Row keys of the paper's Table 1 (experiments/vs2/paper.py) produced here, per label mode."""


@dataclass(frozen=True)
class RetrievalSuiteSettings:
    """Everything `tune_all` and `evaluate_all` need besides the tensors."""

    neighbours: int = N_NEIGHBOURS
    """Neighbours retrieved per query (the paper's N)."""
    positive_rule: Rule = "query"
    """Positives: neighbours sharing the query's pseudo-label ('query'), or carrying the most
    frequent label among the N ('mode')."""
    labels: tuple[LabelMode, ...] = LABEL_MODES
    """Neighbour label modes to run, in this order: 'pseudo' (CLIP zero-shot labels) and/or
    'oracle' (true database labels)."""
    lams: tuple[float, ...] = DEFAULT_LAMS
    """VS2++ lambda grid."""
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    """VS2++ gamma grid."""
    clip_lams: tuple[float, ...] = DEFAULT_CLIP_LAMS
    """CLIP-steering lambda grid."""
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    """Weighted-RAG alpha grid (1 = zero-shot)."""
    retriever: str | None = None
    """What made the retrieval embeddings (a model id, 'clip', ...): recorded in every row's settings."""

    def __post_init__(self) -> None:
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise SparsesteerError(f"neighbours must be an integer >= 1, got {self.neighbours!r}")
        if self.positive_rule not in RULES:
            raise unknown("VS2++ positive rule", self.positive_rule, RULES)
        if not self.labels:
            raise SparsesteerError(f"no label mode to run: give one or more of {', '.join(LABEL_MODES)}")
        for mode in self.labels:
            if mode not in LABEL_MODES:
                raise unknown("VS2++ label mode", mode, LABEL_MODES)
        for name in ("lams", "gammas", "clip_lams", "alphas"):
            grid = getattr(self, name)
            if not grid:
                raise SparsesteerError(f"the {name} grid is empty")
            if not all(math.isfinite(v) for v in grid):
                raise SparsesteerError(f"{name} must be finite numbers, got {tuple(grid)}")
            for v in grid:
                check_steer_value(name, v)


class RetrievalRows(NamedTuple):
    """Row-aligned tensors of one side of retrieval: the database (train) or the queries."""

    cls_nd: Tensor
    """[N, d] final-layer CLS vectors (what VS2++ and CLIP steering average and steer)."""
    embeds_ne: Tensor
    """[N, e] retrieval embeddings (DINOv2 `head`, CLIP image embeddings, ...)."""
    pseudo_n: Tensor
    """[N] int64 CLIP zero-shot labels (argmax of `CLSClassifier.logits`)."""
    labels_n: Tensor | None = None
    """[N] true labels: the database's (oracle mode), or the validation queries' (to score
    `tune_all`). Test queries carry none: `evaluate_all` refuses them."""

    def take(self, rows: Tensor | Sequence[int]) -> RetrievalRows:
        """The same tensors restricted to `rows` (e.g. the fit or validation part of train)."""
        idx = torch.as_tensor(rows)
        return RetrievalRows(
            cls_nd=self.cls_nd[idx],
            embeds_ne=self.embeds_ne[idx],
            pseudo_n=self.pseudo_n[idx],
            labels_n=None if self.labels_n is None else self.labels_n[idx],
        )


def _sets_by_mode(
    neighbours: Neighbours, database: RetrievalRows, queries: RetrievalRows, settings: RetrievalSuiteSettings
) -> dict[str, NeighbourSets]:
    return {
        mode: neighbour_sets(
            neighbours,
            queries.pseudo_n,
            database.pseudo_n,
            labels=mode,
            db_labels_n=database.labels_n,
            rule=settings.positive_rule,
        )
        for mode in settings.labels
    }


def _common_settings(settings: RetrievalSuiteSettings, sets: NeighbourSets) -> dict[str, Any]:
    return {
        "labels": sets.labels,
        "rule": sets.rule,
        "neighbours": sets.n_neighbours,
        "retriever": settings.retriever,
    }


def tune_all(
    sae: SparseAutoencoder,
    classifier: CLSClassifier,
    database: RetrievalRows,
    queries: RetrievalRows,
    settings: RetrievalSuiteSettings,
    *,
    split: str,
) -> dict[str, Any]:
    """Tune VS2++, CLIP steering and weighted RAG, for each label mode, on validation queries.

    The validation queries (their true labels `queries.labels_n` used for scoring only) must not be
    rows of the database, e.g. the validation and fit parts of train. `split` names them in the
    results. Returns JSON-able {row key: grid or line search + settings}."""
    if queries.labels_n is None:
        raise SparsesteerError("tuning scores the validation queries: give their true labels (queries.labels_n)")
    x_db, x_q, labels_q = database.cls_nd, queries.cls_nd, queries.labels_n
    nb = knn(queries.embeds_ne, database.embeds_ne, settings.neighbours)
    u_db = sae_direction(sae, x_db)
    emb_img_db, emb_img_q = classifier.embed(x_db), classifier.embed(x_q)
    out: dict[str, Any] = {}
    for mode, sets in _sets_by_mode(nb, database, queries, settings).items():
        common = _common_settings(settings, sets)
        counts = group_weights(sets, "group")[2]
        grid = tune_vs2pp(classifier, sae, x_q, labels_q, sets, u_db, settings.lams, settings.gammas, split=split)
        out[ROW_KEYS["vs2pp"].format(mode)] = {**grid.to_json(), **common, "fallbacks": counts._asdict()}
        line = tune_clip_steering(classifier, x_q, labels_q, sets, x_db, settings.clip_lams, split=split)
        out[ROW_KEYS["clip_steer"].format(mode)] = {**line.to_json(), **common}
        rag = tune_weighted_rag(classifier, emb_img_q, labels_q, sets, emb_img_db, settings.alphas, split=split)
        out[ROW_KEYS["rag"].format(mode)] = {**rag.to_json(), **common, "over": "positives"}
    return out


def evaluate_all(
    tuned: dict[str, Any],
    sae: SparseAutoencoder,
    classifier: CLSClassifier,
    database: RetrievalRows,
    queries: RetrievalRows,
    settings: RetrievalSuiteSettings,
) -> dict[str, dict[str, Any]]:
    """Test predictions of the retrieval rows with the settings chosen by `tune_all`.

    The test queries' true labels are not an input (`queries.labels_n` must be None). Returns
    {row key: {"pred": int64 array [Q], "settings": dict}}."""
    if queries.labels_n is not None:
        raise SparsesteerError("evaluate_all never reads the test queries' labels: pass queries with labels_n=None")
    x_db, x_q = database.cls_nd, queries.cls_nd
    nb = knn(queries.embeds_ne, database.embeds_ne, settings.neighbours)
    u_db = sae_direction(sae, x_db)
    emb_img_db, emb_img_q = classifier.embed(x_db), classifier.embed(x_q)
    rows: dict[str, dict[str, Any]] = {}
    for mode, sets in _sets_by_mode(nb, database, queries, settings).items():
        common = _common_settings(settings, sets)
        t = tuned[ROW_KEYS["vs2pp"].format(mode)]
        r = vs2pp(sae, x_q, sets, t["best_lam"], t["best_gamma"], u_db_nd=u_db)
        rows[ROW_KEYS["vs2pp"].format(mode)] = {
            "pred": classifier.predict(r.steered_qd).numpy(),
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
            "pred": classifier.predict(c.steered_qd).numpy(),
            "settings": {"lam": t["best_value"], **common, "fallbacks": c.fallbacks._asdict(), "tuned_on": t["split"]},
        }
        t = tuned[ROW_KEYS["rag"].format(mode)]
        g = weighted_rag(classifier, emb_img_q, sets, emb_img_db, t["best_value"])
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
