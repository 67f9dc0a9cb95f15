"""The two measuring passes of `reproduce testbed` (torch): unit scores for detection, and
zero-shot predictions under suppression. Both return plain JSON-able dicts; every choice made
from them (unit, block, n, threshold) is made on the selection split in `effects_report`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...interpret.detection import auroc, average_precision, best_threshold, precision_recall_f1
from ..clipsteer.suppression.sweep import build_settings, predictions, rank_units
from .effects import ROLES, EffectsRun

ATTRIBUTES = ("word", "cue")
"""The planted truths detected and suppressed: a word is written; the frame is drawn."""


def _truth(run: EffectsRun, role: str) -> dict[str, list[int]]:
    s = run.mixed(role)
    return {"labels": s.labels.tolist(), "word": s.word.tolist(), "cue": s.cue.tolist(), "group": s.group.tolist()}


@torch.no_grad()
def _unit_scores(
    run: EffectsRun, role: str, saes: dict[tuple[int, int], Any], which: str = "images"
) -> dict[Any, np.ndarray]:
    """Per image, every unit's max over tokens: (block, 'neurons') -> [N, 2d] (each neuron up, then
    down: max of x and of -x), (block, seed) -> [N, L] for the SAE latents."""
    bb, c = run.backbone, run.cfg
    hooks = {b: run.hook(b) for b in run.blocks}
    parts: dict[Any, list[np.ndarray]] = {}
    for pixels, _ in run.batches(role, which):
        acts = bb.run(pixels, list(hooks.values()), tokens=c.tokens)
        for b, h in hooks.items():
            x = acts[h].float()
            x = x[:, None] if x.dim() == 2 else x  # cls: [B, d]
            parts.setdefault((b, "neurons"), []).append(torch.cat([x.amax(1), (-x).amax(1)], -1).cpu().numpy())
            rows = x.reshape(-1, x.shape[-1])
            for (sb, seed), sae in saes.items():
                if sb == b:
                    codes = sae.encode_dense(rows.to(sae.device)).reshape(x.shape[0], x.shape[1], -1)
                    parts.setdefault((b, seed), []).append(codes.amax(1).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _scored(select: np.ndarray, test: np.ndarray, y_sel: np.ndarray, y_test: np.ndarray, unit: int) -> dict[str, Any]:
    """One unit's figures: threshold from the selection split, everything else on the test split."""
    chosen = best_threshold(select[:, unit], y_sel)
    at = precision_recall_f1(test[:, unit], y_test, chosen.threshold)
    return {
        "unit": unit,
        "select_auroc": float(auroc(select[:, unit], y_sel)[0]),
        "auroc": float(auroc(test[:, unit], y_test)[0]),
        "auprc": float(average_precision(test[:, unit], y_test)),
        "threshold": at.threshold,
        "precision": at.precision,
        "recall": at.recall,
        "f1": at.f1,
    }


def detection(run: EffectsRun) -> dict[str, Any]:
    """Per attribute: the best latent (per seed) and the best neuron, each chosen by AUROC on the
    selection split over units and blocks, scored on the test split."""
    saes = {(b, s): run.load_sae(b, s) for b in run.blocks for s in run.seeds}
    scores = {role: _unit_scores(run, role, saes) for role in ROLES}
    truth = {role: _truth(run, role) for role in ROLES}
    d = run.backbone.d_model
    out: dict[str, Any] = {"sets": {r: run.mixed(r).describe() for r in ROLES}, "base_rate": {}}
    for attr in ATTRIBUTES:
        y_sel, y_test = (np.asarray(truth[r][attr]) for r in ROLES)
        out["base_rate"][attr] = float(y_test.mean())
        per_block: dict[str, Any] = {}
        latents, best_neuron = [], None
        for seed in run.seeds:
            best = None
            for b in run.blocks:
                a = auroc(scores["select"][(b, seed)], y_sel)
                u = int(np.argmax(a))
                per_block.setdefault(str(b), {}).setdefault("latent_select_auroc", []).append(float(a[u]))
                if best is None or a[u] > best[0]:
                    best = (float(a[u]), b, u)
            assert best is not None
            _, b, u = best
            latents.append(
                {"seed": seed, "block": b, **_scored(scores["select"][(b, seed)], scores["test"][(b, seed)], y_sel,
                                                     y_test, u)}
            )  # fmt: skip
        for b in run.blocks:
            a = auroc(scores["select"][(b, "neurons")], y_sel)
            u = int(np.argmax(a))
            per_block[str(b)]["neuron_select_auroc"] = float(a[u])
            if best_neuron is None or a[u] > best_neuron[0]:
                best_neuron = (float(a[u]), b, u)
        assert best_neuron is not None
        _, b, u = best_neuron
        neuron = {"block": b, **_scored(scores["select"][(b, "neurons")], scores["test"][(b, "neurons")], y_sel,
                                        y_test, u)}  # fmt: skip
        neuron["neuron"], neuron["sign"] = u % d, "+" if u < d else "-"
        out[attr] = {"latent": latents, "neuron": neuron, "per_block": per_block}
    return out


