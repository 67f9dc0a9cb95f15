"""`hf:` datasets from tiny local Hugging Face datasets (save_to_disk and a parquet folder); no network."""

from __future__ import annotations

import builtins
import pickle

import numpy as np
import pytest
from PIL import Image

from sparsesteer.data import UnreadableImage, available_splits, open_dataset
from sparsesteer.utils.errors import SparsesteerError

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

NAMES = ["aquarium_fish", "maple_tree", "worm"]


def _image(k: int) -> Image.Image:
    return Image.new("RGB", (6 + k, 5), (k * 40, 255 - k * 40, 7))


def _split(labels: list[int], image_key: str = "img", label_key: str = "fine_label"):
    features = datasets.Features({image_key: datasets.Image(), label_key: datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict(
        {image_key: [_image(k) for k in range(len(labels))], label_key: labels}, features=features
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    datasets.DatasetDict({"train": _split([2, 0, 1, 1]), "test": _split([0, 2])}).save_to_disk(str(path))
    return path


def test_saved_to_disk_detects_columns_and_names(saved):
    ds = open_dataset(f"hf:{saved}", "train")
    assert ds.classes == ["aquarium fish", "maple tree", "worm"]
    assert ds.labels().tolist() == [2, 0, 1, 1]
    ex = ds[1]
    assert ex.label == 0 and ex.index == 1 and ex.attrs == {}
    assert ex.image.size == (7, 5) and ex.image.getpixel((0, 0)) == (40, 215, 7)
    assert ds.describe()["image_column"] == "img" and ds.describe()["label_column"] == "fine_label"
    assert available_splits(f"hf:{saved}") == ["train", "test"]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.labels().tolist() == [2, 0, 1, 1] and clone[3].image.size == (9, 5)
    assert f"hf:{saved} [train] row 2" in ds.source(2)
    with pytest.raises(SparsesteerError, match=r"unknown split 'valid'.*valid: train, test"):
        open_dataset(f"hf:{saved}", "valid")


def test_labels_do_not_decode_images(saved, monkeypatch):
    ds = open_dataset(f"hf:{saved}", "test")

    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(Image, "open", refuse)
    assert ds.labels().tolist() == [0, 2]


def test_parquet_folder_through_load_dataset(tmp_path):
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    _split([1, 2, 0], "picture", "target").to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    _split([2], "picture", "target").to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    cache = str(tmp_path / "cache")
    ds = open_dataset(f"hf:{root}", "train", cache_dir=cache)
    assert ds.labels().tolist() == [1, 2, 0] and ds.classes[2] == "worm"
    assert np.asarray(ds[2].image).shape == (5, 8, 3)
    assert ds.describe()["options"] == {"cache_dir": cache}
    assert open_dataset(f"hf:{root}", "test", cache_dir=cache, label_column="target").labels().tolist() == [2]
    with pytest.raises(SparsesteerError, match=r"unknown label column 'tgt' \(did you mean 'target'\?\)"):
        open_dataset(f"hf:{root}", "test", cache_dir=cache, label_column="tgt")


def test_unlabeled_plain_columns_and_broken_image(tmp_path):
    features = datasets.Features({"photo": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"photo": [{"bytes": b"garbage", "path": "broken.jpg"}, _image(1)], "caption": ["a", "b"]}, features=features
    )
    ds.save_to_disk(str(tmp_path / "plain"))
    opened = open_dataset(f"hf:{tmp_path / 'plain'}", "train", image_column="photo")
    assert opened.labels().tolist() == [-1, -1] and opened.classes == []
    assert opened[1].label == -1
    with pytest.raises(UnreadableImage) as info:
        opened[0]
    assert "row 0" in info.value.source and "broken.jpg" in info.value.source


def test_no_image_column_is_a_clear_error(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    ds.save_to_disk(str(tmp_path / "text"))
    with pytest.raises(SparsesteerError, match=r"no image column found among \['text', 'label'\]"):
        open_dataset(f"hf:{tmp_path / 'text'}", "train")


def test_missing_datasets_package_names_the_extra(monkeypatch, saved):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(SparsesteerError, match=r"pip install 'sparsesteer\[hf\]'"):
        open_dataset(f"hf:{saved}", "train")


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is counted and refused (as on a machine without a network); no
    sleeping between retries, so a retrying client fails this test quickly instead of slowly."""
    import socket
    import time

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    return attempts


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", None])
def test_hub_dataset_without_the_hub_fails_at_once(offline, no_network, monkeypatch, tmp_path):
    """Offline mode on (HF_HUB_OFFLINE, or datasets' own HF_DATASETS_OFFLINE): no connection at all; the
    hub out of reach: one probe, then the cache (empty here), like a model: one line saying how to work
    offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline == "HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline is not None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline == "HF_HUB_OFFLINE" else "0")
    with pytest.raises(SparsesteerError) as info:
        open_dataset("hf:someorg/some-data", "train", cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "\n" not in message and "dataset 'someorg/some-data' is not in the local Hugging Face cache" in message
    assert str(tmp_path / "cache") in message and "save_to_disk(DIR)) and pass --dataset hf:DIR" in message
    assert ("offline mode is on" if offline else "cannot be reached") in message
    assert len(no_network) == (0 if offline else 1)  # the probe; no request, no retry
