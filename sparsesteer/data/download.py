"""Fetch the built-in datasets from their canonical sources and install them under a data root.

`download(name, data_root)`:
1. skips everything when `DATA_ROOT/.sparsesteer/NAME.json` (the completion marker) records the
   same checksums as the registry and the expected files are there (`force=True` redoes it);
2. downloads each file with a progress bar to `.sparsesteer/downloads/FILE.part`, then renames it;
   a file already sitting at `.sparsesteer/downloads/FILE` with the right checksum (e.g. one you
   fetched by hand) is used as is;
3. verifies the published md5/sha256; on mismatch the file is deleted and the error says so;
4. extracts archives into a temporary directory, refusing absolute paths, `..` components, links
   and special files, then moves the top-level entries into place;
5. checks the extracted files (per-file md5s where published, expected paths, row counts) and
   writes the marker atomically, last: an interrupted run never looks complete.

Sources (URL and checksum provenance is recorded per entry in `REGISTRY`):
- cifar10/cifar100: www.cs.toronto.edu/~kriz (tarball and per-batch md5s as listed in torchvision's
  `datasets/cifar.py`);
- tiny-imagenet: cs231n.stanford.edu (md5 as used by many public loaders, e.g. avalanche);
- cub200: CaltechDATA record 65de6-vp158 (md5 as in the widely used cub2011 loaders);
- celeba: the authors' Google Drive files as torchvision's `datasets/celeba.py` lists them (id, md5);
- waterbirds: the group DRO release on nlp.stanford.edu. No checksum is published for it, so it is
  checked structurally (metadata.csv with 11,788 rows, all images present) and the sha256 of the
  downloaded tarball is recorded in the marker.
- rta100, paint-typo: zip files committed to the authors' GitHub repositories (azuma164/Defense-Prefix,
  mlfoundations/patching), fetched from raw.githubusercontent.com at a pinned commit. The authors
  publish no checksum; the file is verified by its git blob id at that commit (`git-sha1:`, the sha1
  of "blob SIZE", a NUL byte and the bytes, what `git hash-object` prints) and checked structurally.
- disentangling: published only as a Google Drive folder; `MANUAL` says where to get it.
- cifar10-sample: shipped with the package (`SHIPPED`, `sample.py`); nothing to fetch.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..utils import io
from ..utils.errors import SparsesteerError, unknown
from ..utils.progress import progress
from .datasets import default_data_root

log = logging.getLogger(__name__)

MARKER_DIR = ".sparsesteer"
MARKER_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Resource:
    """One file to fetch."""

    url: str
    """Where to get it."""
    filename: str
    """Name to save it under."""
    checksum: str | None
    """'md5:HEX' or 'sha256:HEX' as published, 'git-sha1:HEX' (git blob id) for a file pinned in a git
    repository; None when the source publishes none."""
    dest: str = "."
    """Directory under the data root it is extracted into (archives) or moved to (plain files)."""
    extract: bool = True
    """Whether the file is a zip/tar archive to unpack."""


@dataclasses.dataclass(frozen=True)
class Source:
    """How to install one built-in dataset."""

    name: str
    """Dataset name (as `open_dataset` takes it)."""
    folder: str
    """Directory under the data root that holds the dataset once installed."""
    resources: tuple[Resource, ...]
    """Files to fetch."""
    expected: tuple[str, ...]
    """Paths under the data root that must exist afterwards."""
    provenance: str
    """Where the URLs and checksums come from."""
    member_checksums: dict[str, str] = dataclasses.field(default_factory=dict)
    """Path under the data root -> 'md5:HEX' for extracted files with published checksums."""
    check: Callable[[Path], None] | None = None
    """Extra structural check of the installed folder (raises SparsesteerError)."""


def _gdrive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _check_waterbirds(folder: Path) -> None:
    metadata = folder / "metadata.csv"
    with open(metadata, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 11788:
        raise SparsesteerError(f"{metadata}: expected 11788 rows (the Waterbirds release), found {len(rows)}")
    lacking = [r["img_filename"] for r in rows if not (folder / r["img_filename"]).is_file()]
    if lacking:
        raise SparsesteerError(
            f"{folder}: {len(lacking)} image(s) listed in metadata.csv are missing, e.g. {lacking[0]}"
        )


def _check_label_text(folder: Path) -> None:
    from .typo_sets import check_label_text_folder

    check_label_text_folder(folder)


def _github_raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


REGISTRY: dict[str, Source] = {
    "cifar10": Source(
        name="cifar10",
        folder="cifar-10-batches-py",
        resources=(
            Resource(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-python.tar.gz",
                "md5:c58f30108f718f92721af3b95e74349a",
            ),
        ),
        expected=("cifar-10-batches-py/batches.meta",),
        member_checksums={
            "cifar-10-batches-py/data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
            "cifar-10-batches-py/data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
            "cifar-10-batches-py/data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
            "cifar-10-batches-py/data_batch_4": "md5:634d18415352ddfa80567beed471001a",
            "cifar-10-batches-py/data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
            "cifar-10-batches-py/test_batch": "md5:40351d587109b95175f43aff81a1287e",
        },
        provenance="www.cs.toronto.edu/~kriz/cifar.html; md5s as in torchvision/datasets/cifar.py",
    ),
    "cifar100": Source(
        name="cifar100",
        folder="cifar-100-python",
        resources=(
            Resource(
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "cifar-100-python.tar.gz",
                "md5:eb9058c3a382ffc7106e4002c42a8d85",
            ),
        ),
        expected=("cifar-100-python/meta",),
        member_checksums={
            "cifar-100-python/train": "md5:16019d7e3df5f24257cddd939b257f8d",
            "cifar-100-python/test": "md5:f0ef6b0ae62326f3e7ffdfab6717acfc",
        },
        provenance="www.cs.toronto.edu/~kriz/cifar.html; md5s as in torchvision/datasets/cifar.py",
    ),
    "tiny-imagenet": Source(
        name="tiny-imagenet",
        folder="tiny-imagenet-200",
        resources=(
            Resource(
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                "tiny-imagenet-200.zip",
                "md5:90528d7ca1a48142e341f4ef8d21d0de",
            ),
        ),
        expected=("tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/val/val_annotations.txt"),
        provenance="cs231n.stanford.edu; md5 as in public loaders (e.g. avalanche's tiny_imagenet.py)",
    ),
    "cub200": Source(
        name="cub200",
        folder="CUB_200_2011",
        resources=(
            Resource(
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                "CUB_200_2011.tgz",
                "md5:97eceeb196236b17998738112f37df78",
            ),
        ),
        expected=tuple(
            f"CUB_200_2011/{f}" for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
        ),
        provenance="CaltechDATA record 65de6-vp158 (Wah et al. 2011); md5 as in the cub2011 loaders",
    ),
    "celeba": Source(
        name="celeba",
        folder="celeba",
        resources=(
            Resource(
                _gdrive("0B7EVK8r0v71pZjFTYXZWM3FlRnM"),
                "img_align_celeba.zip",
                "md5:00d2c5bc6d35e252742224ab0c1e8fcb",
                dest="celeba",
            ),
            Resource(
                _gdrive("0B7EVK8r0v71pblRyaVFSWGxPY0U"),
                "list_attr_celeba.txt",
                "md5:75e246fa4810816ffd6ee81facbd244c",
                dest="celeba",
                extract=False,
            ),
            Resource(
                _gdrive("0B7EVK8r0v71pY0NSMzRuSXJEVkk"),
                "list_eval_partition.txt",
                "md5:d32c9cbf5e040fd4025c592c306e6668",
                dest="celeba",
                extract=False,
            ),
        ),
        expected=("celeba/img_align_celeba", "celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt"),
        provenance="mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive); ids and md5s as in "
        "torchvision/datasets/celeba.py",
    ),
    "waterbirds": Source(
        name="waterbirds",
        folder="waterbird_complete95_forest2water2",
        resources=(
            Resource(
                "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz",
                "waterbird_complete95_forest2water2.tar.gz",
                None,
            ),
        ),
        expected=("waterbird_complete95_forest2water2/metadata.csv",),
        provenance="github.com/kohpangwei/group_DRO (no checksum published; checked structurally)",
        check=_check_waterbirds,
    ),
    "rta100": Source(
        name="rta100",
        folder="rta100",
        resources=(
            Resource(
                _github_raw("azuma164/Defense-Prefix", "f0e74629268e39aa9707e2589058374dca1832ca", "rta100.zip"),
                "rta100.zip",
                "git-sha1:8f690a36cb308e4ae6def6d0ece41cfc8000697c",
                dest="rta100",
            ),
        ),
        expected=("rta100",),
        provenance="github.com/azuma164/Defense-Prefix rta100.zip at commit f0e7462 (no checksum published; "
        "verified by its git blob id and checked structurally)",
        check=_check_label_text,
    ),
    "paint-typo": Source(
        name="paint-typo",
        folder="paint-typo",
        resources=(
            Resource(
                _github_raw(
                    "mlfoundations/patching", "3ca86220b926849ea5539531722ba7143f67a30e", "typographic_attack_data.zip"
                ),
                "typographic_attack_data.zip",
                "git-sha1:9c77e8ba8df9fede0cb8ab6fff1fc0f25f29e2a5",
                dest="paint-typo",
            ),
        ),
        expected=("paint-typo",),
        provenance="github.com/mlfoundations/patching typographic_attack_data.zip at commit 3ca8622 (no checksum "
        "published; verified by its git blob id and checked structurally)",
        check=_check_label_text,
    ),
}

MANUAL: dict[str, str] = {
    "disentangling": (
        "the Disentangling typographic-attack set (Materzynska et al. 2022) is published only as a Google Drive "
        "folder, which cannot be fetched by script: download "
        "https://drive.google.com/drive/folders/17v74pmQs2zHrs9sJ_8D0bfrz5ykB5ZW2 (linked from "
        "github.com/joaanna/disentangling_spelling_in_clip) and put its annotations.json and images under "
        "DATA_ROOT/disentangling/"
    ),
}
"""Built-in datasets without a scriptable source: what to do instead."""

SHIPPED: dict[str, str] = {
    "cifar10-sample": "shipped with sparsesteer (2,000 CIFAR-10 images, package data): nothing to download",
}
"""Built-in datasets installed with the package (`sample.py`): `download` only checks them."""


# ------------------------------------------------------------------------------------ helpers
def file_checksum(path: Path, checksum: str) -> str:
    """The digest of `path` in the algorithm named by `checksum` ('md5:...' / 'sha256:...')."""
    algo = checksum.split(":", 1)[0]
    if algo == "md5":
        return io.md5_file(path)
    if algo == "sha256":
        return io.sha256_file(path)
    if algo == "git-sha1":
        return git_blob_sha1(path)
    raise SparsesteerError(f"unknown checksum algorithm {algo!r} in {checksum!r}")


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: sha1 of b'blob <size>\\0' followed by its bytes."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str | None) -> bool:
    """True when `path` matches `checksum` (always True when there is no checksum)."""
    if checksum is None:
        return True
    return file_checksum(path, checksum) == checksum.split(":", 1)[1].lower()


def fetch(url: str, dest: Path, *, desc: str | None = None) -> None:
    """Download `url` (http, https or file) to `dest` with a progress bar."""
    request = urllib.request.Request(url, headers={"User-Agent": "sparsesteer (dataset download)"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            headers = getattr(response, "headers", {}) or {}
            if url.startswith("http") and "text/html" in str(headers.get("Content-Type", "")):
                raise SparsesteerError(
                    f"{url} returned a web page instead of the file (Google Drive does this when a file's "
                    "download quota is exceeded or it needs a login); download it in a browser and save it "
                    f"as {dest.with_suffix('')}"
                )
            total = int(headers.get("Content-Length") or 0) or None
            with (
                open(dest, "wb") as f,
                progress(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or dest.name) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise SparsesteerError(
            f"cannot download {url}: {reason}; check the network, or fetch the file yourself and save it as "
            f"{dest.with_suffix('')}, then run the command again"
        ) from None


def _check_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise SparsesteerError(f"{archive}: refusing to extract unsafe member path {name!r}")


def safe_extract(archive: Path, into: Path) -> None:
    """Unpack a zip or tar archive into `into`, rejecting any member that could escape it."""
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                _check_member(info.filename, archive)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SparsesteerError(f"{archive}: refusing to extract symbolic link {info.filename!r}")
            z.extractall(into)
        return
    if not tarfile.is_tarfile(archive):
        raise SparsesteerError(f"{archive} is neither a zip nor a tar archive")
    with tarfile.open(archive) as t:
        members = t.getmembers()
        for m in members:
            _check_member(m.name, archive)
            if m.issym() or m.islnk():
                raise SparsesteerError(f"{archive}: refusing to extract link {m.name!r} -> {m.linkname!r}")
            if not (m.isfile() or m.isdir()):
                raise SparsesteerError(f"{archive}: refusing to extract special file {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            t.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked above
            t.extractall(into, members=members)


def _move_into(src_dir: Path, dest_dir: Path) -> None:
    """Move every top-level entry of src_dir into dest_dir, replacing what is there."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src_dir.iterdir()):
        target = dest_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)


