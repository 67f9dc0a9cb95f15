"""The bad inputs of docs/errors.md, one per table row: id -> the command line (or the library call)
that provokes it. tests/test_errors_doc.py runs each and checks that the message the page documents
for that id appears; the messages themselves live only in the page, so the two cannot drift.

`{ws}` in an argument is the workspace `build_error_workspace` makes (tiny CLIP, folder dataset,
activation cache, SAE, statistics, and the broken files below).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLIP = ["--model", "{ws}/clip"]
DATA = ["--dataset", "folder:{ws}/data"]
EXPORT = ["export", "--sae", "{ws}/sae", "--out", "{ws}/new/e"]


def _cache(*extra: str, out: str = "{ws}/new/cache") -> list[str]:
    return ["cache", *CLIP, *DATA, "--split", "train", "--hook", "blocks.1.resid_post", "--tokens", "cls",
            "--workers", "0", "--out", out, *extra]  # fmt: skip


def _train(acts: str = "{ws}/acts", *extra: str, out: str = "{ws}/new/sae") -> list[str]:
    return ["train", "--activations", acts, "--k", "4", "--n-latents", "32", "--steps", "5", "--out", out, *extra]


def _interpret(*extra: str, sae: str = "{ws}/sae", acts: str = "{ws}/acts") -> list[str]:
    return ["interpret", "--sae", sae, "--activations", acts, "--device", "cpu", "--out", "{ws}/new/stats", *extra]


def _steer(*extra: str) -> list[str]:
    return ["steer", "features", *CLIP, *DATA, "--split", "train", "--sae", "{ws}/sae", "--workers", "0",
            "--out", "{ws}/new/steer", *extra]  # fmt: skip


SPLICED = ["evaluate", "--sae", "{ws}/sae-cls", "--activations", "{ws}/cls-final", "--suite", "spliced",
           "--out", "{ws}/new/j.json"]  # fmt: skip
VS2 = ["reproduce", "vs2", *CLIP, *DATA, "--out", "{ws}/new/v"]

# id -> argv (after `sparsesteer`)
COMMANDS: dict[str, list[str]] = {
    # unknown names
    "unknown-command": ["trian"],
    "unknown-experiment": ["reproduce", "vs3"],
    "unknown-dataset": [
        "cache",
        *CLIP,
        "--dataset",
        "cifar11",
        "--split",
        "train",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    "unknown-download": ["download", "cifar11", "--data-root", "{ws}/new/data"],
    "unknown-split": [
        "cache",
        *CLIP,
        *DATA,
        "--split",
        "validation",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    "unknown-hook-kind": _cache("--hook", "blocks.1.resid_pots"),
    "hook-out-of-range": _cache("--hook", "blocks.7.resid_post"),
    "unknown-tokens": _cache("--tokens", "clss"),
    "unknown-arch": [*_train(), "--arch", "topkk"],
    "unknown-device": _interpret("--device", "tpu"),
    "unknown-config-key": [*_train(), "--config", "{ws}/typo.toml"],
    "cache-hook-missing": _interpret("--hook", "blocks.0.resid_post"),
    # missing files
    "missing-model": [
        "cache",
        "--model",
        "{ws}/no-model",
        *DATA,
        "--split",
        "train",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    "missing-activations": _train("{ws}/nothing-here"),
    "missing-sae": _interpret(sae="{ws}/no-sae"),
    "not-a-cache": _interpret(acts="{ws}/data"),
    "missing-config": [*_train(), "--config", "{ws}/no.toml"],
    "missing-vocab": [*_steer("--latent", "0", "--strength", "1"), "--vocab", "{ws}/no-words.txt"],
    "missing-folder-dataset": [
        "cache",
        *CLIP,
        "--dataset",
        "folder:{ws}/no-data",
        "--split",
        "train",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    # bad dataset layouts
    "split-without-classes": [
        "cache",
        *CLIP,
        "--dataset",
        "folder:{ws}/flat",
        "--split",
        "train",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    "class-without-images": [
        "cache",
        *CLIP,
        "--dataset",
        "folder:{ws}/hollow",
        "--split",
        "train",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    # wrong shapes
    "activations-1d": _train("{ws}/vec.npy"),
    "labels-wrong-length": [*_train("{ws}/rows.npy"), "--labels", "{ws}/labels-short.npy"],
    "interpret-negative-samples": _interpret("--samples", "-1"),
    "sae-width-mismatch": _interpret(sae="{ws}/sae-d8"),
    "labels-unknown-vocab": _interpret("--labels", "{ws}/no-words.txt"),
    "labels-without-text": [
        "interpret",
        "--sae",
        "{ws}/sae",
        "--model",
        "{ws}/dino",
        *DATA,
        "--split",
        "train",
        "--labels",
        "cifar100",
        "--device",
        "cpu",
        "--out",
        "{ws}/new/stats",
    ],  # fmt: skip
    "latent-out-of-range": _steer("--latent", "999", "--strength", "1"),
    "k-above-latents": _train("{ws}/acts", "--k", "64"),
    # non-finite numbers
    "nan-learning-rate": [*_train(), "--lr", "nan"],
    "inf-strength": _steer("--latent", "0", "--strength", "inf"),
    "strength-out-of-range": _steer("--latent", "0", "--strength", "1e30"),
    "steer-overflow": [*_steer("--latent", "0", "--strength", "1e4"), "--sae", "{ws}/sae-huge-row"],
    "strength-unit-of-a-factor": _steer(
        "--latent", "0", "--strength", "2", "--mode", "scale", "--strength-unit", "max"
    ),
    "strength-unit-silent-latent": [
        *_steer("--latent", "0", "--strength", "2", "--strength-unit", "p99"),
        "--sae",
        "{ws}/sae-dead-latent",
    ],
    "nan-in-activations": _train("{ws}/rows-nan.npy"),
    "nan-grid": ["reproduce", "vs2", *CLIP, *DATA, "--lams", "0,nan", "--out", "{ws}/new/v"],
    # empty inputs
    "empty-activations": _train("{ws}/empty.npy"),
    "empty-vocab": [*_steer("--latent", "0", "--strength", "1"), "--vocab", "{ws}/empty.txt"],
    "empty-sweep": _train("{ws}/acts", "--k", ","),
    "limit-zero": _cache("--limit", "0"),
    # conflicting flags
    "expansion-and-latents": [*_train(), "--expansion", "4"],
    "resume-and-overwrite": [*_train(), "--resume", "--overwrite"],
    "resume-nothing": [*_train(), "--resume"],
    "train-into-a-used-dir": _train(out="{ws}/used"),
    "steer-into-a-used-dir": [*_steer("--latent", "0", "--strength", "1"), "--out", "{ws}/used"],
    "train-stopped-early": _train(out="{ws}/stopped"),
    "train-over-a-finished-run": _train(out="{ws}/finished"),
    "evaluate-over-earlier-results": ["evaluate", "--sae", "{ws}/evaluated", "--activations", "{ws}/acts"],
    "overwrite-an-input": [
        "export",
        "--sae",
        "{ws}/nested/sae",
        "--format",
        "saelens",
        "--out",
        "{ws}/nested",
        "--overwrite",
    ],  # fmt: skip
    "cache-settings-changed": _cache("--tokens", "all", out="{ws}/cache-cls"),
    "testbed-select-on-test": ["reproduce", "testbed", *CLIP, *DATA, "--select-split", "test", "--out", "{ws}/new/t"],
    "testbed-seeds": ["reproduce", "testbed", *CLIP, *DATA, "--seeds", "0,-1", "--out", "{ws}/new/t"],
    "testbed-not-cifar10": ["reproduce", "testbed", *CLIP, *DATA, "--blocks", "0", "--out", "{ws}/new/t"],
    "tune-on-test": ["reproduce", "sparsity", *CLIP, *DATA, "--test-split", "train", "--out", "{ws}/new/s"],
    # damaged files (tests/test_faults_corruption.py has more)
    "shard-flipped-byte": ["verify", "{ws}/acts-flipped"],
    "manifest-edited": ["verify", "{ws}/acts-edited"],
    "sae-truncated": _interpret(sae="{ws}/sae-truncated"),
    "sae-pickle": _interpret(sae="{ws}/sae-pickle"),
    "cfg-shape-mismatch": _interpret(sae="{ws}/sae-cfg-edited"),
    # other commands
    "browse-stats-edited": ["browse", "--stats", "{ws}/stats-edited", "--out", "{ws}/new/site"],
    "browse-stats-old-format": ["browse", "--stats", "{ws}/stats-v1", "--out", "{ws}/new/site"],
    "zeroshot-without-text": ["zeroshot", "--model", "{ws}/dino", *DATA, "--split", "train", "--workers", "0"],
    "export-unknown-format": ["export", "--sae", "{ws}/sae", "--format", "onnx", "--out", "{ws}/new/e"],
    "export-no-hook": ["export", "--sae", "{ws}/sae-nohook", "--format", "saelens", "--out", "{ws}/new/e"],
    "export-hook-disagrees": [*EXPORT, "--format", "saelens", "--hook", "blocks.1.resid_post"],
    "export-hook-sparsify": [*EXPORT, "--format", "sparsify", "--hook", "blocks.2.resid_post"],
    "evaluate-wrong-width": ["evaluate", "--sae", "{ws}/sae-d8", "--activations", "{ws}/acts"],
    # pairings (issue 20): a dataset or a second cache that is not the cache's images, an SAE in another model
    "dataset-not-the-cache": _interpret(
        "--dataset", "folder:{ws}/data-other", sae="{ws}/sae-cls", acts="{ws}/cls-final"
    ),
    "dataset-moved": _interpret("--dataset", "folder:{ws}/data-copy", sae="{ws}/sae-cls", acts="{ws}/cls-final"),
    "dataset-not-found": [*SPLICED, "--dataset", "folder:{ws}/no-data"],
    "tune-on-other-classes": [
        "steer",
        "vs2",
        *CLIP,
        "--sae",
        "{ws}/sae-cls",
        "--activations",
        "{ws}/cls-final",
        "--tune-on",
        "{ws}/cls-final-renamed",
    ],  # fmt: skip
    "evaluate-sae-other-model": [*SPLICED, "--model", "{ws}/clip-other"],
    # settings refused before the model loads (issue 20)
    "vs2-val-fraction": [*VS2, "--val-fraction", "0"],
    "vs2-multi-layer": [*VS2, "--multi-layer", "2,9"],
    "vs2-multi-layer-one": [*VS2, "--multi-layer", "1"],
    "vs2-same-splits": [*VS2, "--test-split", "train"],
    "vs2-k-above-latents": [*VS2, "--sae-expansion", "2", "--sae-k", "64"],
    "vs2-neighbours-above-fit": [*VS2, "--val-fraction", "0.25"],
    "sparsity-k-above-latents": [
        "reproduce",
        "sparsity",
        *CLIP,
        *DATA,
        "--expansion",
        "2",
        "--k",
        "64",
        "--out",
        "{ws}/new/s",
    ],  # fmt: skip
    "unknown-suite": ["evaluate", "--sae", "{ws}/sae", "--activations", "{ws}/acts", "--suite", "bogus"],
    "vs2-not-clip": [
        "steer",
        "vs2",
        "--model",
        "{ws}/dino",
        "--sae",
        "{ws}/sae",
        "--activations",
        "{ws}/acts",
        "--lam",
        "1",
        "--gamma",
        "2",
    ],  # fmt: skip
    "hub-sae-offline": _interpret(sae="hf:someorg/some-sae@v9"),
    "hub-dataset-offline": [
        "cache",
        *CLIP,
        "--dataset",
        "hf:someorg/some-data",
        "--split",
        "train",
        "--hook",
        "head",
        "--tokens",
        "cls",
        "--out",
        "{ws}/new/c",
    ],  # fmt: skip
    "steer-zero-with-strength": _steer("--latent", "0", "--mode", "zero", "--strength", "2"),
    # unwritable outputs
    "out-is-a-file": _train(out="{ws}/afile"),
    "out-under-a-file": _train(out="{ws}/afile/run"),
}


def _api_stats_edited(ws: Path) -> None:
    from sparsesteer.interpret.store import load_stats

    load_stats(ws / "stats-edited")


def _api_labels_no_classes(ws: Path) -> None:
    from sparsesteer.interpret.run import labels_vocab

    labels_vocab("classes", None, "the activations (…)")


def _api_sae_wrong_width(ws: Path) -> None:
    import torch

    from sparsesteer.sae import SparseAutoencoder

    SparseAutoencoder.load(ws / "sae").encode(torch.zeros(3, 7))


def _api_train_saved_sae_differs(ws: Path) -> None:
    """The SAE a finished run saved reads back other than trained (a failing disk, simulated): the
    checkpoint is the only good copy, so it is not deleted."""
    from unittest import mock

    import torch

    from sparsesteer.sae import SAEConfig, SparseAutoencoder
    from sparsesteer.sae.train import TrainConfig, train

    def load_damaged(path, *args, **kwargs):
        sae = real(path, *args, **kwargs)
        with torch.no_grad():
            sae.b_dec.add_(1.0)
        return sae

    real = SparseAutoencoder.load
    with mock.patch.object(SparseAutoencoder, "load", side_effect=load_damaged):
        train(ws / "rows.npy", SAEConfig(k=2, n_latents=32), TrainConfig(batch_size=16, steps=2), ws / "new" / "t")


def _api_sae_numpy(ws: Path) -> None:
    from sparsesteer.sae import SparseAutoencoder

    SparseAutoencoder.load(ws / "sae").encode(np.zeros((3, 32), np.float32))


def _api_site_decoder_shape(ws: Path) -> None:
    from sparsesteer.interpret.browser.site import write_site
    from sparsesteer.interpret.stats import LatentStats, TopImages

    top = TopImages(
        np.zeros((2, 1), np.float32), np.full((2, 1), -1), np.zeros((2, 1, 1), np.float32), np.full((2, 1), -1)
    )
    stats = LatentStats(
        n_rows=4, n_images=2, token_positions=[0], fire_count=np.array([1, 0]), image_count=np.array([1, 0]),
        act_sum=np.ones(2), act_max=np.ones(2, np.float32), hist_centres=np.ones(1),
        hist_counts=np.zeros((2, 1), np.int64), top={"max": top},
    )  # fmt: skip
    write_site(stats, ws / "new" / "site-decoder", [], decoder=np.zeros((3, 4)), progress=False)


def _api_unknown_arch(ws: Path) -> None:
    from sparsesteer.sae import SAEConfig

    SAEConfig(arch="topkk")


def _api_unknown_dataset(ws: Path) -> None:
    from sparsesteer.data import open_dataset

    open_dataset("cifar11", "train")


def _sample_copy(ws: Path) -> tuple[Path, type]:
    """A copy of the shipped cifar10-sample under {ws}/new and a dataset class that reads it."""
    import shutil

    from sparsesteer.data.sample import Cifar10Sample, shipped_dir

    folder = ws / "new" / "sample"
    shutil.copytree(shipped_dir(), folder)
    return folder, type("Copy", (Cifar10Sample,), {"FOLDER": folder})


def _api_sample_missing_file(ws: Path) -> None:
    folder, cls = _sample_copy(ws)
    sorted((folder / "test" / "cat").iterdir())[0].unlink()
    cls(None, "test")


def _api_sample_altered(ws: Path) -> None:
    folder, cls = _sample_copy(ws)
    ds = cls(None, "test")
    path = Path(ds.source(0))
    path.write_bytes(path.read_bytes() + b"\0")
    ds[0]


def _api_bad_hook(ws: Path) -> None:
    from sparsesteer.models.hook_names import HookPoint

    HookPoint.parse("blocks.1.resid_post", n_blocks=1)


def _api_cache_missing(ws: Path) -> None:
    from sparsesteer.activations.cache import ActivationCache

    ActivationCache.open(ws / "data")


def _saelens_dir(path: Path, cfg: dict, weights: bytes | None = None) -> Path:
    """A SAELens layout by hand: cfg.json + sae_weights.safetensors (d_in 8, d_sae 16, standard)."""
    import json

    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "W_enc": torch.zeros(8, 16),
        "b_enc": torch.zeros(16),
        "W_dec": torch.zeros(16, 8),
        "b_dec": torch.zeros(8),
    }
    save_file(tensors, str(path / "sae_weights.safetensors"))
    if weights is not None:
        (path / "sae_weights.safetensors").write_bytes(weights)
    return path


def _api_peer_would_not_load(ws: Path) -> None:
    from sparsesteer.sae.formats.peers import check_peer_layout

    cfg = {"architecture": "standard", "d_in": 8, "d_sae": 16, "hook_name": None}
    check_peer_layout(_saelens_dir(ws / "api" / "null-hook", cfg), "saelens")


def _api_not_safetensors(ws: Path) -> None:
    from sparsesteer.sae import SparseAutoencoder

    SparseAutoencoder.load(_saelens_dir(ws / "api" / "cut", {"d_in": 8, "d_sae": 16}, weights=b"\x80\x01\x00"))


# id -> a library call that must raise SparsesteerError with the documented message
def _api_steer_non_finite_input(ws: Path) -> None:
    import torch

    from sparsesteer.steering.vs2 import steer

    steer(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), 0.5)


def _api_stats_no_dataset(ws: Path) -> None:
    from types import SimpleNamespace

    from sparsesteer.interpret.heatmaps import stats_dataset

    stats_dataset(SimpleNamespace(meta={}))  # statistics of rows that name no dataset


def _api_subset_replay(ws: Path) -> None:
    from sparsesteer.data import open_dataset
    from sparsesteer.data.subset import replay

    record = {"rule": "class-stratified", "n": 2, "limit": 2, "seed": 0, "of": 4, "indices_sha256": "0" * 64}
    replay(open_dataset(f"folder:{ws / 'data'}", "train"), record)  # a record of other images


def _api_subset_replay_given(ws: Path) -> None:
    from sparsesteer.data import open_dataset
    from sparsesteer.data.subset import replay

    record = {"rule": "indices", "n": 2, "limit": 2, "seed": 0, "of": 4, "indices_sha256": "0" * 64}
    replay(open_dataset(f"folder:{ws / 'data'}", "train"), record)  # rows a caller listed: no rule to replay


def _api_vs2_unfinished_cache(ws: Path) -> None:
    import json
    import shutil

    from sparsesteer.experiments.vs2.config import VS2Config
    from sparsesteer.experiments.vs2.run import VS2Run

    cache = ws / "new" / "vs2" / "cache" / "train"
    shutil.copytree(ws / "cls-final", cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest.update(completed=False, labels=None)  # as a cache stage killed before its end leaves it
    (cache / "manifest.json").write_text(json.dumps(manifest))
    VS2Run(VS2Config(model=str(ws / "clip"), dataset=f"folder:{ws / 'data'}"), ws / "new" / "vs2").cls_rows("train")


API = {
    "api-subset-replay": _api_subset_replay,
    "api-subset-replay-given": _api_subset_replay_given,
    "api-steer-non-finite-input": _api_steer_non_finite_input,
    "api-stats-edited": _api_stats_edited,
    "api-labels-no-classes": _api_labels_no_classes,
    "api-sae-wrong-width": _api_sae_wrong_width,
    "api-train-saved-sae-differs": _api_train_saved_sae_differs,
    "api-sae-numpy": _api_sae_numpy,
    "api-unknown-arch": _api_unknown_arch,
    "api-site-decoder-shape": _api_site_decoder_shape,
    "api-unknown-dataset": _api_unknown_dataset,
    "api-sample-missing-file": _api_sample_missing_file,
    "api-sample-altered": _api_sample_altered,
    "api-hook-out-of-range": _api_bad_hook,
    "api-not-a-cache": _api_cache_missing,
    "api-peer-would-not-load": _api_peer_would_not_load,
    "api-not-safetensors": _api_not_safetensors,
    "api-stats-no-dataset": _api_stats_no_dataset,
    "api-vs2-unfinished-cache": _api_vs2_unfinished_cache,
}


def build_error_workspace(ws: Path, clip: Path) -> Path:
    """Everything the commands above read: good inputs, and the broken ones they are about."""
    import shutil

    import torch
    from faults import _class_folders
    from helpers import make_activation_cache

    from sparsesteer.cli import main
    from sparsesteer.sae import SAEConfig, build

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "clip").symlink_to(clip)
    from sparsesteer.models.tiny import make_tiny_dinov2

    make_tiny_dinov2(ws / "dino")
    _class_folders(ws / "data", {"train": 2}, classes=["cat", "dog"])
    make_activation_cache(ws / "acts", n_images=100, positions=(0, 1), d=32, hooks=("blocks.2.resid_post",))
    torch.manual_seed(0)
    build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6)).save(ws / "sae", hook="blocks.2.resid_post", tokens="all")
    build(SAEConfig(arch="topk", d_in=8, n_latents=16, k=2)).save(
        ws / "sae-d8", hook="blocks.2.resid_post", tokens="all"
    )
    build(SAEConfig(arch="topk", d_in=8, n_latents=16, k=2)).save(ws / "sae-nohook")  # as trained on a bare .npy
    (ws / "typo.toml").write_text("[train]\nlrr = 0.001\n")
    (ws / "flat" / "train").mkdir(parents=True)
    _class_folders(ws / "flat-src", {"train": 1}, classes=["cat"])
    (ws / "flat-src" / "train" / "cat" / "0.png").rename(ws / "flat" / "train" / "0.png")
    (ws / "hollow" / "train" / "cat").mkdir(parents=True)
    (ws / "hollow" / "train" / "dog").mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(ws / "vec.npy", rng.normal(size=64).astype(np.float32))
    np.save(ws / "rows.npy", rng.normal(size=(64, 16)).astype(np.float32))
    np.save(ws / "labels-short.npy", np.zeros(10, np.int64))
    nan = rng.normal(size=(64, 16)).astype(np.float32)
    nan[17, 3] = np.nan
    np.save(ws / "rows-nan.npy", nan)
    np.save(ws / "empty.npy", np.zeros((0, 16), np.float32))
    (ws / "empty.txt").write_text("\n")
    (ws / "afile").write_text("keep me")
    (ws / "used").mkdir()
    (ws / "used" / "notes.txt").write_text("mine")
    (ws / "stopped").mkdir()  # a training run killed before its first checkpoint
    (ws / "stopped" / "train_config.json").write_text("{}")
    shutil.copytree(ws / "sae", ws / "finished")  # a finished training run: its SAE, settings, no checkpoint
    (ws / "finished" / "train_config.json").write_text("{}")
    shutil.copytree(ws / "sae", ws / "evaluated")
    (ws / "evaluated" / "eval.json").write_text("{}")
    shutil.copytree(ws / "sae", ws / "nested" / "sae")
    argv = ["-q", *_cache(out=str(ws / "cache-cls"))]
    assert main([a.replace("{ws}", str(ws)) for a in argv]) == 0
    _pairing_inputs(ws)
    _damaged(ws)
    huge, dead = (build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6)) for _ in range(2))
    with torch.no_grad():
        huge.W_dec[0] *= 1e35  # latent 0's decoder row 1e35 long: setting it overflows float32
        dead.b_enc[0] = -1e4  # latent 0 never fires
    huge.save(ws / "sae-huge-row", hook="blocks.2.resid_post", tokens="all")
    dead.save(ws / "sae-dead-latent", hook="blocks.2.resid_post", tokens="all")
    return ws


def _damaged(ws: Path) -> None:
    """Copies of good files, each damaged in one way."""
    import json
    import shutil

    import torch

    from sparsesteer.cli import main

    shutil.copytree(ws / "acts", ws / "acts-flipped")
    manifest = json.loads((ws / "acts" / "manifest.json").read_text())
    shard = ws / "acts-flipped" / manifest["shards"][0]["files"]["acts:blocks.2.resid_post"]["name"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 1
    shard.write_bytes(bytes(data))
    shutil.copytree(ws / "acts", ws / "acts-edited")
    manifest["settings"]["split"] = "test"
    (ws / "acts-edited" / "manifest.json").write_text(json.dumps(manifest))
    for name in ("sae-truncated", "sae-pickle", "sae-cfg-edited"):
        shutil.copytree(ws / "sae", ws / name)
    w = ws / "sae-truncated" / "sae.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    torch.save({"W_enc": torch.zeros(64, 32)}, ws / "sae-pickle" / "sae.safetensors")
    cfg_path = ws / "sae-pickle" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("weights_sha256", None)
    cfg_path.write_text(json.dumps(cfg))
    cfg_path = ws / "sae-cfg-edited" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    (cfg["sae"] if "n_latents" in cfg.get("sae", {}) else cfg)["n_latents"] = 40
    cfg_path.write_text(json.dumps(cfg))
    argv = ["-q", "interpret", "--sae", str(ws / "sae"), "--activations", str(ws / "acts"), "--top-n", "2",
            "--device", "cpu", "--out", str(ws / "stats-edited")]  # fmt: skip
    assert main(argv) == 0
    from sparsesteer.interpret.store import meta_sha256

    shutil.copytree(ws / "stats-edited", ws / "stats-v1")
    meta = json.loads((ws / "stats-edited" / "stats.json").read_text())
    meta["format_version"] = 1  # as `interpret` wrote them before the compact store (issue 22)
    meta["meta_sha256"] = meta_sha256(meta)
    (ws / "stats-v1" / "stats.json").write_text(json.dumps(meta))
    meta = json.loads((ws / "stats-edited" / "stats.json").read_text())
    meta["n_images"] += 1
    (ws / "stats-edited" / "stats.json").write_text(json.dumps(meta))


def _pairing_inputs(ws: Path) -> None:
    """Datasets that are not the cache's images (more images, a copy elsewhere, other class names),
    final-block CLS caches of two of them, an SAE that records its cache's model, and another model."""
    import shutil

    from faults import _class_folders

    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.cli import main
    from sparsesteer.models.tiny import make_tiny_clip
    from sparsesteer.sae import SAEConfig, build
    from sparsesteer.sae.provenance import Provenance

    _class_folders(ws / "data-other", {"train": 3}, classes=["cat", "dog"])
    shutil.copytree(ws / "data", ws / "data-copy")
    _class_folders(ws / "data-renamed", {"train": 2}, classes=["car", "tree"])
    for data, out in (("data", "cls-final"), ("data-renamed", "cls-final-renamed")):
        argv = ["cache", *CLIP, "--dataset", f"folder:{{ws}}/{data}", "--split", "train", "--hook",
                "blocks.2.resid_post", "--tokens", "cls", "--workers", "0", "--out", f"{{ws}}/{out}"]  # fmt: skip
        assert main(["-q", *(a.replace("{ws}", str(ws)) for a in argv)]) == 0
    view = ActivationCache.open(ws / "cls-final").rows("blocks.2.resid_post", "cls")
    meta = Provenance.from_rows(view.describe()).to_metadata(known_only=True)
    build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=4)).save(ws / "sae-cls", **meta)
    make_tiny_clip(ws / "clip-other", seed=7)  # the same shapes, other weights: another revision
