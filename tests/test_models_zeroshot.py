"""Zero-shot classifier, prompt templates, the CLS head and accuracy helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sparsesteer.models import zeroshot
from sparsesteer.models.accuracy import (
    confusion_matrix,
    evaluate,
    most_confused,
    per_class_accuracy,
    topk_accuracy,
    write_result,
)
from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.head import clip_head
from sparsesteer.models.hooks import Intervention
from sparsesteer.models.templates import IMAGENET_ENSEMBLE, IMAGENET_SELECTED_7, SINGLE, get_templates
from sparsesteer.models.tiny import make_tiny_dinov2, make_tiny_siglip
from sparsesteer.models.zeroshot import ZeroShotClassifier, class_weights, classify, encode_text
from sparsesteer.utils.errors import SparsesteerError

CLASSES = ["cat", "dog", "sports car", "tree"]
TEMPLATES = ("a photo of a {}.", "a drawing of the {}.", "itap of my {}.")


@pytest.fixture(scope="module")
def bbs(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("zs")
    return {
        "clip": load_backbone(tiny_clip_dir),
        "siglip": load_backbone(make_tiny_siglip(root / "siglip")),
        "dinov2": load_backbone(make_tiny_dinov2(root / "dinov2", registers=1)),
    }


# ---- templates ----------------------------------------------------------------------------------


def test_templates():
    assert len(IMAGENET_ENSEMBLE) == 80 and len(set(IMAGENET_ENSEMBLE)) == 80
    assert IMAGENET_ENSEMBLE[0] == "a bad photo of a {}." and IMAGENET_ENSEMBLE[-1] == "a tattoo of the {}."
    assert all(t.count("{}") == 1 for t in IMAGENET_ENSEMBLE)
    assert set(IMAGENET_SELECTED_7) <= set(IMAGENET_ENSEMBLE) and len(IMAGENET_SELECTED_7) == 7
    assert SINGLE[0] in IMAGENET_ENSEMBLE
    assert get_templates("single") == ("a photo of a {}.",)
    assert get_templates("ensemble") is IMAGENET_ENSEMBLE
    with pytest.raises(SparsesteerError, match="did you mean 'ensemble'"):
        get_templates("ensembel")


# ---- text side ----------------------------------------------------------------------------------


def test_clip_text_pooling_picks_eos(bbs):
    """Padding to the full length must not move the pooled token: it is the first EOS, not the last."""
    bb = bbs["clip"]
    texts = ["a cat.", "a photo of the large sports car."]
    ours = encode_text(bb, texts)
    tok = bb.tokenizer
    assert bb.model.config.text_config.eos_token_id == tok.eos_token_id == len(tok) - 1
    ids = tok(texts, padding=True, return_tensors="pt")["input_ids"]  # short padding
    with torch.no_grad():
        hidden = bb.model.text_model(input_ids=ids).last_hidden_state
        eos_pos = [row.tolist().index(tok.eos_token_id) for row in ids]
        ref = bb.model.text_projection(hidden[torch.arange(2), eos_pos])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_class_weights_hand_example():
    emb = torch.tensor([[[3.0, 4.0], [0.0, 2.0]], [[1.0, 0.0], [-1.0, 0.0]]])  # 2 classes x 2 templates
    w = class_weights(emb)
    torch.testing.assert_close(w[0], torch.tensor([0.3, 0.9]) / math.sqrt(0.9))
    # opposite prompts cancel: the mean is zero and normalize leaves it at zero
    torch.testing.assert_close(w[1], torch.zeros(2))


@pytest.mark.parametrize("arch", ["clip", "siglip"])
def test_ensemble_weights_equal_hand_computation(bbs, arch):
    bb = bbs[arch]
    clf = ZeroShotClassifier.build(bb, CLASSES, TEMPLATES)
    assert clf.weights.shape == (len(CLASSES), bb.d_embed)
    tok = bb.tokenizer
    max_len = bb.model.config.text_config.max_position_embeddings
    for c, name in enumerate(CLASSES):
        ids = tok([t.format(name) for t in TEMPLATES], padding="max_length", max_length=max_len, return_tensors="pt")[
            "input_ids"
        ]
        with torch.no_grad():
            e = bb.model.get_text_features(input_ids=ids).pooler_output
        e = e / e.norm(dim=-1, keepdim=True)
        mean = e.mean(dim=0)
        torch.testing.assert_close(clf.weights[c], mean / mean.norm(), atol=1e-5, rtol=1e-5)


def test_logits_are_scaled_cosines(bbs):
    clip, siglip = bbs["clip"], bbs["siglip"]
    img = torch.randn(5, clip.d_embed)
    clf = ZeroShotClassifier.build(clip, CLASSES, SINGLE)
    cos = F.cosine_similarity(img[:, None, :], clf.weights[None], dim=-1)
    torch.testing.assert_close(clf.logits(img), 100 * cos, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(clf.logits(3 * img), clf.logits(img))  # image embeds normalised inside
    pred = clf.predict(img, topk=3)
    assert pred.indices.shape == (5, 3)
    torch.testing.assert_close(pred.indices[:, 0], (100 * cos).argmax(dim=-1))
    assert clf.predict(img, topk=10).indices.shape == (5, 4)  # k clipped to n_classes

    sclf = ZeroShotClassifier.build(siglip, CLASSES, SINGLE)
    img = torch.randn(5, siglip.d_embed)
    cos = F.cosine_similarity(img[:, None, :], sclf.weights[None], dim=-1)
    scale, bias = siglip.model.logit_scale.exp().item(), siglip.model.logit_bias.item()
    torch.testing.assert_close(sclf.logits(img), scale * cos + bias, atol=1e-4, rtol=1e-5)


def test_cache_hit_is_identical_and_skips_the_text_tower(bbs, tmp_path, monkeypatch):
    bb = bbs["clip"]
    first = ZeroShotClassifier.build(bb, CLASSES, TEMPLATES, cache_dir=tmp_path)
    files = list(tmp_path.glob("zeroshot-*.safetensors"))
    assert len(files) == 1

    def no_recompute(*a, **k):
        raise AssertionError("text tower ran despite a cache hit")

    monkeypatch.setattr(zeroshot, "encode_text", no_recompute)
    second = ZeroShotClassifier.build(bb, CLASSES, TEMPLATES, cache_dir=tmp_path)
    torch.testing.assert_close(second.weights, first.weights, rtol=0, atol=0)
    assert second.classnames == tuple(CLASSES) and second.templates == TEMPLATES
    # other class names or templates are other cache entries
    with pytest.raises(AssertionError, match="despite a cache hit"):
        ZeroShotClassifier.build(bb, CLASSES[:3], TEMPLATES, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="despite a cache hit"):
        ZeroShotClassifier.build(bb, CLASSES, SINGLE, cache_dir=tmp_path)
    monkeypatch.undo()
    ZeroShotClassifier.build(bb, CLASSES, SINGLE, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("zeroshot-*.safetensors"))) == 2
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_corrupt_cache_is_recomputed(bbs, tmp_path):
    bb = bbs["clip"]
    ref = ZeroShotClassifier.build(bb, CLASSES, SINGLE, cache_dir=tmp_path)
    (path,) = tmp_path.glob("zeroshot-*.safetensors")
    path.write_bytes(b"garbage")
    again = ZeroShotClassifier.build(bb, CLASSES, SINGLE, cache_dir=tmp_path)
    torch.testing.assert_close(again.weights, ref.weights)


def test_zeroshot_errors(bbs):
    with pytest.raises(SparsesteerError, match="no text tower"):
        ZeroShotClassifier.build(bbs["dinov2"], CLASSES, SINGLE)
    with pytest.raises(SparsesteerError, match="one '{}'"):
        ZeroShotClassifier.build(bbs["clip"], CLASSES, ["a photo"])
    with pytest.raises(SparsesteerError, match="no class names"):
        ZeroShotClassifier.build(bbs["clip"], [], SINGLE)


def test_classify_batches_with_interventions(bbs):
    bb = bbs["clip"]
    clf = ZeroShotClassifier.build(bb, CLASSES, SINGLE)
    px = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    logits, got_labels = classify(bb, clf, [(px[:4], labels[:4]), (px[4:], labels[4:])])
    torch.testing.assert_close(logits, clf.logits(bb.embed_images(px)))
    torch.testing.assert_close(got_labels, labels)
    iv = Intervention(f"blocks.{bb.n_blocks - 1}.resid_post", lambda a, p: 2 * a, tokens="cls")
    steered, _ = classify(bb, clf, [(px, labels)], interventions=[iv])
    cls = bb.run(px, [f"blocks.{bb.n_blocks - 1}.resid_post"], tokens="cls")[f"blocks.{bb.n_blocks - 1}.resid_post"]
    with torch.no_grad():
        torch.testing.assert_close(steered, clf.logits(clip_head(bb, 2 * cls)))


# ---- head ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["clip", "dinov2"])
def test_clip_head_equals_head_hook(bbs, arch):
    bb = bbs[arch]
    px = torch.randn(3, 3, 32, 32)
    last = f"blocks.{bb.n_blocks - 1}.resid_post"
    out = bb.run(px, [last, "head"], tokens="cls")
    with torch.no_grad():
        torch.testing.assert_close(clip_head(bb, out[last]), out["head"], rtol=0, atol=0)
        # a modified CLS gives what the model gives when the same edit is made inside the forward pass
        vec = torch.randn(bb.d_model)
        steered = bb.run(px, ["head"], interventions=[Intervention(last, lambda a, p: a + vec, tokens="cls")])
        torch.testing.assert_close(clip_head(bb, out[last] + vec), steered["head"])
        assert clip_head(bb, out[last][0]).shape == (bb.d_embed,)


def test_clip_head_errors(bbs):
    with pytest.raises(SparsesteerError, match="no head that maps a CLS vector"):
        clip_head(bbs["siglip"], torch.zeros(2, 32))
    with pytest.raises(SparsesteerError, match="width 31"):
        clip_head(bbs["clip"], torch.zeros(2, 31))


# ---- accuracy -----------------------------------------------------------------------------------

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 1, 1, 1, 0, 0, 2])


def test_per_class_accuracy_and_confusions_by_hand():
    acc = per_class_accuracy(PREDS, LABELS, 4)
    torch.testing.assert_close(acc[:3], torch.tensor([0.5, 1.0, 1 / 3], dtype=torch.float64))
    assert math.isnan(acc[3])  # no samples
    cm = confusion_matrix(PREDS, LABELS, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [2, 0, 1, 0], [0, 0, 0, 0]]
    which, counts = most_confused(PREDS, LABELS, 4)
    assert which.tolist() == [1, -1, 0, -1] and counts.tolist() == [1, 0, 2, 0]


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.2, 0.7], [0.3, 0.2, 0.1], [0.0, 1.0, 0.5]])
    labels = torch.tensor([0, 1, 2, 2])
    # ranks of the true class: 1, 2, 3, 2
    assert topk_accuracy(logits, labels, ks=(1, 2, 3, 5)) == {1: 0.25, 2: 0.75, 3: 1.0, 5: 1.0}


def test_evaluate_and_write(tmp_path):
    names = ["cat", "dog", "car", "tree"]
    logits = F.one_hot(PREDS, 4).float()
    res = evaluate(logits, LABELS, names, meta={"model": "tiny", "templates": "single"})
    assert res.n_images == 7 and res.top1 == pytest.approx(4 / 7) and res.topk[5] == 1.0
    car = res.per_class[2]
    assert (car.name, car.n, car.most_confused_with, car.n_confused) == ("car", 3, "cat", 2)
    assert car.accuracy == pytest.approx(1 / 3)
    jp, mp = write_result(res, tmp_path / "out", stem="zs")
    data = json.loads(jp.read_text())
    assert data["meta"] == {"model": "tiny", "templates": "single"}
    assert data["topk"]["top1"] == pytest.approx(4 / 7)
    assert data["per_class"][3] == {
        "name": "tree",
        "n": 0,
        "accuracy": None,
        "most_confused_with": None,
        "n_confused": 0,
    }
    md = mp.read_text()
    assert "| 7 | 57.14 | 100.00 |" in md and "| car | 3 | 33.33 | cat | 2 |" in md and "| tree | 0 | - | - | 0 |" in md
    with pytest.raises(SparsesteerError, match=r"labels must lie in 0\.\.3"):
        evaluate(logits, torch.tensor([0, 0, 1, 1, 2, 2, -1]), names)
    with pytest.raises(SparsesteerError, match=r"expected \[N, 3\]"):
        evaluate(logits, LABELS, names[:3])