def marker_path(name: str, data_root: Path) -> Path:
    return Path(data_root) / MARKER_DIR / f"{name}.json"


def is_installed(name: str, data_root: str | Path | None = None) -> bool:
    """True when `name` was downloaded, verified and installed under `data_root` (or is shipped)."""
    if name in SHIPPED:
        return True
    source = _source(name)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    marker = marker_path(name, root)
    if not marker.is_file():
        return False
    try:
        record = io.read_json(marker)
    except SparsesteerError:
        return False
    recorded = [r.get("checksum") for r in record.get("resources", [])]
    wanted = [r.checksum for r in source.resources]
    return record.get("completed") is True and recorded == wanted and all((root / p).exists() for p in source.expected)


def _source(name: str) -> Source:
    if name in MANUAL:
        raise SparsesteerError(f"{name}: {MANUAL[name]}")
    if name not in REGISTRY:
        raise unknown("dataset", name, REGISTRY)
    return REGISTRY[name]


# ------------------------------------------------------------------------------------ download
def download(name: str, data_root: str | Path | None = None, *, force: bool = False) -> Path:
    """Install built-in dataset `name` under `data_root`; return the dataset's folder. A shipped
    dataset is only checked (both splits opened) and its folder in the package returned."""
    if name in SHIPPED:
        from .sample import check_shipped

        folder = check_shipped()
        log.info("%s: %s (%s)", name, SHIPPED[name], folder)
        return folder
    source = _source(name)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    folder = root / source.folder
    if not force and is_installed(name, root):
        log.info("%s is already present and verified in %s", name, folder)
        return folder
    work = root / MARKER_DIR / "downloads"
    work.mkdir(parents=True, exist_ok=True)
    marker_path(name, root).unlink(missing_ok=True)  # from here on the dataset is incomplete
    records: list[dict[str, Any]] = []
    archives = []
    for res in source.resources:
        archive = work / res.filename
        placed = None  # a file placed by hand at the documented path that fails its checksum
        if archive.is_file() and not force and res.checksum is not None and not verify(archive, res.checksum):
            placed = (
                f"{archive} fails its checksum (expected {res.checksum}, got {file_checksum(archive, res.checksum)})"
            )
            log.warning("%s; downloading it again", placed)
        if not (archive.is_file() and not force and verify(archive, res.checksum)):
            partial = work / f"{res.filename}.part"
            log.info("downloading %s", res.url)
            try:
                fetch(res.url, partial, desc=res.filename)
            except SparsesteerError as e:
                if placed is None:
                    raise
                raise SparsesteerError(f"{placed}: replace it with the file from {res.url} ({e})") from None
            if not verify(partial, res.checksum):
                got = file_checksum(partial, res.checksum or "md5:")
                partial.unlink(missing_ok=True)
                raise SparsesteerError(
                    f"checksum mismatch for {res.url}: expected {res.checksum}, got {got}; the download was "
                    "deleted (corrupted transfer, or the file changed upstream); run the command again"
                )
            os.replace(partial, archive)
        records.append(
            {"url": res.url, "filename": res.filename, "checksum": res.checksum, "sha256": io.sha256_file(archive)}
        )
        archives.append((res, archive))
    for res, archive in archives:
        dest = root / res.dest
        if res.extract:
            log.info("extracting %s", archive.name)
            staging = Path(tempfile.mkdtemp(prefix=f"extract-{name}-", dir=root / MARKER_DIR))
            try:
                safe_extract(archive, staging)
                _move_into(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, dest / res.filename)
    for rel, checksum in source.member_checksums.items():
        path = root / rel
        if not path.is_file():
            raise SparsesteerError(f"{name}: the archive did not contain {rel}")
        if not verify(path, checksum):
            raise SparsesteerError(f"{name}: {path} does not match its published checksum {checksum}")
    for rel in source.expected:
        if not (root / rel).exists():
            raise SparsesteerError(f"{name}: expected {root / rel} after extraction, but it is not there")
    if source.check is not None:
        source.check(folder)
    io.write_json(
        marker_path(name, root),
        {"format": MARKER_FORMAT, "name": name, "folder": str(folder), "completed": True, "resources": records},
    )
    for _, archive in archives:
        archive.unlink(missing_ok=True)
    log.info("%s ready in %s", name, folder)
    return folder
