"""VS2++, its neighbour sets, its baselines and the retrieval suite, each against an independent
computation: a hand-worked neighbour table, the literal formulas on SAE codes, hand-computed CLIP
steering and weighted RAG, and a tiny CLIP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.zeroshot import ZeroShotClassifier
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering.baselines import clip_steering, tune_clip_steering, tune_weighted_rag, weighted_rag
from sparsesteer.steering.classify import CLSClassifier
from sparsesteer.steering.neighbours import (
    FallbackCounts,
    mode_labels,
    neighbour_sets,
    pseudo_labels,
    validation_neighbour_sets,
)
from sparsesteer.steering.retrieval import Neighbours, knn
from sparsesteer.steering.retrieval_suite import RetrievalRows, RetrievalSuiteSettings, evaluate_all, tune_all
from sparsesteer.steering.tuning import validation_split
from sparsesteer.steering.vs2 import sae_direction
from sparsesteer.steering.vs2pp import tune_vs2pp, vs2pp
from sparsesteer.utils.errors import SparsesteerError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny matmuls: on a busy 2-core machine each multi-threaded one waits for the other core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ the hand-worked table
# 5 queries x 5 neighbours; database row r has pseudo-label DB_PSEUDO[r], true label DB_TRUE[r].
DB_PSEUDO = torch.tensor([2, 1, 2, 3, 1, 1, 1, 0, 1, 2, 3, 2, 2, 3, 0, 5, 1, 2, 2, 1])
DB_TRUE = torch.tensor([2, 1, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 3, 3, 5, 1, 1, 2, 1])
IDX = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [0, 2, 11, 12, 17]])
Q_PSEUDO = torch.tensor([2, 0, 4, 1, 2])
SIM = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]]).repeat(5, 1) - 0.01 * torch.arange(5)[:, None]
#  pseudo labels of the neighbours:      true labels:
#  q0 [2,1,2,3,1] query 2                [2,1,3,3,2]
#  q1 [1,1,0,1,2] query 0                [1,0,0,1,2]
#  q2 [3,2,2,3,0] query 4 (no positive)  [3,3,2,3,3]
#  q3 [5,1,2,2,1] query 1                [5,1,1,2,1]
#  q4 [2,2,2,2,2] query 2 (no negative)  [2,3,3,2,1]
EXPECTED = {
    ("pseudo", "query"): [[1, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [1, 1, 1, 1, 1]],
    # mode: q0 tie 2/1 -> nearest tied is 2; q2 tie 3/2 -> 3 (position 0); q3 tie 1/2 -> 1 (position 1)
    ("pseudo", "mode"): [[1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [1, 1, 1, 1, 1]],
    # oracle: neighbours' TRUE labels, the query's label is still its pseudo-label
    ("oracle", "query"): [[1, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 1], [1, 0, 0, 1, 0]],
    # oracle mode: q0 tie 2/3 -> 2; q1 tie 1/0 -> 1; q2 -> 3; q3 -> 1; q4 tie 2/3 -> 2
    ("oracle", "mode"): [[1, 0, 0, 0, 1], [1, 0, 0, 1, 0], [1, 1, 0, 1, 1], [0, 1, 1, 0, 1], [1, 0, 0, 1, 0]],
}


def table_sets(labels="pseudo", rule="query"):
    return neighbour_sets(Neighbours(SIM, IDX), Q_PSEUDO, DB_PSEUDO, labels=labels, db_labels_n=DB_TRUE, rule=rule)


@pytest.mark.parametrize("labels,rule", list(EXPECTED))
def test_positives_on_hand_worked_table(labels, rule):
    sets = table_sets(labels, rule)
    assert sets.positive_qn.int().tolist() == EXPECTED[labels, rule]
    assert sets.n_positive_q.tolist() == [sum(r) for r in EXPECTED[labels, rule]]
    assert sets.n_negative_q.tolist() == [5 - sum(r) for r in EXPECTED[labels, rule]]
    assert torch.equal(sets.labels_qn, (DB_TRUE if labels == "oracle" else DB_PSEUDO)[IDX])
    if rule == "query":
        assert torch.equal(sets.target_q, Q_PSEUDO)


def test_mode_labels_ties_go_to_the_nearest():
    assert mode_labels(torch.tensor([[4, 7, 7, 4, 9], [9, 1, 2, 2, 1], [3, 3, 3, 1, 1], [8, 8, 8, 8, 8]])).tolist() == [
        4,
        1,
        3,
        8,
    ]


def test_oracle_needs_train_labels():
    with pytest.raises(SparsesteerError, match=r"oracle mode \(--labels oracle\) needs the true train labels"):
        neighbour_sets(Neighbours(SIM, IDX), Q_PSEUDO, DB_PSEUDO, labels="oracle")
    unlabeled = DB_TRUE.clone()
    unlabeled[3] = -1
    with pytest.raises(SparsesteerError, match="unlabeled"):
        neighbour_sets(Neighbours(SIM, IDX), Q_PSEUDO, DB_PSEUDO, labels="oracle", db_labels_n=unlabeled)
    with pytest.raises(SparsesteerError, match="did you mean 'oracle'"):
        neighbour_sets(Neighbours(SIM, IDX), Q_PSEUDO, DB_PSEUDO, labels="oracel")
    with pytest.raises(SparsesteerError, match="positive rule"):
        neighbour_sets(Neighbours(SIM, IDX), Q_PSEUDO, DB_PSEUDO, rule="majority")


# ------------------------------------------------------------------ VS2++ against the literal formula
def small_sae(d=8, n=32, k=3, seed=0):
    torch.manual_seed(seed)
    sae = build(SAEConfig(arch="topk", d_in=d, n_latents=n, k=k))
    with torch.no_grad():
        sae.b_dec.normal_()  # a decoder bias that must cancel
        sae.b_enc.normal_(std=0.1)
    return sae


def literal_vs2pp(sae, x_qd, db_x_nd, positive_qn, lam, gamma, fallback):
    """v = (gamma - 1) W_dec^T (mean_{S+} c_i - mean_{S-} c_j) from dense codes, in float64, row by row."""
    W = sae.W_dec.detach().double()  # [n_latents, d]
    codes = sae.encode_dense(db_x_nd).detach().double()
    out = []
    for q in range(x_qd.shape[0]):
        nb = IDX[q].tolist()
        pos = [nb[j] for j in range(len(nb)) if positive_qn[q, j]]
        neg = [nb[j] for j in range(len(nb)) if not positive_qn[q, j]]
        x = x_qd[q].double()
        if pos and neg:
            c = codes[pos].mean(0) - codes[neg].mean(0)
        elif fallback == "group":
            c = codes[pos].mean(0) if pos else -codes[neg].mean(0)
        elif fallback == "vs2":
            c = sae.encode_dense(x_qd[q : q + 1]).detach().double()[0]
        else:  # none
            out.append(x)
            continue
        v = (gamma - 1) * (c @ W)
        z = x + lam * v
        out.append(z * x.norm() / z.norm())
    return torch.stack(out)


@pytest.mark.parametrize("fallback", ["group", "vs2", "none"])
@pytest.mark.parametrize("rule", ["query", "mode"])
def test_vs2pp_matches_literal_formula_on_codes(fallback, rule):
    sae = small_sae()
    g = torch.Generator().manual_seed(1)
    db_x = torch.randn(20, 8, generator=g)
    x = torch.randn(5, 8, generator=g)
    sets = table_sets("pseudo", rule)
    u = sae_direction(sae, db_x)
    res = vs2pp(sae, x, sets, lam=2.1, gamma=1.5, u_db_nd=u, fallback=fallback)
    want = literal_vs2pp(sae, x, db_x, sets.positive_qn, 2.1, 1.5, fallback)
    torch.testing.assert_close(res.steered_qd.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(res.neighbours_qn, IDX)
    assert torch.equal(res.n_positive_q, sets.positive_qn.sum(1))
    n_empty_pos, n_empty_neg = (1, 1) if rule == "query" else (0, 1)
    assert res.fallbacks == FallbackCounts(fallback, n_empty_pos, n_empty_neg)
    assert res.fallbacks.total == n_empty_pos + n_empty_neg
    if fallback == "none":
        assert torch.equal(res.steered_qd[4], x[4])  # the all-positive query is left exactly as it was


def test_vs2pp_fallback_vs2_is_plain_vs2():
    sae = small_sae(seed=2)
    x = torch.randn(5, 8)
    db_x = torch.randn(20, 8)
    res = vs2pp(sae, x, table_sets(), lam=1.5, gamma=2.0, u_db_nd=sae_direction(sae, db_x), fallback="vs2")
    # queries 2 (no positive) and 4 (no negative) are steered by their own reconstruction direction
    u_q = sae_direction(sae, x[[2, 4]])
    torch.testing.assert_close(res.direction_qd[[2, 4]], (2.0 - 1.0) * u_q)


def test_errors_name_the_shapes():
    sae = small_sae()
    sets = table_sets()
    with pytest.raises(SparsesteerError, match=r"\(19, 8\).*20 rows"):
        vs2pp(sae, torch.randn(5, 8), sets, 1.0, 1.5, u_db_nd=torch.randn(19, 8))
    with pytest.raises(SparsesteerError, match=r"\(4, 8\).*\[5, 8\]"):
        vs2pp(sae, torch.randn(4, 8), sets, 1.0, 1.5, u_db_nd=torch.randn(20, 8))
    with pytest.raises(SparsesteerError, match="lam must be a finite"):
        vs2pp(sae, torch.randn(5, 8), sets, float("nan"), 1.5, u_db_nd=torch.randn(20, 8))
    with pytest.raises(SparsesteerError, match="no 'vs2' fallback"):
        clip_steering(torch.randn(5, 8), sets, torch.randn(20, 8), 1.0, fallback="vs2")
    with pytest.raises(SparsesteerError, match="did you mean 'group'"):
        vs2pp(sae, torch.randn(5, 8), sets, 1.0, 1.5, u_db_nd=torch.randn(20, 8), fallback="groups")


# ------------------------------------------------------------------ baselines by hand
@pytest.mark.parametrize("fallback", ["group", "none"])
def test_clip_steering_by_hand(fallback):
    g = torch.Generator().manual_seed(5)
    db_x = torch.randn(20, 8, generator=g)
    x = torch.randn(5, 8, generator=g)
    sets = table_sets("oracle", "query")
    res = clip_steering(x, sets, db_x, 0.7, fallback=fallback)
    for q in range(5):
        pos = [int(IDX[q, j]) for j in range(5) if EXPECTED["oracle", "query"][q][j]]
        neg = [int(IDX[q, j]) for j in range(5) if not EXPECTED["oracle", "query"][q][j]]
        if pos and neg:
            v = db_x[pos].double().mean(0) - db_x[neg].double().mean(0)
        elif fallback == "group":
            v = db_x[pos].double().mean(0) if pos else -db_x[neg].double().mean(0)
        else:
            assert torch.equal(res.steered_qd[q], x[q])
            continue
        z = x[q].double() + 0.7 * v
        torch.testing.assert_close(
            res.steered_qd[q].double(), z * x[q].double().norm() / z.norm(), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(res.direction_qd[q].double(), v, rtol=1e-5, atol=1e-6)
    assert res.fallbacks == FallbackCounts(fallback, 1, 0)  # q2 has no true-label positive


class StubClassifier:
    """logits = 100 * cos(E, class weights), like ZeroShotClassifier, without a model."""

    def __init__(self, weights_ce):
        self.weights = F.normalize(weights_ce, dim=-1)

    def logits_of_embeddings(self, e):
        return 100 * F.normalize(e.float(), dim=-1) @ self.weights.T


@pytest.mark.parametrize("over", ["positives", "all"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_weighted_rag_by_hand(over, alpha):
    g = torch.Generator().manual_seed(6)
    q_emb = torch.randn(5, 6, generator=g)
    db_emb = 3 * torch.randn(20, 6, generator=g)
    clf = StubClassifier(torch.randn(4, 6, generator=g))
    sets = table_sets("pseudo", "query")
    res = weighted_rag(clf, q_emb, sets, db_emb, alpha, over=over)
    for q in range(5):
        used = [j for j in range(5) if over == "all" or EXPECTED["pseudo", "query"][q][j]]
        qn = q_emb[q].double() / q_emb[q].double().norm()
        if not used:  # no positive: plain zero-shot
            E = qn
        else:
            s = [float(SIM[q, j]) for j in used]
            r = sum(
                s[i] / sum(s) * db_emb[IDX[q, j]].double() / db_emb[IDX[q, j]].double().norm()
                for i, j in enumerate(used)
            )
            E = alpha * qn + (1 - alpha) * r
        torch.testing.assert_close(res.embeddings_qe[q].double(), E, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.logits_qc[q], clf.logits_of_embeddings(E[None].float())[0], rtol=1e-4, atol=1e-4)
    assert res.n_empty == (1 if over == "positives" else 0)
    assert res.n_used_q.tolist() == ([2, 1, 0, 2, 5] if over == "positives" else [5] * 5)


def test_weighted_rag_nonpositive_similarities_use_uniform_weights():
    q_emb, db_emb = torch.randn(5, 6), torch.randn(20, 6)
    sets = neighbour_sets(Neighbours(-SIM, IDX), Q_PSEUDO, DB_PSEUDO)
    res = weighted_rag(StubClassifier(torch.randn(4, 6)), q_emb, sets, db_emb, 0.0, over="all")
    assert res.n_uniform == 5
    torch.testing.assert_close(res.embeddings_qe[0], F.normalize(db_emb[IDX[0]], dim=-1).mean(0))
    with pytest.raises(SparsesteerError, match=r"alpha must be in \[0, 1\]"):
        weighted_rag(StubClassifier(torch.randn(4, 6)), q_emb, sets, db_emb, 1.5)


# ------------------------------------------------------------------ a tiny CLIP end to end
@pytest.fixture(scope="module")
def tiny(tiny_clip_dir):
    """Tiny CLIP + zero-shot classifier over 6 classes, an SAE on its 32-d CLS, random CLS vectors."""
    bb = load_backbone(tiny_clip_dir)
    clf = CLSClassifier(bb, ZeroShotClassifier.build(bb, [f"class {i}" for i in range(6)], ["a photo of a {}."]))
    sae = small_sae(d=bb.d_model, n=128, k=8, seed=3)
    g = torch.Generator().manual_seed(7)
    train_x = torch.randn(300, bb.d_model, generator=g)
    test_x = torch.randn(60, bb.d_model, generator=g)
    retr_proj = torch.randn(bb.d_model, 12, generator=g)  # stands in for DINOv2 embeddings
    return dict(
        clf=clf,
        sae=sae,
        train_x=train_x,
        test_x=test_x,
        train_emb=train_x @ retr_proj,
        test_emb=test_x @ retr_proj,
        train_pseudo=pseudo_labels(clf, train_x),
        test_pseudo=pseudo_labels(clf, test_x),
        train_labels=torch.randint(0, 6, (300,), generator=g),
        test_labels=torch.randint(0, 6, (60,), generator=g),
    )


@pytest.mark.parametrize("labels", ["pseudo", "oracle"])
def test_zero_strength_reproduces_zero_shot_exactly(tiny, labels):
    t = tiny
    nb = knn(t["test_emb"], t["train_emb"], 20)
    sets = neighbour_sets(nb, t["test_pseudo"], t["train_pseudo"], labels=labels, db_labels_n=t["train_labels"])
    zs_logits = t["clf"].logits(t["test_x"])
    assert torch.equal(t["test_pseudo"], zs_logits.argmax(-1))
    u = sae_direction(t["sae"], t["train_x"])
    for fallback in ("group", "vs2"):
        r = vs2pp(t["sae"], t["test_x"], sets, 0.0, 1.5, u_db_nd=u, fallback=fallback)
        assert torch.equal(r.steered_qd, t["test_x"])
        assert torch.equal(t["clf"].logits(r.steered_qd), zs_logits)
    assert torch.equal(vs2pp(t["sae"], t["test_x"], sets, 2.0, 1.0, u_db_nd=u).steered_qd, t["test_x"])  # gamma = 1
    c = clip_steering(t["test_x"], sets, t["train_x"], 0.0)
    assert torch.equal(t["clf"].logits(c.steered_qd), zs_logits)
    rag = weighted_rag(t["clf"], t["clf"].embed(t["test_x"]), sets, t["clf"].embed(t["train_x"]), 1.0)
    assert torch.equal(rag.logits_qc.argmax(-1), zs_logits.argmax(-1))
    torch.testing.assert_close(rag.logits_qc, zs_logits, rtol=1e-5, atol=1e-4)
    # steering does change something
    assert not torch.equal(vs2pp(t["sae"], t["test_x"], sets, 2.0, 1.5, u_db_nd=u).steered_qd, t["test_x"])


def run_study(t, test_labels, labels="oracle"):
    """The pipeline's flow: tune on a validation split of train, then steer the test queries."""
    fit_idx, val_idx = validation_split(300, 0.2, seed=0)
    val_sets = validation_neighbour_sets(
        t["train_emb"], val_idx, t["train_pseudo"], n_neighbours=15, labels=labels, train_labels_n=t["train_labels"]
    )
    u = sae_direction(t["sae"], t["train_x"])
    val_x, val_y = t["train_x"][val_idx], t["train_labels"][val_idx]
    grid = tune_vs2pp(t["clf"], t["sae"], val_x, val_y, val_sets, u, lams=(0.0, 1.0, 3.0), gammas=(1.0, 1.5, 2.5))
    line = tune_clip_steering(t["clf"], val_x, val_y, val_sets, t["train_x"], lams=(0.0, 0.5, 2.0))
    emb_train = t["clf"].embed(t["train_x"])
    rag_line = tune_weighted_rag(t["clf"], emb_train[val_idx], val_y, val_sets, emb_train, alphas=(1.0, 0.5, 0.0))
    test_sets = neighbour_sets(
        knn(t["test_emb"], t["train_emb"], 15),
        t["test_pseudo"],
        t["train_pseudo"],
        labels=labels,
        db_labels_n=t["train_labels"],
    )
    steered = vs2pp(t["sae"], t["test_x"], test_sets, grid.best_lam, grid.best_gamma, u_db_nd=u).steered_qd
    clip = clip_steering(t["test_x"], test_sets, t["train_x"], line.best_value).steered_qd
    rag = weighted_rag(t["clf"], t["clf"].embed(t["test_x"]), test_sets, emb_train, rag_line.best_value).logits_qc
    preds = t["clf"].predict(steered)
    # fixed non-zero strengths too, in case validation chose no steering
    fixed = vs2pp(t["sae"], t["test_x"], test_sets, 2.0, 1.5, u_db_nd=u).steered_qd
    fixed_clip = clip_steering(t["test_x"], test_sets, t["train_x"], 1.0).steered_qd
    fixed_rag = weighted_rag(t["clf"], t["clf"].embed(t["test_x"]), test_sets, emb_train, 0.5).logits_qc
    return dict(
        grid=grid.accuracy,
        line=line.accuracy,
        rag_line=rag_line.accuracy,
        steered=steered,
        clip=clip,
        rag=rag,
        fixed=fixed,
        fixed_clip=fixed_clip,
        fixed_rag=fixed_rag,
        preds=preds,
        positives=test_sets.positive_qn,
        accuracy=float((preds == test_labels).double().mean()),
    )


