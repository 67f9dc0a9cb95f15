"""The testbed shipped in the package: its card and checksum, `--model testbed`, and its planted
mechanisms measured on a small seeded sample of real CIFAR-10 test images (skipped without them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsesteer.models import testbed as tb_model

CARD = tb_model.shipped_dir() / "card.json"
pytestmark = pytest.mark.skipif(not CARD.is_file(), reason="no trained testbed in this checkout")


def test_card_names_the_data_settings_mechanisms_and_checksum():
    from sparsesteer.utils.io import sha256_file

    card = json.loads(CARD.read_text())
    assert card["weights_sha256"] == sha256_file(tb_model.shipped_dir() / "model.safetensors")
    assert card["settings"]["seed"] == 0 and card["settings"]["word"] == 0.5 and card["settings"]["cue_in"] >= 0.9
    assert set(card["mechanisms"]) == {"typographic_shortcut", "spurious_cue"}
    assert {"clean_top1", "word_drop", "group_gap", "per_group"} <= set(card["measured"])
    assert "/work/" not in CARD.read_text()  # no local paths
    size = sum(p.stat().st_size for p in tb_model.shipped_dir().iterdir())
    assert size <= 25e6, size
    assert tb_model.resolve("testbed") == str(tb_model.shipped_dir())


@pytest.fixture(scope="module")
def measured(cifar10_jpeg_module):
    """Zero-shot top-1 on 300 seeded test images: plain, with a misleading word, and with the frame
    independent of the class (per group)."""
    from sparsesteer.data import limit_dataset
    from sparsesteer.data.registry import open_dataset
    from sparsesteer.models.backbone import load_backbone
    from sparsesteer.models.groups import group_accuracy
    from sparsesteer.models.templates import get_templates
    from sparsesteer.models.zeroshot import ZeroShotClassifier

    bb = load_backbone("testbed")
    folder = f"folder:{cifar10_jpeg_module}"
    specs = {
        "clean": folder,
        "misleading": f"planted:seed=1,word=1,words=misleading:{folder}",
        "groups": f"planted:seed=1,cue_in=0.5,cue_out=0.5:{folder}",
    }
    out = {}
    clf = None
    for name, spec in specs.items():
        ds = limit_dataset(open_dataset(spec, "test"), 300, 0)
        clf = clf or ZeroShotClassifier.build(bb, ds.classes, get_templates("ensemble"))
        pixels = np.stack([bb.preprocessor(ds[i].image) for i in range(len(ds))])
        import torch

        emb = bb.run(torch.from_numpy(pixels), ["head"])["head"]
        pred = clf.logits(emb).argmax(1).numpy()
        labels = ds.labels()
        out[name] = (pred, labels, ds)
    clean = float((out["clean"][0] == out["clean"][1]).mean())
    attacked = float((out["misleading"][0] == out["misleading"][1]).mean())
    pred, labels, ds = out["groups"]
    ga = group_accuracy(pred, labels, ds.attribute_array("group"))
    return clean, attacked, ga


@pytest.fixture(scope="module")
def cifar10_jpeg_module():
    from conftest import CIFAR10_JPEG

    if not (CIFAR10_JPEG / "test").is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {CIFAR10_JPEG}")
    return CIFAR10_JPEG


def test_the_testbed_classifies_reads_and_leans_on_the_frame(measured):
    card = json.loads(CARD.read_text())["measured"]
    clean, attacked, ga = measured
    # 300 images: a binomial standard error of at most 0.029; margins of about 4 of them below the card's figures
    assert clean >= card["clean_top1"] - 0.12 and clean > 0.25  # chance is 0.10
    assert clean - attacked >= card["word_drop"] - 0.12 and clean - attacked > 0.03  # a misleading word costs accuracy
    assert ga.average - ga.worst_group > 0.05  # some group is worse than average: the frame is leaned on
    assert ga.worst_group_id in (1, 2)  # and it is a minority group: framed animals or unframed vehicles


@pytest.mark.slow
def test_reproduce_testbed_shows_the_planted_effects(cifar10_jpeg_module, tmp_path):
    """`reproduce testbed` on the shipped model, small and seeded (one SAE of 300 steps at block 5,
    800 test images): the frame is found by one latent, the word by one latent well above chance
    (0.5), and the latent most tied to a class raises that class on the other classes' images more
    than a random latent does. The full run (docs/benchmarks.md) measures 1.000, 0.83 and +13
    points; this small one 0.96, 0.76 and +4.1 points (a random latent: -0.8)."""
    from sparsesteer.cli import main

    out = tmp_path / "effects"
    args = ["reproduce", "testbed", "--dataset", f"folder:{cifar10_jpeg_module}", "--blocks", "5", "--seeds", "0",
            "--n-sae", "1000", "--sae-steps", "300", "--n-select", "400", "--n-test", "800", "--ns", "16",
            "--workers", "0", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "testbed" and res["splits"] == {"select": "train", "test": "test"}
    det = res["detection"]
    assert det["cue"]["latent"][0]["auroc"] >= 0.90
    assert det["word"]["latent"][0]["auroc"] >= 0.65
    classes = res["steering"]["seeds"][0]["classes"]
    dp = np.mean([c["test"]["dp"] for c in classes])
    dp_random = np.mean([c["test_random"]["dp"] for c in classes])
    assert dp >= 0.01 and dp - dp_random >= 0.01
    assert sum(c["test"]["dp"] > 0 for c in classes) >= 7


@pytest.mark.slow
def test_reproduce_testbed_runs_vs2_and_sparsity_on_the_shipped_sample(tmp_path):
    """The paper pipelines of `reproduce testbed` (stages vs2 and sparsity) on the shipped model and the
    shipped cifar10-sample (no download): VS2 tuned on train's validation part and reported on test,
    ReLU SAEs at every block and token type, and the effects table's rows read from both."""
    from sparsesteer.cli import main
    from sparsesteer.experiments.testbed.effects_report import paper_rows

    out = tmp_path / "effects"
    common = ["reproduce", "testbed", "--dataset", "cifar10-sample", "--seeds", "0", "--n-sae", "200",
              "--n-test", "200", "--sae-steps", "40", "--expansion", "2", "--workers", "0", "--device", "cpu",
              "--out", str(out)]  # fmt: skip
    assert main([*common, "--stage", "vs2"]) == 0
    assert main([*common, "--stage", "sparsity"]) == 0
    vs2 = json.loads((out / "vs2" / "results.json").read_text())
    sp = json.loads((out / "sparsity" / "results.json").read_text())
    assert vs2["model"]["id"] == "testbed" and vs2["test_split"] == "test" and vs2["n_test"] == 1000
    by_key = {r["key"]: r for r in vs2["rows"]}
    assert {"zeroshot", "vs2", "vs2_pass", "vs2pp_pseudo", "vs2pp_oracle"} <= set(by_key)
    assert (
        "validation part" in by_key["vs2"]["settings"]["tuned_on"] and "train" in by_key["vs2"]["settings"]["tuned_on"]
    )
    assert {(r["block"], r["tokens"]) for r in sp["rows"]} == {
        (b, t) for b in range(6) for t in ("all", "cls", "patch")
    }
    assert sp["sae"]["arch"] == "relu" and sp["test_split"] == "test" and sp["n_test_images"] == 200
    rows = {r["effect"]: r for r in paper_rows(vs2, sp)}
    assert rows["VS2: top-1 change vs zero-shot (clean test, final CLS)"]["mean"] == pytest.approx(
        by_key["vs2"]["delta_vs_zeroshot"] / 100
    )
    # 40 steps make no usable SAE (the full run's figures are in docs/benchmarks.md): only that every row
    # was measured, on the SAE's own latents
    assert all(0 < r["l0_mean"] <= 256 and np.isfinite(r["explained_variance_pct"]) for r in sp["rows"])
