"""Readers for published layouts (ViT-Prisma, dictionary_learning / sae-for-vlm, ViSAEBench; SAELens
per-row normalisation): miniature repositories with those libraries' key names and config fields,
encodings checked against each library's rule computed here in float64, and the refusals."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from sparsesteer.sae import SparseAutoencoder
from sparsesteer.sae.export import export_sae
from sparsesteer.utils.errors import SparsesteerError

D, N, K = 8, 32, 4
F64 = torch.float64


def rand(*shape, seed=[0]):  # noqa: B006 - a counter shared by the calls of one test run
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]))


def inputs(rows=16):
    return rand(rows, D) * 3 + 1


def close(a, b):
    torch.testing.assert_close(a.to(F64), b.to(F64), rtol=2e-4, atol=2e-4)


def topk_relu(pre, k):
    """Keep the k largest entries, ReLU'd (ViT-Prisma TopK, dictionary_learning, ViSAEBench)."""
    t = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, t.indices, torch.relu(t.values))


# ------------------------------------------------------------------ ViT-Prisma
def prisma_norm(x, kind):
    """ViT-Prisma run_time_activation_norm_fn_in / _out for one batch (float64)."""
    if kind == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        return (x - mu) / (std + 1e-5), lambda y: y * std + mu
    if kind == "constant_norm_rescale":
        c = D**0.5 / x.norm(dim=-1, keepdim=True)
        return x * c, lambda y: y / c
    return x, lambda y: y


