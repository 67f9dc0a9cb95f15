"""Nothing a user hands us is unpickled, and no archive writes outside its target.

- a scan of the package's source: every `np.load` passes allow_pickle=False, no `torch.load`
  without weights_only=True, `pickle` only behind data/cifar.py's numpy-only unpickler, archive
  extraction only in data/download.py's `safe_extract`;
- pickles where arrays or safetensors are expected (with a payload that would leave a file if it
  ran) are refused naming the file, and the payload never runs;
- crafted archives (`..` members, absolute paths, drive letters, symlinks and hard links pointing
  outside, device files) are refused before anything is extracted, for tar and zip;
- a download whose checksum does not match is deleted before extraction is attempted.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sparsesteer.cli import main
from sparsesteer.data import download as dl
from sparsesteer.data.download import REGISTRY, Resource, Source, download, safe_extract
from sparsesteer.utils.errors import SparsesteerError

PACKAGE = Path(__file__).resolve().parents[1] / "sparsesteer"


# ------------------------------------------------------------------------------------ source scan
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = ast.unparse(f)
            yield name, node


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return ast.unparse(k.value)
    return None


def test_source_never_unpickles_or_extracts_unchecked():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        tree = ast.parse(path.read_text())
        for name, node in _calls(tree):
            where = f"{rel}:{node.lineno} {name}"
            if name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") != "False":
                problems.append(f"{where} without allow_pickle=False")
            if name.endswith("torch.load") and _kw(node, "weights_only") != "True":
                problems.append(f"{where} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load",
                        "joblib.load", "marshal.loads", "shelve.open", "yaml.load", "torch.jit.load"):  # fmt: skip
                problems.append(f"{where}: an unpickler")
            if name.endswith((".extractall", ".extract")) and rel != "data/download.py":
                problems.append(f"{where}: archive extraction outside data/download.py")
            if name in ("eval", "exec"):
                problems.append(f"{where}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                if rel != "data/cifar.py":
                    problems.append(f"{rel}:{node.lineno} an Unpickler subclass")
    assert problems == []


def test_the_one_unpickler_resolves_only_numpy_reconstruction():
    from sparsesteer.data import cifar

    allowed = cifar._NumpyOnlyUnpickler
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        allowed(io.BytesIO(pickle.dumps(os.system, protocol=2))).load()


# ------------------------------------------------------------------------------------ pickles refused
class _Payload:
    """Unpickling this creates the file named: proof that something was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _object_npy(path: Path, marker: Path) -> Path:
    np.save(path, np.array([_Payload(str(marker)), 1], dtype=object), allow_pickle=True)
    return path


@pytest.mark.parametrize("flag", ["--activations", "--labels"])
def test_an_object_npy_is_refused_and_never_unpickled(tmp_path, capsys, flag):
    marker = tmp_path / "payload-ran"
    evil = _object_npy(tmp_path / "evil.npy", marker)
    good = tmp_path / "acts.npy"
    np.save(good, np.zeros((64, 8), np.float32))
    acts = evil if flag == "--activations" else good
    argv = ["-q", "train", "--activations", str(acts), "--k", "2", "--n-latents", "8", "--out", str(tmp_path / "o")]
    if flag == "--labels":
        argv += ["--labels", str(evil)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()


def test_a_pickle_where_safetensors_is_expected_is_refused_by_name(tmp_path):
    from sparsesteer.interpret.store import load_stats
    from sparsesteer.sae import SAEConfig, SparseAutoencoder, build

    marker = tmp_path / "payload-ran"
    sae_dir = build(SAEConfig(arch="topk", d_in=8, n_latents=16, k=2)).save(tmp_path / "sae")
    weights = sae_dir / "sae.safetensors"
    for proto in (2, 5):  # plain pickle; torch.save writes a zip of pickles, refused the same way
        weights.write_bytes(pickle.dumps({"W_enc": _Payload(str(marker))}, protocol=proto))
        with pytest.raises(SparsesteerError, match=str(weights)):
            SparseAutoencoder.load(sae_dir)
    import json

    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "stats.json").write_text(json.dumps({"format": "sparsesteer-latent-stats", "format_version": 2, "n_rows": 1, "n_images": 1,
                                                 "n_latents": 1, "token_positions": [0], "rankings": [], "top_n": 1}))  # fmt: skip
    (stats / "stats.safetensors").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(SparsesteerError, match=r"stats\.safetensors"):
        load_stats(stats)
    assert not marker.exists()


