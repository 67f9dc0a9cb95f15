"""Public typographic-attack sets in their published layouts: photos of objects with a misleading
word written on them (by hand or printed). Each example's label is the true object; attribute
`typo_class` is the class of the written word (-1 when the word is not a class name) and `text(i)`
gives the word itself. One split, `test`.

    rta100         DATA_ROOT/rta100/**/label=<object>_text=<word>.<ext>
                   (RTA-100, Azuma & Matsui 2023, `rta100.zip` of github.com/azuma164/Defense-Prefix)
    paint-typo     DATA_ROOT/paint-typo/**/label=<object>_text=<word>.<ext>
                   (PAINT, Ilharco et al. 2022, `typographic_attack_data.zip` of github.com/mlfoundations/patching)
    disentangling  DATA_ROOT/disentangling/[**/]annotations.json (or annotation.json) + the images,
                   in `images/` beside it or beside it directly; optional classes.json
                   (Materzynska et al. 2022, github.com/joaanna/disentangling_spelling_in_clip)

The archives' inner folder names are not documented, so the file-name sets are found anywhere under
their folder (hidden entries and `__MACOSX` are skipped; image files whose names do not follow the
pattern are skipped with a warning and counted in `describe()`). Class names: the sorted union of the
objects and the words for the file-name sets (the class set of the Defense-Prefix evaluation, in a
fixed order); for disentangling, the keys of `classes.json` in file order when it exists, else the
sorted union of objects and words.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import SparsesteerError
from .builtin import FileListDataset, _is_image
from .datasets import missing_file

log = logging.getLogger(__name__)

ATTRIBUTE = "typo_class"
LABEL_TEXT = re.compile(r"^label=(?P<label>.+?)_text=(?P<text>.+)\.[^.]+$")
"""`label=dog_text=cat.png`: an image of a dog with "cat" written on it."""
SKIP_DIRS = frozenset({"__MACOSX"})

DISENTANGLING_DRIVE = "https://drive.google.com/drive/folders/17v74pmQs2zHrs9sJ_8D0bfrz5ykB5ZW2"
"""The Google Drive folder the authors' README links (a folder, not a file: no scripted download)."""


def scan_label_text(folder: Path) -> tuple[list[str], list[str]]:
    """(parsed, skipped): relative paths of the image files under `folder` (sorted) whose names do /
    do not follow `label=<object>_text=<word>.<ext>`."""
    parsed: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        rel = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            if not _is_image(name):
                continue
            (parsed if LABEL_TEXT.match(name) else skipped).append((rel / name).as_posix())
    return sorted(parsed), sorted(skipped)


def _index(names: list[str], classes: list[str]) -> np.ndarray:
    where = {c: i for i, c in enumerate(classes)}
    return np.asarray([where.get(n, -1) for n in names], dtype=np.int64)


class _TypoSet(FileListDataset):
    """Shared parts: one split, the written word per example, attribute `typo_class`."""

    SPLITS = ("test",)
    _texts: list[str]
    _skipped: list[str]

    def _finish(self, objects: list[str], texts: list[str], classes: list[str]) -> None:
        self.classes = classes
        self._labels = _index(objects, classes)
        self._texts = texts
        self.attributes = [ATTRIBUTE]
        self._attrs = {ATTRIBUTE: _index(texts, classes)}

    def text(self, i: int) -> str:
        """The word written on example i."""
        return self._texts[self._index(i)]

    def _describe_extra(self) -> dict[str, Any]:
        return {"skipped_files": len(getattr(self, "_skipped", []))}


class _LabelTextSet(_TypoSet):
    """Images named `label=<object>_text=<word>.<ext>` anywhere under DATA_ROOT/FOLDER."""

    NAME: str
    FOLDER: str

    def __init__(self, data_root: Path, split: str) -> None:
        data_root = Path(data_root)
        base = self._setup(self.NAME, split, data_root / self.FOLDER, self.SPLITS)
        if not base.is_dir():
            raise missing_file(base, self.NAME, data_root)
        files, skipped = scan_label_text(base)
        if not files:
            raise SparsesteerError(
                f"{self.NAME}: no images named label=<object>_text=<word>.<ext> under {base}"
                + (f" ({len(skipped)} other image file(s), e.g. {skipped[0]})" if skipped else "")
                + f"; fetch the set with `sparsesteer download {self.NAME} --data-root {data_root}`"
            )
        if skipped:
            log.warning(
                "%s: skipped %d image file(s) not named label=..._text=..., e.g. %s", base, len(skipped), skipped[0]
            )
        matches = [LABEL_TEXT.match(Path(f).name) for f in files]
        objects = [m["label"] for m in matches]  # type: ignore[index]
        texts = [m["text"] for m in matches]  # type: ignore[index]
        self._files, self._skipped = files, skipped
        self._finish(objects, texts, sorted(set(objects) | set(texts)))


