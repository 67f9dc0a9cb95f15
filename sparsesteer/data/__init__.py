"""Images -> pixels: datasets behind one interface, model preprocessing, downloads, class names.

    from sparsesteer.data import open_dataset, Preprocessor
    ds = open_dataset("cifar100", "test")                  # or "folder:/path", "hf:owner/repo", "typo:cifar100"
    pre = Preprocessor.from_pretrained("openai/clip-vit-base-patch32")
    pixels = pre.batch([ds[i].image for i in range(8)])    # float32 [8, 3, 224, 224]

Modules: `datasets` (the interface), `registry` (spec strings: `open_dataset`), `subset` (`--limit`), `builtin`/`cifar`/`hf`/`sample` (the datasets),
`typographic` (`typo:`: words rendered onto any labelled set), `typo_sets` (rta100, disentangling, paint-typo),
`preprocess` (`Preprocessor`), `names` (shipped class names), `download` (+ `commands`: the CLI).
Attributes are imported lazily so that `sparsesteer --help` stays fast.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "Example": "datasets",
    "ImageDataset": "datasets",
    "UnreadableImage": "datasets",
    "open_dataset": "registry",
    "ensure_dataset": "registry",
    "available_splits": "registry",
    "dataset_names": "registry",
    "parse_spec": "registry",
    "limit_dataset": "subset",
    "stratified_sample": "subset",
    "default_data_root": "datasets",
    "DEFAULT_DATA_ROOT": "datasets",
    "Preprocessor": "preprocess",
    "classnames": "names",
    "TypographicDataset": "typographic",
    "TypoOptions": "typographic",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
