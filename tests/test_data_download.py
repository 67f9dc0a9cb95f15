"""Downloads without the network: file:// URLs to tiny archives the tests build."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from sparsesteer.data import download as dl
from sparsesteer.data.download import REGISTRY, Resource, Source, download, is_installed, safe_extract
from sparsesteer.utils.errors import SparsesteerError


def _tar_gz(path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A registry entry 'toy' served from a local tarball; returns (data_root, source)."""
    archive = tmp_path / "server" / "toy.tar.gz"
    archive.parent.mkdir()
    member = b"hello"
    md5 = _tar_gz(archive, {"toy-data/a.txt": member, "toy-data/sub/b.txt": b"bee"})
    note = tmp_path / "server" / "notes.txt"
    note.write_bytes(b"plain file")
    source = Source(
        name="toy",
        folder="toy-data",
        resources=(
            Resource(archive.as_uri(), "toy.tar.gz", f"md5:{md5}"),
            Resource(
                note.as_uri(),
                "notes.txt",
                "sha256:" + hashlib.sha256(b"plain file").hexdigest(),
                dest="toy-data",
                extract=False,
            ),
        ),
        expected=("toy-data/a.txt", "toy-data/notes.txt"),
        member_checksums={"toy-data/a.txt": "md5:" + hashlib.md5(member).hexdigest()},
        provenance="test",
    )
    monkeypatch.setitem(REGISTRY, "toy", source)
    return tmp_path / "data", source


def test_download_verify_extract_mark_and_skip(toy, monkeypatch):
    root, source = toy
    folder = download("toy", root)
    assert folder == root / "toy-data"
    assert (folder / "a.txt").read_bytes() == b"hello" and (folder / "sub" / "b.txt").read_bytes() == b"bee"
    assert (folder / "notes.txt").read_bytes() == b"plain file"
    marker = json.loads((root / ".sparsesteer" / "toy.json").read_text())
    assert marker["completed"] is True and [r["checksum"] for r in marker["resources"]] == [
        r.checksum for r in source.resources
    ]
    assert is_installed("toy", root)
    assert not list((root / ".sparsesteer" / "downloads").iterdir())  # archives removed after install

    def no_network(*args, **kwargs):
        raise AssertionError("fetched although the dataset is present and verified")

    monkeypatch.setattr(dl, "fetch", no_network)
    assert download("toy", root) == folder  # already present: nothing fetched
    with pytest.raises(AssertionError, match="fetched although"):
        download("toy", root, force=True)
    assert not is_installed("toy", root)  # a forced run that fails leaves no completion marker


def test_checksum_mismatch_deletes_and_explains(toy, monkeypatch):
    root, source = toy
    bad = Resource(source.resources[0].url, "toy.tar.gz", "md5:" + "0" * 32)
    monkeypatch.setitem(REGISTRY, "toy", Source(**{**source.__dict__, "resources": (bad,)}))
    with pytest.raises(SparsesteerError, match=r"checksum mismatch for file://.*expected md5:0{32}, got [0-9a-f]{32}"):
        download("toy", root)
    downloads = root / ".sparsesteer" / "downloads"
    assert not list(downloads.iterdir()) and not (root / "toy-data").exists()
    assert not is_installed("toy", root)


def test_manually_placed_archive_is_used(toy, monkeypatch):
    root, source = toy
    downloads = root / ".sparsesteer" / "downloads"
    downloads.mkdir(parents=True)
    for res in source.resources:
        (downloads / res.filename).write_bytes(Path(res.url[len("file://") :]).read_bytes())
    monkeypatch.setattr(dl, "fetch", lambda *a, **k: pytest.fail("fetched although the file was in place"))
    assert (download("toy", root) / "a.txt").read_bytes() == b"hello"


def test_placed_archive_with_a_wrong_checksum_is_named(toy, monkeypatch):
    root, source = toy
    downloads = root / ".sparsesteer" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "toy.tar.gz").write_bytes(b"not the archive")

    def offline(url, dest, **kw):
        raise SparsesteerError(f"cannot download {url}: network unreachable")

    monkeypatch.setattr(dl, "fetch", offline)
    with pytest.raises(SparsesteerError) as e:
        download("toy", root)
    msg = str(e.value)
    assert f"{downloads / 'toy.tar.gz'} fails its checksum (expected {source.resources[0].checksum}, got " in msg
    assert "replace it with the file from file://" in msg and "network unreachable" in msg


def test_member_checksum_and_expected_paths_are_checked(toy, monkeypatch):
    root, source = toy
    wrong = Source(**{**source.__dict__, "member_checksums": {"toy-data/a.txt": "md5:" + "1" * 32}})
    monkeypatch.setitem(REGISTRY, "toy", wrong)
    with pytest.raises(SparsesteerError, match="a.txt does not match its published checksum"):
        download("toy", root)
    lacking = Source(**{**source.__dict__, "member_checksums": {}, "expected": ("toy-data/missing.txt",)})
    monkeypatch.setitem(REGISTRY, "toy", lacking)
    with pytest.raises(SparsesteerError, match="expected .*missing.txt after extraction"):
        download("toy", root)
    assert not is_installed("toy", root)


