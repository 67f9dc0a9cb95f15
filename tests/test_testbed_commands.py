"""`--model testbed` through every command of the README's offline path, on the shipped model and
the shipped cifar10-sample: nothing downloaded, every output records the testbed as its model."""

from __future__ import annotations

import json

import pytest

from sparsesteer.cli import main
from sparsesteer.models import testbed as tb_model

pytestmark = pytest.mark.skipif(not (tb_model.shipped_dir() / "card.json").is_file(), reason="no shipped testbed")


def test_the_offline_path_runs_on_the_shipped_testbed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSESTEER_DATA", str(tmp_path / "no-data-here"))  # nothing to download or find
    acts, sae, streamed = tmp_path / "acts", tmp_path / "sae", tmp_path / "sae-streamed"
    run = ["--workers", "0", "--device", "cpu"]
    assert main(["cache", "--model", "testbed", "--dataset", "cifar10-sample", "--split", "train", "--limit", "100",
                 "--hook", "blocks.3.resid_post", "--tokens", "all", "--out", str(acts), *run]) == 0  # fmt: skip
    manifest = json.loads((acts / "manifest.json").read_text())
    assert "testbed" in json.dumps(manifest)
    assert main(["train", "--activations", str(acts), "--arch", "topk", "--k", "8", "--expansion", "2",
                 "--steps", "30", "--out", str(sae)]) == 0  # fmt: skip
    assert main(["train", "--model", "testbed", "--dataset", "cifar10-sample", "--split", "train", "--limit", "60",
                 "--hook", "blocks.3.resid_post", "--tokens", "all", "--arch", "topk", "--k", "8", "--expansion", "2",
                 "--steps", "10", "--out", str(streamed), *run]) == 0  # fmt: skip
    for trained in (sae, streamed):
        assert '"testbed"' in next(trained.rglob("cfg.json")).read_text()  # the SAE's provenance names the model
    assert main(["evaluate", "--sae", str(sae), "--activations", str(acts), "--out", str(tmp_path / "eval")]) == 0
    assert main(["interpret", "--sae", str(sae), "--activations", str(acts), "--labels", "classes",
                 "--out", str(tmp_path / "stats")]) == 0  # fmt: skip
    assert main(["browse", "--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "index.html").is_file()
    steer = tmp_path / "steer"
    assert main(["steer", "features", "--model", "testbed", "--sae", str(sae), "--latent", "0", "--strength", "5",
                 "--mode", "set", "--dataset", "cifar10-sample", "--limit", "20", "--out", str(steer), *run]) == 0  # fmt: skip
    assert "testbed" in json.dumps([json.loads(p.read_text()) for p in steer.glob("*.json")])
