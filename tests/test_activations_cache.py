"""Activation cache: writer/reader round trips, filtered views, resume and crash safety, checksums."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter, RowSource
from sparsesteer.activations.cache import writer as writer_mod
from sparsesteer.cli import main
from sparsesteer.utils.errors import SparsesteerError
from sparsesteer.utils.io import sha256_file

HOOKS = ("blocks.0.resid_post", "blocks.2.mlp_out")
D = {"blocks.0.resid_post": 8, "blocks.2.mlp_out": 5}
N_IMAGES = 7
POSITIONS = (0, 1, 2, 3)  # CLS at 0, three patches
SHARD_IMAGES = [(0, 3), (3, 3), (6, 1)]  # (first image, n images) per shard: boundaries mid-view


def settings(dtype: str = "float32", **over) -> CacheSettings:
    kw = dict(
        hooks=HOOKS,
        d=D,
        tokens="all",
        token_positions=POSITIONS,
        cls_position=0,
        n_images=N_IMAGES,
        dtype=dtype,
        model={"id": "tiny", "revision": None, "arch": "clip"},
        dataset={"name": "unit"},
        split="test",
    )
    kw.update(over)
    return CacheSettings(**kw)


def make_data(n_images: int = N_IMAGES, positions=POSITIONS, seed: int = 0):
    """Rows of every image (image-major, token_positions order) as float64 arrays per hook."""
    rng = np.random.default_rng(seed)
    image_idx = np.repeat(np.arange(n_images), len(positions))
    token_idx = np.tile(np.asarray(positions), n_images)
    acts = {h: rng.normal(size=(len(image_idx), D[h])) * 3 for h in HOOKS}
    labels = rng.integers(-1, 10, size=n_images)
    return acts, image_idx, token_idx, labels


def write_cache(path: Path, s: CacheSettings, data, shards=SHARD_IMAGES, *, finish=True) -> None:
    acts, image_idx, token_idx, labels = data
    with CacheWriter.open(path, s) as w:
        for first, n in shards[w.next_shard_index :]:
            rows = np.isin(image_idx, np.arange(first, first + n))
            w.write_shard({h: a[rows] for h, a in acts.items()}, image_idx[rows], token_idx[rows])
        if finish:
            w.finish(labels)


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every data file in the cache (everything but the manifest, whose timestamps vary)."""
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*.npy"))}


def expected_stored(x: np.ndarray, dtype: str) -> torch.Tensor:
    """What a cache of `dtype` must return for float64 input `x`: numpy/torch's own rounding."""
    if dtype == "bfloat16":
        return torch.from_numpy(x).to(torch.bfloat16)
    return torch.from_numpy(x.astype(dtype))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (bfloat16 via its bits)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bfloat16:
        a, b = a.view(torch.int16), b.view(torch.int16)
    return torch.equal(a, b)


# -- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_every_range_across_shards(tmp_path, dtype):
    data = make_data()
    acts, image_idx, token_idx, labels = data
    write_cache(tmp_path / "c", settings(dtype), data)
    c = ActivationCache.open(tmp_path / "c")
    assert c.completed and c.hooks == HOOKS and c.d == D and c.dtype == dtype
    assert c.n_images == N_IMAGES and c.n_rows == len(image_idx) and c.tokens_per_image == 4 and c.n_shards == 3
    np.testing.assert_array_equal(c.labels, labels)
    for h in HOOKS:
        view = c.rows(h)
        assert isinstance(view, RowSource) and view.n_rows == len(image_idx) and view.d == D[h]
        full = expected_stored(acts[h], dtype)
        for a in range(view.n_rows + 1):
            for b in range(a, view.n_rows + 1, 3):
                got = view.read(a, b)
                assert same(got, full[a:b]), (h, a, b)
        t = view.read(0, 5)
        t.add_(1)  # a new, writable tensor: the memmap is untouched
        assert same(view.read(0, 5), full[0:5])
        np.testing.assert_array_equal(view.labels(0, view.n_rows), labels[image_idx])
        np.testing.assert_array_equal(view.row_index(2, 9), np.stack([image_idx, token_idx], 1)[2:9])