def test_unreachable_url_is_a_clear_error(toy, monkeypatch, tmp_path):
    root, source = toy
    gone = Resource((tmp_path / "server" / "gone.tar.gz").as_uri(), "gone.tar.gz", None)
    monkeypatch.setitem(REGISTRY, "toy", Source(**{**source.__dict__, "resources": (gone,)}))
    expected = r"cannot download file://.*gone.tar.gz.*save it as .*downloads/gone.tar.gz"
    with pytest.raises(SparsesteerError, match=expected):
        download("toy", root)


@pytest.mark.parametrize("bad", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_unsafe_tar_members_are_refused(tmp_path, bad):
    archive = tmp_path / "evil.tar.gz"
    _tar_gz(archive, {"fine.txt": b"x", bad: b"y"})
    with pytest.raises(SparsesteerError, match="unsafe member path"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_tar_links_and_zip_traversal_are_refused(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("innocent")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(SparsesteerError, match="refusing to extract link 'innocent'"):
        safe_extract(archive, tmp_path / "out")
    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("good/a.txt", b"a")
        z.writestr("../../evil.txt", b"b")
    with pytest.raises(SparsesteerError, match="unsafe member path '../../evil.txt'"):
        safe_extract(zipped, tmp_path / "out2")
    fine = tmp_path / "fine.zip"
    with zipfile.ZipFile(fine, "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", b"n01443537\n")
    safe_extract(fine, tmp_path / "out3")
    assert (tmp_path / "out3" / "tiny-imagenet-200" / "wnids.txt").read_text() == "n01443537\n"
    (tmp_path / "junk.bin").write_bytes(b"neither")
    with pytest.raises(SparsesteerError, match="neither a zip nor a tar archive"):
        safe_extract(tmp_path / "junk.bin", tmp_path / "out4")


def test_registry_entries_are_well_formed():
    assert set(REGISTRY) == {
        "cifar10",
        "cifar100",
        "tiny-imagenet",
        "cub200",
        "celeba",
        "waterbirds",
        "rta100",
        "paint-typo",
    }
    assert REGISTRY["cifar10"].resources[0].checksum == "md5:c58f30108f718f92721af3b95e74349a"
    assert REGISTRY["cifar100"].resources[0].checksum == "md5:eb9058c3a382ffc7106e4002c42a8d85"
    for source in REGISTRY.values():
        assert source.provenance and source.expected
        for res in source.resources:
            assert res.url.startswith(("http://", "https://"))
            if res.checksum is not None:
                algo, digest = res.checksum.split(":")
                assert (algo, len(digest)) in {("md5", 32), ("sha256", 64), ("git-sha1", 40)}
    assert REGISTRY["waterbirds"].check is not None  # no published checksum: structural check instead
    for name in ("rta100", "paint-typo"):  # pinned to a commit, verified by the git blob id, checked structurally
        (res,) = REGISTRY[name].resources
        assert res.url.startswith("https://raw.githubusercontent.com/") and res.checksum.startswith("git-sha1:")
        assert REGISTRY[name].check is not None
    with pytest.raises(SparsesteerError, match=r"unknown dataset 'cifar'.*valid: cifar10"):
        download("cifar", "/nonexistent")


def test_cli_download_arguments(toy, capsys):
    from sparsesteer.data.commands import register

    root, _ = toy
    parser = argparse.ArgumentParser(prog="sparsesteer")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["download", "cifar10", "--data-root", str(root), "--force"])
    assert (args.name, args.data_root, args.force) == ("cifar10", str(root), True)
    with pytest.raises(SystemExit):
        parser.parse_args(["download", "cifar1000"])
    assert "invalid choice: 'cifar1000'" in capsys.readouterr().err


def test_cli_download_runs_and_reports(toy, capsys, monkeypatch):
    from sparsesteer.data import commands

    root, _ = toy
    parser = argparse.ArgumentParser(prog="sparsesteer")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["download", "cifar10", "--data-root", str(root)])
    args.name = "toy"  # the registered choices are the six built-ins; run the toy entry through the same function
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "dataset": "toy",
        "path": str(root / "toy-data"),
        "marker": str(root / ".sparsesteer" / "toy.json"),
    }


def test_help_is_light():
    code = (
        "import sys, argparse\n"
        "from sparsesteer.data.commands import register\n"
        "p = argparse.ArgumentParser(prog='sparsesteer'); register(p.add_subparsers())\n"
        "try:\n    p.parse_args(['download', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--data-root" in out.stdout and "--force" in out.stdout and "(default:" in out.stdout
    assert "cifar100" in out.stdout and "waterbirds" in out.stdout