def _pad_header(file: Path, low_byte: int) -> None:
    """Rewrite a safetensors file with its JSON header padded (spaces, as safetensors pads) to a
    length whose low byte is `low_byte`: the file's first byte."""
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, body = raw[8 : 8 + n].rstrip(b" "), raw[8 + n :]
    length = len(header) + (low_byte - len(header)) % 256
    file.write_bytes(length.to_bytes(8, "little") + header.ljust(length) + body)
    assert file.read_bytes()[0] == low_byte


def test_safetensors_of_every_header_length_is_read_whatever_its_first_byte(tmp_path):
    """0x80 opens a pickle and also a safetensors file whose header is 128, 384, ... bytes long:
    formats are told apart by parsing, so a header of every length modulo 256 reads, as safetensors
    by name (our layout, SAELens') or as a `.pt` checkpoint (pickle by name) alike."""
    import json

    import torch
    from safetensors.torch import save_file

    from sparsesteer.sae import SAEConfig, SparseAutoencoder, build
    from sparsesteer.sae.formats.common import file_kind, read_pickle, read_safetensors
    from sparsesteer.utils.io import sha256_file

    torch.manual_seed(0)
    sae = build(SAEConfig(arch="batchtopk", d_in=8, n_latents=16, k=2))
    with torch.no_grad():
        sae.threshold.fill_(0.01)
    want = {k: v.detach() for k, v in sae.state_dict().items()}
    ours = sae.save(tmp_path / "ours")
    file = ours / "sae.safetensors"
    for low in range(256):
        _pad_header(file, low)
        assert file_kind(file) == "safetensors"
        for read in (read_safetensors, read_pickle):
            got = read(file)
            assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    saelens = tmp_path / "saelens"
    saelens.mkdir()
    save_file({"W_enc": want["W_enc"].t().contiguous(), "b_enc": want["b_enc"], "W_dec": want["W_dec"],
               "b_dec": want["b_dec"]}, str(saelens / "sae_weights.safetensors"))  # fmt: skip
    (saelens / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "architecture": "standard"}))
    cfg = json.loads((ours / "cfg.json").read_text())
    x = torch.randn(5, 8)
    for low in (0x80, 0x00, 0x50):  # whole loads: ours (checksummed) and SAELens'
        _pad_header(file, low)
        cfg["weights_sha256"] = sha256_file(file)
        (ours / "cfg.json").write_text(json.dumps(cfg))
        with torch.no_grad():
            torch.testing.assert_close(SparseAutoencoder.load(ours).encode_dense(x), sae.encode_dense(x))
        _pad_header(saelens / "sae_weights.safetensors", low)
        assert SparseAutoencoder.load(saelens).n_latents == 16


@pytest.mark.parametrize("kind", ["pickle-2", "pickle-5", "torch-zip", "torch-legacy"])
def test_every_kind_of_pickle_is_refused_where_safetensors_is_expected(tmp_path, kind):
    """The other side of telling formats apart by parsing: no pickle parses as safetensors, so
    each is refused by name and never runs."""
    import json

    import torch

    from sparsesteer.sae import SparseAutoencoder
    from sparsesteer.sae.formats.common import file_kind

    marker = tmp_path / "payload-ran"
    weights = tmp_path / "sae_weights.safetensors"
    if kind.startswith("pickle"):
        weights.write_bytes(pickle.dumps({"W_enc": _Payload(str(marker))}, protocol=int(kind[-1])))
    else:
        torch.save({"W_enc": torch.zeros(2, 3)}, weights, _use_new_zipfile_serialization=kind == "torch-zip")
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 3, "d_sae": 2}))
    assert file_kind(weights) == "pickle"
    with pytest.raises(SparsesteerError, match=rf"{weights} is a pickle \(torch.save\) file, not safetensors"):
        SparseAutoencoder.load(tmp_path)
    assert not marker.exists()
    weights.write_bytes(weights.read_bytes()[:3])  # cut short: neither format; refused all the same
    with pytest.raises(SparsesteerError, match=rf"cannot read {weights} as safetensors"):
        SparseAutoencoder.load(tmp_path)


