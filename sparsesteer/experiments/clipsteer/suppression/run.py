"""The run context of `reproduce disentangle` and `reproduce typographic`: what every stage reads.

One run directory, OUT/{cache/SPLIT, sae/blockNN-TOKENS, text, select, sweep, plots, stages}, with
the settings, the lazily loaded backbone, the SAE keys (one per swept block), the selection and
test image sets (`ImageSet`: images, labels, the group or attribute labels; typographic sets also
their clean twins) and the zero-shot classifier. `check_inputs` refuses what cannot work before any
stage starts. Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ....models.hook_names import hook_name
from ....sae.provenance import Provenance
from ....utils import io
from ....utils.errors import SparsesteerError
from ...context import RunContext
from ..saes import BlockSAEs, SAEKey
from ..sparsity.config import parse_blocks
from .config import TASKS, DisentangleConfig, SuppressionOptions, TypographicConfig, parse_ns, parse_prompts

if TYPE_CHECKING:
    from ....data.datasets import ImageDataset
    from ....models.zeroshot import ZeroShotClassifier


@dataclass
class ImageSet:
    """The images of one role (selection or test)."""

    split: str
    images: ImageDataset
    """The images (typographic: the attacked ones)."""
    clean: ImageDataset | None
    """Typographic: the same images without the word, paired by index (None for sets without them)."""
    labels: np.ndarray
    attribute: np.ndarray
    """Disentangle: the spurious attribute (0/1); typographic: `typo_class`."""
    groups: np.ndarray | None
    """Disentangle: 2 * label + attribute; typographic: None."""

    def describe(self) -> dict[str, Any]:
        d = self.images.describe()
        return {"split": self.split, "n": len(self.images), "dataset": d.get("name"), "subset": d.get("subset")}


class SuppressionRun(RunContext, BlockSAEs):
    """One suppression run: settings, run directory and the resources the stages share."""

    def __init__(self, cfg: SuppressionOptions, out: str | Path):
        super().__init__(cfg, out)
        self.kind = "disentangle" if isinstance(cfg, DisentangleConfig) else "typographic"
        self._sets: dict[str, ImageSet] = {}

    # ------------------------------------------------------------------ model, SAEs
    @property
    def blocks(self) -> tuple[int, ...]:
        return parse_blocks(self.cfg.blocks, self.shape.n_blocks)

    @property
    def ns(self) -> tuple[int, ...]:
        return parse_ns(self.cfg.ns)

    def hook(self, block: int) -> str:
        return hook_name(block, self.cfg.hook_kind)

    def keys(self) -> list[SAEKey]:
        return [SAEKey(b, self.cfg.tokens) for b in self.blocks]

    @property
    def trains(self) -> bool:
        return self.cfg.sae_dir is None

    def expected(self, key: SAEKey) -> Provenance:
        bb = self.backbone
        return Provenance(
            model_id=bb.model_id, model_revision=bb.revision, hook=self.hook(key.block), tokens=key.tokens, d=bb.d_model
        )

    def rows(self, key: SAEKey):  # noqa: ANN201 - a RowView
        from ....activations.cache import ActivationCache

        return ActivationCache.open(self.path("cache", self.cfg.sae_split), verify="none").rows(
            self.hook(key.block), key.tokens
        )

    # ------------------------------------------------------------------ data
    @property
    def dataset_spec(self) -> str:
        """The dataset the SAEs train on and the test images come from."""
        c = self.cfg
        return str(TASKS[c.task]["dataset"]) if isinstance(c, DisentangleConfig) else c.dataset

    def roles(self) -> dict[str, tuple[str, str, int | None]]:
        """role -> (dataset spec, split, sample size) for 'select' and 'test'."""
        c = self.cfg
        if isinstance(c, DisentangleConfig):
            return {"select": (self.dataset_spec, c.select, c.n_select), "test": (self.dataset_spec, c.test, c.n_test)}
        assert isinstance(c, TypographicConfig)
        return {
            "select": (c.select_dataset or c.dataset, c.select_split, c.n_select),
            "test": (c.dataset, c.test_split, c.n_test),
        }

    def image_set(self, role: str) -> ImageSet:
        if role not in self._sets:
            self._sets[role] = self._load_set(role)
        return self._sets[role]

    def _load_set(self, role: str) -> ImageSet:
        from ....data import ensure_dataset
        from ....data.subset import Subset, draw

        spec, split, n = self.roles()[role]
        c = self.cfg
        full = ensure_dataset(spec, split, data_root=c.data_root)
        labels = full.labels()
        if isinstance(c, DisentangleConfig):
            task = TASKS[c.task]
            attr_name = str(task["attribute"])
            if attr_name not in full.attributes:
                raise SparsesteerError(
                    f"{spec} [{split}]: no {attr_name!r} column (in {task['attribute_file']} under the data root): "
                    f"the {c.task} task needs it as the spurious attribute; columns: {', '.join(full.attributes) or 'none'}"
                )
            attribute = np.asarray(full.attribute_array(attr_name), dtype=np.int64)
            groups: np.ndarray | None = 2 * labels + attribute
            by: tuple[str, ...] = ("label", attr_name)
        else:
            from ....data.typographic import ATTRIBUTE

            if ATTRIBUTE not in full.attributes:
                raise SparsesteerError(
                    f"{spec} [{split}]: no {ATTRIBUTE!r} attribute (the class of the written word): give a typographic "
                    "set (typo:SPEC, rta100, paint-typo, disentangling)"
                )
            attribute = np.asarray(full.attribute_array(ATTRIBUTE), dtype=np.int64)
            groups, by = None, ("label",)
        ds = draw(full, "group-balanced", n, c.seed, by=by)  # as many images of every group as there are
        clean = _clean_twin(full)
        keep = np.arange(len(full), dtype=np.int64)
        if isinstance(ds, Subset):
            keep = ds.indices
            clean = ds.paired(clean) if clean is not None else None
        return ImageSet(
            split=split,
            images=ds,
            clean=clean,
            labels=labels[keep],
            attribute=attribute[keep],
            groups=None if groups is None else groups[keep],
        )

    # ------------------------------------------------------------------ the classifier
    def prompts(self) -> tuple[list[str], np.ndarray]:
        """(prompt texts, class of each prompt)."""
        c = self.cfg
        classes = list(self.image_set("test").images.classes)
        if isinstance(c, DisentangleConfig):
            texts, owners = parse_prompts(c.prompts or tuple(TASKS[c.task]["prompts"]), classes)  # type: ignore[arg-type]
            return texts, np.asarray(owners, dtype=np.int64)
        return classes, np.arange(len(classes), dtype=np.int64)

    def classifier(self) -> ZeroShotClassifier:
        from ....models.templates import get_templates
        from ....models.zeroshot import ZeroShotClassifier

        texts, _ = self.prompts()
        templates = ["{}"] if self.kind == "disentangle" else get_templates(self.cfg.templates)
        return ZeroShotClassifier.build(self.backbone, texts, templates, cache_dir=self.path("text"))

    # ------------------------------------------------------------------ checks
    def check_inputs(self) -> None:
        """Refuse, before any work, what this run cannot do: the settings against the model's config
        first (`shape`: no weights loaded), then the image sets and --sae-dir."""
        c, shape = self.cfg, self.shape
        if not shape.has_text:
            raise SparsesteerError(
                f"{c.model!r} ({shape.arch}) has no text tower: suppression re-evaluates a zero-shot task"
            )
        self.blocks  # noqa: B018 - range check
        if c.tokens == "cls" and not shape.has_cls:
            raise SparsesteerError(f"--tokens cls: {c.model!r} has no CLS token")
        if self.trains:
            c.check_width(shape.d_model, c.model)
            for key in self.keys():  # the width the SAEs will have
                self.check_ns(c.expansion * shape.d_model, key)
        self.prompts()
        sel = self.image_set("select")
        self.image_set("test")
        if self.kind == "disentangle":
            attr = str(TASKS[c.task]["attribute"])  # type: ignore[attr-defined]
            for v in (0, 1):
                if not (sel.attribute == v).any():
                    raise SparsesteerError(
                        f"attribute {attr!r}: no images with {attr} = {v} in the selection split "
                        f"[{sel.split}] ({len(sel.labels)} images): the association needs both groups; pick another "
                        "--select-split or a larger --n-select"
                    )
        elif sel.clean is None:
            raise SparsesteerError(
                f"the selection images ({self.roles()['select'][0]} [{sel.split}]) have no clean twins: units are "
                "ranked attacked vs clean, so give a typo:SPEC as --select-dataset"
            )
        if self.trains:
            from ....data import ensure_dataset

            ensure_dataset(self.dataset_spec, c.sae_split, data_root=c.data_root)
        else:
            self.check_sae_dir()

    def check_ns(self, n_latents: int, key: SAEKey) -> None:
        """An n above the SAE's latents is left out of its sweep (as --ns says, and as for neurons and
        heads); refused only when that leaves the SAE nothing to suppress."""
        if all(n > n_latents for n in self.ns):
            raise SparsesteerError(
                f"--ns: every n ({', '.join(map(str, self.ns))}) is larger than the {n_latents} latents of the SAE "
                f"{self.sae_path(key)}{' (--expansion x d_model)' if self.trains else ''}; give an n <= {n_latents}"
            )

    def save(self, name: str, obj: Any) -> None:
        io.write_json(self.path(name), obj)

    def load(self, name: str) -> Any:
        return io.read_json(self.path(name))


def _clean_twin(ds: ImageDataset) -> ImageDataset | None:
    """The clean images paired by index with a typographic dataset (None when it has none)."""
    from ....data.typographic import TypographicDataset

    return ds.base if isinstance(ds, TypographicDataset) else None
