"""The testbed: planted mechanisms (planted: datasets), its tokenizer, and `testbed build` (a few
steps of a tiny shape: seeded, resumable bit for bit, refusing what it cannot train on)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import make_class_images
from safetensors.numpy import load_file

from sparsesteer.cli import main
from sparsesteer.data.planted import FRAME_RGB, PlantedDataset, PlantOptions
from sparsesteer.data.registry import open_dataset
from sparsesteer.experiments.testbed import build as tb_build
from sparsesteer.experiments.testbed.build import CIFAR10_CLASSES, BuildConfig
from sparsesteer.models import testbed as tb_model
from sparsesteer.utils.errors import SparsesteerError

TINY = tb_model.TestbedShape(
    hidden=16, layers=2, heads=2, text_hidden=16, text_layers=1, text_heads=2, projection_dim=8
)


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory) -> Path:
    """10 CIFAR-10-named classes x 6 train / 3 test images of 32 px."""
    return make_class_images(tmp_path_factory.mktemp("tb") / "data", {"train": 6, "test": 3}, CIFAR10_CLASSES)


def test_planted_attributes_follow_their_rates_and_the_cue_group(cifar_like):
    ds = open_dataset(f"planted:word=0.5,cue_in=1,cue_out=0:folder:{cifar_like}", "train")
    y, cue, group = ds.labels(), ds.attribute_array("cue"), ds.attribute_array("group")
    vehicles = np.isin(y, [0, 1, 8, 9])
    assert (cue == vehicles).all()  # cue_in=1, cue_out=0: the frame marks exactly the cue classes
    assert (group == 2 * vehicles + cue).all()
    word, wc = ds.attribute_array("word"), ds.attribute_array("word_class")
    assert 0.2 < word.mean() < 0.8 and ((wc >= 0) == (word == 1)).all()
    assert (wc[word == 1] == y[word == 1]).all()  # words=true: the image's own class
    attacked = open_dataset(f"planted:word=1,words=misleading:folder:{cifar_like}", "train")
    assert (attacked.attribute_array("word_class") != y).all()
    # the name reopens the same dataset
    again = open_dataset(ds.name, "train")
    assert (again.attribute_array("word_class") == wc).all()


def test_planted_pixels_frame_and_word(cifar_like):
    base = open_dataset(f"folder:{cifar_like}", "train")
    framed = PlantedDataset(base, PlantOptions(cue_in=1, cue_out=1, frame=2))
    img = np.asarray(framed[0].image)
    assert (img[:2] == FRAME_RGB).all() and (img[:, -2:] == FRAME_RGB).all()
    assert (img[2:-2, 2:-2] == np.asarray(base[0].image.convert("RGB"))[2:-2, 2:-2]).all()
    worded = PlantedDataset(base, PlantOptions(word=1))
    a, b = np.asarray(worded[3].image), np.asarray(base[3].image.convert("RGB"))
    assert (a != b).any()
    assert (np.asarray(worded[3].image) == a).all()  # a pure function of (seed, index)
    nothing = PlantedDataset(base, PlantOptions())
    assert (np.asarray(nothing[3].image) == b).all()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("planted:word=2:cifar10", "word is a probability"),
        ("planted:words=maybe:cifar10", "words must be 'true' or 'misleading'"),
        ("planted:colour=1:cifar10", "unknown planted option 'colour'"),
        ("planted:planted:cifar10", "cannot be planted again"),
    ],
)
def test_planted_spec_errors(spec, message):
    with pytest.raises(SparsesteerError, match=message):
        open_dataset(spec, "train")


def test_cue_classes_out_of_range(tmp_path):
    data = make_class_images(tmp_path / "d", {"train": 1}, ["a", "b"])
    with pytest.raises(SparsesteerError, match=r"cue_classes \[8, 9\] out of range"):
        open_dataset(f"planted:cue_classes=0+8+9:folder:{data}", "train")


def test_tokenizer_makes_caption_words_single_tokens():
    words = tb_model.caption_words(["a photo of a automobile.", "a tattoo of the truck."])
    tok = tb_model.testbed_tokenizer(words)
    ids = tok("a photo of a automobile.")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[1:-1] == ["a</w>", "photo</w>", "of</w>", "a</w>", "automobile</w>", ".</w>"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == len(tok) - 1
    assert len(tok("an unseen word")["input_ids"]) > 4  # any text still tokenizes


def _cfg(data: Path, out: Path, **kw) -> BuildConfig:
    base = dict(dataset=f"folder:{data}", out=str(out), epochs=2, batch_size=8, warmup=2, val_every=10)
    return BuildConfig(shape=TINY, checkpoint_every=3, **{**base, **kw})


def test_build_is_seeded_and_resumes_bit_identically(cifar_like, tmp_path, monkeypatch):
    old_mask = os.umask(0o022)
    try:
        full = tb_build.TestbedTrainer(_cfg(cifar_like, tmp_path / "a")).run()
    finally:
        os.umask(old_mask)
    assert {oct(p.stat().st_mode & 0o777) for p in full.iterdir()} == {"0o644"}  # one rule for every output
    want = load_file(str(full / "model.safetensors"))
    # kill the second run after its step 4 (a checkpoint at 3 exists), then run the same command again
    trainer = tb_build.TestbedTrainer(_cfg(cifar_like, tmp_path / "b"))
    real = tb_build.TestbedTrainer.step

    def dying(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(tb_build.TestbedTrainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(tb_build.TestbedTrainer, "step", real)
    assert sorted(p.name for p in (tmp_path / "b" / "state").iterdir()) == ["000000003"]
    again = tb_build.TestbedTrainer(_cfg(cifar_like, tmp_path / "b")).run()
    got = load_file(str(again / "model.safetensors"))
    assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)
    other = tb_build.TestbedTrainer(_cfg(cifar_like, tmp_path / "c", seed=1)).run()
    assert any((load_file(str(other / "model.safetensors"))[k] != want[k]).any() for k in want)
    curves = (tmp_path / "b" / "curves.jsonl").read_text().splitlines()
    assert [int(__import__("json").loads(c)["step"]) for c in curves] == [6, 12]  # no duplicate after resume


def test_build_refuses_other_classes_and_foreign_out(tmp_path):
    data = make_class_images(tmp_path / "d", {"train": 2}, ["cat", "dog"])
    with pytest.raises(SparsesteerError, match="CIFAR-10's 10 classes"):
        tb_build.TestbedTrainer(_cfg(data, tmp_path / "o"))
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    cifar = make_class_images(tmp_path / "c", {"train": 2}, CIFAR10_CLASSES)
    assert main(["testbed", "build", "--dataset", f"folder:{cifar}", "--out", str(used), "--batch-size", "4"]) == 2
    assert (used / "notes.txt").read_text() == "mine" and sorted(p.name for p in used.iterdir()) == ["notes.txt"]


def test_build_settings_change_is_refused(cifar_like, tmp_path):
    tb_build.TestbedTrainer(_cfg(cifar_like, tmp_path / "r", epochs=1)).run()
    with pytest.raises(SparsesteerError, match="other settings"):
        tb_build.TestbedTrainer(_cfg(cifar_like, tmp_path / "r", epochs=2)).run()


def _ship(folder: Path, tiny_clip_dir: Path) -> Path:
    """A stand-in for the shipped testbed: the tiny CLIP's files plus a card with their checksum."""
    import json
    import shutil

    from sparsesteer.utils.io import sha256_file

    shutil.copytree(tiny_clip_dir, folder)
    (folder / "card.json").write_text(json.dumps({"weights_sha256": sha256_file(folder / "model.safetensors")}))
    return folder


