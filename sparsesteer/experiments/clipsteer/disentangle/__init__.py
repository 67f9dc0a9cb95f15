"""`sparsesteer reproduce disentangle`: suppress the SAE latents associated with a spurious
attribute (CelebA: blond hair for gender; Waterbirds: background for bird type), layer by layer.
The work lives in `clipsteer.suppression`."""

from __future__ import annotations

from ...registry import Experiment
from ..suppression.config import DisentangleConfig
from ..suppression.pipeline import STAGES, reproduce

EXPERIMENT = Experiment(
    name="disentangle",
    summary="CLIP-SAE steering paper, disentanglement: suppress spurious-attribute SAE latents per layer (CelebA, Waterbirds)",
    examples="""examples:
  sparsesteer reproduce disentangle --task celeba --model openai/clip-vit-base-patch32 --blocks 4-9 --out runs/celeba
  sparsesteer reproduce disentangle --task waterbirds --model M --sae-dir runs/wb/sae --out runs/wb2   # load SAEs
""",
    config=DisentangleConfig,
    stages=STAGES,
    run=reproduce,
)

__all__ = ["EXPERIMENT"]