def test_no_dependence_on_test_labels(tiny):
    a = run_study(tiny, tiny["test_labels"])
    perm = tiny["test_labels"][torch.randperm(60, generator=torch.Generator().manual_seed(0))]
    b = run_study(tiny, perm)
    for key in ("grid", "line", "rag_line", "positives", "preds"):
        assert a[key] == b[key] if isinstance(a[key], list) else torch.equal(a[key], b[key]), key
    for key in ("steered", "clip", "rag", "fixed", "fixed_clip", "fixed_rag"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["fixed"], tiny["test_x"]) and not torch.equal(a["fixed_clip"], tiny["test_x"])
    assert b["accuracy"] == float((a["preds"] == perm).double().mean())


def test_validation_queries_never_see_their_own_label(tiny):
    """Oracle mode on validation queries drawn from train: changing a validation item's own true label
    must change nothing in its own row (it is excluded from its neighbours; its label is its pseudo-label)."""
    t = tiny
    _, val_idx = validation_split(300, 0.2, seed=0)
    kw = dict(n_neighbours=15, labels="oracle")
    base = validation_neighbour_sets(t["train_emb"], val_idx, t["train_pseudo"], train_labels_n=t["train_labels"], **kw)
    assert not bool((base.indices_qn == torch.as_tensor(val_idx)[:, None]).any())
    assert torch.equal(base.target_q, t["train_pseudo"][val_idx])
    for i in range(0, len(val_idx), 10):
        changed = t["train_labels"].clone()
        changed[val_idx[i]] = (changed[val_idx[i]] + 1) % 6
        other = validation_neighbour_sets(t["train_emb"], val_idx, t["train_pseudo"], train_labels_n=changed, **kw)
        assert torch.equal(other.positive_qn[i], base.positive_qn[i]) and torch.equal(
            other.labels_qn[i], base.labels_qn[i]
        )


