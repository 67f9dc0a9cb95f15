"""A full disk mid-write: `OSError(ENOSPC)` injected halfway through a cache shard, a training
checkpoint and a statistics file. Each run ends with one line (`sparsesteer CMD: error: No space
left on device: FILE`, exit 1), leaves no file that looks complete (no half file under a final name,
the manifest lists only whole shards, no checkpoint directory without its state.json), and the next
run (train: --resume) finishes with exactly the outputs of a run that never failed."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
from faults import _class_folders, differences, snapshot
from helpers import make_activation_cache

from sparsesteer.cli import main

HOOK = "blocks.2.resid_post"


class DiskFull:
    """Wraps a writer function: its `fail_on`-th call writes half its bytes, then raises ENOSPC."""

    def __init__(self, real, fail_on: int, path_arg: int | None = None):
        self.real, self.fail_on, self.calls, self.path_arg = real, fail_on, 0, path_arg

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls != self.fail_on:
            return self.real(*args, **kwargs)
        self.real(*args, **kwargs)  # the whole file, then cut to half: what a full disk leaves
        target = args[self.path_arg] if self.path_arg is not None else None
        if target is not None:
            from pathlib import Path

            p = Path(getattr(target, "name", target))
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"sparsesteer {command}: error: No space left on device: "), lines[0]
    return lines[0]


def leftovers(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


def test_disk_full_mid_shard_then_rerun(tmp_path, capsys, monkeypatch, tiny_clip_dir):
    import sparsesteer.utils.io as io_mod
    from sparsesteer.activations.cache import ActivationCache

    data = _class_folders(tmp_path / "data", {"train": 3})
    argv = ["-q", "cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train",
            "--hook", "blocks.1.resid_post", "--tokens", "all", "--shard-images", "2", "--workers", "0"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    full = DiskFull(np.save, fail_on=7, path_arg=0)  # shard 3's second file (2 hooks' files + index per shard)
    monkeypatch.setattr(io_mod.np, "save", full)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys, "cache")
    assert str(tmp_path / "run" / "shards") in line and line.endswith(".npy"), line
    assert leftovers(tmp_path / "run") == []
    partial = ActivationCache.open(tmp_path / "run", verify="all")  # every listed file whole and checksummed
    assert not partial.completed and 0 < partial.n_shards < 6
    monkeypatch.setattr(io_mod.np, "save", full.real)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    ref, run = snapshot(tmp_path / "ref"), snapshot(tmp_path / "run")
    assert not differences(ref, run)


def test_disk_full_mid_checkpoint_then_resume(tmp_path, capsys, monkeypatch):
    import sparsesteer.sae.train as train_mod

    make_activation_cache(tmp_path / "acts", n_images=200, positions=(0, 1), d=16, hooks=(HOOK,))
    argv = ["-q", "train", "--activations", str(tmp_path / "acts"), "--k", "4", "--n-latents", "32",
            "--batch-size", "32", "--steps", "40", "--checkpoint-every", "10", "--log-every", "10"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    full = DiskFull(train_mod.save_file, fail_on=2, path_arg=1)  # the checkpoint at step 20
    monkeypatch.setattr(train_mod, "save_file", full)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (  # the file being written when it filled
        f"sparsesteer train: error: No space left on device: {tmp_path / 'run' / 'state' / '.000000020.tmp'}"
        "/state.safetensors"
    ), err
    state = tmp_path / "run" / "state"
    complete = [p.name for p in state.iterdir() if p.name[0].isdigit()]
    assert complete == ["000000010"] and (state / "000000010" / "state.json").is_file()
    assert not (tmp_path / "run" / "sae.safetensors").exists() and not (tmp_path / "run" / "cfg.json").exists()
    monkeypatch.setattr(train_mod, "save_file", full.real)
    assert main([*argv, "--out", str(tmp_path / "run"), "--resume"]) == 0
    ref, run = snapshot(tmp_path / "ref"), snapshot(tmp_path / "run")
    assert not differences(ref, run)


def test_disk_full_writing_statistics_then_rerun(tmp_path, capsys, monkeypatch):
    import safetensors.numpy

    from sparsesteer.interpret.store import load_stats
    from sparsesteer.sae import SAEConfig, build
    from sparsesteer.utils.errors import SparsesteerError

    make_activation_cache(tmp_path / "acts", n_images=100, positions=(0, 1), d=16, hooks=(HOOK,))
    build(SAEConfig(arch="topk", d_in=16, n_latents=32, k=4)).save(tmp_path / "sae", hook=HOOK, tokens="all")
    argv = ["-q", "interpret", "--sae", str(tmp_path / "sae"), "--activations", str(tmp_path / "acts"),
            "--top-n", "2", "--device", "cpu"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    full = DiskFull(safetensors.numpy.save_file, fail_on=1, path_arg=1)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys, "interpret")
    assert line.endswith("stats.safetensors"), line
    assert leftovers(tmp_path / "run") == [] and not (tmp_path / "run" / "stats.safetensors").exists()
    with pytest.raises(SparsesteerError, match="no stats.json"):
        load_stats(tmp_path / "run")
    monkeypatch.setattr(safetensors.numpy, "save_file", full.real)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert not differences(snapshot(tmp_path / "ref"), snapshot(tmp_path / "run"))
    shutil.rmtree(tmp_path / "run")


def test_remove_stale_temps_takes_only_atomic_leftovers(tmp_path):
    """What a process killed inside `atomic_path` leaves (`.NAME.XXXXXXXX.tmp`) is removed by the
    next run; other files, even ones ending in .tmp, stay."""
    import subprocess
    import sys

    from faults import env

    from sparsesteer.utils import io

    (tmp_path / "plots").mkdir()
    keep = [tmp_path / "results.json", tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "plots" / "a.png"]
    for p in keep:
        p.write_text("x")
    code = (
        "import os, sys\nfrom sparsesteer.utils import io\n"
        "with io.atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os._exit(9)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "plots" / "b.png")], env=env())
    assert p.returncode == 9
    left = [q for q in (tmp_path / "plots").iterdir() if q.name.startswith(".b.png.")]
    assert len(left) == 1 and not (tmp_path / "plots" / "b.png").exists()
    assert io.remove_stale_temps(tmp_path) == left
    assert all(p.exists() for p in keep) and not left[0].exists()
