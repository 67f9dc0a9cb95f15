"""benchmarks/gpu_check.sh cannot rot while no GPU runs it: its dry run (CPU, tiny sizes) runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_figure(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    fig = json.loads((tmp_path / "figures.json").read_text())
    assert fig["dry_run"] and set(fig["matmul_flops"]) == {"fp32", "tf32", "bf16"}
    assert {(r["n_latents"], r["precision"].split()[0]) for r in fig["sae_training"]} == {
        (n, p) for n in fig["sizes"]["latents"] for p in ("fp32", "tf32", "bf16")
    }
    assert all(r["rows_per_s"] > 0 and r["floor_rows_per_s"] > 0 for r in fig["sae_training"])
    assert [r["precision"] for r in fig["caching"]][0] == "fp32" and fig["caching"][0]["images_per_s"] > 0
    assert fig["sparse_vs_dense"]["max_abs_recon_difference"] < 1e-4  # the sparse step reconstructs as dense does
    assert "DRY RUN" in (tmp_path / "figures.md").read_text()
    assert (
        "needs a CUDA GPU" in (tmp_path / "cuda_tests.txt").read_text()
        or "passed" in (tmp_path / "cuda_tests.txt").read_text()
    )