def test_tuning_matches_direct_evaluation(tiny):
    t = tiny
    _, val_idx = validation_split(300, 0.2, seed=1)
    sets = validation_neighbour_sets(t["train_emb"], val_idx, t["train_pseudo"], n_neighbours=10)
    u = sae_direction(t["sae"], t["train_x"])
    x, y = t["train_x"][val_idx], t["train_labels"][val_idx]
    lams, gammas = (0.0, 2.0, 4.0), (1.0, 1.5, 3.0)
    grid = tune_vs2pp(t["clf"], t["sae"], x, y, sets, u, lams=lams, gammas=gammas)
    for i, lam in enumerate(lams):
        for j, gamma in enumerate(gammas):
            direct = t["clf"].accuracy(vs2pp(t["sae"], x, sets, lam, gamma, u_db_nd=u).steered_qd, y)
            assert grid.accuracy[i][j] == pytest.approx(direct, abs=1e-12)
    assert grid.accuracy[0] == [t["clf"].accuracy(x, y)] * 3  # lam = 0: zero-shot
    line = tune_clip_steering(t["clf"], x, y, sets, t["train_x"], lams=(0.0, 1.0))
    assert line.accuracy[1] == pytest.approx(t["clf"].accuracy(clip_steering(x, sets, t["train_x"], 1.0).steered_qd, y))
    assert line.param == "lam" and line.split.startswith("validation") and line.n == len(val_idx)
    emb = t["clf"].embed(t["train_x"])
    rag = tune_weighted_rag(t["clf"], emb[val_idx], y, sets, emb, alphas=(1.0, 0.25))
    assert rag.accuracy[0] == pytest.approx(t["clf"].accuracy(x, y))
    direct = weighted_rag(t["clf"], emb[val_idx], sets, emb, 0.25).logits_qc.argmax(-1)
    assert rag.accuracy[1] == pytest.approx(float((direct == y).double().mean()))
    assert rag.best_value == (1.0 if rag.accuracy[0] >= rag.accuracy[1] else 0.25)


