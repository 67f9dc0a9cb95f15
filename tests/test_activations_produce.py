"""The cache producer (`sparsesteer cache`): cached rows equal an independent forward pass, index and
labels, --limit, unreadable images, storage dtypes, errors, and exact resume after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import help_defaults, make_folder_dataset

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.activations.produce import CacheConfig, cache_activations, plan_hooks, shard_images_for
from sparsesteer.cli import main
from sparsesteer.data import open_dataset
from sparsesteer.data.subset import stratified_sample
from sparsesteer.models import Backbone, load_backbone
from sparsesteer.utils.errors import SparsesteerError

TESTS = Path(__file__).parent


def run_cache(model, dataset, split, hooks, tokens, out, **options):
    """`cache_activations` from the positional form these tests read best in; `model` may be a Backbone."""
    backbone = model if isinstance(model, Backbone) else None
    model_id = backbone.model_id if backbone is not None else str(model)
    cfg = CacheConfig(
        model=model_id, dataset=dataset, split=split, hooks=tuple(hooks), tokens=tokens, out=str(out), **options
    )
    return cache_activations(cfg, backbone=backbone)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir) -> Path:
    return tiny_clip_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_folder_dataset(root, (3, 2, 2), split="train")
    make_folder_dataset(root, (2, 1, 1), split="test", seed=1)
    return root


@pytest.fixture(scope="module")
def bb(clip):
    return load_backbone(clip)


def reference_rows(bb, dataset_root: Path, split: str, hook: str, tokens: str, images) -> np.ndarray:
    """Rows computed without the producer: one image at a time, one hook at a time."""
    from sparsesteer.data import open_dataset

    ds = open_dataset(f"folder:{dataset_root}", split)
    rows = []
    for i in images:
        px = torch.from_numpy(bb.preprocessor(ds[int(i)].image))[None]
        rows.append(bb.run(px, [hook], tokens=tokens)[hook].reshape(-1, bb.d_embed if hook == "head" else bb.d_model))
    return torch.cat(rows).numpy()


def read_all(cache: ActivationCache, hook: str) -> np.ndarray:
    view = cache.rows(hook)
    return view.read(0, view.n_rows).float().numpy()


def npy_hashes(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*.npy"))}


@pytest.mark.parametrize(
    "tokens, hooks, positions",
    [
        ("cls", ["blocks.2.resid_post", "blocks.0.resid_pre", "head"], [0]),
        ("patch", ["blocks.1.mlp_out", "blocks.0.attn_out"], list(range(1, 17))),
        ("all", ["blocks.1.resid_post", "blocks.2.resid_pre"], list(range(17))),
    ],
)
def test_cached_rows_equal_an_independent_forward(clip, data, bb, tmp_path, tokens, hooks, positions):
    c = run_cache(
        clip, f"folder:{data}", "train", hooks, tokens, tmp_path / "c", batch_size=2, shard_images=3, workers=0
    )
    assert c.completed and c.n_images == 7 and c.n_shards == 3  # shards of 3, 3, 1 images
    assert [s["n_images"] for s in c.manifest["shards"]] == [3, 3, 1]
    s = c.settings
    assert s.hooks == tuple(hooks) and s.tokens == tokens and list(s.token_positions) == positions
    assert s.d == {h: 16 if h == "head" else 32 for h in hooks} and s.cls_position == 0
    assert s.model == {"id": str(clip), "revision": bb.revision, "arch": "clip"}
    assert s.dataset["name"] == f"folder:{data.resolve()}" and s.dataset["len"] == 7 and s.split == "train"
    assert s.preprocessing == bb.preprocessor.to_dict()
    for hook in hooks:
        np.testing.assert_allclose(
            read_all(c, hook), reference_rows(bb, data, "train", hook, tokens, range(7)), rtol=1e-5, atol=1e-5
        )
    index = c.rows(hooks[0]).row_index(0, c.n_rows)
    np.testing.assert_array_equal(index[:, 0], np.repeat(np.arange(7), len(positions)))
    np.testing.assert_array_equal(index[:, 1], np.tile(positions, 7))
    np.testing.assert_array_equal(c.labels, [0, 0, 0, 1, 1, 2, 2])
    ActivationCache.open(c.path, verify="all")


def test_limit_workers_and_cli_summary(clip, data, bb, tmp_path, capsys):
    out = tmp_path / "c"
    rc = main(
        [
            "cache",
            "--model",
            str(clip),
            "--dataset",
            f"folder:{data}",
            "--split",
            "test",
            "--hook",
            "blocks.1.resid_post",
            "--tokens",
            "cls",
            "--out",
            str(out),
            "--limit",
            "3",
            "--workers",
            "1",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    assert "3 images, 3 rows per hook (blocks.1.resid_post), 1 shards" in capsys.readouterr().out
    c = ActivationCache.open(out)
    assert c.n_images == 3 and c.settings.dataset["len"] == 4
    # --limit is a class-stratified sample (labels of test: 0, 0, 1, 2): every class once
    assert c.classes == open_dataset(f"folder:{data}", "test").classes  # stored: no dataset needed later
    sub = c.settings.dataset["subset"]
    assert sub["rule"] == "class-stratified" and sub["n"] == 3 and sub["of"] == 4 and sub["seed"] == 0
    np.testing.assert_array_equal(c.labels, [0, 1, 2])
    chosen = stratified_sample(np.array([0, 0, 1, 2]), 3, 0)
    assert chosen[1:].tolist() == [2, 3] and chosen[0] in (0, 1)
    np.testing.assert_allclose(
        read_all(c, "blocks.1.resid_post"),
        reference_rows(bb, data, "test", "blocks.1.resid_post", "cls", chosen.tolist()),
        rtol=1e-5,
        atol=1e-5,
    )
    # Rerunning a completed cache does nothing and says so.
    before = npy_hashes(out)
    rc = main(
        [
            "cache",
            "--model",
            str(clip),
            "--dataset",
            f"folder:{data}",
            "--split",
            "test",
            "--hook",
            "blocks.1.resid_post",
            "--tokens",
            "cls",
            "--out",
            str(out),
            "--limit",
            "3",
        ]
    )
    assert rc == 0 and npy_hashes(out) == before


def test_unreadable_images_skip_or_error(clip, bb, tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "imgs", (3, 2, 2), corrupt={(0, 2), (1, 0)})  # images 2, 3
    argv = [
        "cache",
        "--model",
        str(clip),
        "--dataset",
        f"folder:{root}",
        "--split",
        "train",
        "--hook",
        "blocks.0.resid_post",
        "--tokens",
        "all",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--shard-images",
        "2",
    ]
    assert main(argv + ["--out", str(tmp_path / "err")]) == 2
    err = capsys.readouterr().err
    assert f"{root.resolve()}/train/class_0/img_2.jpg" in err and "--on-bad-image skip" in err

    assert main(argv + ["--out", str(tmp_path / "skip"), "--on-bad-image", "skip"]) == 0
    assert "2 unreadable images skipped" in capsys.readouterr().out
    c = ActivationCache.open(tmp_path / "skip", verify="all")
    assert [(s["image"], Path(s["source"]).relative_to(root.resolve()).as_posix()) for s in c.skipped] == [
        (2, "train/class_0/img_2.jpg"),
        (3, "train/class_1/img_0.jpg"),
    ]
    assert all("cannot read image" in s["error"] for s in c.skipped)
    assert [s["rows"] for s in c.manifest["shards"]] == [34, 0, 34, 17]  # shard 1: both images unreadable
    kept = [0, 1, 4, 5, 6]
    index = c.rows().row_index(0, c.n_rows)
    np.testing.assert_array_equal(index[:, 0], np.repeat(kept, 17))
    np.testing.assert_allclose(
        read_all(c, "blocks.0.resid_post"),
        reference_rows(bb, root, "train", "blocks.0.resid_post", "all", kept),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(c.labels, [0, 0, 0, 1, 1, 2, 2])  # labels of every image, skipped or not


def test_half_dtypes_round_to_nearest_even(clip, data, bb, tmp_path):
    kw = dict(batch_size=4, workers=0)
    hook = "blocks.2.resid_post"
    ref = read_all(run_cache(clip, f"folder:{data}", "train", [hook], "all", tmp_path / "f32", **kw), hook)
    # A loaded Backbone works as well as a model id (same settings, so the same model identity).
    f16 = run_cache(bb, f"folder:{data}", "train", [hook], "all", tmp_path / "f16", dtype="float16", **kw)
    assert f16.settings.model == {"id": str(clip), "revision": bb.revision, "arch": "clip"}
    np.testing.assert_array_equal(f16.shard(hook, 0), ref.astype(np.float16))
    bf16 = run_cache(clip, f"folder:{data}", "train", [hook], "all", tmp_path / "bf16", dtype="bfloat16", **kw)
    bits = ref.view(np.uint32).astype(np.uint64)
    expected = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even, by hand
    np.testing.assert_array_equal(np.asarray(bf16.shard(hook, 0)), expected)
    assert bf16.rows(hook).read(0, 3).dtype == torch.bfloat16
    assert (tmp_path / "bf16" / "shards" / hook / "00000.npy").stat().st_size < (
        tmp_path / "f32" / "shards" / hook / "00000.npy"
    ).stat().st_size * 0.51


def test_float16_overflow_is_an_error_naming_the_row(clip, data, tmp_path):
    """Activations beyond float16's range (65504) must not silently become inf."""
    model = load_backbone(clip)  # a private copy whose weights we change in memory
    with torch.no_grad():
        model.vision.pre_layrnorm.bias.fill_(1e5)  # blocks.0.resid_pre = the embeddings after this norm
    with pytest.raises(
        SparsesteerError,
        match=r"hook 'blocks.0.resid_pre' at image 0, token 0 overflow torch.float16.*"
        r"--dtype float32 or bfloat16",
    ):
        run_cache(
            model, f"folder:{data}", "train", ["blocks.0.resid_pre"], "cls", tmp_path / "c", dtype="float16", workers=0
        )
    other = CacheConfig(
        model="another/model",
        dataset=f"folder:{data}",
        split="train",
        hooks=("blocks.0.resid_pre",),
        tokens="cls",
        out=str(tmp_path / "d"),
    )
    with pytest.raises(SparsesteerError, match="the backbone is .* but cfg.model is 'another/model'"):
        cache_activations(other, backbone=model)


