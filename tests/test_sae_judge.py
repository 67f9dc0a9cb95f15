"""`sae/judge.py`: each suite against a hand-worked case or an independent computation, the one-pass
runner against `metrics.evaluate`, bad input, and `sparsesteer evaluate --suite` with two SAEs."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from helpers import make_activation_cache

from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter
from sparsesteer.activations.loader import TensorSource
from sparsesteer.cli import main
from sparsesteer.sae import SAEConfig, build
from sparsesteer.sae.judge import (
    JudgeSettings,
    balanced_accuracy,
    binary_predict,
    fit_binary_probes,
    fit_softmax_probe,
    judge,
    morans_i,
    normalised_auc,
    softmax_predict,
    sparse_probing,
)
from sparsesteer.sae.metrics import evaluate
from sparsesteer.utils.errors import SparsesteerError


def brute_morans_i(g):
    """Moran's I by the definition: every ordered pair of distinct cells that touch (8-neighbours)."""
    h, w = g.shape
    z = g - g.mean()
    cells = list(itertools.product(range(h), range(w)))
    num, W = 0.0, 0
    for (a, b), (c, d) in itertools.product(cells, cells):
        if (a, b) != (c, d) and abs(a - c) <= 1 and abs(b - d) <= 1:
            num += z[a, b] * z[c, d]
            W += 1
    return len(cells) / W * num / (z**2).sum()


# ------------------------------------------------------------------ localisation math
def test_morans_i_of_a_4x4_checkerboard_is_minus_one_seventh():
    # z = +-1/2, sum z^2 = 4; 24 rook pairs (opposite, -1/4 each way) and 18 diagonal pairs (same, +1/4):
    # sum w z z = 2 * (-24 + 18) / 4 = -3 over W = 84 ordered pairs; I = 16/84 * -3/4 = -1/7
    board = torch.tensor([[(i + j) % 2 for j in range(4)] for i in range(4)], dtype=torch.float64)
    assert float(morans_i(board)) == pytest.approx(-1 / 7, abs=1e-12)


def test_morans_i_of_a_single_blob_is_positive_and_matches_the_definition():
    blob = np.zeros((6, 6))
    blob[1:3, 1:3] = [[1.0, 2.0], [2.0, 3.0]]
    got = float(morans_i(torch.from_numpy(blob)))
    assert got > 0.2
    assert got == pytest.approx(brute_morans_i(blob), abs=1e-12)
    rnd = np.random.default_rng(0).normal(size=(3, 5, 5))
    assert morans_i(torch.from_numpy(rnd)).numpy() == pytest.approx([brute_morans_i(g) for g in rnd], abs=1e-12)
    assert math.isnan(float(morans_i(torch.ones(3, 3))))


# ------------------------------------------------------------------ probes
def test_probes_separate_linearly_separable_data():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 5)))
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    y = (x @ w > 0.3).long()
    probe = fit_softmax_probe(x, y, 2, l2=1e-6, steps=200)
    assert float((softmax_predict(probe, x) == y).double().mean()) >= 0.99
    probes = fit_binary_probes(x[None], y[None].bool(), l2=1e-6, steps=25)
    assert float(balanced_accuracy(binary_predict(probes, x[None]), y[None].bool())[0]) >= 0.99


def test_normalised_auc_by_hand():
    # trapezoids over log k: (0.5 + 1)/2 * ln 10 + 1 * ln 10, over ln 100 -> 0.875
    assert normalised_auc([1, 10, 100], [0.5, 1.0, 1.0]) == pytest.approx(0.875)
    assert normalised_auc([5], [0.7]) == 0.7


def test_sparse_probing_finds_the_planted_latent():
    rng = np.random.default_rng(1)
    n, L = 400, 30
    y = rng.integers(0, 2, n)
    codes = np.abs(rng.normal(size=(n, L))) * 0.1
    codes[:, 7] = y * 3.0  # latent 7 is the class
    r = sparse_probing(torch.from_numpy(codes), y, ks=[1, 5, 10, 20, 50])
    assert r["ks"] == [1, 5, 10, 20]  # 50 > n_latents is dropped
    assert r["accuracy"][0] == 1.0
    assert r["auc"] > 0.95
    noise = sparse_probing(torch.from_numpy(np.abs(rng.normal(size=(n, L)))), y, ks=[1])
    assert noise["accuracy"][0] < 0.7


