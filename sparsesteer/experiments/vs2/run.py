"""The run context of `reproduce vs2`: what every stage reads.

One run directory, OUT/{cache, retriever caches, sae, arrays, text, plots, stages}, with the
settings, the lazily loaded CLIP backbone, the datasets, the cached CLS rows, the saved arrays, the
SAEs and the zero-shot classifiers. The stages (`pipeline.py`, `tuning.py`, `report.py`) take a
`VS2Run`; none of them imports another. Heavy imports happen on first use, so importing this module
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ...models.hook_names import hook_name
from ...utils import io
from ...utils.errors import SparsesteerError
from ..context import TrainTestRun
from . import paper
from .config import VS2Config

if TYPE_CHECKING:
    import torch

    from ...data.datasets import ImageDataset
    from ...models.backbone import Backbone
    from ...models.zeroshot import ZeroShotClassifier
    from ...sae import SparseAutoencoder
    from ...steering.classify import CLSClassifier


class LabelledRows(NamedTuple):
    """A split's CLS rows with their labels: every VS2 stage reads the labels (scores, tuning)."""

    x: torch.Tensor
    """[N, d] float32 CLS vectors."""
    labels: np.ndarray
    """int64 [N] label of each image."""


class VS2Run(TrainTestRun):
    """One `reproduce vs2` run: settings, run directory and the resources the stages share."""

    cfg: VS2Config

    # ------------------------------------------------------------------ paths and arrays

    def save_array(self, name: str, array: np.ndarray | torch.Tensor) -> None:
        if hasattr(array, "cpu"):  # a tensor
            array = array.cpu()
        io.write_npy(self.path("arrays", f"{name}.npy"), np.asarray(array))

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.path("arrays", f"{name}.npy"), allow_pickle=False)

    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(fit, validation) indices of the train split (fixed by val_fraction and seed)."""
        from ...steering.tuning import validation_split

        n = int(self.load_array("train_labels").shape[0])
        return validation_split(n, self.cfg.val_fraction, self.cfg.seed)

    # ------------------------------------------------------------------ model and data
    def check_backbone(self, backbone: Backbone) -> None:
        if backbone.arch != "clip":
            raise SparsesteerError(
                f"VS2 needs a CLIP backbone (zero-shot through the CLS head); {self.cfg.model!r} is {backbone.arch}"
            )

    def check_dataset(self, dataset: ImageDataset) -> None:
        if not dataset.classes:
            raise SparsesteerError(
                f"dataset {self.cfg.dataset!r} has no class names: zero-shot classification needs them"
            )

    def check_inputs(self) -> None:
        """Refuse, before any stage, what this run cannot do, naming the setting at fault: the settings
        against the model's config (a CLIP, the Table 7 block counts, k against the SAE width), then the
        datasets, the validation part and the kNN database it tunes against (--neighbours): every size a
        stage needs follows from these, so a small dataset is refused here, not after caching and
        training. The model itself loads in the first stage that needs it."""
        c, shape = self.cfg, self.shape
        if shape.arch != "clip":
            raise SparsesteerError(
                f"VS2 needs a CLIP backbone (zero-shot through the CLS head); {c.model!r} is {shape.arch}"
            )
        deep = [n for n in c.multi_layer if n > shape.n_blocks]
        if c.in_forward and deep:
            raise SparsesteerError(
                f"--multi-layer {deep[0]}: steering the last {deep[0]} blocks needs that many; {c.model!r} has "
                f"{shape.n_blocks}"
            )
        expansion, k = self.sae_shape()
        if k >= expansion * shape.d_model:
            raise SparsesteerError(
                f"--sae-k {k}: k must be smaller than the SAE's {expansion * shape.d_model} latents (expansion "
                f"{expansion} x width {shape.d_model} of {c.model!r})"
            )
        from ...steering.tuning import validation_split

        n_train = len(self.dataset(c.train_split))
        fit, val = validation_split(n_train, c.val_fraction, c.seed)
        if c.neighbours > len(fit):  # the tune stage's kNN database: test queries search all of train, more rows
            limited = f", --limit-train {c.limit_train}" if c.limit_train is not None else ""
            raise SparsesteerError(
                f"--neighbours {c.neighbours}: VS2++ retrieves {c.neighbours} neighbours per validation query from "
                f"the {len(fit)} fit rows of split {c.train_split!r} ({n_train} images{limited}, minus {len(val)} held "
                f"out by --val-fraction {c.val_fraction:g}); give --neighbours {len(fit)} or fewer, or more train images"
            )
        self.dataset(c.test_split)

    @property
    def final_block(self) -> int:
        """The block whose output CLS the paper's SAE reads (the last one; 23 for L/14)."""
        block, _, _ = paper.sae_config(self.cfg.model, self.shape.n_blocks)
        return block

    def sae_shape(self) -> tuple[int, int]:
        """(expansion, k) of the SAEs: the settings', else the paper's for this backbone."""
        _, expansion, k = paper.sae_config(self.cfg.model, self.shape.n_blocks)
        return self.cfg.sae_expansion or expansion, self.cfg.sae_k or k

    def cls_rows(self, split: str, block: int | None = None) -> LabelledRows:
        """(CLS vectors [N, d] float32, labels [N]) of a cached split at `block` (default: final)."""
        cache = self.open_cache(split, self.path("cache", split))
        x, labels = cache.rows(hook_name(self.final_block if block is None else block), "cls").read_all()
        if labels is None:  # only an unfinished cache has none (a finished one always holds labels.npy)
            raise SparsesteerError(
                f"{cache.path} is an incomplete activation cache (no labels yet): finish it with "
                "`sparsesteer reproduce vs2 --stage cache` and the run's settings and --out"
            )
        return LabelledRows(x, labels)

    # ------------------------------------------------------------------ SAEs and classifiers
    def load_sae(self, name: str) -> SparseAutoencoder:
        from ...sae import SparseAutoencoder

        return SparseAutoencoder.load(self.path("sae", name), device=self.backbone.device)

    def block_saes(self) -> dict[int, SparseAutoencoder]:
        """One SAE per block (the final block's is `sae/final`)."""
        final = self.final_block
        return {b: self.load_sae("final" if b == final else f"block{b:02d}") for b in range(self.backbone.n_blocks)}

    def classifier(self, templates: str = "single") -> ZeroShotClassifier:
        """The zero-shot classifier over the test split's class names (checked to be its cache's)."""
        from ...models.templates import get_templates
        from ...models.zeroshot import ZeroShotClassifier

        self.open_cache(self.cfg.test_split, self.path("cache", self.cfg.test_split))

        return ZeroShotClassifier.build(
            self.backbone,
            self.dataset(self.cfg.test_split).classes,
            get_templates(templates),
            cache_dir=self.path("text"),
        )

    def cls_classifier(self, templates: str = "single") -> CLSClassifier:
        from ...steering.classify import CLSClassifier

        return CLSClassifier(self.backbone, self.classifier(templates))
