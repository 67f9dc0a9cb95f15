"""The `tune` and `evaluate` stages of `reproduce vs2`: every final-CLS method tuned on the
validation part of TRAIN, then run once on the test split with the chosen settings.

Everything here runs on cached CLS vectors through the CLIP head (no model forwards)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...steering import vs2 as V
from ...steering.tuning import GridSearch
from ...utils import io

if TYPE_CHECKING:
    from ...steering.retrieval_suite import RetrievalSuiteSettings
    from .config import VS2Config
    from .run import VS2Run


def _acc(pred: torch.Tensor | np.ndarray, labels: np.ndarray) -> float:
    pred = np.asarray(pred)
    return float((pred == labels).mean()) if len(labels) else float("nan")


def tune(run: VS2Run) -> None:
    c = run.cfg
    fit, val = run.split_indices()
    x_train, y_train = run.cls_rows(c.train_split)
    x_val, y_val = x_train[val], torch.from_numpy(y_train[val])
    clf = run.cls_classifier("single")
    split = f"validation part ({c.val_fraction:g}, seed {c.seed}) of {c.dataset} {c.train_split}"
    out: dict[str, Any] = {"validation": {"split": split, "n": int(len(val)), "n_fit": int(len(fit))}}
    for key, name in (("vs2", "final"), ("vs2_pass", "pass")):
        if name == "pass" and not c.pass_weight:
            continue
        sae = run.load_sae(name)
        V.check_sae_for_cls(sae, run.backbone.d_model, run.backbone.n_blocks)
        grid = V.tune_vs2(clf, sae, x_val, y_val, c.lams, c.gammas, split=split)
        grid.heatmap(run.path("plots", f"tuning_{key}.png"), title=f"{key}: {run.backbone.model_id} on {c.dataset}")
        out[key] = grid.to_json()
    retrieval = _tune_retrieval(run, x_train, y_train, fit, val, clf, split)
    for key, result in retrieval.items():
        if "gammas" in result:  # a (lam, gamma) grid: VS2++
            grid = GridSearch(**{f.name: result[f.name] for f in dataclasses.fields(GridSearch)})
            grid.heatmap(run.path("plots", f"tuning_{key}.png"), title=f"{key}: {run.backbone.model_id} on {c.dataset}")
    out.update(retrieval)
    io.write_json(run.path("tuning.json"), out)


def evaluate_test(run: VS2Run) -> None:
    from ...activations.loader import TensorSource
    from ...sae.metrics import evaluate as sae_metrics

    c = run.cfg
    tuned = io.read_json(run.path("tuning.json"))
    fit, _ = run.split_indices()
    x_test, y_test = run.cls_rows(c.test_split)
    x_train, _ = run.cls_rows(c.train_split)
    clf = run.cls_classifier("single")
    rows: dict[str, dict[str, Any]] = {}

    def record(key: str, pred: torch.Tensor | np.ndarray, **settings: Any) -> None:
        run.save_array(f"pred_{key}", np.asarray(pred))
        rows[key] = {"top1": 100 * _acc(pred, y_test), "settings": settings}

    record("zeroshot", run.load_array("logits_zeroshot").argmax(-1), templates="a photo of a {}.")
    record(
        "zeroshot_ensemble",
        run.load_array("logits_zeroshot_ensemble").argmax(-1),
        templates="80 CLIP ImageNet templates",
    )
    sae = run.load_sae("final")
    record("sae_rec_f", clf.predict(V.sae_rec(sae, x_test)))
    record("sae_rec_f_gamma", clf.predict(V.sae_rec(sae, x_test, c.gamma_rec)), gamma=c.gamma_rec)
    best = tuned["vs2"]
    u_test = V.sae_direction(sae, x_test)
    record(
        "vs2",
        clf.predict(V.vs2(sae, x_test, best["best_lam"], best["best_gamma"], u_bd=u_test)),
        lam=best["best_lam"],
        gamma=best["best_gamma"],
        tuned_on=best["split"],
    )
    if "vs2_pass" in tuned:
        p = tuned["vs2_pass"]
        record(
            "vs2_pass",
            clf.predict(V.vs2(run.load_sae("pass"), x_test, p["best_lam"], p["best_gamma"])),
            lam=p["best_lam"],
            gamma=p["best_gamma"],
            pass_weight=c.pass_weight,
            tuned_on=p["split"],
        )
    gate_rows = []
    for q in c.gate_quantiles:
        gate = V.FVUGate.fit(sae, x_train[fit], q)
        mask = gate.mask(sae, x_test)
        pred = clf.predict(V.vs2(sae, x_test, best["best_lam"], best["best_gamma"], mask_b=mask, u_bd=u_test))
        gate_rows.append(
            {"quantile": q, "tau": gate.tau, "top1": 100 * _acc(pred, y_test), "coverage": float(mask.double().mean())}
        )
    rows.update(_evaluate_retrieval(run, tuned, x_test, y_test, x_train, clf))
    sae_fvu = {
        "test": sae_metrics(sae, TensorSource(x_test)).fvu,
        "train_fit": sae_metrics(sae, TensorSource(x_train[fit])).fvu,
    }
    io.write_json(
        run.path("evaluation.json"),
        {"rows": rows, "fvu_gate": gate_rows, "sae_fvu": sae_fvu, "n_test": int(len(y_test))},
    )


# ---------------------------------------------------------------------- VS2++ and its baselines
def _suite(c: VS2Config) -> RetrievalSuiteSettings:
    """The retrieval suite's settings from the run's config."""
    from ...steering.retrieval_suite import RetrievalSuiteSettings

    return RetrievalSuiteSettings(
        neighbours=c.neighbours,
        positive_rule=c.positive_rule,
        lams=c.lams,
        gammas=c.gammas,
        clip_lams=c.clip_lams,
        alphas=c.alphas,
        retriever=c.retriever,
    )


def _tune_retrieval(run: VS2Run, x_train, y_train, fit, val, clf, split) -> dict[str, Any]:
    """VS2++ (oracle, pseudo), CLIP steering and weighted RAG tuned on validation queries that
    retrieve from the fit part of train."""
    from ...steering.retrieval_suite import RetrievalRows, tune_all

    train = RetrievalRows(
        cls_nd=x_train,
        embeds_ne=torch.from_numpy(run.load_array(f"retrieval_{run.cfg.train_split}")),
        pseudo_n=torch.from_numpy(run.load_array("pseudo_train")),
        labels_n=torch.from_numpy(y_train),
    )
    return tune_all(run.load_sae("final"), clf, train.take(fit), train.take(val), _suite(run.cfg), split=split)


def _evaluate_retrieval(run: VS2Run, tuned, x_test, y_test, x_train, clf) -> dict[str, dict[str, Any]]:
    """Test rows of VS2++ and its baselines; test queries retrieve from the whole train split."""
    from ...steering.retrieval_suite import RetrievalRows, evaluate_all

    c = run.cfg
    database = RetrievalRows(
        cls_nd=x_train,
        embeds_ne=torch.from_numpy(run.load_array(f"retrieval_{c.train_split}")),
        pseudo_n=torch.from_numpy(run.load_array("pseudo_train")),
        labels_n=torch.from_numpy(run.load_array("train_labels")),
    )
    queries = RetrievalRows(
        cls_nd=x_test,
        embeds_ne=torch.from_numpy(run.load_array(f"retrieval_{c.test_split}")),
        pseudo_n=torch.from_numpy(run.load_array("pseudo_test")),
    )
    rows = evaluate_all(tuned, run.load_sae("final"), clf, database, queries, _suite(c))
    out = {}
    for key, r in rows.items():
        run.save_array(f"pred_{key}", r["pred"])
        out[key] = {"top1": 100 * _acc(r["pred"], y_test), "settings": r["settings"]}
    return out
