"""`sparsesteer reproduce typographic`: suppress the SAE latents associated with rendered text
(attacked vs clean images), layer by layer, against a head-ablation baseline. The work lives in
`clipsteer.suppression`."""

from __future__ import annotations

from ...registry import Experiment
from ..suppression.config import TypographicConfig
from ..suppression.pipeline import STAGES, reproduce

EXPERIMENT = Experiment(
    name="typographic",
    summary="CLIP-SAE steering paper: suppress text-associated SAE latents per layer against typographic attacks",
    examples="""examples:
  sparsesteer reproduce typographic --model openai/clip-vit-base-patch32 --dataset typo:cifar10 --out runs/typo
  sparsesteer reproduce typographic --model M --dataset rta100 --select-dataset typo:cifar10 --select-split train \\
      --test-split test --out runs/rta
""",
    config=TypographicConfig,
    stages=STAGES,
    run=reproduce,
)

__all__ = ["EXPERIMENT"]
