"""Built-in datasets read through the real code from miniature copies of their canonical layouts."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from sparsesteer.data import UnreadableImage, available_splits, classnames, open_dataset
from sparsesteer.data.cifar import restricted_load
from sparsesteer.data.datasets import classes_sha256
from sparsesteer.data.names import tiny_imagenet_wnids
from sparsesteer.utils.errors import SparsesteerError


def _jpeg(path, color, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)


def _color(image: Image.Image) -> tuple[int, ...]:
    return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


def _close(a, b, tol=6):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# ------------------------------------------------------------------------------------- folder
def test_folder_layout_labels_sources_and_describe(tmp_path):
    for split, classes in {"train": ["zebra", "ant_eater"], "test": ["zebra"]}.items():
        for k, name in enumerate(classes):
            for j in range(2):
                _jpeg(tmp_path / split / name / f"{j}.jpg", (40 * k + 10 * j, 0, 0))
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("not an image")
    ds = open_dataset(f"folder:{tmp_path}", "test")
    assert ds.classes == ["ant eater", "zebra"]  # union over splits, sorted by folder name
    assert ds.labels().tolist() == [1, 1]  # zebra keeps label 1 although test has no ant_eater
    assert ds.source(0).endswith("test/zebra/0.jpg")
    ex = ds[1]
    assert (ex.label, ex.index, ex.attrs) == (1, 1, {})
    assert ex.image.mode == "RGB" and ex.image.size == (8, 6)
    train = open_dataset(f"folder:{tmp_path}", "train")
    assert len(train) == 4 and train.labels().tolist() == [0, 0, 1, 1]
    assert available_splits(f"folder:{tmp_path}") == ["test", "train"]
    d = train.describe()
    assert d["name"] == f"folder:{tmp_path.resolve()}" and d["len"] == 4 and d["n_classes"] == 2
    assert d["classes_sha256"] == classes_sha256(["ant eater", "zebra"])


def test_folder_errors(tmp_path):
    with pytest.raises(SparsesteerError, match="no such directory"):
        open_dataset(f"folder:{tmp_path}/nope", "train")
    with pytest.raises(SparsesteerError, match="found no SPLIT/CLASS"):
        open_dataset(f"folder:{tmp_path}", "train")
    _jpeg(tmp_path / "train" / "a" / "0.jpg", (1, 2, 3))
    with pytest.raises(SparsesteerError, match=r"unknown split 'tran' \(did you mean 'train'\?\)"):
        open_dataset(f"folder:{tmp_path}", "tran")
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(b"not a jpeg")
    ds = open_dataset(f"folder:{tmp_path}", "train")
    with pytest.raises(UnreadableImage) as info:
        ds[1]
    assert info.value.source.endswith("train/a/1.jpg") and "1.jpg" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))  # errors travel back from DataLoader workers
    assert again.source == info.value.source and str(again) == str(info.value)
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(SparsesteerError, match="unknown option 'target'"):
        open_dataset(f"folder:{tmp_path}", "train", target="x")


def test_real_cifar10_jpegs_as_folder(cifar10_jpeg):
    ds = open_dataset(f"folder:{cifar10_jpeg}", "test")
    assert len(ds) == 10_000 and ds.classes == classnames("cifar10")
    assert np.bincount(ds.labels()).tolist() == [1000] * 10
    ex = ds[4321]
    assert ex.image.size == (32, 32) and ex.label == ds.labels()[4321]
    assert f"/test/{ds.classes[ex.label]}/" in ds.source(4321)


# -------------------------------------------------------------------------------------- cifar
class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the CIFAR batches: protocol 2, byte strings
    as BINSTRING, and numpy's array reconstructor under its historical name numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _py2_pickle(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _cifar_rows(labels, seed):
    """uint8 [N, 3072] rows whose R plane is the label and G plane the row index (channel-planar)."""
    rows = np.random.default_rng(seed).integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        rows[i, 0], rows[i, 1] = label, i
    return rows.reshape(len(labels), 3072)


def _make_cifar10(root, n_per_batch=3):
    base = root / "cifar-10-batches-py"
    names = [n.encode() for n in classnames("cifar10")]
    _py2_pickle(base / "batches.meta", {b"label_names": names, b"num_cases_per_batch": n_per_batch})
    expected = []
    for b, file in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [(b + i) % 10 for i in range(n_per_batch)]
        rows = _cifar_rows(labels, seed=b)
        _py2_pickle(base / file, {b"batch_label": b"batch", b"labels": labels, b"data": rows,
                                  b"filenames": [f"{file}_{i}.png".encode() for i in range(n_per_batch)]})  # fmt: skip
        expected.append((file, labels, rows))
    return expected


def test_cifar10_from_canonical_pickles(tmp_path):
    expected = _make_cifar10(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # as the originals
    train = open_dataset("cifar10", "train", data_root=tmp_path)
    test = open_dataset("cifar10", "test", data_root=tmp_path)
    assert len(train) == 15 and len(test) == 3
    assert train.labels().tolist() == sum((labels for _, labels, _ in expected[:5]), [])
    assert train.classes == classnames("cifar10")
    ex = train[7]  # batch 3 (index 2), row 1
    file, labels, rows = expected[2]
    pixels = np.asarray(ex.image)
    assert ex.image.mode == "RGB" and ex.image.size == (32, 32)
    assert np.array_equal(pixels, rows[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert (pixels[..., 0] == labels[1]).all() and (pixels[..., 1] == 1).all()
    assert train.source(7).endswith("cifar-10-batches-py/data_batch_3[1]")
    clone = pickle.loads(pickle.dumps(train))  # images are dropped from the pickle and re-read
    assert clone._images is None and np.array_equal(np.asarray(clone[7].image), pixels)
    assert len(pickle.dumps(train)) < 10_000


def test_cifar100_fine_labels_and_meta_check(tmp_path):
    base = tmp_path / "cifar-100-python"
    names = [n.replace(" ", "_").encode() for n in classnames("cifar100")]
    _py2_pickle(base / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20})
    for split, labels in {"train": [99, 0, 41], "test": [3]}.items():
        _py2_pickle(base / split, {b"fine_labels": labels, b"coarse_labels": [0] * len(labels),
                                   b"data": _cifar_rows(labels, 1), b"filenames": [b"f"] * len(labels)})  # fmt: skip
    ds = open_dataset("cifar100", "train", data_root=tmp_path)
    assert ds.labels().tolist() == [99, 0, 41]
    assert [ds.classes[i] for i in ds.labels()] == ["worm", "apple", "lawn mower"]
    assert (np.asarray(ds[0].image)[..., 0] == 99).all()
    _py2_pickle(base / "meta", {b"fine_label_names": names[:-1]})  # a class list that does not match
    with pytest.raises(SparsesteerError, match="do not match the shipped cifar100 list"):
        open_dataset("cifar100", "test", data_root=tmp_path)


def test_restricted_unpickler_refuses_code(tmp_path):
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(target)!r}, 'w').close()",))

    evil = pickle.dumps({"data": Payload()}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (__builtin__|builtins)\.exec"):
        restricted_load(io.BytesIO(evil))
    assert not target.exists()
    pickle.loads(evil)  # the payload is real: plain pickle would have run it
    assert target.exists()
    target.unlink()
    _make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(SparsesteerError, match="test_batch is not a CIFAR python batch file"):
        open_dataset("cifar10", "test", data_root=tmp_path)
    assert not target.exists()


def test_missing_files_name_the_download_command(tmp_path):
    with pytest.raises(SparsesteerError) as info:
        open_dataset("cifar100", "train", data_root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python" / "meta") in message
    assert f"sparsesteer download cifar100 --data-root {tmp_path}" in message
    for name in ("tiny-imagenet", "cub200", "celeba", "waterbirds"):
        with pytest.raises(SparsesteerError, match=f"sparsesteer download {name} --data-root"):
            open_dataset(name, "test", data_root=tmp_path)


def test_unknown_dataset_and_split_errors(tmp_path):
    with pytest.raises(SparsesteerError, match=r"unknown dataset 'cifar1000' \(did you mean 'cifar100'\?\)"):
        open_dataset("cifar1000", "train", data_root=tmp_path)
    with pytest.raises(SparsesteerError, match=r"cifar10: unknown split 'val'.*valid: train, test"):
        open_dataset("cifar10", "val", data_root=tmp_path)
    assert available_splits("tiny-imagenet") == ["train", "val", "test"]
    assert available_splits("celeba") == ["train", "valid", "test", "all"]


def test_data_root_from_environment(tmp_path, monkeypatch):
    _make_cifar10(tmp_path)
    monkeypatch.setenv("SPARSESTEER_DATA", str(tmp_path))
    assert len(open_dataset("cifar10", "test")) == 3


# ------------------------------------------------------------------------------ tiny-imagenet
def test_tiny_imagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = tiny_imagenet_wnids()
    unsorted = wnids[::-1]  # the canonical wnids.txt is not sorted; labels follow sorted order anyway
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(unsorted) + "\n")
    for wnid in wnids:
        (base / "train" / wnid / "images").mkdir(parents=True)
    for k in (0, 5, 199):
        for j in range(2):
            _jpeg(base / "train" / wnids[k] / "images" / f"{wnids[k]}_{j}.JPEG", (k, 100 + j, 0), (64, 64))
    lines = []
    for j, k in enumerate((199, 5, 5)):
        _jpeg(base / "val" / "images" / f"val_{j}.JPEG", (k, 50, 50), (64, 64))
        lines.append(f"val_{j}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train = open_dataset("tiny-imagenet", "train", data_root=tmp_path)
    assert train.labels().tolist() == [0, 0, 5, 5, 199, 199]
    assert _close(_color(train[3].image), (5, 101, 0))
    val = open_dataset("tiny-imagenet", "val", data_root=tmp_path)
    test = open_dataset("tiny-imagenet", "test", data_root=tmp_path)
    assert val.labels().tolist() == test.labels().tolist() == [199, 5, 5]
    assert test.describe()["split_read"] == "val" and "alias" in test.describe()["note"]
    assert val.classes[199] == classnames("tiny-imagenet")[199] and len(val.classes) == 200
    assert test.source(0).endswith("tiny-imagenet-200/val/images/val_0.JPEG")
    (base / "wnids.txt").write_text("\n".join(unsorted[:-1] + ["n99999999"]) + "\n")
    with pytest.raises(SparsesteerError, match="not the 200 of Tiny-ImageNet-200.*n99999999"):
        open_dataset("tiny-imagenet", "val", data_root=tmp_path)


# ------------------------------------------------------------------------------------- cub200
def test_cub200_layout(tmp_path):
    base = tmp_path / "CUB_200_2011"
    folders = [f"{i + 1:03d}.{name.replace(' ', '_')}" for i, name in enumerate(classnames("cub200"))]
    (base / "images").mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(folders)))
    picks = [(1, 0, 1), (2, 199, 0), (3, 16, 1), (4, 0, 0)]  # (image id, label, is_train)
    images, labels, split = [], [], []
    for image_id, label, is_train in reversed(picks):  # file order does not matter: ids do
        rel = f"{folders[label]}/img_{image_id}.jpg"
        _jpeg(base / "images" / rel, (label, image_id, 7))
        images.append(f"{image_id} {rel}\n")
        labels.append(f"{image_id} {label + 1}\n")
        split.append(f"{image_id} {is_train}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "train_test_split.txt").write_text("".join(split))
    train = open_dataset("cub200", "train", data_root=tmp_path)
    test = open_dataset("cub200", "test", data_root=tmp_path)
    assert train.labels().tolist() == [0, 16] and test.labels().tolist() == [199, 0]
    assert train.classes[16] == "Cardinal" and test.classes[199] == "Common Yellowthroat"
    assert _close(_color(test[0].image), (199, 2, 7))
    assert test.source(0).endswith("images/200.Common_Yellowthroat/img_2.jpg")
    (base / "image_class_labels.txt").write_text("1 1\n2 201\n3 17\n4 1\n")
    with pytest.raises(SparsesteerError, match="labels run from 0 to 200 but there are 200 class names"):
        open_dataset("cub200", "test", data_root=tmp_path)
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n")
    with pytest.raises(SparsesteerError, match="do not match the shipped CUB-200-2011 list"):
        open_dataset("cub200", "test", data_root=tmp_path)


# ------------------------------------------------------------------------------------- celeba
def test_celeba_layout_and_target(tmp_path):
    base = tmp_path / "celeba"
    header = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]  # the real file has 40; any header works
    rows = {"000001.jpg": ([-1, 1, 1, 1], 0), "000002.jpg": ([1, -1, -1, 1], 0),
            "000003.jpg": ([-1, 1, -1, -1], 1), "000004.jpg": ([1, 1, 1, -1], 2)}  # fmt: skip
    base.mkdir()
    lines = [str(len(rows)), " ".join(header)]
    lines += [f"{name}  " + " ".join(f"{v:2d}" for v in values) for name, (values, _) in rows.items()]
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, (_, p) in rows.items()))
    for k, name in enumerate(rows):
        _jpeg(base / "img_align_celeba" / name, (k * 30, 0, 0), (178, 218))
    train = open_dataset("celeba", "train", data_root=tmp_path)
    assert train.classes == ["female", "male"] and train.labels().tolist() == [1, 0]
    assert train.attributes == header
    assert train[0].attrs == {"5_o_Clock_Shadow": 0, "Blond_Hair": 1, "Male": 1, "Young": 1}
    assert train.attribute_array("Blond_Hair").tolist() == [1, 0]
    blond = open_dataset("celeba", "all", data_root=tmp_path, target="Blond_Hair")
    assert blond.classes == ["not blond hair", "blond hair"] and blond.labels().tolist() == [1, 0, 1, 1]
    assert blond.describe()["target"] == "Blond_Hair"
    assert open_dataset("celeba", "val", data_root=tmp_path).labels().tolist() == [0]
    assert _close(_color(open_dataset("celeba", "test", data_root=tmp_path)[0].image), (90, 0, 0))
    suggestion = r"unknown target attribute 'blond_hair' \(did you mean 'Blond_Hair'\?\)"
    with pytest.raises(SparsesteerError, match=suggestion):
        open_dataset("celeba", "train", data_root=tmp_path, target="blond_hair")
    with pytest.raises(SparsesteerError, match=r"no attribute 'Smiling'.*valid: 5_o_Clock_Shadow, Blond_Hair"):
        train.attribute_array("Smiling")


# --------------------------------------------------------------------------------- waterbirds
def test_waterbirds_layout(tmp_path):
    base = tmp_path / "waterbird_complete95_forest2water2"
    rows = [(1, "001.Black_footed_Albatross/a.jpg", 1, 0, 1), (2, "017.Cardinal/b.jpg", 0, 0, 0),
            (3, "017.Cardinal/c.jpg", 0, 2, 1), (4, "001.Black_footed_Albatross/d.jpg", 1, 1, 0)]  # fmt: skip
    base.mkdir()
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for img_id, rel, y, split, place in rows:
        lines.append(f"{img_id},{rel},{y},{split},{place},/x/places/{img_id}.jpg")
        _jpeg(base / rel, (img_id * 40, y * 200, place * 200))
    (base / "metadata.csv").write_text("\n".join(lines) + "\n")
    train = open_dataset("waterbirds", "train", data_root=tmp_path)
    assert train.classes == ["landbird", "waterbird"] and train.attributes == ["place", "group"]
    assert train.labels().tolist() == [1, 0]
    assert train.attribute_array("place").tolist() == [1, 0]
    assert train.attribute_array("group").tolist() == [3, 0]  # 2 * y + place
    assert train[0].attrs == {"place": 1, "group": 3}
    assert _close(_color(train[0].image), (40, 200, 200))
    test = open_dataset("waterbirds", "test", data_root=tmp_path)
    assert test.labels().tolist() == [0] and test.attribute_array("group").tolist() == [1]
    assert len(pickle.loads(pickle.dumps(test))) == 1
