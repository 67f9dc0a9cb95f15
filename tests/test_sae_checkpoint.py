"""Checkpoint round trips, foreign layouts (sparsify, SAELens) against their own conventions, and
the errors of broken checkpoint directories."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sparsesteer.sae import SAEConfig, SparseAutoencoder, build
from sparsesteer.utils.errors import SparsesteerError


def random_sae(arch, **kw):
    torch.manual_seed(0)
    cfg = SAEConfig(arch=arch, d_in=10, n_latents=40, k=4, **kw)
    sae = build(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.05) if sae.threshold.ndim == 0 else sae.threshold.uniform_(0, 0.2)
    return sae


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_round_trip_every_architecture(tmp_path, arch):
    sae = random_sae(arch)
    sae.save(tmp_path / "s", hook="blocks.3.resid_post", tokens="cls")
    loaded = SparseAutoencoder.load(tmp_path / "s")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    for k, v in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.metadata["hook"] == "blocks.3.resid_post"
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["format"] == "sparsesteer-sae" and cfg["arch"] == arch and cfg["d_in"] == 10 and cfg["n_latents"] == 40
    assert "activation_rule" in cfg and len(cfg["weights_sha256"]) == 64
    x = torch.randn(7, 10)
    torch.testing.assert_close(loaded.reconstruct(x), sae.eval().reconstruct(x))


def test_sparsify_layout_loads_and_encodes_like_sparsify(tmp_path):
    torch.manual_seed(1)
    d, n, k = 8, 32, 3
    enc_w, enc_b = torch.randn(n, d), torch.randn(n) * 0.1
    W_dec, b_dec = torch.randn(n, d), torch.randn(d)
    save_file(
        {"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
        str(tmp_path / "sae.safetensors"),
    )
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "expansion_factor": 4,
                "normalize_decoder": True,
                "num_latents": 0,
                "k": k,
                "multi_topk": False,
                "skip_connection": False,
                "d_in": d,
            }
        )
    )
    sae = SparseAutoencoder.load(tmp_path)
    x = torch.randn(5, d)
    # sparsify: pre = relu(encoder(x - b_dec)); top-k; decode = acts @ W_dec[idx] + b_dec
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    vals, idx = pre.topk(k)
    ref = torch.zeros(5, n).scatter(1, idx, vals) @ W_dec + b_dec
    torch.testing.assert_close(sae.reconstruct(x), ref)
    assert sae.metadata["source"]["format"] == "sparsify"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_layout_loads_and_encodes_like_saelens(tmp_path, arch, apply_b_dec):
    torch.manual_seed(2)
    d, n, k = 8, 32, 3
    W_enc, b_enc = torch.randn(d, n), torch.randn(n) * 0.1
    W_dec, b_dec = torch.randn(n, d), torch.randn(d)
    threshold = torch.rand(n) * 0.5
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    cfg = {
        "d_in": d,
        "d_sae": n,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        "architecture": arch,
        "metadata": {"hook_name": "blocks.9.hook_resid_post", "model_name": "open-clip:laion/x"},
    }
    if arch == "topk":
        cfg["k"] = k
    if arch == "jumprelu":
        tensors["threshold"] = threshold
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = SparseAutoencoder.load(tmp_path)
    x = torch.randn(6, d)
    # SAELens: hidden_pre = (x - b_dec * apply_b_dec) @ W_enc + b_enc
    hidden = (x - b_dec * apply_b_dec) @ W_enc + b_enc
    if arch == "standard":
        feats = torch.relu(hidden)
    elif arch == "topk":
        t = hidden.topk(k)
        feats = torch.zeros_like(hidden).scatter(1, t.indices, torch.relu(t.values))
    else:
        feats = torch.relu(hidden) * (hidden > threshold)
    torch.testing.assert_close(sae.encode_dense(x), feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), feats @ W_dec + b_dec, rtol=1e-5, atol=1e-5)
    assert sae.metadata["hook"] == "blocks.9.resid_post"


def test_saelens_unsupported_normalisation_is_refused(tmp_path):
    save_file(
        {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)},
        str(tmp_path / "sae_weights.safetensors"),
    )
    (tmp_path / "cfg.json").write_text(
        json.dumps({"d_in": 4, "d_sae": 8, "normalize_activations": "expected_average_only_in"})
    )
    with pytest.raises(SparsesteerError, match="expected_average_only_in"):
        SparseAutoencoder.load(tmp_path)


def test_broken_checkpoint_directories_give_clear_errors(tmp_path):
    sae = random_sae("topk")
    sae.save(tmp_path / "ok")
    with pytest.raises(SparsesteerError, match="not found"):
        SparseAutoencoder.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsesteerError, match="no cfg.json"):
        SparseAutoencoder.load(tmp_path / "empty")
    # missing weights file
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "cfg.json").write_text((tmp_path / "ok" / "cfg.json").read_text())
    with pytest.raises(SparsesteerError, match="missing its weights file sae.safetensors"):
        SparseAutoencoder.load(tmp_path / "noweights")
    # corrupted weights: the checksum names the file
    w = tmp_path / "ok" / "sae.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(SparsesteerError, match=r"sae.safetensors: checksum does not match"):
        SparseAutoencoder.load(tmp_path / "ok")
    # unknown config key in cfg.json gets a suggestion
    sae.save(tmp_path / "typo")
    cfg = json.loads((tmp_path / "typo" / "cfg.json").read_text())
    cfg["expansionn"] = 3
    (tmp_path / "typo" / "cfg.json").write_text(json.dumps(cfg))
    loaded = SparseAutoencoder.load(tmp_path / "typo")  # unknown provenance keys are kept as metadata
    assert loaded.metadata["expansionn"] == 3
    # shape mismatch between cfg.json and tensors
    cfg["n_latents"] = 41
    del cfg["weights_sha256"]
    (tmp_path / "typo" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SparsesteerError, match=r"tensor W_(enc|dec) has shape \(40, 10\), expected \(41, 10\)"):
        SparseAutoencoder.load(tmp_path / "typo")


def test_config_validation_errors():
    with pytest.raises(SparsesteerError, match="k must be smaller than n_latents"):
        SAEConfig(k=64, n_latents=64)
    with pytest.raises(SparsesteerError, match="k must be >= 1"):
        SAEConfig(k=0)
    with pytest.raises(SparsesteerError, match=r"unknown SAE architecture 'topkk' \(did you mean 'topk'\?\)"):
        SAEConfig(arch="topkk")
    with pytest.raises(SparsesteerError, match="matryoshka"):
        SAEConfig(arch="relu", matryoshka=(4,))
    with pytest.raises(SparsesteerError, match="d_in=12 but the activations have width 10"):
        SAEConfig(d_in=12).resolved(10)


def test_width_mismatch_names_both_shapes():
    sae = random_sae("topk")
    with pytest.raises(
        SparsesteerError, match=r"activation width \(7,\) does not match the SAE's d_in=10 \(input shape \(3, 7\)\)"
    ):
        sae.encode(torch.randn(3, 7))