def test_shard_size_from_target_megabytes(bb):
    plan = plan_hooks(bb, ["blocks.1.resid_post", "blocks.2.mlp_out"], "all")
    assert plan.values_per_image == 17 * 64
    assert shard_images_for(plan, "float32", shard_mb=1) == 2**20 // (17 * 64 * 4)
    assert shard_images_for(plan, "bfloat16", shard_mb=1) == 2**20 // (17 * 64 * 2)
    assert shard_images_for(plan, "float32", shard_mb=1e-6) == 1


def test_help_states_every_default():
    helps = help_defaults("cache")
    required = {"--model", "--dataset", "--split", "--hook", "--tokens", "--out"}
    assert required < set(helps)
    for option, text in helps.items():
        assert option in required or "default:" in text, (option, text)
    assert "(default: float32)" in helps["--dtype"] and "(default: 64)" in helps["--batch-size"]


def _cache_argv(clip, data, out, *extra):
    return ["cache", "--model", str(clip), "--dataset", f"folder:{data}", "--split", "train", "--out", str(out), *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--hook", "blocks.1.resid_pots", "--tokens", "cls"],
            r"unknown hook point 'blocks.1.resid_pots' \(did you mean 'blocks.1.resid_post'\?\)",
        ),
        (
            ["--hook", "blocks.3.resid_post", "--tokens", "cls"],
            r"block index 3 out of range; this model has 3 blocks, valid indices 0..2",
        ),
        (["--hook", "head", "--tokens", "all"], r"hook 'head' gives one embedding per image.*--tokens cls"),
        (["--hook", "blocks.0.resid_post", "--hook", "blocks.0.resid_post", "--tokens", "cls"], "more than once"),
        (["--hook", "blocks.0.resid_post", "--tokens", "cls", "--batch-size", "0"], "--batch-size must be a positive"),
        (
            ["--hook", "blocks.0.resid_post", "--tokens", "cls", "--intra-op-threads", "0"],
            "--intra-op-threads must be a positive",
        ),
        (
            ["--hook", "blocks.0.resid_post", "--tokens", "cls", "--device", "cuda:0"]
            if not torch.cuda.is_available()
            else ["--hook", "blocks.0.resid_post", "--tokens", "cls", "--device", "tpu"],
            r"--device|unknown device",
        ),
    ],
)
def test_bad_hooks_and_options(clip, data, tmp_path, capsys, extra, message):
    import re

    assert main(_cache_argv(clip, data, tmp_path / "c", *extra)) == 2
    err = capsys.readouterr().err
    assert "sparsesteer cache: error: " in err and re.search(message, err), err
    assert not (tmp_path / "c" / "manifest.json").exists()  # refused before anything was written


