"""Loading backbones from local directories and from the (offline) hub cache."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.tiny import make_tiny_clip, make_tiny_dinov2, make_tiny_siglip
from sparsesteer.utils.errors import SparsesteerError


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("backbone")
    return {
        "clip": tiny_clip_dir,  # 3 blocks
        "siglip": make_tiny_siglip(root / "siglip", layers=2),
        "siglip_vision": make_tiny_siglip(root / "siglip_vision", text=False),
        "dinov2": make_tiny_dinov2(root / "dinov2", layers=4),
    }


@pytest.mark.parametrize(
    "name, arch, n_blocks, has_cls, has_text, d_embed",
    [
        ("clip", "clip", 3, True, True, 16),
        ("siglip", "siglip", 2, False, True, 32),
        ("siglip_vision", "siglip", 3, False, False, 32),
        ("dinov2", "dinov2", 4, True, False, 32),
    ],
)
def test_attributes(dirs, name, arch, n_blocks, has_cls, has_text, d_embed):
    bb = load_backbone(dirs[name])
    assert (bb.arch, bb.n_blocks, bb.d_model, bb.has_cls, bb.has_text, bb.d_embed) == (
        arch,
        n_blocks,
        32,
        has_cls,
        has_text,
        d_embed,
    )
    assert bb.image_size == 32 and bb.patch_size == 8
    assert bb.n_tokens == 16 + has_cls
    assert bb.model_id == str(dirs[name])
    assert bb.device == torch.device("cpu") and bb.dtype == torch.float32
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert bb.vision is (bb.model.vision_model if hasattr(bb.model, "vision_model") else bb.model)
    assert bb.run(torch.zeros(1, 3, 32, 32), ["head"])["head"].shape == (1, d_embed)


def test_local_revision_is_a_content_hash(dirs, tmp_path):
    a = load_backbone(dirs["clip"]).revision
    assert a.startswith("sha256-") and len(a) == len("sha256-") + 16
    assert load_backbone(dirs["clip"]).revision == a  # stable
    copy = shutil.copytree(dirs["clip"], tmp_path / "copy")
    assert load_backbone(copy).revision == a  # depends on content, not on the path
    make_tiny_clip(tmp_path / "copy", seed=1)  # same files, other weights
    assert load_backbone(copy).revision != a


def test_hub_id_through_the_cache(dirs, tmp_path, monkeypatch):
    """A hub id resolves through the HF cache (offline) and reports the snapshot's commit hash."""
    import huggingface_hub.constants as hub_constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    shutil.copytree(dirs["clip"], repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = load_backbone("tiny-org/tiny-clip")
    assert bb.revision == sha and bb.model_id == "tiny-org/tiny-clip"
    ref = load_backbone(dirs["clip"])
    px = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(bb.embed_images(px), ref.embed_images(px))
    assert bb.tokenizer("a cat")["input_ids"] == ref.tokenizer("a cat")["input_ids"]
    with pytest.raises(SparsesteerError, match="tiny-org/missing"):
        load_backbone("tiny-org/missing")


def test_errors(tmp_path):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    ).save_pretrained(bert)
    with pytest.raises(SparsesteerError, match=r"'bert' model.*supported architectures: CLIP.*SigLIP.*DINOv2"):
        load_backbone(bert)
    with pytest.raises(SparsesteerError, match="no such directory"):
        load_backbone(tmp_path / "does" / "not" / "exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsesteerError, match="has no config.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(SparsesteerError, match="cannot load the weights"):
        load_backbone(tmp_path / "broken")


def test_no_text_tower_has_no_tokenizer(dirs):
    with pytest.raises(SparsesteerError, match="no text tower"):
        load_backbone(dirs["dinov2"]).tokenizer


def test_siglip_tokenizer_loads_through_auto(dirs):
    tok = load_backbone(dirs["siglip"]).tokenizer
    assert tok("a cat")["input_ids"][-1] == tok.eos_token_id


def _has_preprocess() -> bool:
    try:
        return importlib.util.find_spec("sparsesteer.data.preprocess") is not None
    except ImportError:
        return False


@pytest.mark.skipif(not _has_preprocess(), reason="sparsesteer.data.preprocess not written yet")
@pytest.mark.parametrize("name", ["clip", "siglip", "dinov2"])
def test_preprocessor_property(dirs, name):
    """The backbone's preprocessor yields what the model expects, like transformers' processor."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    from sparsesteer.data.preprocess import Preprocessor

    bb = load_backbone(dirs[name])
    assert isinstance(bb.preprocessor, Preprocessor)
    assert bb.preprocessor is bb.preprocessor  # built once
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    ours = torch.from_numpy(bb.preprocessor(img))
    assert ours.shape == (3, bb.image_size, bb.image_size)
    ref = AutoImageProcessor.from_pretrained(dirs[name])(images=img, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
