"""`sparsesteer interpret` end to end on a tiny CLIP: cache -> stats files -> load, heatmaps,
montages, concept lens; refusals for another SAE and for missing images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import make_folder_dataset
from PIL import Image

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.cli import main
from sparsesteer.interpret.heatmaps import heatmap, latent_scale, montage, overlay, patch_grid, stats_dataset
from sparsesteer.interpret.stats import latent_stats
from sparsesteer.interpret.store import load_stats
from sparsesteer.sae import SAEConfig, build
from sparsesteer.utils.errors import SparsesteerError

HOOK = "blocks.2.resid_post"


@pytest.fixture(scope="module")
def run(tiny_clip_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interp")
    data = make_folder_dataset(tmp / "images", (3, 2, 2), split="train")
    cache = tmp / "cache"
    args = ["cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train"]
    assert main([*args, "--hook", HOOK, "--tokens", "all", "--out", str(cache), "--workers", "0"]) == 0
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=48, k=8))
    sae_dir = sae.save(tmp / "sae", hook=HOOK, tokens="all")
    words = tmp / "words.txt"
    words.write_text("cat\ndog\ncar\ntree\nboat\n")
    out = tmp / "stats"
    rc = main(
        [
            "interpret", "--sae", str(sae_dir), "--activations", str(cache), "--out", str(out),
            "--top-n", "3", "--batch-size", "40", "--neighbours", "4", "--vocab", str(words), "--lens-k", "2",
            "--montages", "2", "--device", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0
    return tmp, data, cache, sae, sae_dir, out, tiny_clip_dir


def test_cli_writes_stats_that_match_the_library(run):
    tmp, data, cache, sae, sae_dir, out, _ = run
    meta = json.loads((out / "stats.json").read_text())
    assert meta["sae"]["weights_sha256"] == json.loads((sae_dir / "cfg.json").read_text())["weights_sha256"]
    assert meta["dataset"]["spec"] == f"folder:{data}" and meta["dataset"]["split"] == "train"
    assert meta["rankings"] == ["max", "cls", "patch"] and meta["token_positions"] == list(range(17))
    stats = load_stats(out, sae_dir, activations=cache)
    ref = latent_stats(sae, ActivationCache.open(cache).rows(), top_n=3, batch_size=10_000, progress=False)
    np.testing.assert_array_equal(stats.fire_count, ref.fire_count)
    np.testing.assert_array_equal(stats.top["patch"].images, ref.top["patch"].images)
    assert stats.top["max"].tokens.shape == (48, 3, 17)
    assert sum(stats.label_distribution(int(np.argmax(stats.fire_count))).values()) == 3
    assert stats.neighbours.indices.shape == (48, 4)
    montages = sorted(p.name for p in (out / "montages").iterdir())
    assert len(montages) == 2 and all(m.startswith("latent_") for m in montages)
    assert Image.open(out / "montages" / montages[0]).size == (5 * 112, 112 + 18)  # a row of tiles, the colour bar


def test_lens_matches_direct_computation(run):
    """The lens words are the top cosines of the head-mapped decoder rows with the text embeddings."""
    from sparsesteer.models.backbone import load_backbone
    from sparsesteer.models.zeroshot import encode_text

    *_, out, clip = run
    stats = load_stats(out)
    bb = load_backbone(clip)
    words = ["cat", "dog", "car", "tree", "boat"]
    assert stats.lens.words == tuple(words)
    with torch.no_grad():
        text = torch.nn.functional.normalize(encode_text(bb, words).double(), dim=1)
        W = run[3].W_dec.double()
        g = bb.vision.post_layernorm.weight.double()
        P = bb.model.visual_projection.weight.double()
        e = torch.nn.functional.normalize(((W - W.mean(1, keepdim=True)) * g) @ P.T, dim=1)
        sims = (e @ text.T).numpy()
    np.testing.assert_array_equal(stats.lens.indices, np.argsort(-sims, axis=1)[:, :2])
    np.testing.assert_allclose(stats.lens.cosine, np.sort(sims, axis=1)[:, ::-1][:, :2], atol=1e-5)


def test_heatmap_hand_worked():
    """A 2x2 grid with one hot patch on a blue image, scale 0..2: the top-left corner gets the top of
    viridis (#fde725) at opacity 0.85, the bottom-right (0: the bottom of the scale) stays blue; a
    scale that starts above 0 (a dense latent) leaves its weakest patch uncovered, not one colour."""
    img = Image.new("RGB", (4, 4), (0, 0, 255))
    out = np.asarray(overlay(img, np.array([[2.0, 0], [0, 0]]), 0.0, 2.0)).astype(float)
    np.testing.assert_allclose(out[0, 0], 0.15 * np.array([0, 0, 255]) + 0.85 * np.array([253, 231, 37]), atol=1.5)
    assert tuple(out[3, 3]) == (0, 0, 255)
    dense = np.asarray(overlay(img, np.array([[5.0, 3], [3, 3]]), 3.0, 5.0)).astype(float)
    assert tuple(dense[3, 3]) == (0, 0, 255) and dense[0, 0, 0] > 200  # 3 is the bottom, 5 the top
    flat = np.asarray(overlay(img, np.full((2, 2), 4.0), 4.0, 4.0)).astype(float)  # one value: all at the top
    np.testing.assert_allclose(flat[0, 0], out[0, 0], atol=1.5)
    from sparsesteer.interpret.stats import LatentStats

    s = LatentStats(0, 0, [0, 1, 2, 3, 4], *[np.zeros(1)] * 6, top={}, meta={"activations": {"cls_position": 0}})
    np.testing.assert_array_equal(patch_grid(s, np.array([9, 1, 2, 3, 4])), [[1, 2], [3, 4]])
    s.token_positions = [0, 1, 2]
    with pytest.raises(SparsesteerError, match="square grid"):
        patch_grid(s, np.zeros(3))


def test_other_sae_and_missing_images_are_refused(run, tmp_path, capsys):
    tmp, data, cache, sae, sae_dir, out, _ = run
    other = build(SAEConfig(arch="topk", d_in=32, n_latents=48, k=8)).save(tmp_path / "other")
    with pytest.raises(SparsesteerError, match="different SAE: weights_sha256"):
        load_stats(out, other)
    stats = load_stats(out)
    ds = stats_dataset(stats)
    assert heatmap(stats, int(np.argmax(stats.fire_count)), 0, ds, size=32).size == (32, 32)
    j = int(np.argmax(stats.fire_count))
    lo, hi = latent_scale(stats, j)
    patches = np.stack(
        [patch_grid(stats, t) for t, i in zip(stats.top["max"].tokens[j], stats.top["max"].images[j]) if i >= 0]
    )
    assert (lo, hi) == (float(patches.min()), float(patches.max())) and hi > 0
    sheet = montage(stats, j, ds, size=32, cols=5)
    n = int((stats.top["max"].images[j] >= 0).sum())
    assert sheet.size == (160, 32 * -(-n // 5) + 18)  # the tiles, then the colour bar
    bar = np.asarray(sheet)[-9, 20:140].astype(float)  # the bar's middle row, left of the text to right
    assert bar[0].sum() > bar[-1].sum() - 1e3 and np.abs(np.diff(bar, axis=0)).sum() > 0  # a ramp, not one colour
    # images gone: the dataset cannot be opened
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    shutil.rmtree(data / "train")
    try:
        with pytest.raises(SparsesteerError, match="cannot be opened"):
            stats_dataset(stats)
        # a smaller dataset than the statistics reference: refused when opened, and by any image index past it
        make_folder_dataset(data, (1,), split="train")
        with pytest.raises(SparsesteerError, match=r"not the same images \(number of images: 7 vs 1"):
            stats_dataset(stats)
        from sparsesteer.data import open_dataset

        small = open_dataset(f"folder:{data}", "train")
        j = int(np.argmax(stats.top["max"].images[:, 0]))
        with pytest.raises(SparsesteerError, match=r"reference image \d+, but"):
            heatmap(stats, j, 0, small)
    finally:
        shutil.rmtree(data / "train", ignore_errors=True)
        shutil.copytree(moved / "train", data / "train")
    # bad flags: one line, exit 2
    rc = main(
        ["interpret", "--sae", str(sae_dir), "--activations", str(cache), "--out", str(tmp_path / "s"), "--top-n", "0"]
    )
    assert rc == 2
    assert "--top-n must be a positive integer" in capsys.readouterr().err


def test_lens_refuses_an_sae_on_another_block(run, tmp_path):
    from sparsesteer.interpret.lens import concept_lens
    from sparsesteer.models.backbone import load_backbone
    from sparsesteer.sae import SparseAutoencoder

    *_, clip = run
    sae = SparseAutoencoder.load(
        build(SAEConfig(arch="topk", d_in=32, n_latents=8, k=2)).save(tmp_path / "s", hook="blocks.1.resid_post")
    )
    with pytest.raises(SparsesteerError, match=r"final-layer CLS \(blocks.2.resid_post"):
        concept_lens(sae, load_backbone(clip), ["cat", "dog"], k=1)


def test_stats_of_a_limit_cache_open_the_same_sample(run, tmp_path):
    """A --limit cache's image indices are the sample's: the stats reopen the same seeded sample."""
    tmp, data, _, _, sae_dir, _, clip = run
    cache = tmp_path / "limited"
    args = ["cache", "--model", str(clip), "--dataset", f"folder:{data}", "--split", "train", "--limit", "3"]
    assert (
        main([*args, "--limit-seed", "5", "--hook", HOOK, "--tokens", "all", "--out", str(cache), "--workers", "0"])
        == 0
    )
    assert main(["-q", "interpret", "--sae", str(sae_dir), "--activations", str(cache), "--out", str(tmp_path / "s"),
                 "--top-n", "2", "--device", "cpu"]) == 0  # fmt: skip
    stats = load_stats(tmp_path / "s")
    ds = stats_dataset(stats)
    assert len(ds) == 3 and np.array_equal(ds.labels(), ActivationCache.open(cache).labels)
    from sparsesteer.data import limit_dataset, open_dataset

    same = limit_dataset(open_dataset(f"folder:{data}", "train"), 3, 5)
    assert [ds.source(i) for i in range(3)] == [same.source(i) for i in range(3)]
    j = int(np.argmax(stats.fire_count))
    assert heatmap(stats, j, 0, ds, size=32).size == (32, 32)


def test_streamed_from_the_model_equals_the_cache(run, tmp_path):
    """`interpret --model --dataset` (no cache: the model runs during the pass) gives the statistics
    that the cache of the same model, hook, tokens and images gives."""
    tmp, data, cache, sae, sae_dir, out, clip = run
    streamed = tmp_path / "streamed"
    rc = main(
        [
            "interpret", "--sae", str(sae_dir), "--model", str(clip), "--dataset", f"folder:{data}", "--split",
            "train", "--out", str(streamed), "--top-n", "3", "--batch-size", "40", "--neighbours", "4",
            "--image-batch-size", "3", "--device", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0
    a, b = load_stats(out, sae=sae_dir), load_stats(streamed, sae=sae_dir)
    assert (a.n_rows, a.n_images, a.token_positions) == (b.n_rows, b.n_images, b.token_positions)
    np.testing.assert_array_equal(a.fire_count, b.fire_count)
    np.testing.assert_array_equal(a.hist_counts, b.hist_counts)
    np.testing.assert_allclose(a.act_max, b.act_max, rtol=1e-5, atol=1e-6)
    assert sorted(a.top) == sorted(b.top)
    for r in a.top:
        np.testing.assert_array_equal(a.top[r].images, b.top[r].images)
        np.testing.assert_array_equal(a.top[r].labels, b.top[r].labels)
        np.testing.assert_allclose(a.top[r].tokens, b.top[r].tokens, rtol=1e-5, atol=1e-6)
    meta = json.loads((streamed / "stats.json").read_text())
    assert meta["activations"]["streamed"] and meta["activations"]["hook"] == HOOK
    assert meta["dataset"] == {"spec": f"folder:{data}", "split": "train"}
    assert meta["classes"] == json.loads((out / "stats.json").read_text())["classes"]
    assert stats_dataset(b) is not None  # the browser and heatmaps reopen the images from the record


def test_interpret_needs_a_cache_or_a_model_and_dataset(run, tmp_path, capsys):
    tmp, data, cache, sae, sae_dir, out, clip = run
    assert main(["interpret", "--sae", str(sae_dir), "--model", str(clip), "--out", str(tmp_path / "s")]) == 2
    assert "give --activations CACHE, or --model M and --dataset D" in capsys.readouterr().err