# ------------------------------------------------------------------------------------ archives
def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as t:
        t.addfile(_file("fine.txt", data), io.BytesIO(data))
        for m in members:
            t.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return path


def _file(name: str, data: bytes = b"x") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


TAR_CASES = {
    "dotdot": ([_file("../escape.txt")], "unsafe member path"),
    "nested-dotdot": ([_file("a/b/../../../escape.txt")], "unsafe member path"),
    "absolute": ([_file("/tmp/escape.txt")], "unsafe member path"),
    "drive-letter": ([_file("C:/escape.txt")], "unsafe member path"),
    "backslash-dotdot": ([_file("..\\escape.txt")], "unsafe member path"),
    "symlink-out": ([_link("ln", "../../outside", tarfile.SYMTYPE)], "refusing to extract link"),
    "symlink-absolute": ([_link("ln", "/etc/passwd", tarfile.SYMTYPE)], "refusing to extract link"),
    "symlink-then-write-through": (
        [_link("dir", "/tmp", tarfile.SYMTYPE), _file("dir/escape.txt")],
        "refusing to extract link",
    ),
    "hardlink-out": ([_link("hard", "/etc/passwd", tarfile.LNKTYPE)], "refusing to extract link"),
    "hardlink-dotdot": ([_link("hard", "../outside", tarfile.LNKTYPE)], "refusing to extract link"),
    "device": ([_device("null")], "refusing to extract special file"),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_crafted_tar_is_refused_before_anything_is_extracted(tmp_path, case):
    members, needle = TAR_CASES[case]
    archive = _tar(tmp_path / "evil.tar", members)
    target = tmp_path / "box" / "into"
    with pytest.raises(SparsesteerError, match=needle) as info:
        safe_extract(archive, target)
    assert str(archive) in str(info.value)
    assert list(target.iterdir()) == []  # not even the harmless member: checked before extraction
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "evil.tar"]


def _zip(path: Path, name: str, *, symlink_to: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fine.txt", b"x")
        info = zipfile.ZipInfo(name)
        if symlink_to is not None:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, symlink_to)
        else:
            z.writestr(info, b"y")
    return path


ZIP_CASES = {
    "dotdot": (dict(name="../escape.txt"), "unsafe member path"),
    "nested-dotdot": (dict(name="a/../../escape.txt"), "unsafe member path"),
    "absolute": (dict(name="/tmp/escape.txt"), "unsafe member path"),
    "drive-letter": (dict(name="C:\\escape.txt"), "unsafe member path"),
    "backslash-dotdot": (dict(name="..\\..\\escape.txt"), "unsafe member path"),
    "symlink": (dict(name="ln", symlink_to="/etc/passwd"), "refusing to extract symbolic link"),
}


@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_crafted_zip_is_refused_before_anything_is_extracted(tmp_path, case):
    kwargs, needle = ZIP_CASES[case]
    archive = _zip(tmp_path / "evil.zip", **kwargs)
    target = tmp_path / "box" / "into"
    with pytest.raises(SparsesteerError, match=needle):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "evil.zip"]


def test_a_download_with_the_wrong_checksum_is_never_extracted(tmp_path, monkeypatch):
    archive = tmp_path / "server" / "toy.tar"
    archive.parent.mkdir()
    _tar(archive, [])
    wrong = "md5:" + hashlib.md5(b"something else").hexdigest()
    monkeypatch.setitem(
        REGISTRY,
        "toy",
        Source(
            name="toy",
            folder="toy",
            resources=(Resource(archive.as_uri(), "toy.tar", wrong),),
            expected=("toy/fine.txt",),
            provenance="test",
        ),  # fmt: skip
    )
    extracted = []
    monkeypatch.setattr(dl, "safe_extract", lambda *a: extracted.append(a))
    with pytest.raises(SparsesteerError, match="checksum mismatch"):
        download("toy", tmp_path / "data")
    assert extracted == []
    assert not any(p.name.startswith("toy.tar") for p in (tmp_path / "data").rglob("*"))