def test_model_testbed_resolves_to_the_shipped_folder(tmp_path, tiny_clip_dir, monkeypatch):
    from sparsesteer.models.backbone import load_backbone, model_shape

    shipped = _ship(tmp_path / "testbed_model", tiny_clip_dir)
    monkeypatch.setattr(tb_model, "shipped_dir", lambda: shipped)
    bb = load_backbone("testbed")
    assert bb.model_id == "testbed" and bb.source == str(shipped) and bb.tokenizer is not None
    assert model_shape("testbed").n_blocks == bb.n_blocks == 3
    data = make_class_images(tmp_path / "d", {"test": 1}, ["cat", "dog"])
    args = ["zeroshot", "--model", "testbed", "--dataset", f"folder:{data}", "--split", "test", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "zs"), "--text-cache", "none"]) == 0
    assert __import__("json").loads((tmp_path / "zs" / "zeroshot.json").read_text())["meta"]["model"] == "testbed"


def test_model_testbed_refuses_a_damaged_or_missing_file(tmp_path, tiny_clip_dir, monkeypatch, capsys):
    shipped = _ship(tmp_path / "testbed_model", tiny_clip_dir)
    monkeypatch.setattr(tb_model, "shipped_dir", lambda: shipped)
    weights = shipped / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(SparsesteerError, match="has sha256 .* but its card.json records"):
        tb_model.resolve("testbed")
    monkeypatch.setattr(tb_model, "shipped_dir", lambda: tmp_path / "nothing")
    data = make_class_images(tmp_path / "d", {"test": 1}, ["cat", "dog"])
    args = ["zeroshot", "--model", "testbed", "--dataset", f"folder:{data}", "--split", "test"]
    assert main([*args, "--out", str(tmp_path / "zs")]) == 2
    assert "no trained testbed" in capsys.readouterr().err
    assert tb_model.resolve("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
