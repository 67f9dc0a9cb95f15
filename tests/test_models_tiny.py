"""Tiny random models: saved like hub models, loadable by transformers' Auto classes, deterministic."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsesteer.models.tiny import (
    CLIP_PRESETS,
    make_random_clip,
    make_tiny_clip,
    make_tiny_dinov2,
    make_tiny_siglip,
    tiny_clip_tokenizer,
)
from sparsesteer.utils.errors import SparsesteerError


def weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("make", [make_tiny_clip, make_tiny_siglip, make_tiny_dinov2])
def test_deterministic_in_seed(tmp_path, make):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = weights(make(tmp_path / "a", seed=3))
    b = weights(make(tmp_path / "b", seed=3))
    c = weights(make(tmp_path / "c", seed=4))
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)


def test_tiny_clip_loads_through_auto_classes(tmp_path):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel

    path = make_tiny_clip(tmp_path / "clip", image_size=48, patch_size=16, layers=2)
    model = AutoModel.from_pretrained(path)
    assert isinstance(model, CLIPModel)
    vc = model.config.vision_config
    assert (vc.image_size, vc.patch_size, vc.num_hidden_layers, model.config.projection_dim) == (48, 16, 2, 16)
    tok = AutoTokenizer.from_pretrained(path)
    tc = model.config.text_config
    assert (tc.bos_token_id, tc.eos_token_id, tc.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert tc.vocab_size == len(tok) and tok.model_max_length == tc.max_position_embeddings == 77
    ids = tok("The cat, 42!")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the cat , 4 2 !"  # CLIP splits digits
    proc = AutoImageProcessor.from_pretrained(path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    assert cfg["image_processor_type"] == "CLIPImageProcessor"
    assert cfg["size"] == {"shortest_edge": 48} and cfg["crop_size"] == {"height": 48, "width": 48}
    from PIL import Image

    px = proc(images=Image.new("RGB", (70, 50), (10, 200, 30)), return_tensors="pt")["pixel_values"]
    assert px.shape == (1, 3, 48, 48)
    with torch.no_grad():
        assert model.get_image_features(pixel_values=px).pooler_output.shape == (1, 16)


def test_tokenizer_covers_any_text():
    tok = tiny_clip_tokenizer()
    ids = tok("Ünïcode façade — ok?")["input_ids"]
    assert tok.unk_token_id not in ids[1:-1]  # byte-level: every byte has a token
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2


def test_tiny_siglip_and_dinov2_configs(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    sig = make_tiny_siglip(tmp_path / "s")
    cfg = json.loads((sig / "preprocessor_config.json").read_text())
    assert cfg["image_processor_type"] == "SiglipImageProcessor" and cfg["size"] == {"height": 32, "width": 32}
    assert type(AutoModel.from_pretrained(tmp_path / "s")).__name__ == "SiglipModel"
    sigv = make_tiny_siglip(tmp_path / "sv", text=False)
    assert type(AutoModel.from_pretrained(sigv)).__name__ == "SiglipVisionModel"
    assert not (sigv / "tokenizer.json").exists()

    dino = make_tiny_dinov2(tmp_path / "d", registers=4)
    model = AutoModel.from_pretrained(dino)
    assert type(model).__name__ == "Dinov2WithRegistersModel" and model.config.num_register_tokens == 4
    cfg = json.loads((dino / "preprocessor_config.json").read_text())
    assert cfg["image_processor_type"] == "BitImageProcessor"
    assert cfg["size"] == {"shortest_edge": 37} and cfg["crop_size"] == {"height": 32, "width": 32}
    assert cfg["do_center_crop"] and cfg["image_mean"] == [0.485, 0.456, 0.406]
    assert AutoImageProcessor.from_pretrained(dino).crop_size["height"] == 32
    lam = model.encoder.layer[0].layer_scale1.lambda1
    assert lam.std() > 0  # per-channel layer scale, so leaving it out would be noticed


def test_random_clip_has_vit_b32_shapes(tmp_path):
    from transformers import AutoConfig

    path = make_random_clip(tmp_path / "b32", "ViT-B/32")
    cfg = AutoConfig.from_pretrained(path)
    vc = cfg.vision_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.intermediate_size) == (768, 12, 12, 3072)
    assert (vc.image_size, vc.patch_size, cfg.projection_dim) == (224, 32, 512)
    assert set(CLIP_PRESETS) == {"ViT-B/32", "ViT-B/16", "ViT-L/14"}
    with pytest.raises(SparsesteerError, match="did you mean 'ViT-B/32'"):
        make_random_clip(tmp_path / "x", "ViT-B32")
