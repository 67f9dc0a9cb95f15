"""`sparsesteer steer vs2|vs2pp` on tiny caches."""

import json

import numpy as np
import pytest
from PIL import Image

from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.cli import main
from sparsesteer.models.zeroshot_run import ZeroShotConfig, zeroshot
from sparsesteer.sae import SAEConfig, build
from sparsesteer.sae.train import TrainConfig, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    tmp = tmp_path_factory.mktemp("steer")
    clip = tiny_clip_dir
    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("test", 6)):
        for ci, name in enumerate(["cat", "dog", "bird"]):
            (tmp / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                img = (rng.normal(80 + 50 * ci, 50, (32, 32, 3))).clip(0, 255).astype("uint8")
                Image.fromarray(img).save(tmp / "data" / split / name / f"{i}.png")
    ds = f"folder:{tmp / 'data'}"
    hook = "blocks.2.resid_post"
    for split in ("train", "test"):
        cache_activations(
            CacheConfig(
                model=str(clip),
                dataset=ds,
                split=split,
                hooks=(hook,),
                tokens="cls",
                out=str(tmp / f"cache-{split}"),
                workers=0,
            )
        )
    x = cache_rows(tmp / "cache-train", hook)
    train(
        x,
        SAEConfig(k=4, n_latents=64),
        TrainConfig(batch_size=32, epochs=2),
        tmp / "sae",
        metadata={"hook": hook, "tokens": "cls"},
    )
    train(
        x,
        SAEConfig(k=4, n_latents=64),
        TrainConfig(batch_size=32, steps=1),
        tmp / "sae-b1",
        metadata={"hook": "blocks.1.resid_post", "tokens": "cls"},
    )
    return tmp, clip, ds


def cache_rows(path, hook):
    from sparsesteer.activations.cache import ActivationCache

    view = ActivationCache.open(path).rows(hook, "cls")
    return view.read(0, view.n_rows).float()


def base(tmp, clip, method="vs2"):
    return [
        "-q",
        "steer",
        method,
        "--model",
        str(clip),
        "--sae",
        str(tmp / "sae"),
        "--activations",
        str(tmp / "cache-test"),
    ]


def test_steer_vs2_zero_shot_matches_the_full_model_and_lambda_zero_is_identity(setup, tmp_path):
    tmp, clip, ds = setup
    assert main(base(tmp, clip) + ["--lam", "0", "--gamma", "1.5", "--out", str(tmp_path / "a")]) == 0
    rep = json.loads((tmp_path / "a" / "steer_vs2.json").read_text())
    assert rep["vs2_top1"] == rep["zeroshot_top1"] and rep["n"] == 18
    # independent path: the zeroshot command runs the whole model on the images
    full = zeroshot(
        ZeroShotConfig(model=str(clip), dataset=ds, split="test", out=str(tmp_path / "zs"), workers=0, text_cache=None)
    )
    assert rep["zeroshot_top1"] == pytest.approx(100 * full.result.top1)
    assert (tmp_path / "a" / "steer_vs2.md").read_text().count("|") > 6


def test_steer_vs2_tunes_on_train_and_gates(setup, tmp_path):
    tmp, clip, _ = setup
    assert (
        main(
            base(tmp, clip)
            + [
                "--tune-on",
                str(tmp / "cache-train"),
                "--val-fraction",
                "0.3",
                "--gate-quantile",
                "0.9",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    rep = json.loads((tmp_path / "b" / "steer_vs2.json").read_text())
    grid = rep["tuning"]
    assert rep["lam"] == grid["best_lam"] and rep["gamma"] == grid["best_gamma"] and grid["n"] == 18
    assert 0 < rep["gate"]["coverage"] <= 1 and rep["gate"]["quantile"] == 0.9
    assert (tmp_path / "b" / "tuning_vs2.png").is_file()


def test_steer_vs2_errors(setup, capsys):
    tmp, clip, _ = setup
    assert main(base(tmp, clip)) == 2
    assert "--lam and --gamma, or --tune-on" in capsys.readouterr().err
    assert main(base(tmp, clip) + ["--lam", "1", "--gamma", "2", "--gate-quantile", "0.9"]) == 2
    assert "--gate-quantile learns its threshold on unlabeled train data" in capsys.readouterr().err
    bad = base(tmp, clip)
    bad[bad.index(str(tmp / "sae"))] = str(tmp / "sae-b1")
    assert main(bad + ["--lam", "1", "--gamma", "2"]) == 2
    assert "trained on blocks.1.resid_post, but steering needs an SAE on blocks.2.resid_post" in capsys.readouterr().err
    assert main(base(tmp, clip) + ["--lam", "inf", "--gamma", "2"]) == 2
    assert "finite" in capsys.readouterr().err
    assert main(base(tmp, clip) + ["--lam", "1e30", "--gamma", "2"]) == 2
    assert "--lam 1e+30 is out of range: steering values must lie within +-1e+06" in capsys.readouterr().err
    # fixed strengths and tuning exclude each other (one of them used to be ignored silently)
    for given in (["--lam", "1", "--gamma", "2"], ["--lam", "1"], ["--gamma", "2"]):
        assert main(base(tmp, clip) + given + ["--tune-on", str(tmp / "cache-train")]) == 2
        err = capsys.readouterr().err
        assert "--lam/--gamma and --tune-on exclude each other" in err, given


def test_steer_vs2pp_rows(setup, tmp_path):
    tmp, clip, _ = setup
    assert (
        main(
            base(tmp, clip, "vs2pp")
            + [
                "--database",
                str(tmp / "cache-train"),
                "--neighbours",
                "4",
                "--val-fraction",
                "0.3",
                "--labels",
                "pseudo",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    rep = json.loads((tmp_path / "c" / "steer_vs2pp.json").read_text())
    assert set(rep["rows"]) == {"vs2pp_pseudo", "clip_steer_pseudo", "rag_pseudo"}
    assert all(0 <= r["top1"] <= 100 for r in rep["rows"].values())
    assert rep["tuning"]["vs2pp_pseudo"]["n"] == 18


def test_steer_vs2_checks_the_sae_and_caches_before_the_model(setup, tmp_path, monkeypatch, capsys):
    """Item 13: an SAE of the wrong token selection, or a cache path that is no cache, is refused before
    the model is loaded (a loader that fails the test proves the order)."""
    tmp, clip, _ = setup

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before a check that needs only the flags, the SAE or a cache")

    monkeypatch.setattr("sparsesteer.models.backbone.load_backbone", no_model)
    all_tokens = build(SAEConfig(k=4, n_latents=64, d_in=32)).save(
        tmp_path / "sae-all", hook="blocks.2.resid_post", tokens="all"
    )
    argv = base(tmp, clip) + ["--lam", "1", "--gamma", "2"]
    argv[argv.index(str(tmp / "sae"))] = str(all_tokens)
    assert main(argv) == 2
    assert "the SAE was trained on 'all' tokens; VS2 steers the CLS token" in capsys.readouterr().err
    argv = base(tmp, clip) + ["--lam", "1", "--gamma", "2"]
    argv[argv.index(str(tmp / "cache-test"))] = str(tmp / "data")
    assert main(argv) == 2
    assert "not an activation cache" in capsys.readouterr().err
