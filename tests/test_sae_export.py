"""`sparsesteer export` to SAELens / sparsify layouts, and hf: SAE ids from a hand-made hub cache."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sparsesteer.cli import main
from sparsesteer.sae import SAEConfig, SparseAutoencoder, build


def random_sae(arch, **kw):
    torch.manual_seed(0)
    sae = build(SAEConfig(arch=arch, d_in=10, n_latents=40, k=4, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.05) if sae.threshold.ndim == 0 else sae.threshold.uniform_(0, 0.2)
    return sae.eval()


def saelens_encode(w, cfg, x):
    """SAELens' inference rule, written from its documentation (x @ W_enc, W_enc [d_in, d_sae])."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        return torch.relu(pre)
    if cfg["architecture"] == "jumprelu":
        return torch.relu(pre) * (pre > w["threshold"])
    top = pre.topk(cfg["k"], dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_export_saelens_matches_saelens_formula_and_reads_back(tmp_path, arch):
    sae = random_sae(arch)
    sae.save(tmp_path / "s", hook="blocks.9.resid_post", model={"id": "org/clip", "revision": "abc"})
    assert main(["export", "--sae", str(tmp_path / "s"), "--format", "saelens", "--out", str(tmp_path / "o")]) == 0
    cfg = json.loads((tmp_path / "o" / "cfg.json").read_text())
    w = load_file(tmp_path / "o" / "sae_weights.safetensors")
    assert cfg["d_in"] == 10 and cfg["d_sae"] == 40 and cfg["normalize_activations"] == "none"
    assert cfg["hook_name"] == "blocks.9.hook_resid_post" and cfg["hook_layer"] == 9 and cfg["model_name"] == "org/clip"
    assert cfg["apply_b_dec_to_input"] is True
    assert w["W_enc"].shape == (10, 40) and w["W_dec"].shape == (40, 10)
    x = torch.randn(50, 10)
    with torch.no_grad():
        want = sae.encode_dense(x)
    torch.testing.assert_close(saelens_encode(w, cfg, x), want)
    back = SparseAutoencoder.load(tmp_path / "o")
    torch.testing.assert_close(back.encode_dense(x), want)
    assert back.metadata["hook"] == "blocks.9.resid_post"


def test_export_sparsify_matches_sparsify_formula(tmp_path):
    sae = random_sae("topk")
    sae.save(tmp_path / "s")
    assert main(["export", "--sae", str(tmp_path / "s"), "--format", "sparsify", "--out", str(tmp_path / "o")]) == 0
    cfg = json.loads((tmp_path / "o" / "cfg.json").read_text())
    w = load_file(tmp_path / "o" / "sae.safetensors")
    assert cfg["activation"] == "topk" and cfg["k"] == 4 and cfg["num_latents"] == 40 and cfg["d_in"] == 10
    assert set(w) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    x = torch.randn(50, 10)
    pre = torch.relu(torch.nn.functional.linear(x - w["b_dec"], w["encoder.weight"], w["encoder.bias"]))
    top = pre.topk(4, dim=-1)  # sparsify: TopK(ReLU(encoder(x - b_dec)))
    dense = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    with torch.no_grad():
        torch.testing.assert_close(dense, sae.encode_dense(x))
    torch.testing.assert_close(SparseAutoencoder.load(tmp_path / "o").encode_dense(x), dense)


def test_export_refusals(tmp_path, capsys):
    random_sae("relu").save(tmp_path / "relu")
    assert main(["export", "--sae", str(tmp_path / "relu"), "--format", "sparsify", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "relu" in err and "sparsify" in err
    random_sae("topk", select="abs").save(tmp_path / "abs")
    assert main(["export", "--sae", str(tmp_path / "abs"), "--format", "saelens", "--out", str(tmp_path / "o")]) == 2
    assert "abs" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert (
        main(["export", "--sae", str(tmp_path / "relu"), "--format", "saelens", "--out", str(tmp_path / "full")]) == 2
    )
    assert "not empty" in capsys.readouterr().err and (tmp_path / "full" / "x").read_text() == "keep"


def export(*args):
    return main(["-q", "export", *map(str, args)])


def test_an_sae_without_a_hook_needs_hook_for_saelens(tmp_path, capsys):
    """SAELens attaches an SAE at its hook_name (and its 6.x loader raises TypeError on a null one):
    an SAE that records no hook is refused without --hook, writing nothing, and --hook supplies it."""
    sae = random_sae("batchtopk")
    sae.save(tmp_path / "s")  # as trained on a bare .npy: no hook
    assert export("--sae", tmp_path / "s", "--format", "saelens", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "records no hook" in err and "--hook" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert (
        export("--sae", tmp_path / "s", "--format", "saelens", "--out", tmp_path / "o", "--hook", "blocks.9.resid_post")
        == 0
    )
    cfg = json.loads((tmp_path / "o" / "cfg.json").read_text())
    assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == "blocks.9.hook_resid_post" and cfg["hook_layer"] == 9
    assert cfg["architecture"] == "jumprelu"  # BatchTopK at inference: ReLU(pre) * (pre > threshold)
    x = torch.randn(50, 10)
    with torch.no_grad():
        torch.testing.assert_close(
            saelens_encode(load_file(tmp_path / "o" / "sae_weights.safetensors"), cfg, x), sae.encode_dense(x)
        )
    # converted from sparsify: the sparsify layout records no hook either
    topk = random_sae("topk")
    topk.save(tmp_path / "t")
    assert export("--sae", tmp_path / "t", "--format", "sparsify", "--out", tmp_path / "sp") == 0
    assert export("--sae", tmp_path / "sp", "--format", "saelens", "--out", tmp_path / "sl") == 2
    assert "records no hook" in capsys.readouterr().err
    assert (
        export(
            "--sae", tmp_path / "sp", "--format", "saelens", "--out", tmp_path / "sl", "--hook", "blocks.2.hook_mlp_out"
        )
        == 0
    )
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["hook_name"] == "blocks.2.hook_mlp_out"


def test_hook_flag_refusals(tmp_path, capsys):
    random_sae("topk").save(tmp_path / "s", hook="blocks.9.resid_post")
    assert (
        export("--sae", tmp_path / "s", "--format", "saelens", "--out", tmp_path / "o", "--hook", "blocks.8.resid_post")
        == 2
    )
    assert "disagrees with the hook the SAE records (blocks.9.hook_resid_post)" in capsys.readouterr().err
    assert (
        export("--sae", tmp_path / "s", "--format", "saelens", "--out", tmp_path / "o", "--hook", "blocks.9.resid_post")
        == 0
    )
    assert (
        export(
            "--sae", tmp_path / "s", "--format", "sparsify", "--out", tmp_path / "p", "--hook", "blocks.9.resid_post"
        )
        == 2
    )
    assert "sparsify" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_an_export_the_peer_would_not_load_fails_and_leaves_nothing(tmp_path, monkeypatch):
    """The check can fail: a writer that puts a null hook_name in cfg.json (our reader tolerates it,
    SAELens 6.x raises TypeError) makes the export fail, and nothing is left behind."""
    from sparsesteer.sae import export as export_module
    from sparsesteer.utils import io
    from sparsesteer.utils.errors import SparsesteerError

    writer = export_module._saelens

    def null_hook(sae, out, hook):
        writer(sae, out, hook)
        cfg = json.loads((out / "cfg.json").read_text())
        io.write_json(out / "cfg.json", {**cfg, "hook_name": None})

    monkeypatch.setattr(export_module, "_saelens", null_hook)
    sae = random_sae("topk")
    sae.metadata["hook"] = "blocks.9.resid_post"
    with pytest.raises(
        SparsesteerError, match=r"would not load in SAELens 6\.54\.12: hook_name must be a string, got None"
    ):
        export_module.export_sae(sae, "saelens", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def _saelens_cfg(**kw):
    return {"architecture": "topk", "d_in": 10, "d_sae": 40, "k": 4, "hook_name": "blocks.9.hook_resid_post",
            "dtype": "float32", "apply_b_dec_to_input": True, "normalize_activations": "none", **kw}  # fmt: skip


def _header(shapes, dtype="F32"):
    return {
        "__metadata__": {},
        **{k: {"dtype": dtype, "shape": list(v), "data_offsets": [0, 0]} for k, v in shapes.items()},
    }


SAELENS_TENSORS = {"W_enc": (10, 40), "b_enc": (40,), "W_dec": (40, 10), "b_dec": (10,)}
SPARSIFY_TENSORS = {"encoder.weight": (40, 10), "encoder.bias": (40,), "W_dec": (40, 10), "b_dec": (10,)}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({}, None),
        ({"hook_name": None}, "hook_name must be a string, got None"),
        (
            {"hook_name": "blocks.9.hook_resid_post", "metadata": {"sae_lens_version": "6.1.0"}},
            "architecture is missing",
        ),
        ({"architecture": "batchtopk"}, "'batchtopk' is a training class only"),
        ({"architecture": "topkk"}, "architecture 'topkk' is not one of standard, topk, abstopk, jumprelu, gated"),
        ({"d_sae": "40"}, "d_sae must be an int, got '40'"),
        ({"k": 4.0}, "k must be an int, got 4.0"),
        ({"k": 41}, "k=41 must be in 1..d_sae=40"),
        ({"dtype": "fp32"}, "dtype 'fp32' is not one of"),
        ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input must be a bool"),
        ({"normalize_activations": "rms"}, "normalize_activations 'rms' is not one of"),
        ({"activation_fn_str": "topk", "activation_fn_kwargs": [4]}, "activation_fn_kwargs must be an object"),
        ({"architecture": "jumprelu"}, "tensor(s) missing: threshold"),
    ],
)
def test_the_saelens_requirements_check(change, problem):
    from sparsesteer.sae.formats.peers import saelens_problems

    cfg = _saelens_cfg(**change)
    if "metadata" in change:
        cfg = {k: v for k, v in cfg.items() if k != "architecture"}
    problems = saelens_problems(cfg, _header(SAELENS_TENSORS))
    assert problems == [] if problem is None else any(problem in p for p in problems), problems


def test_the_requirements_check_reads_shapes_and_names():
    from sparsesteer.sae.formats.peers import saelens_problems, sparsify_problems

    cfg = _saelens_cfg()
    assert "tensor W_enc has shape (40, 10), expected (10, 40)" in saelens_problems(
        cfg, _header({**SAELENS_TENSORS, "W_enc": (40, 10)})
    )
    assert any("unexpected tensor(s)" in p for p in saelens_problems(cfg, _header({**SAELENS_TENSORS, "scale": (1,)})))
    assert any("dtype I64" in p for p in saelens_problems(cfg, _header(SAELENS_TENSORS, "I64")))
    sp = {"activation": "topk", "k": 4, "num_latents": 40, "d_in": 10}
    assert sparsify_problems(sp, _header(SPARSIFY_TENSORS)) == []
    assert sparsify_problems({**sp, "num_latents": 0, "expansion_factor": 4}, _header(SPARSIFY_TENSORS)) == []
    assert sparsify_problems({k: v for k, v in sp.items() if k != "d_in"}, _header(SPARSIFY_TENSORS)) == [
        "d_in is missing"
    ]
    assert "activation 'relu' is not one of groupmax, topk" in sparsify_problems(
        {**sp, "activation": "relu"}, _header(SPARSIFY_TENSORS)
    )
    assert "k=41 must be in 1..num_latents=40" in sparsify_problems({**sp, "k": 41}, _header(SPARSIFY_TENSORS))
    assert "tensor(s) missing: W_skip" in sparsify_problems({**sp, "skip_connection": True}, _header(SPARSIFY_TENSORS))
    assert "multi_topk must be a bool, got 1" in sparsify_problems({**sp, "multi_topk": 1}, _header(SPARSIFY_TENSORS))


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(hf_home, repo_id, build_into):
    """A hub cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    build_into(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def run_cli(args, hf_home, tmp_path, code):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9", SPARSESTEER_QUIET="1")  # port 9: refused
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(v, None)
    prog = f"import sys; from sparsesteer.cli import main; {code}"
    return subprocess.run([sys.executable, "-c", prog, *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_hf_id_loads_from_the_hub_cache_and_records_its_source(tmp_path):
    sae = random_sae("topk")
    hub_cache(tmp_path / "hf", "org/saes", lambda snap: sae.save(snap / "layer9", hook="blocks.9.resid_post"))
    code = (
        "from sparsesteer.sae import SparseAutoencoder; import json; "
        "s = SparseAutoencoder.load(sys.argv[1]); print(json.dumps(s.metadata['source'])); "
        "sys.exit(main(['export', '--sae', sys.argv[1], '--format', 'saelens', '--out', 'o']))"
    )
    out = run_cli(["hf:org/saes/layer9@main"], tmp_path / "hf", tmp_path, code)
    assert out.returncode == 0, out.stderr
    source = json.loads(out.stdout.splitlines()[0])
    assert source["hub"] == "org/saes" and source["subfolder"] == "layer9" and source["revision"] == COMMIT
    assert source["requested_revision"] == "main"
    assert out.stderr.count("cannot be reached: using the local cache of org/saes") == 1
    x = torch.randn(20, 10)
    with torch.no_grad():
        torch.testing.assert_close(SparseAutoencoder.load(tmp_path / "o").encode_dense(x), sae.encode_dense(x))


def test_hf_id_errors(tmp_path):
    code = "from sparsesteer.sae import SparseAutoencoder; SparseAutoencoder.load(sys.argv[1])"
    out = run_cli(["hf:org/missing"], tmp_path / "hf", tmp_path, code)
    assert out.returncode != 0 and out.stderr.count("cannot be reached") == 1 and "--sae DIR" in out.stderr
    assert "Retrying" not in out.stderr

    def junk(snap):
        (snap / "README.md").write_text("hi")
        (snap / "weights.bin").write_bytes(b"x")

    hub_cache(tmp_path / "hf", "org/junk", junk)
    out = run_cli(["hf:org/junk"], tmp_path / "hf", tmp_path, code)
    assert "no cfg.json" in out.stderr and "README.md, weights.bin" in out.stderr