def test_pipeline_rows_tune_all_and_evaluate_all(tiny):
    """The entry points of `reproduce vs2` and `steer vs2pp`: JSON-able tuning, then test rows with the
    chosen settings."""
    import json

    t = tiny
    settings = RetrievalSuiteSettings(
        neighbours=12,
        positive_rule="query",
        lams=(0.0, 2.0),
        gammas=(1.0, 1.5),
        clip_lams=(0.0, 1.0),
        alphas=(1.0, 0.5),
        retriever="tiny",
    )
    train = RetrievalRows(
        cls_nd=t["train_x"], embeds_ne=t["train_emb"], pseudo_n=t["train_pseudo"], labels_n=t["train_labels"]
    )
    fit, val = validation_split(300, 0.2, seed=0)
    tuned = tune_all(t["sae"], t["clf"], train.take(fit), train.take(val), settings, split="val")
    keys = {f"{m}_{mode}" for m in ("vs2pp", "clip_steer", "rag") for mode in ("oracle", "pseudo")}
    assert set(tuned) == keys
    json.dumps(tuned)
    assert tuned["vs2pp_oracle"]["labels"] == "oracle" and tuned["rag_pseudo"]["param"] == "alpha"
    assert tuned["clip_steer_pseudo"]["retriever"] == "tiny" and tuned["vs2pp_pseudo"]["neighbours"] == 12
    # the VS2++ row is tune_vs2pp on the same sets
    val_sets = neighbour_sets(
        knn(t["train_emb"][val], t["train_emb"][fit], 12),
        t["train_pseudo"][val],
        t["train_pseudo"][fit],
        labels="oracle",
        db_labels_n=t["train_labels"][fit],
    )
    u_fit = sae_direction(t["sae"], t["train_x"][fit])
    grid = tune_vs2pp(
        t["clf"], t["sae"], t["train_x"][val], t["train_labels"][val], val_sets, u_fit, (0.0, 2.0), (1.0, 1.5)
    )
    assert tuned["vs2pp_oracle"]["accuracy"] == grid.accuracy
    queries = RetrievalRows(cls_nd=t["test_x"], embeds_ne=t["test_emb"], pseudo_n=t["test_pseudo"])
    rows = evaluate_all(tuned, t["sae"], t["clf"], train, queries, settings)
    assert set(rows) == keys
    sets = neighbour_sets(
        knn(t["test_emb"], t["train_emb"], 12),
        t["test_pseudo"],
        t["train_pseudo"],
        labels="oracle",
        db_labels_n=t["train_labels"],
    )
    best = tuned["vs2pp_oracle"]
    u = sae_direction(t["sae"], t["train_x"])
    direct = t["clf"].predict(
        vs2pp(t["sae"], t["test_x"], sets, best["best_lam"], best["best_gamma"], u_db_nd=u).steered_qd
    )
    assert rows["vs2pp_oracle"]["pred"].tolist() == direct.tolist()
    json.dumps({k: r["settings"] for k, r in rows.items()})
    # one label mode only; test labels are never an input; tuning needs the validation labels
    pseudo_only = RetrievalSuiteSettings(neighbours=12, labels=("pseudo",), lams=(0.0,), gammas=(1.0,))
    assert set(tune_all(t["sae"], t["clf"], train.take(fit), train.take(val), pseudo_only, split="v")) == {
        "vs2pp_pseudo",
        "clip_steer_pseudo",
        "rag_pseudo",
    }
    with pytest.raises(SparsesteerError, match="never reads the test queries' labels"):
        evaluate_all(tuned, t["sae"], t["clf"], train, queries._replace(labels_n=t["test_labels"]), settings)
    with pytest.raises(SparsesteerError, match="true labels"):
        tune_all(t["sae"], t["clf"], train.take(fit), queries, settings, split="v")


