"""`sparsesteer evaluate --suite spliced|monosemanticity` (experiments/judge.py): % CE recovered and
spliced accuracy on a tiny CLIP against hand-worked cases and manual forwards; monosemanticity
against hand-worked cases and an independent computation under a tiny DINOv2; refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import make_folder_dataset

from sparsesteer.cli import main
from sparsesteer.data import open_dataset
from sparsesteer.interpret.monosemanticity import monosemanticity_from_top, weighted_pairwise_cosine
from sparsesteer.interpret.stats import latent_stats
from sparsesteer.models import load_backbone
from sparsesteer.models.tiny import make_tiny_dinov2
from sparsesteer.models.zeroshot import ZeroShotClassifier
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import edits
from sparsesteer.steering.splice import zero_ablation

HOOK = "blocks.1.resid_post"


def _exact_sae(d: int):
    """ReLU SAE with the dictionary [I; -I]: decodes relu(x) - relu(-x) = x exactly."""
    sae = build(SAEConfig(arch="relu", d_in=d, n_latents=2 * d)).eval()
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _zero_sae(d: int):
    sae = build(SAEConfig(arch="topk", k=2, d_in=d, n_latents=8)).eval()
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


def test_weighted_pairwise_cosine_hand_worked():
    # e = (1,0), (0,1), (1,1); a = 1, 2, 3: pair weights 2, 3, 6; cosines 0, 1/sqrt2, 1/sqrt2
    got = weighted_pairwise_cosine([[1, 0], [0, 1], [1, 1]], [1, 2, 3])
    assert got == pytest.approx((3 + 6) / math.sqrt(2) / 11)
    assert math.isnan(weighted_pairwise_cosine([[1, 0]], [1.0]))


def test_monosemanticity_from_top_hand_worked():
    emb = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [1.0, 1.0], 3: [2.0, 0.0]}
    values = np.array([[3, 2, 1], [5, 0, 0], [1, 1, 0], [4, 4, 0]], float)
    images = np.array([[2, 1, 0], [3, -1, -1], [0, 3, -1], [1, 1, -1]])  # latent 1 fires on one image only
    asked = []

    def embed(idx):
        asked.append(list(idx))
        return np.array([emb[i] for i in idx])

    res = monosemanticity_from_top(values, images, embed, images_per_latent=3, max_latents=None)
    # latent 0: images 2, 1, 0 with weights 3, 2, 1: pair weights 6 (2,1), 3 (2,0), 2 (1,0)
    l0 = (6 / math.sqrt(2) + 3 / math.sqrt(2) + 0) / 11
    l2 = 1.0  # images 0 and 3: parallel
    l3 = 1.0  # image 1 twice
    assert res.value == pytest.approx((l0 + l2 + l3) / 3)
    assert res.details["n_latents_scored"] == 3 and res.higher_is_better is True
    assert asked == [[0, 1, 2, 3]]
    one = monosemanticity_from_top(values, images, embed, images_per_latent=3, max_latents=1, seed=0)
    assert one.details["n_latents_scored"] == 1


@pytest.fixture(scope="module")
def run(tiny_clip_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    data = make_folder_dataset(tmp / "images", (3, 2, 2), split="train")
    cache = tmp / "cache"
    args = ["cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train"]
    assert main([*args, "--hook", HOOK, "--tokens", "all", "--out", str(cache), "--workers", "0"]) == 0
    bb = load_backbone(tiny_clip_dir)
    exact = _exact_sae(bb.d_model).save(tmp / "exact", hook=HOOK, tokens="all")
    zero = _zero_sae(bb.d_model).save(tmp / "zero", hook=HOOK, tokens="all")
    return tmp, data, cache, exact, zero, tiny_clip_dir


def _metrics(path):
    doc = json.loads(path.read_text())
    return [{m["name"]: m for m in e["metrics"]} for e in doc["saes"]]


def test_spliced_ce_recovered_100_exact_0_zero_and_accuracy_matches_full_forwards(run, tmp_path):
    tmp, data, cache, exact, zero, clip = run
    out = tmp_path / "j.json"
    rc = main(["-q", "evaluate", "--sae", str(exact), "--sae", str(zero), "--activations", str(cache),
               "--suite", "spliced", "--templates", "single", "--image-batch-size", "3", "--out", str(out)])  # fmt: skip
    assert rc == 0
    m_exact, m_zero = _metrics(out)
    assert m_exact["ce_recovered"]["value"] == pytest.approx(100.0)
    assert m_zero["ce_recovered"]["value"] == pytest.approx(0.0, abs=1e-9)
    # manual: full forwards over every image, with the intervention in the forward pass
    bb = load_backbone(clip)
    from sparsesteer.models.templates import get_templates
    from sparsesteer.sae import SparseAutoencoder

    ds = open_dataset(f"folder:{data}", "train")
    clf = ZeroShotClassifier.build(bb, ds.classes, get_templates("single"))
    pixels = torch.stack(
        [torch.as_tensor(np.asarray(bb.preprocessor(ds[i].image.convert("RGB")))) for i in range(len(ds))]
    )
    labels = torch.as_tensor(ds.labels())

    def acc(interventions):
        with torch.no_grad():
            logits = clf.logits(bb.embed_images(pixels, interventions=interventions))
        return 100.0 * float((logits.argmax(-1) == labels).float().mean())

    for d, m in ((exact, m_exact), (zero, m_zero)):
        sae = SparseAutoencoder.load(d)
        assert m["spliced_accuracy"]["value"] == pytest.approx(acc([edits.reconstruct(HOOK, sae, tokens="all")]))
    assert m_exact["spliced_accuracy"]["details"]["accuracy_clean"] == pytest.approx(acc([]))
    assert m_zero["spliced_accuracy"]["value"] == pytest.approx(acc([zero_ablation(HOOK)]))
    assert m_exact["ce_recovered"]["data"]["images"] == len(ds)


def test_spliced_ce_recovered_below_the_gap_is_flagged_shown_as_nm_and_warned(run, tmp_path, capsys, monkeypatch):
    from sparsesteer.steering import splice

    tmp, data, cache, exact, zero, clip = run
    out = tmp_path / "j.json"
    argv = ["-q", "evaluate", "--sae", str(exact), "--activations", str(cache), "--suite", "spliced",
            "--templates", "single", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (m,) = _metrics(out)
    gap = m["ce_recovered"]["details"]["ce_gap"]
    assert gap == pytest.approx(
        m["ce_recovered"]["details"]["ce_zero_ablation"] - m["ce_recovered"]["details"]["ce_clean"]
    )
    assert m["ce_recovered"]["meaningful"] is (abs(gap) >= splice.MIN_CE_GAP)
    capsys.readouterr()
    monkeypatch.setattr(splice, "MIN_CE_GAP", abs(gap) * 2)  # this hook's gap now counts as too small
    assert main([*argv, "--overwrite"]) == 0
    (m,) = _metrics(out)
    assert m["ce_recovered"]["meaningful"] is False and m["ce_recovered"]["value"] == pytest.approx(100.0)  # kept
    assert m["ce_recovered"]["details"]["note"] == f"gap {gap:.2g} nats"
    assert f"n/m (gap {gap:.2g} nats)" in out.with_suffix(".md").read_text()
    assert f"{exact}: % CE recovered is not meaningful (shown as n/m)" in capsys.readouterr().err


def test_monosemanticity_through_the_cli_matches_an_independent_computation(run, tmp_path):
    tmp, data, cache, exact, _, _ = run
    dino = make_tiny_dinov2(tmp_path / "dino")
    out = tmp_path / "m.json"
    rc = main(["-q", "evaluate", "--sae", str(exact), "--activations", str(cache), "--suite", "monosemanticity",
               "--mono-model", str(dino), "--mono-images", "3", "--mono-latents", "1000", "--out", str(out)])  # fmt: skip
    assert rc == 0
    (m,) = _metrics(out)
    got = m["monosemanticity"]
    # independent: top images per latent, DINOv2 head embeddings of every image, weighted cosines by hand
    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.sae import SparseAutoencoder
    from sparsesteer.sae.provenance import rows_for

    sae = SparseAutoencoder.load(exact)
    view = rows_for(ActivationCache.open(cache), sae.provenance)
    top = latent_stats(sae, view, top_n=3, progress=False).top["max"]
    bb = load_backbone(dino)
    ds = open_dataset(f"folder:{data}", "train")
    with torch.no_grad():
        px = torch.stack(
            [torch.as_tensor(np.asarray(bb.preprocessor(ds[i].image.convert("RGB")))) for i in range(len(ds))]
        )
        emb = bb.embed_images(px).double().numpy()
    scores = []
    for vals, imgs in zip(top.values, top.images):
        keep = [(float(v), int(i)) for v, i in zip(vals, imgs) if i >= 0 and v > 0]
        if len(keep) < 2:
            continue
        num = den = 0.0
        for a in range(len(keep)):
            for b in range(a + 1, len(keep)):
                (wa, ia), (wb, ib) = keep[a], keep[b]
                c = emb[ia] @ emb[ib] / np.linalg.norm(emb[ia]) / np.linalg.norm(emb[ib])
                num, den = num + wa * wb * c, den + wa * wb
        scores.append(num / den)
    assert got["value"] == pytest.approx(float(np.mean(scores)), rel=1e-5)
    assert got["details"]["n_latents_scored"] == len(scores) and got["suite"] == "monosemanticity"


def test_model_suites_refuse_missing_model_and_unloadable_backbone(run, tmp_path, capsys, monkeypatch):
    tmp, data, cache, exact, _, _ = run
    base = ["-q", "evaluate", "--sae", str(exact), "--out", str(tmp_path / "o.json")]
    assert main([*base, "--activations", str(cache), "--suite", "monosemanticity",
                 "--mono-model", str(tmp_path / "nope")]) == 2  # fmt: skip
    assert "--mono-model" in capsys.readouterr().err
    # activations without a recorded model (a plain array): the spliced suite cannot find a model
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(8, 32)).astype("float32"))
    assert main([*base, "--activations", str(acts), "--suite", "spliced", "--allow-mismatch"]) == 2
    assert "spliced" in capsys.readouterr().err
    # a cache that records no model, and no --model
    import dataclasses
    import types

    import sparsesteer.experiments.judge as ej

    real = ej._cache

    def no_model(cfg):
        c = real(cfg)
        return types.SimpleNamespace(settings=dataclasses.replace(c.settings, model=None))

    monkeypatch.setattr(ej, "_cache", no_model)
    assert main([*base, "--activations", str(cache), "--suite", "spliced"]) == 2
    assert "records no model; pass --model" in capsys.readouterr().err
