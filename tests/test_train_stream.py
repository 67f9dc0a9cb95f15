"""`sparsesteer train --model`: SAEs trained straight from the model, one per hook, no cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_folder_dataset
from safetensors.torch import load_file

from sparsesteer.activations.stream import ModelRows
from sparsesteer.cli import main
from sparsesteer.data import open_dataset
from sparsesteer.models import load_backbone
from sparsesteer.sae import SAEConfig, SparseAutoencoder
from sparsesteer.sae.config import TrainConfig
from sparsesteer.sae.train import Trainer

HOOKS = ["blocks.0.resid_post", "blocks.1.mlp_out"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("imgs"), (4, 3, 3))  # 10 images


@pytest.fixture(scope="module")
def bb(tiny_clip_dir):
    return load_backbone(tiny_clip_dir)


def test_rows_are_the_model_s_activations_with_hooks_side_by_side(bb, data):
    ds = open_dataset(f"folder:{data}", "train")
    rows = ModelRows(bb, ds, HOOKS, "patch", image_batch_size=3)
    assert rows.n_rows == 10 * 16 and rows.d == 64 and rows.column_groups == {HOOKS[0]: (0, 32), HOOKS[1]: (32, 64)}
    assert rows.chunk_rows == 12 * 16  # whole images per shuffle-buffer chunk
    got = rows.read(21, 70)  # starts and ends inside images 1 and 4
    want = []
    for i in range(1, 5):
        px = torch.from_numpy(bb.preprocessor(ds[i].image))[None]
        out = bb.run(px, HOOKS, tokens="patch")  # one image, independently
        want.append(torch.cat([out[h][0] for h in HOOKS], dim=1))
    torch.testing.assert_close(got, torch.cat(want)[21 - 16 : 70 - 16], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows.labels(21, 70), np.repeat(ds.labels(), 16)[21:70])


def test_one_forward_per_batch_feeds_every_hook(bb, data, tmp_path, monkeypatch):
    calls = []
    run = bb.run

    def spy(pixels, capture, **kw):
        calls.append((pixels.shape[0], tuple(capture)))
        return run(pixels, capture, **kw)

    monkeypatch.setattr(bb, "run", spy)
    rows = ModelRows(bb, open_dataset(f"folder:{data}", "train"), HOOKS, "cls", image_batch_size=5)
    cfg = TrainConfig(steps=6, batch_size=5, device="cpu", init_samples=10, log_every=3, checkpoint_every=0)
    result = Trainer(rows, [SAEConfig(k=2, n_latents=16), SAEConfig(k=4, n_latents=16)], cfg, tmp_path).fit()
    assert [p.relative_to(tmp_path).as_posix() for p in result.paths] == [
        f"{h}/topk-k{k}-n16" for h in HOOKS for k in (2, 4)
    ]
    assert all(capture == tuple(HOOKS) for _, capture in calls)  # every forward captures both hooks
    # 30 rows = 3 passes (windows) over 10 images, and the 10-image initialisation sample, whose
    # rows the first window takes over instead of running the model again (40 before): 30 images
    # forwarded, each once per window for both hooks. On CPU the forwards run in the trainer's
    # thread (no second team of intra-op threads beside the step), so no window is read ahead
    assert rows.reads_in_caller
    assert sum(n for n, _ in calls) == 30 and not rows._kept
    for path in result.paths:
        sae = SparseAutoencoder.load(path)
        assert sae.metadata["hook"] in HOOKS and path.parent.name == sae.metadata["hook"]
        assert sae.metadata["tokens"] == "cls" and sae.metadata["model"]["id"] == bb.model_id


def test_a_window_of_chunks_is_one_pass_with_the_bits_of_separate_reads(bb, data, monkeypatch):
    """read_many: the chunks of a window through one DataLoader, each batched as if read alone, so
    its rows equal (bit for bit) those of separate reads; kept chunks are handed over once, and only
    within the budget."""
    import torch.utils.data as tud

    ds = open_dataset(f"folder:{data}", "train")
    rows = ModelRows(bb, ds, HOOKS, "all", image_batch_size=2, images_per_chunk=3)  # chunks of 3 images, 10 in all
    spans = [(c * rows.chunk_rows, min(rows.n_rows, (c + 1) * rows.chunk_rows)) for c in (0, 2, 3)]
    loaders = []  # image_batches imports DataLoader when called: count the loaders it makes

    class Counting(tud.DataLoader):
        def __init__(self, *a, **kw):
            loaders.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(tud, "DataLoader", Counting)
    together = rows.read_many(spans)
    assert len(loaders) == 1
    apart = [ModelRows(bb, ds, HOOKS, "all", image_batch_size=2, images_per_chunk=3).read(a, b) for a, b in spans]
    assert len(loaders) == 4
    assert all(torch.equal(x, y) for x, y in zip(together, apart))
    # kept by `keeping` within the budget (two chunks of 3 images fit, the third does not), handed over once
    bytes_per_chunk = rows.chunk_rows * rows.d * 4
    with rows.keeping(2 * bytes_per_chunk):
        rows.read(0, 3 * rows.chunk_rows - 5)  # the first three chunks
    assert sorted(rows._kept) == spans[:1] + [(rows.chunk_rows, 2 * rows.chunk_rows)]
    n = len(loaders)
    again = rows.read_many(spans[:1])
    assert len(loaders) == n and torch.equal(again[0], together[0]) and spans[0] not in rows._kept
    assert torch.equal(rows.read_many(spans[:1])[0], together[0]) and len(loaders) == n + 1  # once only


def _train(clip, data, out, *extra):
    return main(
        [
            "-q", "train", "--model", str(clip), "--dataset", f"folder:{data}", "--hook", HOOKS[0], "--hook", HOOKS[1],
            "--tokens", "all", "--k", "3,5", "--n-latents", "48", "--steps", "16", "--batch-size", "34",
            "--image-batch-size", "3", "--workers", "0", "--device", "cpu", "--init-samples", "100",
            "--log-every", "4", "--checkpoint-every", "8", "--out", str(out), *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_cli_stream_matches_training_on_the_cache_and_resumes_exactly(tiny_clip_dir, data, tmp_path):
    assert _train(tiny_clip_dir, data, tmp_path / "stream") == 0
    # the same rows from a cache: both sources fit one chunk and one window, so the batches agree
    cache = tmp_path / "cache"
    hooks = [a for h in HOOKS for a in ("--hook", h)]
    assert main(["-q", "cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train",
                 *hooks, "--tokens", "all", "--workers", "0", "--device", "cpu", "--out", str(cache)]) == 0  # fmt: skip
    for h in HOOKS:
        out = tmp_path / f"cached-{h}"
        assert main(["-q", "train", "--activations", str(cache), "--hook", h, "--k", "3,5", "--n-latents", "48",
                     "--steps", "16", "--batch-size", "34", "--device", "cpu", "--init-samples", "100",
                     "--log-every", "4", "--out", str(out)]) == 0  # fmt: skip
        for name in ("topk-k3-n48", "topk-k5-n48"):
            want = load_file(out / name / "sae.safetensors")
            got = load_file(tmp_path / "stream" / h / name / "sae.safetensors")
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)

    # stopped at step 8, resumed: the image order is a function of seed and position
    assert _train(tiny_clip_dir, data, tmp_path / "resumed", "--stop-at", "8") == 0
    assert _train(tiny_clip_dir, data, tmp_path / "resumed", "--resume") == 0
    for h in HOOKS:
        for name in ("topk-k3-n48", "topk-k5-n48"):
            want = load_file(tmp_path / "stream" / h / name / "sae.safetensors")
            got = load_file(tmp_path / "resumed" / h / name / "sae.safetensors")
            assert all(torch.equal(got[k], want[k]) for k in want), (h, name)
    lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12, 16]


def test_model_flags_are_checked_before_any_work(tiny_clip_dir, data, tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "x"), "--k", "2", "--n-latents", "8"]
    assert main([*base, "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--tokens", "cls"]) == 2
    assert "--model needs --hook" in capsys.readouterr().err
    assert main([*base, "--model", "m", "--activations", "a.npy"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base, "--activations", "a.npy", "--hook", HOOKS[0], "--hook", HOOKS[1]]) == 2
    assert "need --model" in capsys.readouterr().err


def test_streaming_several_epochs_says_what_the_forwards_cost_before_it_starts(tiny_clip_dir, data, tmp_path, capsys):
    """Issue 23: every pass over the images reruns the model; the run says so, with the count, first."""
    argv = ["-q", "train", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--hook", HOOKS[0],
            "--tokens", "cls", "--k", "2", "--n-latents", "16", "--epochs", "2", "--batch-size", "5",
            "--workers", "0", "--device", "cpu", "--init-samples", "10", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    (line,) = [x for x in err if "image forward passes" in x]
    assert line == (
        "training from the model, without a cache: 2 passes over 10 images = about 20 image forward passes: every "
        "pass runs the model again (10 forwards per pass); a cache (`sparsesteer cache`, then --activations) runs "
        "it once per image"
    )
    assert err.index(line) < min(i for i, x in enumerate(err) if ": training in " in x)  # before training starts