def prisma_repo(path, *, arch="standard", act="relu", norm="layer_norm", k=K, name="weights.pt", **cfg_extra):
    path.mkdir(parents=True, exist_ok=True)
    sd = {"W_enc": rand(D, N) * 0.4, "b_enc": rand(N) * 0.1, "W_dec": rand(N, D) * 0.4, "b_dec": rand(D) * 0.1}
    if arch == "gated":
        sd |= {"b_gate": rand(N) * 0.3, "r_mag": rand(N) * 0.3, "b_mag": rand(N) * 0.3}
    cfg = {
        "model_class_name": "HookedViT",
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "hook_point_layer": 9,
        "layer_subtype": "hook_resid_post",
        "context_size": 50,
        "use_patches_only": False,
        "cls_token_only": True,
        "architecture": arch,
        "expansion_factor": N // D,
        "d_in": D,
        "activation_fn_str": act,
        "activation_fn_kwargs": {"k": k} if act == "topk" else {},
        "normalize_activations": norm,
        "is_transcoder": False,
        "_dtype": "float32",
        "_device": "cuda",
        **cfg_extra,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    torch.save(sd, path / name)
    torch.save(torch.zeros(N), path / (name.removesuffix(".pt") + "_log_feature_sparsity.pt"))
    return {k: v.to(F64) for k, v in sd.items()}


def prisma_reference(sd, x, *, arch, act, norm):
    x_n, out = prisma_norm(x.to(F64), norm)
    u = x_n - sd["b_dec"]
    if arch == "gated":
        gate = (u @ sd["W_enc"] + sd["b_gate"]) > 0
        f = gate * torch.relu(u @ (sd["W_enc"] * sd["r_mag"].exp()) + sd["b_mag"])
    else:
        pre = u @ sd["W_enc"] + sd["b_enc"]
        f = torch.relu(pre) if act == "relu" else topk_relu(pre, K)
    return f, out(f @ sd["W_dec"] + sd["b_dec"])


@pytest.mark.parametrize(
    "arch,act,norm",
    [
        ("standard", "relu", "layer_norm"),
        ("standard", "topk", "constant_norm_rescale"),
        ("standard", "relu", "none"),
        ("gated", "relu", "layer_norm"),
    ],
)
def test_prisma_encodes_like_vit_prisma(tmp_path, arch, act, norm):
    sd = prisma_repo(tmp_path / "p", arch=arch, act=act, norm=norm)
    sae = SparseAutoencoder.load(tmp_path / "p")
    x = inputs()
    f, x_hat = prisma_reference(sd, x, arch=arch, act=act, norm=norm)
    with torch.no_grad():
        close(sae.encode_dense(x), f)
        close(sae.reconstruct(x), x_hat)
        if norm != "none":
            with pytest.raises(SparsesteerError, match="normalises each input row"):
                sae.decode(sae.encode(x))
            close(sae.decode(sae.encode(x), like=x), x_hat)
    assert sae.metadata["hook"] == "blocks.9.resid_post" and sae.metadata["tokens"] == "cls"
    assert sae.metadata["model"]["id"] == "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
    src = sae.metadata["source"]
    assert src["format"] == "vit-prisma" and src["hook"] == "blocks.9.hook_resid_post"
    assert set(src["files"]) == {"config.json", "weights.pt"} and all(len(h) == 64 for h in src["files"].values())


def test_prisma_checkpoint_with_its_cfg_saved_round_trips_through_our_format(tmp_path):
    # save_model writes {"cfg": ..., "state_dict": ...}; a cfg of plain values reads tensors-only
    sd = prisma_repo(tmp_path / "p", name="n_images_2600058.pt", layer_subtype="hook_mlp_out")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").unlink()
    torch.save(
        {"cfg": cfg, "state_dict": {k: v.float() for k, v in sd.items()}}, tmp_path / "p" / "n_images_2600058.pt"
    )
    sae = SparseAutoencoder.load(tmp_path / "p")
    assert sae.metadata["hook"] == "blocks.9.mlp_out" and sae.row_norm["kind"] == "layer_norm"
    sae.save(tmp_path / "ours")
    back = SparseAutoencoder.load(tmp_path / "ours")
    x = inputs()
    with torch.no_grad():
        close(back.reconstruct(x), prisma_reference(sd, x, arch="standard", act="relu", norm="layer_norm")[1])


@dataclasses.dataclass
class RunnerConfig:  # stands in for ViT-Prisma's VisionModelSAERunnerConfig object in save_model's pickle
    d_in: int = D


def test_prisma_refusals(tmp_path):
    sd = prisma_repo(tmp_path / "p")
    # save_model's pickle holds the config object: not tensors-only, refused by name (never unpickled)
    torch.save({"cfg": RunnerConfig(), "state_dict": sd}, tmp_path / "p" / "weights.pt")
    with pytest.raises(SparsesteerError, match=r"weights.pt is not a tensors-only pickle.*weights_only=True"):
        SparseAutoencoder.load(tmp_path / "p")
    # several checkpoints: name one
    prisma_repo(tmp_path / "two", name="n_images_1.pt")
    prisma_repo(tmp_path / "two", name="n_images_2.pt")
    with pytest.raises(SparsesteerError, match=r"several ViT-Prisma checkpoints \(n_images_1.pt, n_images_2.pt\)"):
        SparseAutoencoder.load(tmp_path / "two")
    assert SparseAutoencoder.load(tmp_path / "two" / "n_images_2.pt").n_latents == N
    prisma_repo(tmp_path / "tanh", act="tanh-relu")
    with pytest.raises(SparsesteerError, match="activation_fn_str 'tanh-relu' is not supported"):
        SparseAutoencoder.load(tmp_path / "tanh")
    prisma_repo(tmp_path / "tc", is_transcoder=True)
    with pytest.raises(SparsesteerError, match="transcoders are not supported"):
        SparseAutoencoder.load(tmp_path / "tc")
    # fields that change the rule take ViT-Prisma's defaults when absent (topk, layer_norm), and say so
    prisma_repo(tmp_path / "old", act="topk")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("activation_fn_str", "normalize_activations", "layer_subtype"):
        del cfg[key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    old = SparseAutoencoder.load(tmp_path / "old")
    assert old.cfg.arch == "topk" and old.row_norm["kind"] == "layer_norm" and old.metadata["hook"] is None
    assert old.metadata["source"]["defaults_applied"] == {
        "activation_fn_str": "topk",
        "normalize_activations": "layer_norm",
    }
    prisma_repo(tmp_path / "ln2", layer_subtype="ln2.hook_normalized")
    sae = SparseAutoencoder.load(tmp_path / "ln2")  # no equivalent hook of ours: unknown, original kept
    assert sae.metadata["hook"] is None and sae.metadata["source"]["hook"] == "blocks.9.ln2.hook_normalized"


# ------------------------------------------------------------------ dictionary_learning / sae-for-vlm
RUN = "imagenet_train_activations_clip-vit-large-patch14-336_11_post_mlp_residual_matroyshka_batch_top_k_20_x4"


def dl_repo(root, dict_class, *, threshold=0.2):
    t = root / RUN / "trainer_0"
    t.mkdir(parents=True)
    enc_w, enc_b, dec_w, b_dec = rand(N, D) * 0.4, rand(N) * 0.1, rand(D, N) * 0.4, rand(D) * 0.1
    kt = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold)}
    sd = {
        "AutoEncoder": {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "bias": b_dec},
        "AutoEncoderTopK": {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "b_dec": b_dec,
            **kt,
        },
        "BatchTopKSAE": {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "b_dec": b_dec, **kt},
        "MatroyshkaBatchTopKSAE": {
            "W_enc": enc_w.T.contiguous(),
            "b_enc": enc_b,
            "W_dec": dec_w.T.contiguous(),
            "b_dec": b_dec,
            "group_sizes": torch.tensor([4, 12, 16]),
            **kt,
        },
        "JumpReluAutoEncoder": {
            "W_enc": enc_w.T.contiguous(),
            "b_enc": enc_b,
            "W_dec": dec_w.T.contiguous(),
            "b_dec": b_dec,
            "threshold": rand(N).abs() * 0.3,
        },
        "GatedAutoEncoder": {
            "encoder.weight": enc_w,
            "decoder.weight": dec_w,
            "decoder_bias": b_dec,
            "r_mag": rand(N) * 0.3,
            "gate_bias": rand(N) * 0.3,
            "mag_bias": rand(N) * 0.3,
        },
    }[dict_class]
    trainer = {"dict_class": dict_class, "activation_dim": D, "dict_size": N, "layer": "", "lm_name": "", "k": K}
    (t / "config.json").write_text(json.dumps({"trainer": trainer}))
    torch.save(sd, t / "ae.pt")
    return {k: v.to(F64) for k, v in sd.items()}


