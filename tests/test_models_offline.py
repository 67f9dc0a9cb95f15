"""Offline: a hub id with no network fails fast with one message, or uses the local cache once."""

import os
import subprocess
import sys
import time

from sparsesteer.models.tiny import make_tiny_clip


def run_cli(args, hf_home, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9", SPARSESTEER_QUIET="1")  # port 9: refused
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(v, None)
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "sparsesteer", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    return out, time.monotonic() - t0


def folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "d" / "test" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "d" / "test" / c / "0.png")
    return f"folder:{tmp_path / 'd'}"


def test_unreachable_hub_and_empty_cache_fail_fast_once(tmp_path):
    out, seconds = run_cli(
        ["zeroshot", "--model", "someorg/some-clip", "--dataset", folder(tmp_path), "--split", "test"],
        tmp_path / "hf",
        tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.count("cannot be reached") == 1 and "--model DIR" in out.stderr
    assert "Retrying" not in out.stderr and "Traceback" not in out.stderr
    assert seconds < 25  # no 30 s of retries (the probe is one refused connection)


def test_unreachable_hub_uses_the_local_cache(tmp_path):
    # a hub cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    make_tiny_clip(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    out, _ = run_cli(
        [
            "zeroshot",
            "--model",
            "someorg/tiny-clip",
            "--dataset",
            folder(tmp_path),
            "--split",
            "test",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "zs"),
        ],
        tmp_path / "hf",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("cannot be reached: using the local cache of someorg/tiny-clip") == 1
    assert (tmp_path / "zs" / "zeroshot.json").is_file()
