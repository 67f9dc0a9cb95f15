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
