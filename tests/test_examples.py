"""Every script in examples/ runs end to end, as a user would run it (a subprocess, `python
examples/NAME.py`), with SPARSESTEER_EXAMPLE_TINY=1: the same code path on a tiny random CLIP and
generated images (examples/_tiny.py). Each run must exit 0 and print what the example promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# example -> lines its output must contain (regular expressions)
EXPECT = {
    "python_tour": [r"^zero-shot: \[", r"^VS2: +\[", r"^embedding moved by \d"],
    "train_and_judge": [r"trained 128 latents on blocks\.1\.resid_post in 300 steps", r"\| reconstruction \| fvu \|"],
    "vs2_on_dataset": [r"^\| CLIP zero-shot \| \d+\.\d\d \|", r"^\| VS2 \| \d+\.\d\d \| lam=[\d.]+, gamma=[\d.]+ \|"],
    "steer_feature": [r"^predictions changed: \d+ of 60$", r"^  predicted 'cat': \d+ before, \d+ after$"],
    "suppress_attribute": [r"^latents most tied to the background: \[", r"\(top 16 latents zeroed\): average [\d.]+%"],
    "build_feature_browser": [
        r"blocks\.1\.resid_post: statistics in runs/browser-stats$",
        r"^feature browser of 128 latents over 60 images \(\d+ index pages\):$",
        r"^  open /.*/runs/browser/index\.html$",
    ],
    "load_published_sae": [
        r"^hf:sparsesteer-examples/tiny-clip-saes/blocks\.1\.hook_resid_post: topk, 128 latents on d_in 32, hook "
        r"blocks\.1\.resid_post$",
        r"read from sparsesteer-examples/tiny-clip-saes / blocks\.1\.hook_resid_post at commit 0{40} \(saelens",
        r"FVU \d+\.\d+, mean L0 8\.0$",
    ],
}

# example -> files (under its working directory) it must have written
WRITES = {
    "build_feature_browser": ["runs/browser/index.html", "runs/browser/latent.html", "runs/browser-stats/stats.json"]
}


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_every_example_is_checked():
    assert example_names() == sorted(EXPECT), "add the new example's expected output to EXPECT"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory for all examples: the tiny model and data are written once."""
    return tmp_path_factory.mktemp("examples")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name, workdir):
    env = {**os.environ, "SPARSESTEER_EXAMPLE_TINY": "1", "SPARSESTEER_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, f"examples/{name}.py failed:\n{out.stdout}\n{out.stderr}"
    for pattern in EXPECT[name]:
        assert re.search(pattern, out.stdout, re.M), (
            f"examples/{name}.py: no line matching {pattern!r} in\n{out.stdout}"
        )
    assert "Traceback" not in out.stderr
    for path in WRITES.get(name, []):
        assert (workdir / path).is_file(), f"examples/{name}.py did not write {path}"
