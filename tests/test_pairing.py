"""Issue 20, items 4 and 5: a dataset or a second cache given with a cache must be the cache's images
(`activations.pairing`: spec after resolving paths, split, number of images, class names, labels,
--limit sample), in every command that pairs them; and `evaluate --suite spliced --model M` checks the
SAE against M like every other command that puts an SAE into a model."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from helpers import make_activation_cache, make_class_images

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.activations.pairing import ImageSet, check_same_cached_images, check_same_images
from sparsesteer.cli import main
from sparsesteer.data import open_dataset
from sparsesteer.models.tiny import make_tiny_clip
from sparsesteer.sae import SAEConfig, build
from sparsesteer.sae.provenance import Provenance
from sparsesteer.utils.errors import SparsesteerError

HOOK = "blocks.2.resid_post"
CLASSES = ["cat", "dog", "car"]


def _cache(clip, data, split, tokens, out) -> None:
    argv = ["-q", "cache", "--model", str(clip), "--dataset", f"folder:{data}", "--split", split, "--hook", HOOK,
            "--tokens", tokens, "--workers", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0


@pytest.fixture(scope="module")
def ws(tiny_clip_dir, tmp_path_factory):
    """data (3 classes x 4 train, x 2 test), `other` (3 train per class), `renamed` (other class
    names), `moved` (a copy of data); caches of data/train (all tokens), data/test and renamed/train
    (CLS); an all-token and a CLS SAE that record the caches' model."""
    tmp = tmp_path_factory.mktemp("pairing")
    make_class_images(tmp / "data", {"train": 4, "test": 2}, CLASSES)
    make_class_images(tmp / "other", {"train": 3, "test": 2}, CLASSES, seed=1)
    make_class_images(tmp / "renamed", {"train": 4, "test": 2}, ["apple", "bear", "cup"], seed=2)
    shutil.copytree(tmp / "data", tmp / "moved")
    _cache(tiny_clip_dir, tmp / "data", "train", "all", tmp / "acts")
    _cache(tiny_clip_dir, tmp / "data", "test", "cls", tmp / "test-cls")
    _cache(tiny_clip_dir, tmp / "renamed", "train", "cls", tmp / "renamed-cls")
    for name, cache, tokens in (("sae", "acts", "all"), ("sae-cls", "test-cls", "cls")):
        view = ActivationCache.open(tmp / cache).rows(HOOK, tokens)
        meta = Provenance.from_rows(view.describe()).to_metadata(known_only=True)
        build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=4)).save(tmp / name, **meta)
    return tmp


def _interpret(ws, out, *extra):
    return main(["-q", "interpret", "--sae", str(ws / "sae"), "--activations", str(ws / "acts"), "--top-n", "2",
                 "--neighbours", "0", "--device", "cpu", "--out", str(out), *extra])  # fmt: skip


