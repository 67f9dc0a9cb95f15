"""Cache settings and the manifest: what a cache holds, and the checks every reader and writer shares.

The layout and the commit protocol are described in `sparsesteer/activations/cache/__init__.py` and
docs/formats.md ("Activation cache"). This module owns the format constants, `CacheSettings` (the
content-defining part of the manifest, hashed into `settings_sha256`) and `read_manifest`, which
refuses any manifest that is malformed, of another format version, or out of sequence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...models.hook_names import TOKEN_SELECTIONS
from ...utils import config as cfg
from ...utils.errors import SparsesteerError, unknown
from ...utils.io import sha256_file
from ...utils.settings_hash import canonical_json, difference, settings_sha256

FORMAT = "sparsesteer-activations"
FORMAT_VERSION = 2
"""Written by this version. 2 added `settings.classes`; version-1 caches are still read."""
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
LABELS_FILE = "labels.npy"
SHARDS_DIR = "shards"
INDEX_ROLE = "index"
LOCK_FILE = ".lock"

DType = Literal["float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
VERIFY_MODES = ("lazy", "all", "none")
# Explicit little-endian dtypes so that the .npy header (and hence the sha256) is the same everywhere.
STORED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # the raw bfloat16 bits
}
INDEX_DTYPE = np.dtype("<i4")
LABELS_DTYPE = np.dtype("<i8")
INT32_MAX = 2**31 - 1
SHARD_FILE_RE = re.compile(r"^(\d+)\.npy$")


def acts_role(hook: str) -> str:
    """Manifest role of a hook's activation file in a shard's `files`."""
    return f"acts:{hook}"


def shard_file_name(role: str, index: int) -> str:
    """Path of a shard file relative to the cache directory, e.g. `shards/blocks.3.resid_post/00007.npy`."""
    folder = INDEX_ROLE if role == INDEX_ROLE else role.removeprefix("acts:")
    return f"{SHARDS_DIR}/{folder}/{index:05d}.npy"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSettings:
    """Everything that defines a cache's content. Two runs with equal settings (same
    `settings_sha256`) produce the same bytes, which is what makes resuming safe; a writer refuses
    to add shards to a cache whose settings differ."""

    hooks: tuple[str, ...]
    """Hook points cached (e.g. `blocks.11.resid_post`); each gets its own file per shard."""
    d: dict[str, int]
    """Activation width of each hook (hook -> d)."""
    tokens: str | tuple[int, ...]
    """Token selection that produced `token_positions`: `cls`, `patch`, `all`, or explicit token indices."""
    token_positions: tuple[int, ...]
    """Model token indices kept for every image, in stored row order (e.g. (0,) for cls, 1..49 for patch)."""
    cls_position: int | None
    """Index of the CLS token in the model's token sequence; None for models without one (SigLIP)."""
    n_images: int
    """Images planned (the size of the dataset split); image indices run 0 .. n_images-1."""
    dtype: DType = "float32"
    """Storage dtype of the activations; bfloat16 is stored as its uint16 bits."""
    tokens_per_image: int | None = None
    """Rows per image; always len(token_positions) (filled in when omitted)."""
    model: dict[str, Any] | None = None
    """{id, revision, arch} of the model that produced the activations; None for arrays written by hand."""
    dataset: dict[str, Any] | None = None
    """The dataset spec (JSON, opaque to the cache)."""
    split: str | None = None
    """Dataset split the images come from."""
    preprocessing: dict[str, Any] | None = None
    """Image preprocessing (JSON, opaque to the cache)."""
    classes: tuple[str, ...] | None = None
    """Readable class names, `classes[label]` (format version 2), so that zero-shot needs no dataset on
    disk; None for unlabeled data and in version-1 caches (then absent from the JSON)."""
    forward: Literal["float32", "bfloat16"] = "float32"
    """Precision of the model forward that produced the activations: float32, or bfloat16 autocast
    (`cache --bf16`; absent from the JSON when float32, so older caches keep their hash)."""

    def __post_init__(self) -> None:
        def fail(field: str, why: str) -> SparsesteerError:
            return SparsesteerError(f"cache settings: field {field}: {why}")

        def as_index(x: Any, field: str) -> int:
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or not 0 <= x <= INT32_MAX:
                raise fail(field, f"expected a token/image index (int >= 0), got {x!r}")
            return int(x)

        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass

        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        if not hooks:
            raise fail("hooks", "at least one hook is needed")
        for h in hooks:
            if not isinstance(h, str) or not h or h == INDEX_ROLE or h.startswith(".") or "/" in h or "\\" in h:
                raise fail("hooks", f"{h!r} cannot be a hook name (it names a folder under shards/)")
        if len(set(hooks)) != len(hooks):
            raise fail("hooks", f"duplicate hook in {list(hooks)}")
        set_("hooks", hooks)

        if not isinstance(self.d, Mapping) or set(self.d) != set(hooks):
            got = sorted(self.d) if isinstance(self.d, Mapping) else self.d
            raise fail("d", f"needs exactly one width per hook {list(hooks)}, got {got}")
        d = {}
        for h in hooks:
            w = self.d[h]
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w <= 0:
                raise fail(f"d.{h}", f"expected a positive int, got {w!r}")
            d[h] = int(w)
        set_("d", d)

        positions = tuple(as_index(t, "token_positions") for t in self.token_positions)
        if not positions or len(set(positions)) != len(positions):
            raise fail("token_positions", f"needs distinct token indices, got {list(positions)}")
        set_("token_positions", positions)

        cls_position = None if self.cls_position is None else as_index(self.cls_position, "cls_position")
        set_("cls_position", cls_position)

        tokens = self.tokens
        if isinstance(tokens, str):
            if tokens not in TOKEN_SELECTIONS:
                raise unknown("token selection", tokens, TOKEN_SELECTIONS)
            if tokens == "cls" and (cls_position is None or positions != (cls_position,)):
                raise fail(
                    "token_positions", f"tokens='cls' keeps only cls_position {cls_position}, got {list(positions)}"
                )
            if tokens == "patch" and cls_position in positions:
                raise fail("token_positions", f"tokens='patch' cannot keep the CLS token {cls_position}")
            if tokens == "all" and cls_position is not None and cls_position not in positions:
                raise fail("token_positions", f"tokens='all' must keep the CLS token {cls_position}")
        else:
            tokens = tuple(as_index(t, "tokens") for t in tokens)
            if tokens != positions:
                raise fail(
                    "tokens", f"explicit token indices {list(tokens)} must equal token_positions {list(positions)}"
                )
        set_("tokens", tokens)

        if self.dtype not in DTYPES:
            raise unknown("cache dtype", str(self.dtype), DTYPES)
        if self.forward not in ("float32", "bfloat16"):
            raise fail("forward", f"expected 'float32' or 'bfloat16', got {self.forward!r}")
        if self.tokens_per_image is None:
            set_("tokens_per_image", len(positions))
        elif self.tokens_per_image != len(positions):
            raise fail("tokens_per_image", f"{self.tokens_per_image} != len(token_positions) = {len(positions)}")
        if isinstance(self.n_images, bool) or not isinstance(self.n_images, (int, np.integer)) or self.n_images < 1:
            raise fail("n_images", f"expected a positive int, got {self.n_images!r}")
        set_("n_images", int(self.n_images))
        if self.n_images > INT32_MAX:
            raise fail("n_images", f"{self.n_images} images do not fit the int32 row index")
        if self.split is not None and not isinstance(self.split, str):
            raise fail("split", f"expected a string, got {self.split!r}")
        if self.classes is not None:
            if isinstance(self.classes, str) or not all(isinstance(c, str) for c in self.classes):
                raise fail("classes", "expected a list of class-name strings")
            set_("classes", tuple(self.classes))
        for name in ("model", "dataset", "preprocessing"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise fail(name, f"expected a JSON object or null, got {value!r}")
            if value is not None:
                set_(name, dict(value))
        try:
            canonical_json(self.to_json())
        except (TypeError, ValueError) as e:
            raise SparsesteerError(f"cache settings are not plain JSON: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The settings as stored in manifest.json (field order = declaration order)."""
        data = cfg.to_dict(self)
        if data["classes"] is None:  # version-1 manifests have no such key: keep their hash
            del data["classes"]
        if data["forward"] == "float32":  # caches made before the field existed keep their hash
            del data["forward"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "cache settings") -> CacheSettings:
        """Settings from a manifest's `settings` (or a user dict); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise SparsesteerError(f"{where}: expected a JSON object, got {data!r}")
        return cfg.from_dict(cls, dict(data), where=where)

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of `to_json()`: equal settings <=> equal hash."""
        return settings_sha256(self.to_json())


def first_difference(old: Any, new: Any) -> tuple[str, Any, Any] | None:
    """The first (field path, old value, new value) where two JSON values differ (see
    `utils.settings_hash.difference`)."""
    return difference(old, new)


# --------------------------------------------------------------------------------------------------
# Manifest reading (shared by writer and reader)
# --------------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> tuple[dict[str, Any], CacheSettings]:
    """Load and check manifest.json: format, version, settings hash, shard records."""
    mpath = path / MANIFEST
    if not path.is_dir() or not mpath.is_file():
        raise SparsesteerError(f"{path} is not an activation cache (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SparsesteerError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise SparsesteerError(f"{mpath} is not an activation cache manifest (format {got!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        hint = "; upgrade sparsesteer" if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise SparsesteerError(
            f"{mpath}: unsupported format_version {version!r} (this sparsesteer reads {', '.join(map(str, READABLE_VERSIONS))}){hint}"
        )
    for key in ("settings", "settings_sha256", "shards", "skipped", "completed"):
        if key not in manifest:
            raise SparsesteerError(f"{mpath}: missing field {key!r}")
    settings = CacheSettings.from_json(manifest["settings"], where=f"{mpath}: settings")
    if settings.sha256 != manifest["settings_sha256"]:
        raise SparsesteerError(
            f"{mpath}: settings do not match settings_sha256 (the manifest was edited by hand?); re-create the cache"
        )
    roles = {acts_role(h) for h in settings.hooks} | {INDEX_ROLE}
    tpi = len(settings.token_positions)  # = tokens_per_image (checked in __post_init__)
    next_image = 0
    for i, shard in enumerate(manifest["shards"]):
        where = f"{mpath}: shards[{i}]"
        try:
            ok = (
                shard["index"] == i
                and shard["first_image"] == next_image
                and isinstance(shard["n_images"], int)
                and isinstance(shard["rows"], int)
                and shard["rows"] % tpi == 0
                and shard["rows"] // tpi <= shard["n_images"]
                and set(shard["files"]) == roles
                and all({"name", "sha256", "bytes"} <= set(f) for f in shard["files"].values())
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise SparsesteerError(
                f"{where} is malformed or out of sequence (expected first_image {next_image}, files {sorted(roles)})"
            )
        next_image += shard["n_images"]
    if next_image > settings.n_images:
        raise SparsesteerError(f"{mpath}: shards cover {next_image} images but the cache plans {settings.n_images}")
    if manifest["completed"] and (next_image != settings.n_images or not manifest.get("labels")):
        raise SparsesteerError(
            f"{mpath}: marked completed but covers {next_image} of {settings.n_images} images or has no labels"
        )
    return manifest, settings


def manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file the manifest lists: shard files in order, then labels."""
    files = [f for shard in manifest["shards"] for f in shard["files"].values()]
    if manifest.get("labels"):
        files.append(manifest["labels"])
    return files


def covered_images(manifest: dict[str, Any]) -> int:
    """Images covered by the committed shards (written or skipped): where a writer resumes."""
    shards = manifest["shards"]
    return shards[-1]["first_image"] + shards[-1]["n_images"] if shards else 0


def check_all_present(path: Path, manifest: dict[str, Any]) -> None:
    """Cheap check (stat only) that every file the manifest lists is there with its recorded size."""
    for entry in manifest_files(manifest):
        check_present(path, entry)


def check_present(path: Path, entry: dict[str, Any]) -> Path:
    """Cheap check (stat) that a listed file exists with its recorded size."""
    fpath = path / entry["name"]
    if not fpath.is_file():
        raise SparsesteerError(
            f"{fpath} is missing (listed in {MANIFEST}); the activation cache is damaged: re-create it"
        )
    size = fpath.stat().st_size
    if size != entry["bytes"]:
        raise SparsesteerError(
            f"{fpath} has {size} bytes but {MANIFEST} says {entry['bytes']}: "
            "the activation cache is corrupted; re-create it"
        )
    return fpath


def check_sha256(path: Path, entry: dict[str, Any]) -> Path:
    fpath = check_present(path, entry)
    digest = sha256_file(fpath)
    if digest != entry["sha256"]:
        raise SparsesteerError(
            f"{fpath}: sha256 {digest[:12]}... does not match {MANIFEST} ({entry['sha256'][:12]}...): "
            "the activation cache is corrupted; re-create it"
        )
    return fpath