def dl_reference(sd, cls, x):
    """The dict_class's default `encode` and `decode` (dictionary_learning), float64."""
    x = x.to(F64)
    if cls == "GatedAutoEncoder":
        u = (x - sd["decoder_bias"]) @ sd["encoder.weight"].T
        f = ((u + sd["gate_bias"]) > 0) * torch.relu(sd["r_mag"].exp() * u + sd["mag_bias"])
        return f, f @ sd["decoder.weight"].T + sd["decoder_bias"]
    if cls in ("MatroyshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        b = sd["b_dec"] if cls == "MatroyshkaBatchTopKSAE" else 0.0  # JumpReLU: apply_b_dec_to_input False
        pre = (x - b) @ sd["W_enc"] + sd["b_enc"]
        post = torch.relu(pre)
        f = (
            post * (post > sd["threshold"])
            if cls == "MatroyshkaBatchTopKSAE"
            else torch.relu(pre * (pre > sd["threshold"]))
        )
        return f, f @ sd["W_dec"] + sd["b_dec"]
    b = sd["bias"] if cls == "AutoEncoder" else sd["b_dec"]
    post = torch.relu((x - b) @ sd["encoder.weight"].T + sd["encoder.bias"])
    f = {
        "AutoEncoder": post,
        "AutoEncoderTopK": topk_relu(post, K),
        "BatchTopKSAE": post * (post > sd.get("threshold", 0)),
    }[cls]
    return f, f @ sd["decoder.weight"].T + b


@pytest.mark.parametrize(
    "cls",
    [
        "AutoEncoder",
        "AutoEncoderTopK",
        "BatchTopKSAE",
        "MatroyshkaBatchTopKSAE",
        "JumpReluAutoEncoder",
        "GatedAutoEncoder",
    ],
)
def test_dictionary_learning_encodes_like_its_dict_class(tmp_path, cls):
    sd = dl_repo(tmp_path, cls)
    sae = SparseAutoencoder.load(tmp_path / RUN)  # the run folder: its only trainer_0 is read
    x = inputs()
    f, x_hat = dl_reference(sd, cls, x)
    with torch.no_grad():
        close(sae.encode_dense(x), f)
        close(sae.reconstruct(x), x_hat)
    assert sae.metadata["hook"] == "blocks.11.resid_post"
    assert sae.metadata["model"]["id"] == "openai/clip-vit-large-patch14-336"
    assert sae.metadata["source"]["dict_class"] == cls and "ae.pt" in sae.metadata["source"]["files"]
    if cls == "MatroyshkaBatchTopKSAE":
        assert sae.cfg.arch == "batchtopk" and sae.cfg.matryoshka == (4, 16)


def test_dictionary_learning_refusals(tmp_path):
    dl_repo(tmp_path / "a", "BatchTopKSAE", threshold=-1.0)
    with pytest.raises(SparsesteerError, match="threshold -1.0 < 0"):
        SparseAutoencoder.load(tmp_path / "a" / RUN / "trainer_0")
    dl_repo(tmp_path / "b", "AutoEncoder")
    t = tmp_path / "b" / RUN / "trainer_0"
    torch.save({"encoder.weight": torch.zeros(N, D), "note": "trained by me"}, t / "ae.pt")
    with pytest.raises(SparsesteerError, match="ae.pt: entries that are not tensors: note"):
        SparseAutoencoder.load(t)


# ------------------------------------------------------------------ ViSAEBench
def vb_repo(path, activation, *, overcomplete=False, stats=True, yaml_cfg=False, threshold=0.15, **cfg_extra):
    path.mkdir(parents=True)
    W, b, Wd, bd = rand(N, D) * 0.4, rand(N) * 0.1, rand(N, D) * 0.4, rand(D) * 0.1
    if overcomplete:
        sd = {
            "encoder.final_block.0.weight": W,
            "encoder.final_block.0.bias": b,
            "dictionary._weights": Wd,
            "dictionary.multiplier": torch.tensor(0.3),
        }
    else:
        sd = {"encoder.weight": W, "encoder.bias": b, "decoder.weight": Wd, "decoder.bias": bd}
    if activation == "jumprelu":
        sd["thresholds"] = rand(N).abs() * 0.3
    cfg = {"activation": activation, "input_dim": D, "hidden_dim": N, "k": K, "layer": 11, **cfg_extra}
    if activation == "batchtopk":
        cfg["threshold"] = threshold
    if yaml_cfg:
        (path / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    else:
        (path / "config.json").write_text(json.dumps(cfg))
    torch.save(sd, path / "sae.pt")
    mean, std = rand(D), 2.5
    if stats:
        torch.save({"mean": mean, "std": std}, path / "norm_stats.pt")
    return {k: v.to(F64) for k, v in sd.items()}, mean.to(F64), std, cfg


def vb_reference(sd, mean, std, cfg, x):
    """ViSAEBench: (x - mean) / std into GenericSAE.encode / decode; back to x's space (float64)."""
    x_n = (x.to(F64) - mean) / std
    if "encoder.weight" in sd:
        W, b, Wd, bd = sd["encoder.weight"], sd["encoder.bias"], sd["decoder.weight"], sd["decoder.bias"]
    else:
        W, b = sd["encoder.final_block.0.weight"], sd["encoder.final_block.0.bias"]
        Wd, bd = sd["dictionary._weights"] * sd["dictionary.multiplier"].exp(), 0.0
    z = torch.relu(x_n @ W.T + b)
    act = cfg["activation"]
    if act == "topk":
        t = z.topk(K, dim=-1)
        z = torch.zeros_like(z).scatter(-1, t.indices, t.values)
    elif act == "batchtopk":
        z = z * (z >= cfg["threshold"])
    else:
        z = z * (z > sd["thresholds"])
    return z, (z @ Wd + bd) * std + mean


@pytest.mark.parametrize(
    "activation,overcomplete,yaml_cfg",
    [("topk", False, False), ("batchtopk", False, True), ("jumprelu", False, False), ("topk", True, False)],
)
def test_visaebench_encodes_like_visaebench(tmp_path, activation, overcomplete, yaml_cfg):
    sd, mean, std, cfg = vb_repo(tmp_path / "batchtopk_4x_k4", activation, overcomplete=overcomplete, yaml_cfg=yaml_cfg)
    sae = SparseAutoencoder.load(tmp_path / "batchtopk_4x_k4")
    x = inputs()
    f, x_hat = vb_reference(sd, mean, std, cfg, x)
    with torch.no_grad():
        close(sae.encode_dense(x), f)
        close(sae.reconstruct(x), x_hat)
    assert sae.metadata["hook"] == "blocks.11.resid_post" and sae.metadata["tokens"] == "patch"
    assert "norm_stats.pt" in sae.metadata["source"]["files"]


def test_visaebench_batchtopk_threshold_is_inclusive(tmp_path):
    # a pre-activation exactly at the threshold is kept (z >= threshold)
    sd, mean, std, cfg = vb_repo(tmp_path / "s", "batchtopk", stats=False, threshold=0.5)
    W = torch.zeros(N, D)
    W[0, 0] = 1.0
    save = {
        "encoder.weight": W,
        "encoder.bias": torch.zeros(N),
        "decoder.weight": torch.eye(N, D),
        "decoder.bias": torch.zeros(D),
    }
    torch.save(save, tmp_path / "s" / "sae.pt")
    torch.save({"mean": torch.zeros(D), "std": 1.0}, tmp_path / "s" / "norm_stats.pt")
    sae = SparseAutoencoder.load(tmp_path / "s")
    x = torch.zeros(3, D)
    x[:, 0] = torch.tensor([0.5, 0.49, 0.51])
    with torch.no_grad():
        assert sae.encode_dense(x)[:, 0].tolist() == pytest.approx([0.5, 0.0, 0.51])


def test_visaebench_without_its_normalisation_stats_is_refused(tmp_path):
    vb_repo(tmp_path / "s", "topk", stats=False)
    with pytest.raises(SparsesteerError, match=r"mean and std .* norm_stats.pt .* \(found: config.json, sae.pt\)"):
        SparseAutoencoder.load(tmp_path / "s")


# ------------------------------------------------------------------ SAELens per-row normalisation, export
@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_saelens_row_normalisation_and_export_read_back(tmp_path, norm):
    W_enc, b_enc, W_dec, b_dec = rand(D, N) * 0.4, rand(N) * 0.1, rand(N, D) * 0.4, rand(D) * 0.1
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(tmp_path / "sae_weights.safetensors")
    )
    cfg = {"d_in": D, "d_sae": N, "architecture": "topk", "k": K, "normalize_activations": norm}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = SparseAutoencoder.load(tmp_path)
    x = inputs()
    x_n, out = prisma_norm(x.to(F64), norm)  # SAELens' run_time_activation_norm_fn_in/out are the same rules
    f = topk_relu((x_n - b_dec.to(F64)) @ W_enc.to(F64) + b_enc.to(F64), K)
    with torch.no_grad():
        close(sae.encode_dense(x), f)
        close(sae.reconstruct(x), out(f @ W_dec.to(F64) + b_dec.to(F64)))
    export_sae(sae, "saelens", tmp_path / "out", hook="blocks.9.resid_post")  # the cfg.json names no hook
    back = SparseAutoencoder.load(tmp_path / "out")
    assert back.row_norm["kind"] == norm
    with torch.no_grad():
        close(back.reconstruct(x), sae.reconstruct(x))
    with pytest.raises(SparsesteerError, match="sparsify has no such normalisation"):
        export_sae(SparseAutoencoder.load(tmp_path), "sparsify", tmp_path / "out2")


def test_pickle_where_safetensors_is_expected_is_refused(tmp_path):
    torch.save({"W_enc": torch.zeros(D, N)}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N}))
    with pytest.raises(SparsesteerError, match=r"sae_weights.safetensors is a pickle .* not safetensors"):
        SparseAutoencoder.load(tmp_path)


