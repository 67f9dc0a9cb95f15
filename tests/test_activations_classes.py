"""Cache format version 2: class names stored in the manifest; version-1 caches still read;
`RowView.read_all` and the provenance in `RowView.describe`."""

import hashlib
import json

import numpy as np
import pytest
import torch
from test_activations_cache import make_data, settings, write_cache

from sparsesteer.activations.cache import FORMAT_VERSION, ActivationCache, CacheSettings
from sparsesteer.activations.cache.settings import canonical_json
from sparsesteer.utils.errors import SparsesteerError

CLASSES = tuple(f"class {i}" for i in range(10))


def test_class_names_round_trip_and_version(tmp_path):
    write_cache(tmp_path / "c", settings(classes=CLASSES), make_data())
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert FORMAT_VERSION == 2 and m["format_version"] == 2 and m["settings"]["classes"] == list(CLASSES)
    cache = ActivationCache.open(tmp_path / "c")
    assert cache.classes == list(CLASSES)
    view = cache.rows("blocks.0.resid_post", "cls")
    d = view.describe()
    assert d["classes"] == list(CLASSES) and d["split"] == "test" and d["dataset"] == "unit"
    assert d["model"] == {"id": "tiny", "revision": None, "arch": "clip"} and d["hook"] == "blocks.0.resid_post"


def test_version_1_cache_without_class_names_still_reads(tmp_path):
    write_cache(tmp_path / "c", settings(), make_data())
    mpath = tmp_path / "c" / "manifest.json"
    m = json.loads(mpath.read_text())
    assert "classes" not in m["settings"]  # no key when None: a version-1 manifest hashes the same
    m["format_version"] = 1
    assert m["settings_sha256"] == hashlib.sha256(canonical_json(m["settings"])).hexdigest()
    mpath.write_text(json.dumps(m))
    cache = ActivationCache.open(tmp_path / "c", verify="all")
    assert cache.classes is None and cache.rows("blocks.0.resid_post").describe()["classes"] is None


def test_bad_class_names_are_refused():
    with pytest.raises(SparsesteerError, match="field classes"):
        settings(classes="cat")
    with pytest.raises(SparsesteerError, match="field classes"):
        settings(classes=["cat", 3])
    assert isinstance(settings(classes=["a"]), CacheSettings)


def test_read_all_equals_read_and_labels(tmp_path):
    data = make_data()
    write_cache(tmp_path / "c", settings(), data)
    view = ActivationCache.open(tmp_path / "c").rows("blocks.2.mlp_out", "patch")
    rows = view.read_all()
    assert rows.x.dtype == torch.float32 and rows.x.shape == (view.n_rows, 5)
    assert torch.equal(rows.x, view.read(0, view.n_rows).float())
    np.testing.assert_array_equal(rows.labels, np.repeat(data[3], 3))  # 3 patches per image
    assert view.read_all(torch.float64).x.dtype == torch.float64