def _no_model(monkeypatch):
    import sparsesteer.models.backbone as backbone

    def refuse(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr(backbone, "load_backbone", refuse)


# ------------------------------------------------------------------ interpret, browse (item 4)
@pytest.mark.parametrize(
    ("dataset", "why"),
    [("other", "number of images: 12 vs 9"), ("renamed", "class names: ")],
)
def test_interpret_refuses_a_dataset_that_is_not_the_caches(ws, tmp_path, capsys, dataset, why):
    assert _interpret(ws, tmp_path / "s", "--dataset", f"folder:{ws / dataset}") == 2
    err = capsys.readouterr().err
    assert "are not the same images" in err and why in err
    assert f"the activations ({ws / 'acts'})" in err and f"--dataset folder:{ws / dataset} [train]" in err
    assert not (tmp_path / "s" / "stats.json").exists()


def test_interpret_refuses_another_split(ws, tmp_path, capsys):
    assert _interpret(ws, tmp_path / "s", "--split", "test") == 2
    err = capsys.readouterr().err
    assert "split: 'train' vs 'test'" in err and "number of images: 12 vs 6" in err


def test_interpret_resolves_relative_paths_and_accepts_the_same_images(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(ws)
    assert _interpret(ws, tmp_path / "s", "--dataset", "folder:data", "--montages", "2") == 0
    meta = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert "provenance_overridden" not in meta
    images = meta["images"]
    assert images["spec"] == f"folder:{ws / 'data'}" and images["n_images"] == 12
    assert images["labels_sha256"] == ImageSet.of_cache(ActivationCache.open(ws / "acts")).labels_sha256


def test_moved_images_need_allow_mismatch_and_the_outputs_say_so(ws, tmp_path, capsys):
    assert _interpret(ws, tmp_path / "s", "--dataset", f"folder:{ws / 'moved'}") == 2
    err = capsys.readouterr().err
    assert f"dataset: 'folder:{ws / 'data'}' vs 'folder:{ws / 'moved'}'" in err and "--allow-mismatch" in err
    assert _interpret(ws, tmp_path / "s", "--dataset", f"folder:{ws / 'moved'}", "--allow-mismatch") == 0
    meta = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert any("dataset: " in n for n in meta["provenance_overridden"])
    assert meta["images"]["spec"] == f"folder:{ws / 'moved'}"  # what browse reopens and checks against


def test_browse_refuses_a_dataset_that_is_not_the_statistics(ws, tmp_path, capsys):
    stats = tmp_path / "s"
    assert _interpret(ws, stats) == 0
    site = ["-q", "browse", "--stats", str(stats), "--out", str(tmp_path / "site")]
    assert main([*site, "--dataset", f"folder:{ws / 'renamed'}"]) == 2  # as many images, other classes
    assert "are not the same images (class names: " in capsys.readouterr().err
    assert not (tmp_path / "site").exists()
    assert main(site) == 0  # the recorded images


def test_statistics_written_before_the_record_check_what_they_can(ws, tmp_path, caplog):
    from sparsesteer.interpret import load_stats
    from sparsesteer.interpret.heatmaps import stats_dataset

    assert _interpret(ws, tmp_path / "s") == 0
    stats = load_stats(tmp_path / "s")
    stats.meta.pop("images")  # as an older sparsesteer wrote them: spec, split, class names, no count or labels
    with caplog.at_level(logging.WARNING):
        assert len(stats_dataset(stats)) == 12
    assert "could not compare the number of images, labels" in caplog.text
    with pytest.raises(SparsesteerError, match="class names: "):
        stats_dataset(stats, dataset=f"folder:{ws / 'renamed'}")


# ------------------------------------------------------------------ evaluate (items 4 and 5)
def test_evaluate_model_suites_refuse_another_dataset_before_any_model(ws, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    base = ["-q", "evaluate", "--sae", str(ws / "sae"), "--activations", str(ws / "acts"), "--out",
            str(tmp_path / "j.json"), "--dataset", f"folder:{ws / 'other'}"]  # fmt: skip
    for suite in ("monosemanticity", "spliced"):
        assert main([*base, "--suite", suite, "--mono-model", str(ws / "nowhere")]) == 2
        assert "are not the same images (number of images: 12 vs 9" in capsys.readouterr().err


def test_evaluate_spliced_checks_the_sae_against_the_model(ws, tmp_path, capsys):
    other = make_tiny_clip(tmp_path / "other-clip", seed=7)  # same shapes, other weights: another revision
    base = ["-q", "evaluate", "--sae", str(ws / "sae"), "--activations", str(ws / "acts"), "--suite", "spliced",
            "--templates", "single", "--model", str(other)]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert f"the SAE and the model ({other}) at the requested hook disagree" in err and "model revision" in err
    assert main([*base, "--allow-mismatch", "--out", str(tmp_path / "b.json")]) == 0
    metrics = json.loads((tmp_path / "b.json").read_text())["saes"][0]["metrics"]
    assert all("model revision" in " ".join(m["data"]["provenance_overridden"]) for m in metrics)


# ------------------------------------------------------------------ steer (item 4)
def test_steer_vs2_refuses_tuning_on_other_classes_before_the_model_loads(ws, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    clip = ActivationCache.open(ws / "test-cls").settings.model["id"]
    argv = ["-q", "steer", "vs2", "--model", clip, "--sae", str(ws / "sae-cls"), "--activations", str(ws / "test-cls"),
            "--tune-on", str(ws / "renamed-cls"), "--val-fraction", "0.5"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "are not the same classes (class names: " in err and "labels would name other classes" in err


def test_steer_refuses_a_dataset_for_class_names_that_is_not_the_caches(ws, tmp_path, capsys):
    clip = ActivationCache.open(ws / "test-cls").settings.model["id"]
    argv = ["-q", "steer", "vs2", "--model", clip, "--sae", str(ws / "sae-cls"), "--activations", str(ws / "test-cls"),
            "--lam", "1", "--gamma", "1", "--dataset", f"folder:{ws / 'data'}"]  # fmt: skip
    assert main(argv) == 0  # the cache's own images
    assert main([*argv[:-1], f"folder:{ws / 'other'}"]) == 2  # the same class names and counts, other images
    err = capsys.readouterr().err
    assert f"dataset: 'folder:{ws / 'data'}' vs 'folder:{ws / 'other'}'" in err and "--allow-mismatch" in err


# ------------------------------------------------------------------ the function itself, and caches
def test_check_same_images_content_never_naming_with_allow():
    a = ImageSet("folder:/a", "train", 10, "c" * 64, "l" * 64)
    assert check_same_images("A", a, "B", a) == []
    moved = ImageSet("folder:/b", "train", 10, "c" * 64, "l" * 64)
    with pytest.raises(SparsesteerError, match=r"A and B are not the same images \(dataset: 'folder:/a' vs"):
        check_same_images("A", a, "B", moved)
    assert check_same_images("A", a, "B", moved, allow=True) == [
        "A and B are not the same images (dataset: 'folder:/a' vs 'folder:/b')"
    ]
    relabelled = ImageSet("folder:/a", "train", 10, "c" * 64, "m" * 64)
    with pytest.raises(SparsesteerError, match="labels: llllllllllll vs mmmmmmmmmmmm"):
        check_same_images("A", a, "B", relabelled, allow=True)
    resampled = ImageSet("folder:/a", "train", 10, "c" * 64, "l" * 64, subset={"indices_sha256": "x"})
    assert check_same_images("A", ImageSet(**{**a.to_json(), "subset": {"indices_sha256": "y"}}), "B", a) == []
    with pytest.raises(SparsesteerError, match="--limit sample"):
        check_same_images("A", ImageSet(**{**a.to_json(), "subset": {"indices_sha256": "y"}}), "B", resampled)


def test_a_hand_written_cache_is_checked_on_what_it_records(ws, tmp_path, caplog):
    cache = ActivationCache.open(make_activation_cache(tmp_path / "c", n_images=100, positions=(0,), d=8))
    ds = open_dataset(f"folder:{ws / 'data'}", "train")
    with pytest.raises(SparsesteerError, match="number of images: 100 vs 12"):
        check_same_images("the cache", ImageSet.of_cache(cache), "the dataset", ImageSet.of_dataset(ds))
    with caplog.at_level(logging.WARNING):
        check_same_images("the cache", ImageSet.of_cache(cache), "itself", ImageSet.of_cache(cache))
    assert "could not compare the class names (not recorded)" in caplog.text


def test_two_caches_of_other_images_are_refused(ws):
    acts, renamed = ActivationCache.open(ws / "acts"), ActivationCache.open(ws / "renamed-cls")
    assert check_same_cached_images("A", acts, "B", acts) == []
    with pytest.raises(SparsesteerError, match=rf"A \({ws / 'acts'}\) and B \({ws / 'renamed-cls'}\) are not the same"):
        check_same_cached_images("A", acts, "B", renamed, allow=True)


def test_reproduce_runs_check_their_caches_against_the_dataset_they_open(ws, tmp_path):
    """A stage that is current keeps its cache; the dataset the run opens now (another --data-root,
    files changed) must still be those images."""
    from sparsesteer.experiments.vs2.config import VS2Config
    from sparsesteer.experiments.vs2.run import VS2Run

    clip = ActivationCache.open(ws / "test-cls").settings.model["id"]
    out = tmp_path / "run"
    shutil.copytree(ws / "test-cls", out / "cache" / "test")
    same = VS2Run(VS2Config(model=clip, dataset=f"folder:{ws / 'data'}"), out)
    assert same.cls_rows("test").x.shape == (6, 32)
    moved = VS2Run(VS2Config(model=clip, dataset=f"folder:{ws / 'other'}"), out)  # same classes and counts
    with pytest.raises(SparsesteerError, match=r"are not the same images \(dataset: "):
        moved.cls_rows("test")
