"""The on-disk activation cache: a writer that resumes, a memory-mapped reader, and verification.

A cache is a directory (full description in docs/formats.md, "Activation cache"):

    manifest.json                       settings, per-shard files with sha256, skipped images, completed
    shards/<hook>/00000.npy ...         activations [rows, d] of each hook, one file per hook per shard
    shards/index/00000.npy ...          int32 [rows, 2] = (image index, token index) of each row
    labels.npy                          int64 [n_images], -1 when unlabeled (written by `finish`)

Rows are image-major: every image contributes `tokens_per_image` consecutive rows, one per entry of
`token_positions`, in that order. The manifest is the commit point: shard files are written and
renamed first, then the manifest that lists them is replaced atomically, so a crash leaves either
the old manifest (the new files are garbage that a resumed writer removes and rewrites) or the new
one (the files are complete and fsynced). Every file is a plain `.npy` whose bytes depend only on its
content, so an interrupted-and-resumed cache is byte-identical to an uninterrupted one.

numpy has no bfloat16: bfloat16 caches store the raw bits as uint16 and reads view them as
`torch.bfloat16`.

Modules: `settings` (format constants, `CacheSettings`, manifest checks), `writer` (`CacheWriter`),
`reader` (`ActivationCache`, `RowView`, the `RowSource` protocol, `VerifyReport`).
"""

from __future__ import annotations

from .reader import ActivationCache, Rows, RowSource, RowView, VerifyReport
from .settings import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    INDEX_ROLE,
    LABELS_FILE,
    MANIFEST,
    STORED_DTYPES,
    TOKEN_SELECTIONS,
    CacheSettings,
    DType,
    acts_role,
    shard_file_name,
)
from .writer import CacheWriter

__all__ = [
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_ROLE",
    "LABELS_FILE",
    "MANIFEST",
    "STORED_DTYPES",
    "TOKEN_SELECTIONS",
    "ActivationCache",
    "CacheSettings",
    "CacheWriter",
    "DType",
    "RowSource",
    "RowView",
    "Rows",
    "VerifyReport",
    "acts_role",
    "shard_file_name",
]