def test_bfloat16_tensor_input_is_stored_bit_exact(tmp_path):
    acts, image_idx, token_idx, labels = make_data(n_images=2)
    bf = {h: torch.from_numpy(a).to(torch.bfloat16) for h, a in acts.items()}
    with CacheWriter.open(tmp_path / "c", settings("bfloat16", n_images=2)) as w:
        w.write_shard(bf, torch.from_numpy(image_idx), torch.from_numpy(token_idx))
        w.finish(labels)
    c = ActivationCache.open(tmp_path / "c")
    assert same(c.rows(HOOKS[0]).read(0, 8), bf[HOOKS[0]])
    assert c.shard(HOOKS[0], 0).dtype == np.dtype("<u2")  # raw bits on disk


def test_shard_memmaps_are_read_only_and_typed(tmp_path):
    write_cache(tmp_path / "c", settings("float16"), make_data())
    c = ActivationCache.open(tmp_path / "c")
    mm = c.shard(HOOKS[1], 1)
    assert isinstance(mm, np.memmap) and mm.shape == (12, 5) and mm.dtype == np.float16
    with pytest.raises(ValueError):
        mm[0, 0] = 1
    assert c.index(2).tolist() == [[6, 0], [6, 1], [6, 2], [6, 3]]
    # What docs/formats.md promises: plain numpy reads a cache without sparsesteer.
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    files = m["shards"][1]["files"]
    raw = np.load(tmp_path / "c" / files["acts:blocks.2.mlp_out"]["name"], mmap_mode="r")
    np.testing.assert_array_equal(raw, mm)
    assert m["settings"]["dtype"] == "float16" and m["settings"]["d"] == D


# -- filtered views --------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", ["cls", "patch", [2], [1, 3], "all", [0, 1, 2, 3]])
def test_filtered_views_match_numpy_reference(tmp_path, tokens):
    data = make_data()
    acts, image_idx, token_idx, labels = data
    write_cache(tmp_path / "c", settings(), data)
    c = ActivationCache.open(tmp_path / "c")
    keep = {"cls": [0], "patch": [1, 2, 3], "all": [0, 1, 2, 3]}[tokens] if isinstance(tokens, str) else tokens
    mask = np.isin(token_idx, keep)
    view = c.rows(HOOKS[0], tokens=tokens)
    assert view.n_rows == mask.sum()
    ref = acts[HOOKS[0]][mask].astype(np.float32)
    for a in range(view.n_rows + 1):
        for b in range(a, view.n_rows + 1):
            np.testing.assert_array_equal(view.read(a, b).numpy(), ref[a:b])
    np.testing.assert_array_equal(view.labels(0, view.n_rows), labels[image_idx[mask]])
    np.testing.assert_array_equal(view.row_index(0, view.n_rows)[:, 1], token_idx[mask])
    desc = view.describe()
    json.dumps(desc)
    assert desc["n_rows"] == view.n_rows and desc["hook"] == HOOKS[0] and desc["settings_sha256"] == c.settings_sha256


def test_compact_kept_rows_are_slices_for_cls_and_contiguous_patches(tmp_path):
    write_cache(tmp_path / "c", settings(), make_data())
    c = ActivationCache.open(tmp_path / "c")
    cls_view, patch_view = c.rows(HOOKS[0], "cls"), c.rows(HOOKS[0], "patch")
    assert cls_view._select(0, 0, 3) == slice(0, 9, 4)
    assert patch_view._select(0, 1, 5).tolist() == [2, 3, 5, 6]
    assert patch_view._kept[0].ids is None  # the per-image pattern, not one id per row


