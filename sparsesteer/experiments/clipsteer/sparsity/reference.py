"""THEIR figures: the released CLIP-B/32 SAE suite of Joseph et al. (arXiv 2504.08729; ViT-Prisma),
as the spec (clip-sae-steering.md, "Per-layer sparsity report") states them, transcribed exactly.

These are other SAEs (vanilla ReLU + L1 x64 and top-k 64, trained on ImageNet-1k activations of
`laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K`), so they show the layout to compare (how L0, alive
fraction and explained variance move with depth and token type), not numbers our SAEs should match.
The report prints them in their own table, labelled as the released suite's.
"""

from __future__ import annotations

from dataclasses import dataclass

SUITE = "released CLIP-B/32 SAE suite (Joseph et al. 2025; their SAEs, ImageNet-1k, DataComp CLIP-B/32)"
"""How the report names the source of these figures."""


@dataclass(frozen=True)
class Figure:
    """One figure of the released suite."""

    quantity: str
    """'ev' (% explained variance), 'patch_l0', 'cls_l0' (average L0) or 'alive' (% alive latents)."""
    saes: str
    """Which of their SAEs (architecture, expansion, token configuration)."""
    arch: str
    """Their architecture: 'relu' (vanilla ReLU + L1) or 'topk'."""
    tokens: str
    """Their token configuration: 'all' (all patches) or 'cls'."""
    layers: tuple[int, ...] | None
    """The layers (0-based blocks) the figure is about; None = stated only as early/late or a trend."""
    where: str
    """The layers as the spec words them."""
    value: str
    """The figure as the spec states it."""


_VANILLA_ALL = "vanilla ReLU + L1 x64, all patches, resid_post"
_VANILLA_CLS = "vanilla ReLU + L1, CLS only"
_TOPK_CLS = "top-k 64, CLS only"

FIGURES: tuple[Figure, ...] = (
    Figure("ev", _VANILLA_ALL, "relu", "all", None, "every layer", "about 98"),
    Figure("patch_l0", _VANILLA_ALL, "relu", "all", (0,), "layer 0", "1,111"),
    Figure("patch_l0", _VANILLA_ALL, "relu", "all", (3, 4, 5), "layers 3-5", "about 2,000"),
    Figure("patch_l0", _VANILLA_ALL, "relu", "all", (10, 11), "layers 10-11", "1,293-1,405"),
    Figure("cls_l0", _VANILLA_ALL, "relu", "all", (0,), "layer 0", "40"),
    Figure("cls_l0", _VANILLA_ALL, "relu", "all", (11,), "layer 11", "1,189"),
    Figure("ev", _VANILLA_CLS, "relu", "cls", None, "early layers", "82-96"),
    Figure("ev", _VANILLA_CLS, "relu", "cls", (11,), "layer 11", "65"),
    Figure("alive", _VANILLA_CLS, "relu", "cls", None, "early -> late (rising with depth)", "about 3 -> about 100"),
    Figure("ev", _TOPK_CLS, "topk", "cls", None, "first -> last layer (falling)", "96 -> 84"),
)
"""The suite's figures, in the spec's order."""

QUANTITIES = {
    "ev": "% explained variance",
    "patch_l0": "average patch L0",
    "cls_l0": "average CLS L0",
    "alive": "% alive latents",
}
"""Quantity key -> its name in the report."""
