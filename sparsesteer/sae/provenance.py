"""Where an SAE's inputs came from, and the check that things used together agree.

An SAE is only meaningful on the activations it was trained on: the same model and revision, hook,
token selection and width. `Provenance` is that record. The trainer fills it from its row source (an
activation cache describes itself: `RowView.describe()`), the checkpoint stores it in cfg.json (flat
keys `hook`, `tokens`, `model`, `dataset`, `split`, `classes`, as earlier versions wrote them), and
every command that combines an SAE with a cache, a model or a retrieval database calls
`check_agree`, which refuses a mismatch with a message naming both sides. `--allow-mismatch`
turns the refusal into a note that the command writes into its outputs.

Unknown fields (None: an array without a manifest, a foreign SAE without a revision) are not
mismatches; they are simply not checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from ..activations.cache import ActivationCache, RowView

CHECKED = ("model_id", "model_revision", "hook", "tokens", "d")
"""Fields that must agree for an SAE and the activations it reads."""

_LABELS = {
    "model_id": "model",
    "model_revision": "model revision",
    "hook": "hook",
    "tokens": "tokens",
    "d": "width",
    "dataset": "dataset",
    "split": "split",
    "classes_sha256": "class names",
}


@dataclass(frozen=True)
class Provenance:
    """What produced a set of activations (and so what an SAE trained on them expects)."""

    model_id: str | None = None
    """Hub id or directory of the model."""
    model_revision: str | None = None
    """Hub commit hash, or 'sha256-…' of a local model directory."""
    hook: str | None = None
    """Hook point, e.g. 'blocks.11.resid_post'."""
    tokens: str | tuple[int, ...] | None = None
    """Token selection: 'cls', 'patch', 'all' or explicit token indices."""
    d: int | None = None
    """Activation width."""
    dataset: str | None = None
    """Dataset spec ('cifar100', 'folder:/x', 'hf:org/name')."""
    split: str | None = None
    """Dataset split."""
    classes: tuple[str, ...] | None = None
    """Class names of the labels, when known."""
    subset: dict[str, Any] | None = None
    """The `--limit` sample (rule, n, seed, indices_sha256) when not the whole split."""
    activations: str | None = None
    """Path of the activation cache, when there was one."""

    def __post_init__(self) -> None:
        if isinstance(self.tokens, list):
            object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def classes_sha256(self) -> str | None:
        if self.classes is None:
            return None
        return hashlib.sha256("".join(f"{c}\n" for c in self.classes).encode()).hexdigest()

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_rows(cls, describe: Mapping[str, Any]) -> Provenance:
        """From a row source's `describe()` (an activation cache view names its model, hook, ...)."""
        model = describe.get("model") or {}
        dataset = describe.get("dataset")
        return cls(
            model_id=model.get("id"),
            model_revision=model.get("revision"),
            hook=describe.get("hook"),
            tokens=describe.get("tokens"),
            d=describe.get("d"),
            dataset=dataset.get("name") if isinstance(dataset, Mapping) else dataset,
            split=describe.get("split"),
            classes=describe.get("classes"),
            subset=describe.get("subset"),
            activations=describe.get("path"),
        )

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], d: int | None = None) -> Provenance:
        """From an SAE's metadata (cfg.json keys; older checkpoints and imported SAEs included)."""
        model = meta.get("model")
        model = model if isinstance(model, Mapping) else {"id": model} if model else {}
        dataset = meta.get("dataset")
        return cls(
            model_id=model.get("id"),
            model_revision=model.get("revision"),
            hook=meta.get("hook"),
            tokens=meta.get("tokens"),
            d=d,
            dataset=dataset.get("name") if isinstance(dataset, Mapping) else dataset,
            split=meta.get("split"),
            classes=meta.get("classes"),
            subset=meta.get("subset"),
            activations=meta.get("activations"),
        )

    def to_metadata(self, *, known_only: bool = False) -> dict[str, Any]:
        """The cfg.json keys (the width is the SAE's own d_in, so it is not repeated). `known_only`
        leaves out what is unknown (an SAE trained on a bare array records no hook or model)."""
        out: dict[str, Any] = {
            "hook": self.hook,
            "tokens": list(self.tokens) if isinstance(self.tokens, tuple) else self.tokens,
            "model": {"id": self.model_id, "revision": self.model_revision},
            "dataset": self.dataset,
            "split": self.split,
        }
        for key in ("classes", "subset", "activations"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        if known_only:
            out = {k: v for k, v in out.items() if v is not None}
            if self.model_id is None:
                out.pop("model")
        return out

    def replace(self, **changes: Any) -> Provenance:
        return dataclasses.replace(self, **changes)

    def describe(self, fields: Iterable[str] = CHECKED) -> str:
        """'model X (revision r), hook h, tokens t, width d' over the known fields."""
        parts = []
        for f in fields:
            value = self.classes_sha256 if f == "classes_sha256" else getattr(self, f)
            if value is not None:
                parts.append(f"{_LABELS.get(f, f)} {value if f != 'classes_sha256' else value[:12]}")
        return ", ".join(parts) or "unknown provenance"


def rows_for(
    cache: ActivationCache, prov: Provenance, *, hook: str | None = None, tokens: str | None = None
) -> RowView:
    """The view of `cache` that an SAE with provenance `prov` reads: its hook (or the cache's only
    one) and its token selection (a filter when the cache holds more rows). `hook`/`tokens` given
    by the user win; whether the result agrees with the SAE is for `check_agree` to say."""
    if hook is None:
        if prov.hook in cache.hooks:
            hook = prov.hook
        elif len(cache.hooks) != 1:
            raise SparsesteerError(
                f"{cache.path} holds hooks {', '.join(cache.hooks)} and the SAE records "
                f"{prov.hook or 'no hook'}: pass --hook"
            )
    if tokens is None and isinstance(prov.tokens, str) and prov.tokens != cache.settings.tokens:
        tokens = prov.tokens  # e.g. a CLS SAE on an all-token cache: read its CLS rows
    return cache.rows(hook, tokens)


def mismatches(a: Provenance, b: Provenance, fields: Iterable[str] = CHECKED) -> list[str]:
    """The fields (by label) where both sides are known and differ. The same known revision is the
    same model, whatever it is called (a hub id and the directory it was saved to)."""
    out = []
    same_revision = a.model_revision is not None and a.model_revision == b.model_revision
    for f in fields:
        if f == "model_id" and same_revision:
            continue
        x = a.classes_sha256 if f == "classes_sha256" else getattr(a, f)
        y = b.classes_sha256 if f == "classes_sha256" else getattr(b, f)
        if x is not None and y is not None and x != y:
            out.append(f"{_LABELS.get(f, f)}: {x!r} vs {y!r}" if f != "classes_sha256" else "class names differ")
    return out


def check_agree(
    left: str,
    a: Provenance,
    right: str,
    b: Provenance,
    *,
    fields: Iterable[str] = CHECKED,
    allow: bool = False,
) -> list[str]:
    """Refuse (SparsesteerError) when `a` and `b` disagree on `fields`; with `allow`, return the
    disagreements as notes for the command's outputs instead (empty list when they agree)."""
    fields = tuple(fields)
    diff = mismatches(a, b, fields)
    if not diff:
        return []
    note = f"{left} and {right} disagree ({'; '.join(diff)})"
    if allow:
        return [note]
    raise SparsesteerError(
        f"{note}: {left} has {a.describe(fields)}; {right} has {b.describe(fields)}. "
        "Use matching inputs, or pass --allow-mismatch to run anyway (the outputs then say so)"
    )