def test_view_errors(tmp_path):
    write_cache(tmp_path / "all", settings(), make_data())
    c = ActivationCache.open(tmp_path / "all")
    with pytest.raises(SparsesteerError, match="several hooks.*blocks.0.resid_post, blocks.2.mlp_out"):
        c.rows()
    with pytest.raises(SparsesteerError, match="did you mean 'blocks.0.resid_post'"):
        c.rows("blocks.0.resid_pos")
    with pytest.raises(SparsesteerError, match="no rows for token 7; it holds tokens 0..3"):
        c.rows(HOOKS[0], [1, 7])
    with pytest.raises(IndexError):
        c.rows(HOOKS[0]).read(0, 10**6)

    acts, image_idx, token_idx, labels = make_data(n_images=2)
    cls_rows = token_idx == 0
    with CacheWriter.open(tmp_path / "cls", settings(tokens="cls", token_positions=(0,), n_images=2)) as w:
        w.write_shard({h: a[cls_rows] for h, a in acts.items()}, image_idx[cls_rows], token_idx[cls_rows])
        w.finish(labels)
    c = ActivationCache.open(tmp_path / "cls")
    assert c.rows(HOOKS[1], "cls").n_rows == 2
    with pytest.raises(SparsesteerError, match="no patch rows; it holds tokens 0"):
        c.rows(HOOKS[1], "patch")

    no_cls = settings(cls_position=None, hooks=HOOKS[:1], d={HOOKS[0]: 8}, n_images=2)
    with CacheWriter.open(tmp_path / "nocls", no_cls) as w:
        w.write_shard({HOOKS[0]: acts[HOOKS[0]]}, image_idx, token_idx)
        w.finish()
    c = ActivationCache.open(tmp_path / "nocls")
    assert c.rows().n_rows == 8 and c.rows(tokens="patch").n_rows == 8  # single hook: hook optional
    assert (c.labels == -1).all()
    with pytest.raises(SparsesteerError, match="no CLS token"):
        c.rows(tokens="cls")


# -- resume and crash safety ----------------------------------------------------------------------


def test_resume_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    data = make_data()
    write_cache(tmp_path / "ref", settings("bfloat16"), data)

    write_cache(tmp_path / "res", settings("bfloat16"), data, shards=SHARD_IMAGES[:2], finish=False)
    part = ActivationCache.open(tmp_path / "res")
    assert not part.completed and part.labels is None and part.images_done == 6 and part.n_rows == 24
    assert part.rows(HOOKS[0]).read(20, 24).shape == (4, 8)  # an incomplete cache is readable
    with CacheWriter.open(tmp_path / "res", settings("bfloat16")) as w:
        assert (w.next_image, w.images_done, w.next_shard_index, w.completed) == (6, 6, 2, False)
    write_cache(tmp_path / "res", settings("bfloat16"), data)

    assert file_hashes(tmp_path / "res") == file_hashes(tmp_path / "ref")
    m_ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    m_res = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert m_ref["shards"] == m_res["shards"] and m_ref["labels"] == m_res["labels"]
    assert m_ref["settings_sha256"] == m_res["settings_sha256"]


def test_crash_between_shard_files_and_manifest_commit_is_redone(tmp_path, monkeypatch):
    data = make_data()
    write_cache(tmp_path / "ref", settings(), data)

    real_write_json = writer_mod.write_json
    calls = {"n": 0}

    def crash_on_second_commit(path, obj):
        calls["n"] += 1
        if calls["n"] == 3:  # 1: new manifest, 2: shard 0, 3: shard 1 -> "power cut"
            raise OSError("simulated crash before the manifest rename")
        real_write_json(path, obj)

    monkeypatch.setattr(writer_mod, "write_json", crash_on_second_commit)
    with pytest.raises(OSError, match="simulated crash"):
        write_cache(tmp_path / "crash", settings(), data)
    monkeypatch.setattr(writer_mod, "write_json", real_write_json)

    shard1 = tmp_path / "crash" / "shards" / HOOKS[0] / "00001.npy"
    assert shard1.exists()  # written and renamed, but never committed
    c = ActivationCache.open(tmp_path / "crash")
    assert c.n_shards == 1 and c.images_done == 3 and not c.completed

    shard1.write_bytes(b"garbage from a half-finished run")
    (shard1.parent / ".00001.npy.abc.tmp").write_bytes(b"killed mid-write")
    with CacheWriter.open(tmp_path / "crash", settings()) as w:
        assert w.next_shard_index == 1 and w.next_image == 3
        assert not shard1.exists() and not list(shard1.parent.glob("*.tmp"))  # leftovers removed
    write_cache(tmp_path / "crash", settings(), data)
    assert file_hashes(tmp_path / "crash") == file_hashes(tmp_path / "ref")
    ActivationCache.open(tmp_path / "crash", verify="all")


