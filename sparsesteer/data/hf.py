"""`hf:REPO_ID` datasets through Hugging Face `datasets` (optional extra: `pip install 'sparsesteer[hf]'`).

REPO_ID is a hub dataset id, a local folder `datasets.load_dataset` can read (e.g. parquet files
under data/), or a directory written by `Dataset(Dict).save_to_disk`. The image column (first
`Image` feature) and label column (first `ClassLabel` feature) are detected unless given as
options; class names come from the ClassLabel ('_' -> ' '). Images are read undecoded
(`Image(decode=False)`) and decoded here, so `labels()` never touches them and a broken image
raises `UnreadableImage` naming its row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError, unknown
from .datasets import ImageDataset, check_labels, check_split, decode_image

_IMAGE_NAMES = ("image", "img", "picture", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "target")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SparsesteerError(
            "hf: datasets need the Hugging Face `datasets` package: pip install 'sparsesteer[hf]'"
        ) from None
    return datasets


def _saved_dir(repo_id: str) -> Path | None:
    path = Path(repo_id).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return path
    return None


def _from_cache_without_hub(hf: Any, repo_id: str, split: str, options: dict[str, Any]) -> Any | None:
    """A hub dataset when the hub is out of reach, as models fail fast (`utils.hub.check_hub`): with
    offline mode on (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) or no connection to the hub, the split comes
    from the `datasets` cache, read without a request, or a one-line error says how to work offline;
    `datasets` would otherwise retry each request for about half a minute. None when the hub is
    reachable: load as usual."""
    from ..utils import hub

    loaded: list[Any] = []

    def cached() -> bool:
        online = hf.config.HF_HUB_OFFLINE
        hf.config.HF_HUB_OFFLINE = True  # the cache only: no request, no retry
        try:
            loaded.append(hf.load_dataset(repo_id, split=split, **options))
            return True
        except (ConnectionError, FileNotFoundError):  # not cached (datasets says so with these)
            return False
        except ValueError as e:  # cached, but not this split (or these options)
            raise SparsesteerError(f"hf:{repo_id}: cannot load split {split!r} from the local cache: {e}") from None
        finally:
            hf.config.HF_HUB_OFFLINE = online

    revision = options.get("revision")
    hub.check_hub(
        repo_id,
        what="dataset",
        flag="--dataset",
        cached=cached,
        revision=revision,
        offline_too=hf.config.HF_HUB_OFFLINE,
        cache=options.get("cache_dir") or hf.config.HF_DATASETS_CACHE,
    )
    if hub.offline():  # check_hub switched this process offline (datasets keeps its own copy of the flag)
        hf.config.HF_HUB_OFFLINE = True
    return loaded[0] if loaded else None


class HFDataset(ImageDataset):
    """A split of a Hugging Face dataset. Options other than the two column names go to `load_dataset`."""

    def __init__(
        self,
        repo_id: str,
        split: str,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        **load_options: Any,
    ) -> None:
        hf = _datasets()
        self.name = f"hf:{repo_id}"
        self.split = split
        self.root = repo_id
        self._load_options = load_options
        ds = self._load(repo_id, split, load_options)
        features = ds.features
        image = image_column or self._detect(features, hf.Image, _IMAGE_NAMES)
        if image is None:
            raise SparsesteerError(f"no image column found among {list(features)}; pass the option image_column=NAME")
        self._image_column = image
        if self._image_column not in features:
            raise SparsesteerError(f"{self.name}: {unknown('image column', self._image_column, list(features))}")
        if label_column is not None and label_column not in features:
            raise SparsesteerError(f"{self.name}: {unknown('label column', label_column, list(features))}")
        self._label_column = label_column or self._detect(features, hf.ClassLabel, _LABEL_NAMES)
        self._ds = ds.cast_column(self._image_column, hf.Image(decode=False))
        if self._label_column is None:
            self._labels = np.full(len(ds), -1, dtype=np.int64)
            self.classes = []
        else:
            column = ds.select_columns([self._label_column]).with_format("numpy")[self._label_column]
            try:
                self._labels = np.asarray(column).astype(np.int64).reshape(len(ds))
            except (TypeError, ValueError):
                raise SparsesteerError(
                    f"{self.name}: label column {self._label_column!r} does not hold one integer per example"
                ) from None
            feature = features[self._label_column]
            if isinstance(feature, hf.ClassLabel):
                self.classes = [n.replace("_", " ") for n in feature.names]
            else:  # plain integers: no names to read
                self.classes = [str(i) for i in range(int(self._labels.max(initial=-1)) + 1)]
        check_labels(self._labels, self.classes, f"{self.name} [{split}] column {self._label_column!r}")
        self.attributes, self._attrs = [], {}

    def _load(self, repo_id: str, split: str, options: dict[str, Any]) -> Any:
        hf = _datasets()
        saved = _saved_dir(repo_id)
        if saved is not None:
            loaded = hf.load_from_disk(str(saved))
            if isinstance(loaded, hf.DatasetDict):
                check_split(self.name, split, list(loaded))
                return loaded[split]
            check_split(self.name, split, ["train"])  # a single saved Dataset is one split
            return loaded
        if not Path(repo_id).expanduser().is_dir():  # a hub id: without the hub, the cache or one error, at once
            cached = _from_cache_without_hub(hf, repo_id, split, options)
            if cached is not None:
                return cached
        try:
            splits: list[str] | None = self.available_splits(repo_id, revision=options.get("revision"))
        except SparsesteerError:  # listing can fail where loading works (e.g. offline cache); let load decide
            splits = None
        if splits is not None:
            check_split(self.name, split, splits)
        try:
            return hf.load_dataset(repo_id, split=split, **options)
        except (FileNotFoundError, ConnectionError, ValueError) as e:
            raise SparsesteerError(f"{self.name}: cannot load split {split!r}: {e}") from None

    @staticmethod
    def _detect(features: dict, kind: type, names: tuple[str, ...]) -> str | None:
        """The first column of feature type `kind`, else the first of the usual `names`; None if neither."""
        for column, feature in features.items():
            if isinstance(feature, kind):
                return column
        for column in names:
            if column in features:
                return column
        return None

    @staticmethod
    def available_splits(repo_id: str, revision: str | None = None) -> list[str]:
        hf = _datasets()
        saved = _saved_dir(repo_id)
        if saved is not None:
            if (saved / "dataset_dict.json").is_file():
                return list(json.loads((saved / "dataset_dict.json").read_text())["splits"])
            return ["train"]
        from huggingface_hub import constants

        from ..utils import hub

        was = hf.config.HF_HUB_OFFLINE
        # an unreachable hub: the cache's answer (or its error) at once, not half a minute of retries
        hf.config.HF_HUB_OFFLINE = was or hub.offline() or not hub.reachable(constants.ENDPOINT)
        try:
            return list(hf.get_dataset_split_names(repo_id, revision=revision))
        except Exception as e:  # noqa: BLE001 - datasets raises many types (hub, offline, format)
            raise SparsesteerError(f"hf:{repo_id}: cannot list splits: {type(e).__name__}: {e}") from None
        finally:
            hf.config.HF_HUB_OFFLINE = was

    def _row_image(self, i: int) -> dict[str, Any]:
        value = self._ds[i][self._image_column]
        if not isinstance(value, dict):
            raise SparsesteerError(f"{self.name}: column {self._image_column!r} is not an image column")
        return value

    def _load_image(self, i: int) -> Image.Image:
        value = self._row_image(i)
        if value.get("bytes") is not None:
            return decode_image(value["bytes"], self.source(i))
        if value.get("path"):
            return decode_image(value["path"], self.source(i))
        raise SparsesteerError(f"{self.source(i)}: row has neither image bytes nor a path")

    def source(self, i: int) -> str:
        i = self._index(i)
        where = f"{self.name} [{self.split}] row {i}"
        path = self._ds[i][self._image_column].get("path") if self._image_column else None
        return f"{where} ({path})" if path else where

    def _describe_extra(self) -> dict[str, Any]:
        options = {k: v for k, v in self._load_options.items() if isinstance(v, (str, int, float, bool, type(None)))}
        return {"image_column": self._image_column, "label_column": self._label_column, "options": options}