def test_model_dataset_split_and_out_errors(clip, data, tmp_path, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    ok = ["--hook", "blocks.0.resid_post", "--tokens", "cls"]

    def error(argv) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    err = error(
        [
            "cache",
            "--model",
            str(bert),
            "--dataset",
            f"folder:{data}",
            "--split",
            "train",
            "--out",
            str(tmp_path / "c"),
            *ok,
        ]
    )
    assert "is a 'bert' model, which has no supported vision tower" in err
    err = error(
        [
            "cache",
            "--model",
            str(clip),
            "--dataset",
            "cifar10",
            "--split",
            "test",
            "--data-root",
            str(tmp_path / "nodata"),
            "--out",
            str(tmp_path / "c"),
            *ok,
        ]
    )
    assert f"missing {tmp_path / 'nodata'}" in err and "sparsesteer download cifar10" in err
    err = error(_cache_argv(clip, data, tmp_path / "c", "--split", "validation", *ok))
    assert "unknown split 'validation'" in err and "valid: test, train" in err

    main(_cache_argv(clip, data, tmp_path / "c", *ok, "--limit", "2"))
    capsys.readouterr()
    err = error(
        _cache_argv(clip, data, tmp_path / "c", "--hook", "blocks.1.resid_post", "--tokens", "cls", "--limit", "2")
    )
    assert f"{tmp_path / 'c'} holds a cache of different settings (field hooks" in err and "use another --out" in err
    err = error(_cache_argv(clip, data, tmp_path / "c", *ok, "--limit", "2", "--dtype", "float16"))
    assert 'field dtype: "float32" vs "float16"' in err


def test_dinov2_with_registers_head_and_patches(data, tmp_path):
    """The VS2++ retriever cache (DINOv2 `head`, cls) and patch rows that leave the registers out."""
    from sparsesteer.models.tiny import make_tiny_dinov2

    path = make_tiny_dinov2(tmp_path / "dino", layers=2, registers=2)
    dino = load_backbone(path)
    c = run_cache(
        dino, f"folder:{data}", "train", ["head", "blocks.1.resid_post"], "cls", tmp_path / "h", workers=0, batch_size=3
    )
    assert c.settings.d == {"head": 32, "blocks.1.resid_post": 32} and c.settings.model["arch"] == "dinov2"
    for hook in ("head", "blocks.1.resid_post"):
        np.testing.assert_allclose(
            read_all(c, hook), reference_rows(dino, data, "train", hook, "cls", range(7)), rtol=1e-5, atol=1e-5
        )
    p = run_cache(dino, f"folder:{data}", "train", ["blocks.0.mlp_out"], "patch", tmp_path / "p", workers=0)
    assert p.settings.token_positions == tuple(range(3, 19))  # CLS 0, registers 1-2, then 16 patches
    np.testing.assert_allclose(
        read_all(p, "blocks.0.mlp_out"),
        reference_rows(dino, data, "train", "blocks.0.mlp_out", "patch", range(7)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_model_without_cls_refuses_cls_tokens(tmp_path):
    from sparsesteer.models.tiny import make_tiny_siglip

    siglip = load_backbone(make_tiny_siglip(tmp_path / "siglip", layers=1, text=False))
    with pytest.raises(SparsesteerError, match="has no CLS token; use --tokens patch or all"):
        plan_hooks(siglip, ["blocks.0.resid_post"], "cls")
    plan = plan_hooks(siglip, ["blocks.0.resid_post"], "all")
    assert plan.cls_position is None and plan.token_positions == tuple(range(16))


def test_interrupted_run_resumes_with_its_own_shard_size(clip, data, tmp_path, monkeypatch):
    from sparsesteer.activations import produce

    args = (clip, f"folder:{data}", "train", ["blocks.0.resid_post", "head"], "cls")
    real_flush, calls = produce._ShardBuffer.flush, []

    def flush_then_die(self, writer, n_images):
        if calls:
            raise KeyboardInterrupt  # stops after the first shard was committed
        calls.append(n_images)
        real_flush(self, writer, n_images)

    monkeypatch.setattr(produce._ShardBuffer, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_cache(*args, tmp_path / "c", shard_images=2, batch_size=3, workers=0)
    monkeypatch.setattr(produce._ShardBuffer, "flush", real_flush)
    assert ActivationCache.open(tmp_path / "c").n_shards == 1
    with pytest.raises(SparsesteerError, match="was started with 2 images per shard"):
        run_cache(*args, tmp_path / "c", shard_images=3, batch_size=3, workers=0)
    real_finish = produce.CacheWriter.finish
    monkeypatch.setattr(produce.CacheWriter, "finish", lambda self, labels: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # every shard committed, but not finished
        run_cache(*args, tmp_path / "c", batch_size=3, workers=0)  # keeps 2 images per shard
    monkeypatch.setattr(produce.CacheWriter, "finish", real_finish)
    c = ActivationCache.open(tmp_path / "c")
    assert [s["n_images"] for s in c.manifest["shards"]] == [2, 2, 2, 1] and not c.completed
    c = run_cache(*args, tmp_path / "c", workers=0)  # nothing left to run: only finishes
    assert c.completed
    run_cache(*args, tmp_path / "ref", shard_images=2, batch_size=3, workers=0)
    assert npy_hashes(tmp_path / "c") == npy_hashes(tmp_path / "ref")


KILL_SCRIPT_ENV = {"SPARSESTEER_QUIET": "1"}  # same thread count as this process: same kernels, same bits


def test_sigkill_mid_run_then_rerun_is_byte_identical(clip, tmp_path):
    """A real `sparsesteer cache` process killed with SIGKILL after its first committed shard, then
    rerun, ends with exactly the .npy bytes of an uninterrupted run."""
    root = tmp_path / "imgs"
    make_folder_dataset(root, (20, 20, 20), size=600)  # large images: decoding takes ~0.5 s after shard 0
    argv = _cache_argv(
        clip,
        root,
        tmp_path / "killed",
        "--hook",
        "blocks.1.resid_post",
        "--hook",
        "blocks.0.mlp_out",
        "--tokens",
        "all",
        "--shard-images",
        "2",
        "--batch-size",
        "1",
        "--workers",
        "0",
    )
    env = {**os.environ, **KILL_SCRIPT_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsesteer", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    manifest = tmp_path / "killed" / "manifest.json"
    deadline = time.monotonic() + 120
    shards = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            shards = len(json.loads(manifest.read_text())["shards"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            shards = 0
        if shards >= 1:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed = json.loads(manifest.read_text())
    assert 1 <= len(killed["shards"]) < 30 and not killed["completed"]  # the kill landed mid-run

    assert main(argv) == 0  # resume in this process
    ref_argv = [a if a != str(tmp_path / "killed") else str(tmp_path / "ref") for a in argv]
    assert main(ref_argv) == 0  # an uninterrupted run
    resumed, ref = npy_hashes(tmp_path / "killed"), npy_hashes(tmp_path / "ref")
    assert len(ref) == 30 * 3 + 1 and resumed == ref
    ActivationCache.open(tmp_path / "killed", verify="all")


def test_bf16_forward_is_recorded_checked_against_float32_and_never_mixed(clip, data, bb, tmp_path, capsys):
    """`cache --bf16`: rows close to the float32 forward's (not equal: bf16 autocast ran), the
    precision in the settings (a float32 resume of it is refused), and the first batch's
    difference recomputed here from an independent bf16 forward of the same images."""
    out = tmp_path / "c"
    argv = _cache_argv(clip, data, out, "--hook", "blocks.2.resid_post", "--tokens", "all", "--batch-size", "2")
    assert main([*argv, "--bf16", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "bf16 forward vs float32 (first batch, 34 rows of blocks.2.resid_post)" in printed
    c = ActivationCache.open(out)
    assert c.settings.forward == "bfloat16" and c.settings.to_json()["forward"] == "bfloat16"
    hook = "blocks.2.resid_post"
    rows, ref = read_all(c, hook), reference_rows(bb, data, "train", hook, "all", range(7))
    rel = np.linalg.norm(rows - ref) / np.linalg.norm(ref)
    assert 0 < rel < 0.05  # bf16 rounding: different, but close
    ds = open_dataset(f"folder:{data}", "train")
    px = torch.stack([torch.from_numpy(bb.preprocessor(ds[i].image)) for i in (0, 1)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b16 = bb.run(px, [hook], tokens="all")[hook].float().reshape(-1, 32).double()
    f32 = bb.run(px, [hook], tokens="all")[hook].reshape(-1, 32).double()
    check = c.manifest["checks"]["bf16_check"][hook]
    assert check["rows"] == 34
    assert check["rel_rms"] == pytest.approx(float((b16 - f32).norm() / f32.norm()), rel=1e-6)
    assert check["max_abs"] == pytest.approx(float((b16 - f32).abs().max()), rel=1e-6)
    assert check["cos_min"] == pytest.approx(float(torch.nn.functional.cosine_similarity(b16, f32).min()), abs=1e-12)
    assert main([*argv, "--workers", "0"]) == 2  # the same --out in float32: another cache
    assert "forward" in capsys.readouterr().err


def test_a_float32_cache_keeps_its_settings_hash_without_the_forward_field():
    from sparsesteer.activations.cache import CacheSettings

    s = CacheSettings(hooks=("h",), d={"h": 4}, tokens="cls", token_positions=(0,), cls_position=0, n_images=1)
    assert "forward" not in s.to_json()  # caches written before --bf16 existed hash the same
    with pytest.raises(SparsesteerError, match="field forward"):
        CacheSettings(
            hooks=("h",), d={"h": 4}, tokens="cls", token_positions=(0,), cls_position=0, n_images=1, forward="fp8"
        )
