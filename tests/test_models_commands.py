"""`sparsesteer zeroshot`: accuracies and predictions equal a hand computation; errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import help_defaults, make_folder_dataset

from sparsesteer.cli import main
from sparsesteer.data import open_dataset
from sparsesteer.data.subset import stratified_sample
from sparsesteer.models import ZeroShotClassifier, get_templates, load_backbone
from sparsesteer.models.tiny import make_tiny_dinov2
from sparsesteer.models.zeroshot_run import ZeroShotConfig, default_out
from sparsesteer.models.zeroshot_run import zeroshot as run_zeroshot
from sparsesteer.utils.errors import SparsesteerError


def zeroshot_of(model, dataset, split, **options):
    return run_zeroshot(ZeroShotConfig(model=str(model), dataset=dataset, split=split, **options))


@pytest.fixture(scope="module")
def clip(tiny_clip_dir) -> Path:
    return tiny_clip_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zs-images")
    make_folder_dataset(root, (4, 3, 3, 2, 3, 2, 3), split="test", seed=3)  # 7 classes: top-5 < 100 %
    return root


def by_hand(clip: Path, data: Path, templates: str, n: int, skip=(), images=None):
    """Logits from the classifier weights and one-image-at-a-time embeddings: 100 * cosine."""
    bb = load_backbone(clip)
    ds = open_dataset(f"folder:{data}", "test")
    weights = ZeroShotClassifier.build(bb, ds.classes, get_templates(templates)).weights.double()
    images = [i for i in (range(n) if images is None else images) if i not in skip]
    emb = torch.cat([bb.embed_images(torch.from_numpy(bb.preprocessor(ds[i].image))[None]) for i in images]).double()
    cos = (emb / emb.norm(dim=1, keepdim=True)) @ (weights / weights.norm(dim=1, keepdim=True)).T
    return 100 * cos, torch.from_numpy(ds.labels()[images]), ds


@pytest.mark.parametrize("templates, limit", [("single", None), ("ensemble7", 11)])
def test_zeroshot_equals_hand_computation(clip, data, tmp_path, capsys, templates, limit):
    argv = [
        "zeroshot",
        "--model",
        str(clip),
        "--dataset",
        f"folder:{data}",
        "--split",
        "test",
        "--templates",
        templates,
        "--out",
        str(tmp_path / "out"),
        "--text-cache",
        str(tmp_path / "text"),
        "--batch-size",
        "4",
        "--workers",
        "0",
    ]
    assert main(argv + (["--limit", str(limit)] if limit else [])) == 0
    n = limit or 20
    # --limit: a class-stratified sample of the (class-sorted) split, seed 0
    images = (
        list(range(20)) if limit is None else stratified_sample(open_dataset(f"folder:{data}", "test").labels(), n, 0)
    )
    logits, labels, ds = by_hand(clip, data, templates, n, images=images)
    top5 = logits.topk(5, dim=1).indices
    top1_acc = (top5[:, 0] == labels).double().mean().item()
    top5_acc = (top5 == labels[:, None]).any(dim=1).double().mean().item()
    assert 0 < top5_acc < 1  # a meaningful check: neither all nor none within the top 5

    report = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert report["n_images"] == n
    assert report["topk"]["top1"] == pytest.approx(top1_acc) and report["topk"]["top5"] == pytest.approx(top5_acc)
    assert report["meta"] == {
        "model": str(clip),
        "revision": load_backbone(clip).revision,
        "dataset": f"folder:{data.resolve()}",
        "split": "test",
        "templates": templates,
        "n_images": n,
        **(
            {}
            if limit is None
            else {
                "subset": {
                    "rule": "class-stratified",
                    "n": n,
                    "limit": limit,
                    "seed": 0,
                    "of": 20,
                    "indices_sha256": hashlib.sha256(np.asarray(images, "<i8").tobytes()).hexdigest(),
                }
            }
        ),
    }
    for c, row in enumerate(report["per_class"]):
        mine = labels == c
        assert row["name"] == ds.classes[c] and row["n"] == int(mine.sum())
        if row["n"]:
            assert row["accuracy"] == pytest.approx((top5[mine, 0] == c).double().mean().item())
    md = (tmp_path / "out" / "zeroshot.md").read_text()
    assert f"| {n} | {100 * top1_acc:.2f} | {100 * top5_acc:.2f} |" in md and "| class 0 |" in md

    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == list(images)
    if limit:
        assert len(set(labels.tolist())) == 7  # every class of the 7 is in the 11-image sample
    assert [x["top5"] for x in lines] == top5.tolist()
    assert [x["label"] for x in lines] == labels.tolist()
    assert (
        lines[0]["source"] == ds.source(int(images[0])) and lines[0]["top5_names"][0] == ds.classes[lines[0]["top5"][0]]
    )
    np.testing.assert_allclose([x["top5_logits"] for x in lines], logits.topk(5, dim=1).values.numpy(), atol=1e-4)

    out = capsys.readouterr().out
    assert f"top-1 {100 * top1_acc:.2f} %, top-5 {100 * top5_acc:.2f} %" in out and "predictions.jsonl" in out
    assert len(list((tmp_path / "text").glob("zeroshot-*.safetensors"))) == 1  # class weights cached


def test_zeroshot_errors(clip, data, tmp_path):
    kw = dict(out=tmp_path / "o", text_cache=None, workers=0)
    dino = make_tiny_dinov2(tmp_path / "dino", layers=1)
    with pytest.raises(SparsesteerError, match="has no text tower"):
        zeroshot_of(dino, f"folder:{data}", "test", **kw)
    with pytest.raises(SparsesteerError, match="unknown split 'val'"):
        zeroshot_of(clip, f"folder:{data}", "val", **kw)
    with pytest.raises(SparsesteerError, match="unknown template set 'ensembel'.*did you mean 'ensemble'"):
        zeroshot_of(clip, f"folder:{data}", "test", templates="ensembel", **kw)


def test_dataset_without_class_names_is_refused(clip, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    unlabeled = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8), (k, 0, 0)) for k in range(3)]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    datasets.DatasetDict({"test": unlabeled}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(SparsesteerError, match=r"has no class names \(only no labels\)"):
        zeroshot_of(clip, f"hf:{tmp_path / 'hf'}", "test", out=tmp_path / "o", text_cache=None, workers=0)


def test_default_out_dir():
    assert default_out("openai/clip-vit-base-patch32", "cifar100", "test") == Path(
        "zeroshot/clip-vit-base-patch32-cifar100-test"
    )
    assert default_out("/m/tiny/", "folder:/data/imgs/", "val") == Path("zeroshot/tiny-imgs-val")


def test_help_states_every_default():
    helps = help_defaults("zeroshot")
    for option, text in helps.items():
        assert option in {"--model", "--dataset", "--split"} or "default:" in text, (option, text)
    assert "(default: single)" in helps["--templates"]


def test_unreadable_images_error_or_skip(clip, tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "imgs", (2, 2, 2), split="test", corrupt={(1, 0)})  # image 2
    argv = [
        "zeroshot",
        "--model",
        str(clip),
        "--dataset",
        f"folder:{root}",
        "--split",
        "test",
        "--out",
        str(tmp_path / "out"),
        "--text-cache",
        "none",
        "--workers",
        "0",
    ]
    assert main(argv) == 2
    assert "class_1/img_0.jpg" in capsys.readouterr().err
    assert main(argv + ["--on-bad-image", "skip"]) == 0
    assert "1 unreadable images left out" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert report["n_images"] == 5 and report["meta"]["skipped"] == 1 and report["meta"]["n_images"] == 5
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 3, 4, 5]
    logits, labels, _ = by_hand(clip, root, "single", 6, skip={2})
    assert [x["top5"] for x in lines] == logits.topk(3, dim=1).indices.tolist()
    assert report["topk"]["top1"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())
    (skipped,) = [json.loads(x) for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert skipped["index"] == 2 and skipped["source"].endswith("class_1/img_0.jpg")
