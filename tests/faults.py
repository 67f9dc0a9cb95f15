"""Fault injection for whole commands: a workspace of tiny inputs, each command's arguments, a real
subprocess killed with SIGKILL at a seeded point, and a comparison of output directories that
ignores only what must differ between two runs (wall-clock times, the run's own path).

Imported by tests/test_faults_kill.py and tests/test_determinism.py (pytest puts this folder on
sys.path). Everything here is tiny: one workspace takes a few seconds to build.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.2.resid_post"
CLASSES = ["cat", "dog", "bird", "fish"]

# keys of JSON objects that hold a wall-clock reading or a duration: they differ between any two runs
VOLATILE_KEYS = {
    "finished",
    "started",
    "created",
    "updated",
    "elapsed",
    "elapsed_s",
    "seconds",
    "wall_s",
    "time",
    "duration_s",
    "date",
}


def env() -> dict[str, str]:
    """The environment of every subprocess: this checkout first on the path, offline, quiet."""
    e = {**os.environ, "SPARSESTEER_QUIET": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return e


# ------------------------------------------------------------------------------------------ inputs
def _class_folders(root: Path, splits: dict[str, int], classes=CLASSES, seed=0) -> Path:
    from helpers import make_class_images

    return make_class_images(root, splits, classes, seed=seed)


def build_workspace(ws: Path, clip: Path) -> Path:
    """Every input the commands below read, under `ws` (clip: the tiny CLIP of conftest)."""
    import torch
    from helpers import make_activation_cache, make_celeba

    from sparsesteer.models.tiny import make_tiny_dinov2
    from sparsesteer.sae import SAEConfig, build

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "clip").symlink_to(clip)
    make_tiny_dinov2(ws / "dino")
    _class_folders(ws / "data", {"train": 8, "test": 4})
    _class_folders(ws / "typo", {"train": 5, "test": 3}, classes=["a", "b", "c"], seed=1)
    make_celeba(ws / "celeba-root")
    make_activation_cache(ws / "acts", n_images=400, positions=(0, 1), d=32, hooks=(HOOK,))
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6)).eval()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    sae.save(ws / "sae", hook=HOOK, tokens="all")
    (ws / "words.txt").write_text("cat\ndog\nbird\nred car\ntree\n")
    return ws


def _cache(ws: Path, out: Path) -> list[str]:
    return ["cache", "--model", str(ws / "clip"), "--dataset", f"folder:{ws / 'data'}", "--split", "train",
            "--hook", "blocks.1.resid_post", "--hook", HOOK, "--tokens", "all", "--shard-images", "2",
            "--batch-size", "2", "--workers", "0", "--out", str(out)]  # fmt: skip


def _train(ws: Path, out: Path) -> list[str]:
    return ["train", "--activations", str(ws / "acts"), "--k", "4", "--n-latents", "64", "--batch-size", "32",
            "--steps", "120", "--checkpoint-every", "10", "--log-every", "10", "--out", str(out)]  # fmt: skip


def _interpret(ws: Path, out: Path) -> list[str]:
    return ["interpret", "--sae", str(ws / "sae"), "--activations", str(ws / "acts"), "--top-n", "3",
            "--batch-size", "64", "--neighbours", "4", "--device", "cpu", "--out", str(out)]  # fmt: skip


def _vs2(ws: Path, out: Path) -> list[str]:
    return ["reproduce", "vs2", "--model", str(ws / "clip"), "--dataset", f"folder:{ws / 'data'}", "--retriever",
            str(ws / "dino"), "--sae-k", "4", "--sae-expansion", "2", "--sae-epochs", "2", "--sae-batch-size", "32",
            "--workers", "0", "--neighbours", "3", "--val-fraction", "0.25", "--batch-size", "16", "--lams", "0,1",
            "--gammas", "1,2", "--clip-lams", "0,0.5", "--alphas", "1", "--multi-layer", "2",
            "--out", str(out)]  # fmt: skip


def _sparsity(ws: Path, out: Path) -> list[str]:
    return ["reproduce", "sparsity", "--model", str(ws / "clip"), "--dataset", f"folder:{ws / 'data'}",
            "--blocks", "1-2", "--k", "4", "--expansion", "2", "--sae-steps", "10", "--sae-batch-size", "64",
            "--workers", "0", "--batch-size", "8", "--out", str(out)]  # fmt: skip


def _steerability(ws: Path, out: Path) -> list[str]:
    return ["reproduce", "steerability", "--model", str(ws / "clip"), "--sae", str(ws / "sae"),
            "--dataset", f"folder:{ws / 'data'}", "--split", "test", "--vocab", str(ws / "words.txt"),
            "--latent-fraction", "0.125", "--neuron-fraction", "0.25", "--n-images", "6", "--batch-size", "4",
            "--workers", "0", "--out", str(out)]  # fmt: skip


SUPPRESSION = ["--blocks", "1-2", "--ns", "1,2", "--k", "4", "--expansion", "2", "--sae-steps", "5",
               "--sae-batch-size", "64", "--workers", "0", "--batch-size", "8", "--device", "cpu"]  # fmt: skip


def _disentangle(ws: Path, out: Path) -> list[str]:
    return ["reproduce", "disentangle", "--task", "celeba", "--model", str(ws / "clip"),
            "--data-root", str(ws / "celeba-root"), "--n-test", "8", *SUPPRESSION, "--out", str(out)]  # fmt: skip


def _typographic(ws: Path, out: Path) -> list[str]:
    return ["reproduce", "typographic", "--model", str(ws / "clip"), "--dataset", f"typo:folder:{ws / 'typo'}",
            *SUPPRESSION, "--out", str(out)]  # fmt: skip


@dataclass(frozen=True)
class Command:
    argv: Callable[[Path, Path], list[str]]
    """(workspace, out) -> arguments after `sparsesteer -q`."""
    resume: tuple[str, ...] = ()
    """Extra arguments of the rerun after a kill (train: --resume)."""


COMMANDS: dict[str, Command] = {
    "cache": Command(_cache),
    "train": Command(_train, resume=("--resume",)),
    "interpret": Command(_interpret),
    "vs2": Command(_vs2),
    "sparsity": Command(_sparsity),
    "steerability": Command(_steerability),
    "disentangle": Command(_disentangle),
    "typographic": Command(_typographic),
}


# ------------------------------------------------------------------------------------------ running
def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """`sparsesteer -q ARGV` in a subprocess."""
    p = subprocess.run([sys.executable, "-m", "sparsesteer", "-q", *argv], env=env(), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"sparsesteer {' '.join(argv)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


def count_entries(out: Path) -> int:
    """Files and folders under `out` (temporary files included): how far a run has got."""
    n = 0
    for _, dirs, files in os.walk(out):
        n += len(dirs) + len(files)
    return n


def run_killed(argv: list[str], out: Path, *, after: int, extra_s: float, timeout: float = 300) -> bool:
    """Start `sparsesteer -q ARGV`, SIGKILL it `extra_s` seconds after `out` first holds `after`
    entries; True when the kill landed (False when the run finished first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsesteer", "-q", *argv], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and count_entries(out) >= after:
                time.sleep(extra_s)
                break
            time.sleep(0.003)
        if proc.poll() is not None:
            err = proc.stderr.read().decode()
            assert proc.returncode == 0, f"the run to be killed failed by itself ({proc.returncode}):\n{err[-3000:]}"
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def kill_and_resume(name: str, ws: Path, out: Path, seed: int, n_entries: int) -> list[str]:
    """Kill `name` at a point chosen from `seed` (the k-th of the reference run's `n_entries` file
    system entries, plus 0-50 ms), rerun it, and return a log of what happened. If the run finished
    before the kill point, the point is halved (at most 4 times), so the kill lands mid-run."""
    rng = random.Random(f"{name}-{seed}")
    after = rng.randint(1, max(1, n_entries - 1))
    extra = rng.uniform(0, 0.05)
    cmd = COMMANDS[name]
    log = []
    for _ in range(5):
        landed = run_killed(cmd.argv(ws, out), out, after=after, extra_s=extra)
        log.append(
            f"kill after {after} entries + {extra * 1000:.0f} ms: {'landed' if landed else 'run finished first'}"
        )
        if landed:
            break
        import shutil

        shutil.rmtree(out)
        after, extra = max(1, after // 2), extra / 2
    else:
        raise AssertionError(f"{name}: the kill never landed mid-run: {log}")
    rerun = [*cmd.argv(ws, out), *cmd.resume]
    p = run(rerun, check=False)
    if p.returncode != 0 and cmd.resume and "holds no training run to resume" in p.stderr:
        # killed before the first checkpoint: nothing to resume, so the run starts again
        log.append("no checkpoint yet: rerun with --overwrite")
        p = run([*cmd.argv(ws, out), "--overwrite"], check=False)
    assert p.returncode == 0, f"rerun after the kill failed ({p.returncode}): {log}\n{p.stderr[-3000:]}"
    return log


# ------------------------------------------------------------------------------------------ comparing
def _normalise_json(obj, out: str):
    if isinstance(obj, dict):
        return {k: _normalise_json(v, out) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_normalise_json(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<OUT>")
    return obj


def _digest(path: Path, out: Path):
    """What of a file must be the same in two runs: arrays for .npy/.safetensors, normalised JSON,
    text with the run directory replaced, decoded pixels for images, else the bytes."""
    suffix = path.suffix
    if suffix == ".npy":
        a = np.load(path, allow_pickle=False)
        return ("npy", a.dtype.str, a.shape, a.tobytes())
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return ("safetensors", {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(t.items())})
    if suffix == ".json":
        return ("json", _normalise_json(json.loads(path.read_text()), str(out)))
    if suffix == ".jsonl":
        return ("jsonl", [_normalise_json(json.loads(l), str(out)) for l in path.read_text().splitlines()])
    if suffix in (".md", ".txt", ".csv", ".log", ".toml"):
        return ("text", path.read_text().replace(str(out), "<OUT>"))
    if suffix in (".png", ".jpg"):
        return ("pixels", np.asarray(Image.open(path)).tobytes())
    return ("bytes", path.read_bytes())


def snapshot(out: Path) -> dict[str, object]:
    """relative path -> _digest for every file under `out` (temporary files included: a leftover
    `.NAME.tmp` is a difference too)."""
    return {str(p.relative_to(out)): _digest(p, out) for p in sorted(out.rglob("*")) if p.is_file()}


def differences(a: dict[str, object], b: dict[str, object]) -> list[str]:
    """The files that differ between two snapshots, named (empty when the runs agree)."""
    diffs = [f"only in the first: {k}" for k in sorted(a.keys() - b.keys())]
    diffs += [f"only in the second: {k}" for k in sorted(b.keys() - a.keys())]
    diffs += [f"differs: {k}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return diffs