# ------------------------------------------------------------------ the pass
def identity_sae(d):
    """ReLU SAE with codes = relu(x) and reconstruction = codes: every planted pattern is a latent."""
    sae = build(SAEConfig(arch="relu", d_in=d, n_latents=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def grid_cache(path, n_images=40, side=3, d=6, labels=True):
    """CLS + side x side patches; latent 0 is a blob in the top-left corner of every image, latent 1
    a 4-cell checkerboard, latent 2 fires on one patch (never qualifies), the rest are off on patches.
    The CLS row holds the label in feature 3."""
    rng = np.random.default_rng(0)
    P = side * side
    y = rng.integers(0, 3, n_images)
    rows = np.full((n_images, P + 1, d), -1.0, dtype=np.float32)
    blob = np.zeros((side, side))
    blob[:2, :2] = [[2, 1], [1, 0.5]]
    check = np.zeros((side, side))
    check[[0, 1, 1, 2], [1, 0, 2, 1]] = 1.0
    for i in range(n_images):
        s = 1 + rng.random()
        rows[i, 1:, 0] = (blob * s).reshape(-1) - (blob == 0).reshape(-1)
        rows[i, 1:, 1] = check.reshape(-1) - (check == 0).reshape(-1)
        rows[i, 1:, 2] = -1
        rows[i, 5, 2] = 1
        rows[i, 0, 3] = y[i] + 1
        rows[i, 0, 4:] = rng.normal(size=d - 4)  # noise on the CLS row only (patch rows stay off)
    s = CacheSettings(
        hooks=("h",),
        d={"h": d},
        tokens="all",
        token_positions=tuple(range(P + 1)),
        cls_position=0,
        n_images=n_images,
        dtype="float32",
        model={"id": "tiny-clip", "revision": "abc", "arch": "clip"},
        dataset={"name": "unit"},
        split="train",
    )
    with CacheWriter.open(path, s) as w:
        w.write_shard(
            {"h": rows.reshape(-1, d)}, np.repeat(np.arange(n_images), P + 1), np.tile(np.arange(P + 1), n_images)
        )
        w.finish(y if labels else None)
    return path, blob * 1.5, check


def test_judge_localisation_reconstruction_and_probes_on_a_planted_grid(tmp_path):
    path, blob, check = grid_cache(tmp_path / "c")
    view = ActivationCache.open(path).rows("h")
    sae = identity_sae(6)
    st = JudgeSettings(batch_size=25, min_active_patches=2, max_active_frac=0.5, images_per_latent=5)
    res = {r.name: r for r in judge(sae, view, settings=st, cls_position=0, patch_positions=range(1, 10))}
    # latents 0 (blob: Moran's I does not depend on the scale) and 1 (checkerboard) qualify, 2 never (1 patch)
    want = [brute_morans_i(blob), brute_morans_i(check)]
    assert res["morans_i"].value == pytest.approx(np.mean(want), abs=1e-9)
    assert res["morans_i"].data["latents_measured"] == 2
    assert res["not_localised_frac"].value == 0.5  # the checkerboard
    assert res["morans_i"].settings["images_per_latent"] == 5 and res["morans_i"].higher_is_better
    # reconstruction: the same numbers as metrics.evaluate, plus per token type
    ref = evaluate(sae, view, batch_size=10)
    assert res["fvu"].value == pytest.approx(ref.fvu, rel=1e-6)
    assert res["l0"].value == pytest.approx(ref.l0_mean)
    assert res["dead_frac"].value == pytest.approx(ref.dead_frac)
    assert res["cosine"].value == pytest.approx(ref.cosine, rel=1e-6)
    x = view.read_all().x.reshape(40, 10, 6)
    assert res["l0_cls"].value == pytest.approx(float((x[:, 0] > 0).sum(-1).double().mean()))
    assert res["l0_patch"].value == pytest.approx(float((x[:, 1:] > 0).sum(-1).double().mean()))
    # the CLS row carries the label (feature 3) and the SAE reconstructs it exactly: ratio 1
    assert res["preservation_ratio"].value == pytest.approx(1.0)
    assert res["preservation_ratio"].details["accuracy_original"] > 0.9
    # sparse probing runs on the max-pooled codes of each image (here relu(x) maxed over its 10 rows)
    y = ActivationCache.open(path).labels
    ref_sp = sparse_probing(x.clamp_min(0).amax(1).double(), y, ks=(1, 5, 10, 20, 50))
    assert res["sparse_probing_auc"].value == pytest.approx(ref_sp["auc"])
    assert res["sparse_probing_auc"].details["balanced_accuracy"] == pytest.approx(ref_sp["accuracy"])


def test_judge_streams_the_same_in_any_batch_size(tmp_path):
    path, _, _ = grid_cache(tmp_path / "c")
    view = ActivationCache.open(path).rows("h")
    kw = dict(cls_position=0, patch_positions=range(1, 10))
    a = judge(identity_sae(6), view, settings=JudgeSettings(batch_size=10, min_active_patches=2), **kw)
    b = judge(identity_sae(6), view, settings=JudgeSettings(batch_size=4096, min_active_patches=2), **kw)
    assert [r.name for r in a] == [r.name for r in b]
    assert [r.value for r in a] == pytest.approx([r.value for r in b], rel=1e-6)  # float32 batch sums


# ------------------------------------------------------------------ bad input
def test_judge_refuses_what_it_cannot_measure(tmp_path):
    path, _, _ = grid_cache(tmp_path / "c", labels=False)
    cache = ActivationCache.open(path)
    sae = identity_sae(6)
    with pytest.raises(SparsesteerError, match="needs patch tokens.*CLS-only"):
        judge(sae, cache.rows("h", "cls"), suites=["localisation"], cls_position=0, patch_positions=range(1, 10))
    with pytest.raises(SparsesteerError, match="need labels"):
        judge(sae, cache.rows("h"), suites=["preservation"], cls_position=0, patch_positions=range(1, 10))
    with pytest.raises(SparsesteerError, match="width 6 does not match.*d_in=8"):
        judge(identity_sae(8), cache.rows("h"), suites=["reconstruction"])
    with pytest.raises(SparsesteerError, match="suite"):
        judge(sae, cache.rows("h"), suites=["reconstructoin"])
    with pytest.raises(SparsesteerError, match="needs a model"):
        judge(sae, cache.rows("h"), suites=["spliced"])
    # a plain row source: each row is an image
    res = judge(sae, TensorSource(torch.randn(50, 6)), suites=["reconstruction"])
    assert res[0].data["images"] == 50


# ------------------------------------------------------------------ CLI
def test_evaluate_suite_compares_two_saes_in_one_table(tmp_path, capsys):
    cache = make_activation_cache(tmp_path / "cache", n_images=100, positions=(0, 1, 2, 3, 4), d=8)
    dirs = []
    for i, n in enumerate((8, 16)):
        torch.manual_seed(i)
        sae = build(SAEConfig(arch="topk", d_in=8, n_latents=n, k=3))
        dirs.append(str(sae.save(tmp_path / f"sae{i}")))
    out = tmp_path / "judged"
    argv = ["evaluate", "--sae", dirs[0], "--sae", dirs[1], "--activations", str(cache), "--out", str(out)]
    argv += ["--suite", "reconstruction,preservation,sparse_probing,localisation", "--allow-mismatch"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "judge.json").read_text())
    assert [s["sae"] for s in doc["saes"]] == dirs
    names = {m["name"] for m in doc["saes"][1]["metrics"]}
    assert {"fvu", "fvu_cls", "l0_patch", "preservation_ratio", "sparse_probing_auc", "morans_i"} <= names
    md = (out / "judge.md").read_text()
    assert "sae0" in md and "sae1" in md and "| morans_i |" in md.replace("  ", " ")
    # a CLS-only view cannot be localised: one-line error, exit 2
    cls_argv = [*argv[:-3], "--tokens", "cls", "--suite", "localisation", "--allow-mismatch"]
    cls_argv[cls_argv.index("--out") + 1] = str(tmp_path / "judged-cls")  # judged/ holds the run above
    assert main(cls_argv) == 2
    assert "needs patch tokens" in capsys.readouterr().err


def test_judge_shows_a_progress_bar_per_metric(tmp_path, monkeypatch, capsys):
    path, _, _ = grid_cache(tmp_path / "c")
    view = ActivationCache.open(path).rows("h")
    monkeypatch.setenv("SPARSESTEER_QUIET", "0")
    st = JudgeSettings(min_active_patches=2)
    judge(identity_sae(6), view, settings=st, cls_position=0, patch_positions=range(1, 10))
    err = capsys.readouterr().err
    for bar in (
        "judge: reconstruction, preservation, sparse_probing, localisation",
        "preservation: probe",
        "sparse_probing: k-sparse probes",
    ):
        assert bar in err, bar
    monkeypatch.setenv("SPARSESTEER_QUIET", "1")
    judge(identity_sae(6), view, suites=["reconstruction"], cls_position=0, patch_positions=range(1, 10))
    assert capsys.readouterr().err == ""