KILLED_WRITER = """
import os, sys
from pathlib import Path
from sparsesteer.activations.cache import writer as writer_mod
from sparsesteer.utils import io
sys.path.insert(0, {tests!r})
from test_activations_cache import make_data, settings, write_cache

def killed(path, obj, calls=[0]):
    calls[0] += 1
    if calls[0] == 3:  # committing shard 1: leave a half-written temp manifest, then die hard
        (path.parent / ".manifest.json.x.tmp").write_text("partial")
        os._exit(9)
    io.write_json(path, obj)

writer_mod.write_json = killed
write_cache(Path({out!r}), settings(), make_data())
"""


def test_writer_killed_mid_commit_resumes_identically(tmp_path):
    """A real process death (no finally blocks run, lock dropped by the OS) between shard files and
    manifest: the next writer takes over, cleans up and produces the same bytes."""
    import subprocess
    import sys

    data = make_data()
    write_cache(tmp_path / "ref", settings(), data)
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), out=str(tmp_path / "c"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert (tmp_path / "c" / "shards" / "index" / "00001.npy").exists()
    assert ActivationCache.open(tmp_path / "c").n_shards == 1
    write_cache(tmp_path / "c", settings(), data)
    assert file_hashes(tmp_path / "c") == file_hashes(tmp_path / "ref")
    assert not list((tmp_path / "c").glob(".*.tmp"))


def test_failed_commit_keeps_writer_consistent_and_retryable(tmp_path, monkeypatch):
    acts, image_idx, token_idx, _ = make_data(n_images=1)
    real = writer_mod.write_json
    with CacheWriter.open(tmp_path / "c", settings(n_images=2)) as w:
        w.add_skipped(1, "img1.jpg", "truncated JPEG")
        monkeypatch.setattr(writer_mod, "write_json", lambda p, o: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            w.write_shard(acts, image_idx, token_idx, n_images=2)
        assert w.next_shard_index == 0 and w.manifest["skipped"] == []
        monkeypatch.setattr(writer_mod, "write_json", real)
        w.write_shard(acts, image_idx, token_idx, n_images=2)
        w.finish([3, 4])
    c = ActivationCache.open(tmp_path / "c", verify="all")
    assert c.skipped == [{"image": 1, "source": "img1.jpg", "error": "truncated JPEG"}]


def test_reopen_refuses_different_settings_and_reports_completed(tmp_path):
    write_cache(tmp_path / "c", settings(), make_data())
    msg = r"holds a cache of different settings \(field dtype: \"float32\" vs \"float16\"\); use another --out"
    with pytest.raises(SparsesteerError, match=msg):
        CacheWriter.open(tmp_path / "c", settings("float16"))
    with pytest.raises(SparsesteerError, match=r"field d.blocks.2.mlp_out: 5 vs 6"):
        CacheWriter.open(tmp_path / "c", settings(d={**D, "blocks.2.mlp_out": 6}))
    with pytest.raises(SparsesteerError, match="field split"):
        CacheWriter.open(tmp_path / "c", settings(split="train").to_json())  # dict settings work too
    with pytest.raises(SparsesteerError, match="already holds this activation cache.*completed"):
        CacheWriter.open(tmp_path / "c", settings(), resume=False)
    with CacheWriter.open(tmp_path / "c", settings()) as w:
        assert w.completed and w.next_image == N_IMAGES
        with pytest.raises(SparsesteerError, match="completed activation cache"):
            w.write_shard({}, [], [])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SparsesteerError, match="is not empty.*holds no activation cache"):
        CacheWriter.open(tmp_path / "other", settings())


def test_second_writer_on_the_same_directory_is_refused(tmp_path):
    with CacheWriter.open(tmp_path / "c", settings()):
        with pytest.raises(SparsesteerError, match="being written by another process"):
            CacheWriter.open(tmp_path / "c", settings())
    CacheWriter.open(tmp_path / "c", settings()).close()  # lock released


# -- verification ---------------------------------------------------------------------------------


def test_corrupted_shard_is_caught_by_verify_lazy_open_and_cli(tmp_path, capsys):
    write_cache(tmp_path / "c", settings(), make_data())
    assert main(["verify", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "OK, 10 files" in out and "complete" in out
    assert main(["verify", "--json", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 10 and report["bytes"] == sum(p.stat().st_size for p in (tmp_path / "c").rglob("*.npy"))

    bad = tmp_path / "c" / "shards" / HOOKS[1] / "00001.npy"
    raw = bytearray(bad.read_bytes())
    raw[-7] ^= 0x01
    bad.write_bytes(bytes(raw))

    c = ActivationCache.open(tmp_path / "c")  # lazy: sizes match, nothing hashed yet
    c.shard(HOOKS[1], 0)
    c.shard(HOOKS[0], 1)
    with pytest.raises(SparsesteerError, match=r"shards/blocks.2.mlp_out/00001.npy: sha256 .* corrupted"):
        c.shard(HOOKS[1], 1)
    with pytest.raises(SparsesteerError, match=r"00001.npy: sha256"):
        c.rows(HOOKS[1]).read(0, c.n_rows)
    with pytest.raises(SparsesteerError, match=r"shards/blocks.2.mlp_out/00001.npy: sha256"):
        c.verify()
    with pytest.raises(SparsesteerError, match=r"shards/blocks.2.mlp_out/00001.npy"):
        ActivationCache.open(tmp_path / "c", verify="all")
    assert ActivationCache.open(tmp_path / "c", verify="none").shard(HOOKS[1], 1)[-1, -1] is not None

    assert main(["verify", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsesteer verify: error: ") and "shards/blocks.2.mlp_out/00001.npy" in err


def test_missing_truncated_and_foreign_files(tmp_path, capsys):
    write_cache(tmp_path / "c", settings(), make_data())
    (tmp_path / "c" / "labels.npy").unlink()
    with pytest.raises(SparsesteerError, match=r"labels.npy is missing \(listed in manifest.json\)"):
        ActivationCache.open(tmp_path / "c")
    assert main(["verify", str(tmp_path / "c")]) == 2
    assert "labels.npy is missing" in capsys.readouterr().err

    write_cache(tmp_path / "t", settings(), make_data())
    idx = tmp_path / "t" / "shards" / "index" / "00002.npy"
    idx.write_bytes(idx.read_bytes()[:-4])
    with pytest.raises(SparsesteerError, match=r"index/00002.npy has \d+ bytes but manifest.json says"):
        ActivationCache.open(tmp_path / "t")

    with pytest.raises(SparsesteerError, match=r"is not an activation cache \(no manifest.json\)"):
        ActivationCache.open(tmp_path)
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "is not an activation cache (no manifest.json)" in capsys.readouterr().err

    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "manifest.json").write_text(json.dumps({**m, "format_version": 3}))
    with pytest.raises(SparsesteerError, match="unsupported format_version 3.*upgrade sparsesteer"):
        ActivationCache.open(tmp_path / "v")
    (tmp_path / "v" / "manifest.json").write_text(json.dumps({**m, "format": "saev"}))
    with pytest.raises(SparsesteerError, match="not an activation cache manifest"):
        ActivationCache.open(tmp_path / "v")
    m["settings"]["dtype"] = "float16"
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SparsesteerError, match="do not match settings_sha256"):
        ActivationCache.open(tmp_path / "v")


# -- write_shard validation -----------------------------------------------------------------------


def test_write_shard_rejects_bad_input_naming_hook_row_and_shape(tmp_path):
    acts, image_idx, token_idx, _ = make_data(n_images=2)
    h0, h1 = HOOKS
    with CacheWriter.open(tmp_path / "c", settings("float16", n_images=3)) as w:

        def write(**over):
            a = {**acts, **over.pop("acts", {})}
            w.write_shard(a, over.pop("image_idx", image_idx), over.pop("token_idx", token_idx), **over)

        with pytest.raises(SparsesteerError, match=r"'blocks.2.mlp_out' have shape \[8, 4\]; expected \[rows, 5\]"):
            write(acts={h1: acts[h1][:, :4]})
        with pytest.raises(SparsesteerError, match=r"'blocks.0.resid_post' have 7 rows but image_idx/token_idx have 8"):
            write(acts={h0: acts[h0][:7]})
        with pytest.raises(SparsesteerError, match=r"no activations for hook 'blocks.2.mlp_out'"):
            w.write_shard({h0: acts[h0]}, image_idx, token_idx)
        with pytest.raises(SparsesteerError, match=r"unknown hook 'blocks.9.mlp_out'"):
            write(acts={"blocks.9.mlp_out": acts[h1]})
        with pytest.raises(SparsesteerError, match=r"dtype int64; expected floating point"):
            write(acts={h1: np.ones((8, 5), dtype=np.int64)})
        nan = acts[h1].copy()
        nan[5, 2] = np.nan
        with pytest.raises(SparsesteerError, match=r"'blocks.2.mlp_out' have NaN/Inf at row 5 \(image 1, token 1\)"):
            write(acts={h1: nan})
        big = acts[h0].copy()
        big[6, 0] = 1e6
        with pytest.raises(SparsesteerError, match=r"hook 'blocks.0.resid_post' at row 6 .* overflow float16"):
            write(acts={h0: big})
        with pytest.raises(SparsesteerError, match=r"row 1 \(image 0\) has token 2; expected token 1"):
            write(token_idx=token_idx[[0, 2, 1, 3, 4, 5, 6, 7]])
        with pytest.raises(SparsesteerError, match="not a multiple of tokens_per_image 4"):
            w.write_shard({h: a[:6] for h, a in acts.items()}, image_idx[:6], token_idx[:6])
        with pytest.raises(SparsesteerError, match=r"image 0 .* has no rows and was not recorded with add_skipped"):
            w.write_shard({h: a[4:] for h, a in acts.items()}, image_idx[4:], token_idx[4:])
        with pytest.raises(SparsesteerError, match=r"cover images \[0, 4\) but the cache has 3 images"):
            write(n_images=4)
        assert w.next_shard_index == 0 and not (tmp_path / "c" / "shards").exists()  # nothing written

        write(acts={h1: nan}, check_finite=False)  # stored on request
        with pytest.raises(SparsesteerError, match="already in a committed shard"):
            write()
        with pytest.raises(SparsesteerError, match="cannot finish .* cover 2 of 3 images"):
            w.finish()
    c = ActivationCache.open(tmp_path / "c")
    assert np.isnan(c.rows(h1).read(5, 6)[0, 2])


def test_skipped_images_and_empty_shards(tmp_path):
    acts, image_idx, token_idx, labels = make_data(n_images=4)
    keep = image_idx != 1  # image 1 is unreadable; image 3 too, alone in the last shard
    keep &= image_idx != 3
    with CacheWriter.open(tmp_path / "c", settings(n_images=4)) as w:
        with pytest.raises(SparsesteerError, match=r"add_skipped: image 9 is outside"):
            w.add_skipped(9, "x.jpg", "bad")
        w.add_skipped(1, "b.jpg", "cannot identify image file")
        w.add_skipped(3, "d.jpg", "truncated")
        w.write_shard({h: a[keep] for h, a in acts.items()}, image_idx[keep], token_idx[keep])
        assert w.next_image == 3 and [s["image"] for s in w.manifest["skipped"]] == [1]  # 3 is still pending
        empty = {h: np.zeros((0, D[h])) for h in HOOKS}
        w.write_shard(empty, np.zeros(0, int), np.zeros(0, int), n_images=1)
        w.finish(labels)
    c = ActivationCache.open(tmp_path / "c", verify="all")
    assert [s["image"] for s in c.skipped] == [1, 3] and c.n_rows == 8 and c.images_done == 4
    view = c.rows(HOOKS[0], "patch")
    assert view.n_rows == 6
    np.testing.assert_array_equal(view.labels(0, 6), labels[[0, 0, 0, 2, 2, 2]])
    np.testing.assert_array_equal(view.read(0, 6).numpy(), acts[HOOKS[0]][keep & (token_idx != 0)].astype(np.float32))


def test_finish_validates_labels(tmp_path):
    acts, image_idx, token_idx, _ = make_data(n_images=2)
    with CacheWriter.open(tmp_path / "c", settings(n_images=2)) as w:
        w.write_shard(acts, image_idx, token_idx)
        with pytest.raises(SparsesteerError, match=r"labels has shape \(3,\); expected \[2\]"):
            w.finish([1, 2, 3])
        with pytest.raises(SparsesteerError, match="labels must be integers"):
            w.finish([1.5, 2.0])
        with pytest.raises(SparsesteerError, match="label -2 at image 1"):
            w.finish([0, -2])
        w.finish(np.array([4, -1], dtype=np.int32))
    assert ActivationCache.open(tmp_path / "c").labels.tolist() == [4, -1]


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(tokens="cls", token_positions=(0, 1)), "tokens='cls' keeps only cls_position 0"),
        (dict(tokens="patch"), "tokens='patch' cannot keep the CLS token 0"),
        (dict(tokens="pach"), "did you mean 'patch'"),
        (dict(tokens=(1, 2)), "must equal token_positions"),
        (dict(d={"blocks.0.resid_post": 8}), "field d: needs exactly one width per hook"),
        (dict(hooks=("index",), d={"index": 3}), "cannot be a hook name"),
        (dict(dtype="float64"), "unknown cache dtype 'float64'"),
        (dict(token_positions=(0, 0, 1)), "needs distinct token indices"),
        (dict(tokens_per_image=3), "tokens_per_image: 3 != len"),
    ],
)
def test_settings_validation(over, message):
    with pytest.raises(SparsesteerError, match=message):
        settings(**over)


def test_settings_hash_is_canonical_and_round_trips():
    s = settings()
    again = CacheSettings.from_json(json.loads(json.dumps(s.to_json())))
    assert again == s and again.sha256 == s.sha256 and s.tokens_per_image == 4
    assert settings(preprocessing={"b": 1, "a": 2}).sha256 == settings(preprocessing={"a": 2, "b": 1}).sha256
    assert settings(split="train").sha256 != s.sha256
    with pytest.raises(SparsesteerError, match="unknown config key 'n_image'"):
        CacheSettings.from_json({**s.to_json(), "n_image": 3})


def test_views_pickle_without_copying_the_data(tmp_path):
    write_cache(tmp_path / "c", settings(), make_data())
    view = ActivationCache.open(tmp_path / "c").rows(HOOKS[0], "patch")
    expected = view.read(0, view.n_rows)
    blob = pickle.dumps(view)
    assert len(blob) < 8000  # memmaps are dropped, not serialised
    assert torch.equal(pickle.loads(blob).read(0, view.n_rows), expected)


def test_numpy_only_recipe_in_docs_reads_a_bfloat16_cache(tmp_path):
    """docs/formats.md shows how to read a cache without sparsesteer; run that code."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    section = text.split("## Activation cache", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    data = make_data()
    write_cache(tmp_path / "c", settings("bfloat16"), data)
    ns: dict = {}
    exec(code.replace('"DIR"', repr(str(tmp_path / "c"))), ns)
    c = ActivationCache.open(tmp_path / "c")
    np.testing.assert_array_equal(ns["acts"], c.rows(HOOKS[0]).read(0, c.n_rows).float().numpy())
    np.testing.assert_array_equal(ns["cls_rows"], c.rows(HOOKS[0], "cls").read(0, N_IMAGES).float().numpy())
    np.testing.assert_array_equal(ns["row_labels"], c.rows(HOOKS[0]).labels(0, c.n_rows))