class RTA100(_LabelTextSet):
    """RTA-100 (Defense-Prefix, Azuma & Matsui 2023): real photos with a word written on them."""

    NAME = "rta100"
    FOLDER = "rta100"


class PaintTypo(_LabelTextSet):
    """PAINT's real typographic attacks (Ilharco et al. 2022)."""

    NAME = "paint-typo"
    FOLDER = "paint-typo"


class Disentangling(_TypoSet):
    """Materzynska et al. 2022 ("Disentangling visual and written concepts in CLIP"): 180 photos of
    20 objects with a written word; `annotations.json` maps each file to its "true object" and
    "typographic attack label"."""

    NAME = "disentangling"
    FOLDER = "disentangling"
    ANNOTATIONS = ("annotations.json", "annotation.json")
    OBJECT, TEXT = "true object", "typographic attack label"

    def __init__(self, data_root: Path, split: str) -> None:
        data_root = Path(data_root)
        base = self._setup(self.NAME, split, data_root / self.FOLDER, self.SPLITS)
        found = self._annotations(base) if base.is_dir() else []
        if not found:
            raise SparsesteerError(
                f"disentangling: missing {base / self.ANNOTATIONS[0]}; the set is published as a Google Drive folder "
                f"({DISENTANGLING_DRIVE}, linked from github.com/joaanna/disentangling_spelling_in_clip): download it "
                f"and put its annotations.json and images under {base}"
            )
        if len(found) > 1:
            raise SparsesteerError(
                f"disentangling: several annotation files under {base}: {', '.join(map(str, found))}; keep one"
            )
        path = found[0]
        try:
            annotations = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SparsesteerError(f"{path}: cannot read it as JSON ({e})") from None
        if not isinstance(annotations, dict) or not annotations:
            raise SparsesteerError(
                f'{path}: expected an object {{"FILE": {{"{self.OBJECT}": ..., "{self.TEXT}": ...}}}}'
            )
        folder = path.parent
        files, objects, texts = [], [], []
        for key, entry in annotations.items():
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in (self.OBJECT, self.TEXT)):
                raise SparsesteerError(
                    f'{path}: entry {key!r} must hold string fields "{self.OBJECT}" and "{self.TEXT}"'
                )
            image = next((p for p in (folder / "images" / key, folder / key) if p.is_file()), None)
            if image is None:
                raise SparsesteerError(
                    f"{path}: image {key!r} is neither in {folder / 'images'} nor in {folder}; the download is incomplete"
                )
            files.append(image.relative_to(base).as_posix())
            objects.append(entry[self.OBJECT])
            texts.append(entry[self.TEXT])
        classes = self._classes(folder / "classes.json", objects, texts)
        lacking = sorted(set(objects) - set(classes))
        if lacking:
            raise SparsesteerError(f"{folder / 'classes.json'} does not list the object(s) {', '.join(lacking[:5])}")
        self._files = files
        self._finish(objects, texts, classes)

    def _annotations(self, base: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
            found += [Path(dirpath) / n for n in self.ANNOTATIONS if n in filenames]
        return sorted(found)

    @staticmethod
    def _classes(path: Path, objects: list[str], texts: list[str]) -> list[str]:
        if not path.is_file():
            return sorted(set(objects) | set(texts))
        try:
            listed = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SparsesteerError(f"{path}: cannot read it as JSON ({e})") from None
        if not isinstance(listed, (dict, list)) or not all(isinstance(c, str) for c in listed):
            raise SparsesteerError(f"{path}: expected a JSON object or list whose keys/items are class names")
        return list(listed)


TYPO_SETS: dict[str, type[FileListDataset]] = {
    "rta100": RTA100,
    "disentangling": Disentangling,
    "paint-typo": PaintTypo,
}


def check_label_text_folder(folder: Path) -> None:
    """Structural check of a downloaded file-name set: at least one `label=..._text=...` image."""
    files, skipped = scan_label_text(folder)
    if not files:
        raise SparsesteerError(
            f"{folder}: the archive holds no images named label=<object>_text=<word>.<ext> "
            f"({len(skipped)} other image file(s)); the published layout has changed"
        )