def test_suite_settings_are_validated():
    assert RetrievalSuiteSettings().neighbours == 50
    with pytest.raises(SparsesteerError, match="neighbours must be an integer >= 1"):
        RetrievalSuiteSettings(neighbours=0)
    with pytest.raises(SparsesteerError, match="did you mean 'mode'"):
        RetrievalSuiteSettings(positive_rule="modes")
    with pytest.raises(SparsesteerError, match="did you mean 'oracle'"):
        RetrievalSuiteSettings(labels=("pseudo", "oracel"))
    with pytest.raises(SparsesteerError, match="no label mode"):
        RetrievalSuiteSettings(labels=())
    with pytest.raises(SparsesteerError, match="alphas must be finite"):
        RetrievalSuiteSettings(alphas=(1.0, float("nan")))
    with pytest.raises(SparsesteerError, match="clip_lams grid is empty"):
        RetrievalSuiteSettings(clip_lams=())


def test_neighbour_sets_subset_keeps_rows():
    sets = table_sets("oracle", "mode")
    sub = sets.subset(torch.tensor([4, 1]))
    for name in ("indices_qn", "similarity_qn", "labels_qn", "target_q", "positive_qn"):
        assert torch.equal(getattr(sub, name), getattr(sets, name)[[4, 1]]), name
    assert (sub.n_database, sub.labels, sub.rule) == (20, "oracle", "mode")
