"""Concept vocabularies: the words a steered image embedding is read out against (steerability).

A vocabulary is any UTF-8 text file with one concept per line, or a built-in name:

    imagenet1k   the 1,000 ImageNet class names (OpenAI's cleaned CLIP names; `classnames/imagenet1k.txt`)
    cifar100     the 100 CIFAR-100 class names (`classnames/cifar100.txt`)

Lines are stripped; empty lines and lines starting with `#` (comments, as in the shipped files) are
skipped. `limit` keeps the first N such lines (the paper used the first 5,000 lines of CLIP-Dissect's
`data/20k.txt`; see docs/steering.md for where to get it). Repeated concepts are kept once, at their
first line (a concept counted twice would split its probability mass between two identical rows), and
the number dropped is recorded. A vocabulary needs at least two distinct concepts: the softmax over
one concept is 1 whatever the image, so nothing could be measured.

Torch-free: the text embeddings (cached like the zero-shot classifier's) are made in
`steering/steerability.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..utils.errors import SparsesteerError, did_you_mean

BUILTIN_VOCABS = ("imagenet1k", "cifar100")
"""Built-in vocabulary names (shipped class-name lists)."""


@dataclass(frozen=True)
class Vocabulary:
    """A list of distinct concepts and where it came from."""

    concepts: tuple[str, ...]
    """Distinct concepts in file order (first occurrence kept)."""
    source: str
    """The built-in name, or the file's path."""
    n_lines: int
    """Concept lines read (after `limit`, before removing repeats)."""
    n_duplicates: int
    """Lines dropped because their concept occurred earlier."""
    limit: int | None = None
    """The `limit` applied (first N lines), or None."""

    def __len__(self) -> int:
        return len(self.concepts)

    @property
    def sha256(self) -> str:
        """Hash of the concept list (one per line), for provenance in results."""
        return hashlib.sha256("".join(f"{c}\n" for c in self.concepts).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "source": self.source,
            "n_concepts": len(self.concepts),
            "n_lines": self.n_lines,
            "n_duplicates": self.n_duplicates,
            "limit": self.limit,
            "sha256": self.sha256,
        }


def parse_vocab(text: str, source: str, *, limit: int | None = None) -> Vocabulary:
    """A `Vocabulary` from the text of a vocabulary file (see the module docstring for the rules)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SparsesteerError(f"vocabulary limit must be a positive integer, got {limit!r}")
    lines = [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]
    if limit is not None:
        lines = lines[:limit]
    concepts = tuple(dict.fromkeys(lines))
    if not concepts:
        raise SparsesteerError(f"vocabulary {source} is empty: give a text file with one concept per line")
    if len(concepts) < 2:
        raise SparsesteerError(
            f"vocabulary {source} has a single distinct concept {concepts[0]!r} ({len(lines)} lines): the "
            "steerability metric compares probabilities over at least two concepts"
        )
    return Vocabulary(concepts, source, len(lines), len(lines) - len(concepts), limit)


def load_vocab(spec: str, *, limit: int | None = None) -> Vocabulary:
    """A vocabulary from a file path or a built-in name (an existing file wins over a built-in name)."""
    path = Path(str(spec)).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SparsesteerError(f"vocabulary file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        return parse_vocab(text, str(path), limit=limit)
    if spec in BUILTIN_VOCABS:
        text = (resources.files(__package__) / "classnames" / f"{spec}.txt").read_text(encoding="utf-8")
        return parse_vocab(text, spec, limit=limit)
    if path.exists():
        raise SparsesteerError(f"vocabulary {spec!r} is not a file")
    raise SparsesteerError(
        f"vocabulary {spec!r}: no such file, and not a built-in vocabulary{did_you_mean(str(spec), BUILTIN_VOCABS)} "
        f"(built-ins: {', '.join(BUILTIN_VOCABS)})"
    )