def test_unrecognised_folders_list_what_they_hold(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    torch.save({"w": torch.zeros(2)}, tmp_path / "a" / "weights.pt")
    with pytest.raises(SparsesteerError, match="weights.pt has no config beside or inside it"):
        SparseAutoencoder.load(tmp_path / "a")
    (tmp_path / "a" / "weights.pt").unlink()
    with pytest.raises(
        SparsesteerError,
        match=r"not an SAE checkpoint in a recognised layout .*ViT-Prisma.*ViSAEBench.*found: readme.txt",
    ):
        SparseAutoencoder.load(tmp_path / "a")


# ------------------------------------------------------------------ width against the model's hook
def test_published_sae_of_another_width_is_refused_by_the_model_hook(tmp_path, tiny_clip_dir):
    from sparsesteer.models.backbone import load_backbone
    from sparsesteer.steering.features import check_sae

    bb = load_backbone(tiny_clip_dir)  # d_model 32; every SAE below reads width 8
    prisma_repo(tmp_path / "prisma")
    dl_repo(tmp_path / "dl", "BatchTopKSAE")
    vb_repo(tmp_path / "vb", "topk")
    save_file(
        {"W_enc": rand(D, N), "b_enc": rand(N), "W_dec": rand(N, D), "b_dec": rand(D)}, str(tmp_path / "sl.safetensors")
    )
    (tmp_path / "sl").mkdir()
    (tmp_path / "sl.safetensors").rename(tmp_path / "sl" / "sae_weights.safetensors")
    (tmp_path / "sl" / "cfg.json").write_text(
        json.dumps({"d_in": D, "d_sae": N, "hook_name": "blocks.1.hook_resid_post"})
    )
    (tmp_path / "sp").mkdir()
    save_file(
        {"encoder.weight": rand(N, D), "encoder.bias": rand(N), "W_dec": rand(N, D), "b_dec": rand(D)},
        str(tmp_path / "sp" / "sae.safetensors"),
    )
    (tmp_path / "sp" / "cfg.json").write_text(json.dumps({"d_in": D, "num_latents": N, "k": K}))
    SparseAutoencoder.load(tmp_path / "sp").save(tmp_path / "ours")
    for where in ("prisma", f"dl/{RUN}", "vb", "sl", "sp", "ours"):
        sae = SparseAutoencoder.load(tmp_path / where)
        with pytest.raises(SparsesteerError, match=r"width d_in=8, but blocks.1.resid_post of .* has width 32"):
            check_sae(bb, sae, "blocks.1.resid_post", "all", allow_mismatch=True)


@pytest.mark.slow  # a subprocess (hub offline mode is process-wide)
def test_visaebench_hub_id_names_its_backbone_and_source(tmp_path):
    from test_sae_export import COMMIT, hub_cache, run_cli

    made = {}
    hub_cache(
        tmp_path / "hf",
        "visaebench/clip-vitb16-saes",
        lambda snap: made.update(
            zip(("sd", "mean", "std", "cfg"), vb_repo(snap / "batchtopk_4x_k4", "batchtopk", layer=None))
        ),
    )
    code = (
        "from sparsesteer.sae import SparseAutoencoder; import json, torch; "
        "s = SparseAutoencoder.load(sys.argv[1]); x = torch.load(sys.argv[2]); "
        "print(json.dumps({'meta': {k: s.metadata[k] for k in ('hook', 'tokens', 'model')}, "
        "'hub': s.metadata['source']['hub'], 'rev': s.metadata['source']['revision'], "
        "'fmt': s.metadata['source']['format'], 'codes': s.encode_dense(x).tolist()}))"
    )
    x = inputs(6)
    torch.save(x, tmp_path / "x.pt")
    out = run_cli(
        ["hf:visaebench/clip-vitb16-saes/batchtopk_4x_k4", str(tmp_path / "x.pt")], tmp_path / "hf", tmp_path, code
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["meta"] == {"hook": None, "tokens": "patch", "model": {"id": "openai/clip-vit-base-patch16"}}
    assert got["hub"] == "visaebench/clip-vitb16-saes" and got["rev"] == COMMIT and got["fmt"] == "visaebench"
    close(torch.tensor(got["codes"]), vb_reference(made["sd"], made["mean"], made["std"], made["cfg"], x)[0])


def test_evaluate_judges_published_saes_side_by_side(tmp_path, capsys):
    from helpers import make_activation_cache

    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.cli import main

    cache = make_activation_cache(tmp_path / "cache", n_images=100, positions=(0, 1, 2, 3, 4), d=D)
    sd_p = prisma_repo(tmp_path / "prisma")  # layer_norm per row, CLS tokens
    sd_d = dl_repo(tmp_path / "dl", "MatroyshkaBatchTopKSAE")
    saes = [str(tmp_path / "prisma"), str(tmp_path / "dl" / RUN)]
    out = tmp_path / "judged"
    argv = ["evaluate", "--sae", saes[0], "--sae", saes[1], "--activations", str(cache), "--out", str(out)]
    assert main([*argv, "--suite", "reconstruction", "--allow-mismatch"]) == 0, capsys.readouterr().err
    doc = json.loads((out / "judge.json").read_text())
    fvu = [next(m["value"] for m in s["metrics"] if m["name"] == "fvu") for s in doc["saes"]]
    view = ActivationCache.open(cache).rows("blocks.2.resid_post", "cls")
    x = view.read_all().x.to(F64)
    x_hat = prisma_reference(sd_p, x, arch="standard", act="relu", norm="layer_norm")[1]
    assert fvu[0] == pytest.approx(float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    x = ActivationCache.open(cache).rows("blocks.2.resid_post").read_all().x.to(F64)
    x_hat = dl_reference(sd_d, "MatroyshkaBatchTopKSAE", x)[1]
    assert fvu[1] == pytest.approx(float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    # without --allow-mismatch the published SAEs' provenance (hook, model) is compared and refused
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "again"), "--suite", "reconstruction"]) == 2
    err = capsys.readouterr().err
    assert "disagree" in err and "hook: 'blocks.9.resid_post' vs 'blocks.2.resid_post'" in err


def test_steering_edits_undo_a_row_normalisation(tmp_path):
    from sparsesteer.steering.edits import apply_edit

    sd = prisma_repo(tmp_path / "p")  # layer_norm per row
    sae = SparseAutoencoder.load(tmp_path / "p")
    x = inputs()
    f, _ = prisma_reference(sd, x, arch="standard", act="relu", norm="layer_norm")
    j = int(f.gt(0).sum(0).argmax())  # a latent active on many rows

    def edit(codes):
        codes[:, j] = 2.0
        return codes

    f_new = f.clone()
    f_new[:, j] = 2.0
    _, out = prisma_norm(x.to(F64), "layer_norm")
    spliced = out(f_new @ sd["W_dec"] + sd["b_dec"])
    kept = x.to(F64) + (out(f_new @ sd["W_dec"] + sd["b_dec"]) - out(f @ sd["W_dec"] + sd["b_dec"]))
    close(apply_edit(sae, x, edit, keep_error=False), spliced)
    close(apply_edit(sae, x, edit, keep_error=True), kept)
