"""The run context of `reproduce sparsity`: what every stage reads.

One run directory, OUT/{cache/{train,test}, sae/blockNN-TOKENS, text, plots, stages}, with the
settings, the lazily loaded backbone, the (limited) datasets, the SAE keys (one per block x token
configuration) and where each SAE lives (OUT/sae, or --sae-dir). `check_inputs` refuses what cannot
work (blocks out of range, a token type the model lacks, a dataset without class names, an SAE in
--sae-dir that does not match) before any stage starts. Heavy imports happen on first use, so
importing this module does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ....models.hook_names import TokenSelection, hook_name
from ....sae.provenance import Provenance
from ....utils.errors import SparsesteerError
from ...context import TrainTestRun
from ..saes import BlockSAEs, SAEKey, sae_provenance
from .config import SparsityConfig, parse_blocks

__all__ = ["SAEKey", "SparsityRun", "cache_tokens", "has_class_names", "sae_provenance"]

if TYPE_CHECKING:
    from ....activations.cache import ActivationCache, RowView
    from ....models.zeroshot import ZeroShotClassifier


def cache_tokens(configs: tuple[TokenSelection, ...]) -> TokenSelection:
    """The token selection a cache needs to serve every configuration: the one configuration when
    there is one, else all tokens (the views filter CLS and patch rows out of it)."""
    return configs[0] if len(configs) == 1 else "all"


def has_class_names(classes: list[str] | None) -> bool:
    """Whether a dataset names its classes (labels named '0', '1', ... do not count: no prompt)."""
    return classes is not None and bool(classes) and classes != [str(i) for i in range(len(classes))]


class SparsityRun(TrainTestRun, BlockSAEs):
    """One `reproduce sparsity` run: settings, run directory and the resources the stages share."""

    cfg: SparsityConfig

    # ------------------------------------------------------------------ model and data

    @property
    def blocks(self) -> tuple[int, ...]:
        return parse_blocks(self.cfg.blocks, self.shape.n_blocks)

    def hook(self, block: int) -> str:
        return hook_name(block, self.cfg.hook_kind)

    def keys(self) -> list[SAEKey]:
        """Every SAE of the report, block-major."""
        return [SAEKey(b, t) for b in self.blocks for t in self.cfg.tokens]

    @property
    def cls_position(self) -> int | None:
        return 0 if self.backbone.has_cls else None

    @property
    def patch_positions(self) -> list[int]:
        """Token indices of the patches in raster order (after CLS and any registers)."""
        bb = self.backbone
        return list(range(bb.n_prefix, bb.n_tokens))

    @property
    def trains(self) -> bool:
        """Whether this run trains its SAEs (else it loads them from --sae-dir)."""
        return self.cfg.sae_dir is None

    # ------------------------------------------------------------------ caches and SAEs
    def cache(self, split: str) -> ActivationCache:
        """The run's cache of `split`, checked to hold the images the run's dataset opens now."""
        return self.open_cache(split, self.path("cache", split))

    def rows(self, split: str, key: SAEKey) -> RowView:
        """The rows of `split` an SAE reads: its block's hook, its token configuration."""
        return self.cache(split).rows(self.hook(key.block), key.tokens)

    def expected(self, key: SAEKey) -> Provenance:
        """What an SAE for `key` must have been trained on: this model, the block's hook, the token
        configuration, the model's width."""
        bb = self.backbone
        return Provenance(
            model_id=bb.model_id,
            model_revision=bb.revision,
            hook=self.hook(key.block),
            tokens=key.tokens,
            d=bb.d_model,
        )

    def classifier(self) -> ZeroShotClassifier:
        from ....models.templates import get_templates
        from ....models.zeroshot import ZeroShotClassifier

        return ZeroShotClassifier.build(
            self.backbone,
            self.dataset(self.cfg.test_split).classes,
            get_templates(self.cfg.templates),
            cache_dir=self.path("text"),
        )

    # ------------------------------------------------------------------ checks before any stage
    def check_inputs(self) -> None:
        """Refuse, before any work, what this run cannot do, naming the setting at fault: the settings
        against the model's config first (`shape`), then the datasets and --sae-dir, then what needs
        the loaded model."""
        c, shape = self.cfg, self.shape
        self.blocks  # noqa: B018 - range check against the model (an error names the valid indices)
        if not shape.has_text:
            raise SparsesteerError(
                f"{c.model!r} ({shape.arch}) has no text tower: the % CE recovered needs zero-shot classification "
                "(CLIP or SigLIP)"
            )
        if "cls" in c.tokens and not shape.has_cls:
            raise SparsesteerError(f"--tokens cls: {c.model!r} ({shape.arch}) has no CLS token; use --tokens all,patch")
        if self.trains:
            c.check_width(shape.d_model, c.model)
        ds = self.dataset(c.test_split)
        if not has_class_names(ds.classes):
            raise SparsesteerError(
                f"dataset {c.dataset!r} [{c.test_split}] has no class names "
                f"({'only integer labels' if ds.classes else 'no labels'}): the % CE recovered is a zero-shot "
                "cross-entropy, which needs a name per class"
            )
        if self.trains:
            self.dataset(c.train_split)  # exists (downloaded when missing)
        else:
            self.check_sae_dir()
        bb = self.backbone
        if "patch" in c.tokens and bb.n_tokens <= bb.n_prefix:
            raise SparsesteerError(
                f"--tokens patch: {c.model!r} has no patch tokens at {bb.image_size} px "
                f"(patch size {bb.patch_size}); use --tokens all,cls"
            )