def suppression(run: EffectsRun) -> dict[str, Any]:
    """Per attribute and seed: units ranked on the selection images (attribute 1 vs 0), then the
    predictions of every method x block x n on both splits (neurons and heads with the first seed
    only: they do not depend on the SAE); the oracle is the unplanted twin of each image."""
    bb, c = run.backbone, run.cfg
    clf = run.classifier()
    hooks = {b: run.hook(b) for b in run.blocks}
    truth = {role: _truth(run, role) for role in ROLES}
    out: dict[str, Any] = {"truth": truth, "oracle": {}, "none": {}, "edited": {}, "units": {}}
    for role in ROLES:
        out["oracle"][role] = predictions(bb, clf, (p for p, _ in run.batches(role, "clean")), [])[0].tolist()
    for attr in ATTRIBUTES:
        for seed in run.seeds:
            saes = {b: run.load_sae(b, seed) for b in run.blocks}
            ranking = rank_units(
                bb, hooks, saes, run.batches("select"), np.asarray(truth["select"][attr]), tokens=c.tokens,
                score="cohens_d", sign="positive", reduce="max", n_max=max(run.ns), seed=seed, attribute=attr,
            )  # fmt: skip
            settings = build_settings(bb, hooks, saes, ranking.units, run.ns, c.tokens)
            if seed != run.seeds[0]:
                settings = [s for s in settings if s.method in ("sae", "random")]
            key = f"{attr}/seed{seed}"
            out["units"][key] = {str(b): u for b, u in ranking.units.items()}
            out["edited"][key] = {}
            for role in ROLES:
                base, edited = predictions(bb, clf, (p for p, _ in run.batches(role)), settings)
                out["none"][role] = base.tolist()
                out["edited"][key][role] = {k: v.tolist() for k, v in edited.items()}
    return out


STEER_IMAGES = {"select": 500, "test": 1000}
"""Images (the first of each role's unplanted twins, class-stratified) the steering row runs on: a
full forward per class x latent x block x seed."""


@torch.no_grad()
def _probs(run: EffectsRun, clf: Any, role: str, interventions: tuple[Any, ...] = ()) -> np.ndarray:
    """Zero-shot class probabilities [N, C] of the first STEER_IMAGES[role] unplanted images."""
    n, out = STEER_IMAGES[role], []
    for pixels, ids in run.batches(role, "clean"):
        if ids[0] >= n:
            break
        emb = run.backbone.embed_images(pixels[: n - ids[0]], interventions=interventions)
        out.append(torch.softmax(clf.logits(emb).double(), -1).cpu().numpy())
    return np.concatenate(out)


def class_association(scores_nl: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    """Cohen's d of every latent, images of class c against the rest (pooled standard deviation;
    0 where a latent does not vary)."""
    a, b = scores_nl[labels == c].astype(np.float64), scores_nl[labels != c].astype(np.float64)
    pooled = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1)) / (len(a) + len(b) - 2))
    diff = a.mean(0) - b.mean(0)
    return np.divide(diff, pooled, out=np.zeros_like(diff), where=pooled > 0)


def steering(run: EffectsRun) -> dict[str, Any]:
    """Per seed and block: for every class c, the latent most tied to c (Cohen's d on the selection
    split's unplanted images) set on every token to its largest value there, and a random latent set
    to the same value; the change of p(c) on images of the other classes. The block is chosen per
    seed on the selection split (the largest mean change), the table reads the test split."""
    from ...steering.edits import set_latents

    c = run.cfg
    clf = run.classifier()
    saes = {(b, s): run.load_sae(b, s) for b in run.blocks for s in run.seeds}
    scores = _unit_scores(run, "select", saes, which="clean")
    y_all = run.mixed("select").labels
    labels = {r: run.mixed(r).labels[: STEER_IMAGES[r]] for r in ROLES}
    base = {r: _probs(run, clf, r) for r in ROLES}
    n_classes = base["test"].shape[1]
    out: dict[str, Any] = {"images": {r: len(labels[r]) for r in ROLES}, "seeds": []}

    def effect(iv: Any, role: str, k: int) -> dict[str, float]:
        p = _probs(run, clf, role, (iv,))
        other = labels[role] != k
        return {
            "dp": float((p[other, k] - base[role][other, k]).mean()),
            "flip": float((p[other].argmax(1) == k).mean() - (base[role][other].argmax(1) == k).mean()),
        }

    for seed in run.seeds:
        rng = np.random.default_rng([seed, 7])
        per_block: dict[int, list[dict[str, Any]]] = {}
        for b in run.blocks:
            sae, a = saes[(b, seed)], scores[(b, seed)]
            rows = []
            for k in range(n_classes):
                j = int(np.argmax(class_association(a, y_all, k)))
                value = float(a[:, j].max())
                r = int(rng.choice(np.delete(np.arange(a.shape[1]), j)))
                rows.append({"class": k, "latent": j, "random": r, "value": value,
                             "select": effect(set_latents(run.hook(b), sae, [j], value, tokens=c.tokens), "select", k)})  # fmt: skip
            per_block[b] = rows
        chosen = max(per_block, key=lambda b: float(np.mean([r["select"]["dp"] for r in per_block[b]])))
        for row in per_block[chosen]:
            sae, k = saes[(chosen, seed)], row["class"]
            row["test"] = effect(set_latents(run.hook(chosen), sae, [row["latent"]], row["value"], tokens=c.tokens),
                                 "test", k)  # fmt: skip
            row["test_random"] = effect(
                set_latents(run.hook(chosen), sae, [row["random"]], row["value"], tokens=c.tokens), "test", k
            )
        out["seeds"].append({
            "seed": seed, "block": chosen, "classes": per_block[chosen],
            "select_mean_dp": {str(b): float(np.mean([r["select"]["dp"] for r in rows])) for b, rows in per_block.items()},
        })  # fmt: skip
    return out
