"""torchrun data parallelism on CPU (gloo): 2 real processes against 1, training and caching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(SPARSESTEER_QUIET="1", OMP_NUM_THREADS="1")
    return env


def run(args: list[str], ranks: int = 1) -> subprocess.CompletedProcess:
    """`sparsesteer ARGS` in one process, or under torchrun with `ranks` processes (gloo, standalone)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    cmd = [sys.executable, *launcher, "-m", "sparsesteer", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


TRAIN = [
    "train",
    "--arch", "topk,relu",
    "--k", "2",
    "--l1-coeff", "0.01",
    "--n-latents", "128",
    "--dead-after", "256",
    "--steps", "24",
    "--batch-size", "64",
    "--log-every", "4",
    "--checkpoint-every", "8",
    "--init-samples", "512",
    "--device", "cpu",
    "--no-bf16",  # equality to float tolerance is a float32 property (bf16 rounds per matmul blocking)
    "--keep-state",  # the finished runs' optimiser moments and counters are compared
]  # fmt: skip


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 12)) * rng.uniform(0.5, 2.0, 12) + 1.0
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, x.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def reference(acts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    run([*TRAIN, "--activations", str(acts), "--out", str(out)])
    return out


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    (latest,) = [p for p in (run_dir / "state").iterdir() if p.name[0].isdigit()]
    return load_file(latest / "state.safetensors")


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same weights, optimiser moments and dead-latent counters; same logged metrics."""
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        if key.startswith("rng."):
            continue
        if sa[key].dtype.is_floating_point:
            torch.testing.assert_close(sb[key], sa[key], rtol=1e-4, atol=1e-6, msg=key)
        else:
            assert torch.equal(sa[key], sb[key]), key  # since_fired, fire_count, Adam step
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        for name in ("topk-k2-n128", "relu-l10.01-n128"):
            for metric, value in ra[name].items():
                assert rb[name][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), (ra["step"], name, metric)


def test_two_ranks_match_one_process_with_the_same_global_batch(acts, reference, tmp_path):
    out = tmp_path / "ddp"
    done = run([*TRAIN, "--activations", str(acts), "--out", str(out)], ranks=2)
    _assert_same_run(reference, out)
    # latents do die and AuxK counters matter: the reduced counters reproduce them
    assert _log(reference)[-1]["topk-k2-n128"]["dead_frac"] > 0
    # only rank 0 wrote: one log line per logged step, one summary line, the same files
    assert len(_log(out)) == len(_log(reference))
    assert all(r.get("ranks") == 2 for r in _log(out))
    assert done.stdout.count("fvu=") == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for name in ("topk-k2-n128", "relu-l10.01-n128"):
        ref, got = load_file(reference / name / "sae.safetensors"), load_file(out / name / "sae.safetensors")
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-6)


def test_two_ranks_stopped_then_resumed_on_one_rank_end_where_an_uninterrupted_run_does(acts, reference, tmp_path):
    out = tmp_path / "resumed"
    first = run([*TRAIN, "--activations", str(acts), "--out", str(out), "--stop-at", "12"], ranks=2)
    assert "stopped at step 12 of 24" in first.stdout
    assert not (out / "topk-k2-n128" / "sae.safetensors").exists()
    run([*TRAIN, "--activations", str(acts), "--out", str(out), "--resume"])  # one rank, data position global
    _assert_same_run(reference, out)


def test_data_parallel_refuses_what_it_cannot_reproduce(acts, tmp_path):
    args = [*TRAIN, "--activations", str(acts), "--out", str(tmp_path / "x"), "--batch-size", "63"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "sparsesteer"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode != 0
    assert "must split evenly over the 2 ranks" in done.stderr


def _cache_args(clip: Path, data: Path, out: Path) -> list[str]:
    return [
        "cache", "--model", str(clip), "--dataset", f"folder:{data}", "--split", "train",
        "--hook", "blocks.1.resid_post", "--hook", "blocks.0.mlp_out", "--tokens", "all",
        "--shard-images", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--on-bad-image", "skip", "--out", str(out),
    ]  # fmt: skip


def test_two_rank_cache_equals_a_one_process_cache(tiny_clip_dir, tmp_path):
    from helpers import make_folder_dataset

    data = make_folder_dataset(tmp_path / "imgs", (4, 3, 4), corrupt=[(1, 1)])  # 11 images: 6 shards, one skipped
    one, two = tmp_path / "one", tmp_path / "two"
    run(_cache_args(tiny_clip_dir, data, one))
    done = run(_cache_args(tiny_clip_dir, data, two), ranks=2)
    assert done.stdout.count("11 images") == 1  # rank 0 alone reports
    m1, m2 = (json.loads((p / "manifest.json").read_text()) for p in (one, two))
    for key in ("settings", "settings_sha256", "shards", "skipped", "labels", "completed"):
        assert m2[key] == m1[key], key  # records hold every file's sha256: same bytes
    assert len(m1["shards"]) == 6 and len(m1["skipped"]) == 1 and m1["completed"]
    names = lambda p: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())  # noqa: E731
    assert names(two) == names(one)  # no part records or other leftovers
    verified = subprocess.run(
        [sys.executable, "-m", "sparsesteer", "verify", str(two)], capture_output=True, text=True, env=_env()
    )
    assert verified.returncode == 0 and "OK" in verified.stdout


def test_two_ranks_training_from_the_model_match_one_process(tiny_clip_dir, tmp_path):
    from helpers import make_folder_dataset

    data = make_folder_dataset(tmp_path / "imgs", (4, 4, 4))
    args = [
        "train", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--hook", "blocks.0.resid_post",
        "--hook", "blocks.1.resid_post", "--tokens", "cls", "--k", "4", "--n-latents", "64", "--steps", "12",
        "--batch-size", "8", "--image-batch-size", "4", "--workers", "0", "--device", "cpu", "--log-every", "4",
        "--init-samples", "12",
    ]  # fmt: skip
    run([*args, "--out", str(tmp_path / "one")])
    run([*args, "--out", str(tmp_path / "two")], ranks=2)
    for hook in ("blocks.0.resid_post", "blocks.1.resid_post"):
        want = load_file(tmp_path / "one" / hook / "sae.safetensors")
        got = load_file(tmp_path / "two" / hook / "sae.safetensors")
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6)
