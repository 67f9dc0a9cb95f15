"""`steer` refuses an SAE, caches and a model that do not belong together, names both sides, and
under --allow-mismatch runs but says so in every output. Class names come from the cache."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.cli import main
from sparsesteer.models.tiny import make_tiny_clip
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.provenance import Provenance
from sparsesteer.sae.train import TrainConfig, train

HOOK = "blocks.2.resid_post"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    make_tiny_clip(tmp / "clip")
    make_tiny_clip(tmp / "other", seed=7)  # same shapes, other weights: another revision
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for ci, name in enumerate(["cat", "dog"]):
            (tmp / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.normal(90 + 60 * ci, 40, (32, 32, 3)).clip(0, 255).astype("uint8")
                Image.fromarray(img).save(tmp / "data" / split / name / f"{i}.png")
    for model in ("clip", "other"):
        for split in ("train", "test"):
            cache_activations(
                CacheConfig(
                    model=str(tmp / model),
                    dataset=f"folder:{tmp / 'data'}",
                    split=split,
                    hooks=(HOOK,),
                    tokens="cls",
                    out=str(tmp / f"{model}-{split}"),
                    workers=0,
                )
            )
    view = ActivationCache.open(tmp / "clip-train").rows(HOOK, "cls")
    prov = Provenance.from_rows(view.describe())
    train(
        view.read_all().x,
        SAEConfig(k=2, n_latents=32),
        TrainConfig(batch_size=8, steps=4),
        tmp / "sae",
        metadata=prov.to_metadata(),
    )
    shutil.rmtree(tmp / "data")  # class names now come from the caches alone
    return tmp


def steer(tmp, model="clip", test="clip-test", *extra):
    return main(
        [
            "-q",
            "steer",
            "vs2",
            "--model",
            str(tmp / model),
            "--sae",
            str(tmp / "sae"),
            "--activations",
            str(tmp / test),
            *extra,
        ]
    )


def test_matching_inputs_run_without_the_dataset_on_disk(world, tmp_path):
    assert steer(world, "clip", "clip-test", "--lam", "1", "--gamma", "2", "--out", str(tmp_path)) == 0
    rep = json.loads((tmp_path / "steer_vs2.json").read_text())
    assert "provenance_overridden" not in rep and rep["split"] == "test"


def test_sae_from_another_model_is_refused_naming_both(world, capsys):
    assert steer(world, "other", "other-test", "--lam", "1", "--gamma", "2") == 2
    err = capsys.readouterr().err
    assert f"the SAE ({world / 'sae'}) has model {world / 'clip'}" in err
    assert f"the model ({world / 'other'}) has model {world / 'other'}" in err and "--allow-mismatch" in err


def test_cache_from_another_model_is_refused(world, capsys):
    assert steer(world, "clip", "other-test", "--lam", "1", "--gamma", "2") == 2
    err = capsys.readouterr().err
    assert f"the activations ({world / 'other-test'})" in err and "model revision" in err


def test_tuning_on_the_scored_split_is_refused(world, capsys):
    assert steer(world, "clip", "clip-test", "--tune-on", str(world / "clip-test")) == 2
    assert "are both folder:" in capsys.readouterr().err


def test_allow_mismatch_runs_and_says_so_everywhere(world, tmp_path, capsys):
    argv = ["--lam", "1", "--gamma", "2", "--allow-mismatch", "--out", str(tmp_path)]
    assert steer(world, "clip", "other-test", *argv) == 0
    rep = json.loads((tmp_path / "steer_vs2.json").read_text())
    assert len(rep["provenance_overridden"]) == 1 and "model revision" in rep["provenance_overridden"][0]
    md = (tmp_path / "steer_vs2.md").read_text()
    assert "Provenance checks overridden (--allow-mismatch)" in md and "model revision" in md
    assert "Provenance checks overridden" in capsys.readouterr().out


def test_vs2pp_refuses_the_scored_split_as_database(world, capsys):
    argv = [
        "-q",
        "steer",
        "vs2pp",
        "--model",
        str(world / "clip"),
        "--sae",
        str(world / "sae"),
        "--activations",
        str(world / "clip-test"),
        "--database",
        str(world / "clip-test"),
    ]
    assert main(argv) == 2
    assert "the database" in capsys.readouterr().err


def test_fvu_gate_with_fixed_strengths_learns_tau_on_gate_on(world, tmp_path):
    argv = ["--lam", "1", "--gamma", "2", "--gate-quantile", "0.5", "--gate-on", str(world / "clip-train")]
    assert steer(world, "clip", "clip-test", *argv, "--out", str(tmp_path)) == 0
    gate = json.loads((tmp_path / "steer_vs2.json").read_text())["gate"]
    assert gate["fit_on"] == str(world / "clip-train") and gate["quantile"] == 0.5 and 0 <= gate["coverage"] <= 1
    assert steer(world, "clip", "clip-test", "--lam", "1", "--gamma", "2", "--gate-on", str(world / "clip-train")) == 2
