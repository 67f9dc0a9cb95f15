"""The per-layer, per-token-type sparsity report (claim 1 of Joseph et al. 2025): `sparsesteer reproduce sparsity`.

config.py     SparsityConfig, the settings (torch-free: the CLI builds --help from them); parse_blocks
reference.py  THEIR figures: the released CLIP-B/32 SAE suite, as the spec states them
run.py        SparsityRun, the run context every stage reads (paths, backbone, data, SAE keys), input checks
splice.py     % CE recovered: clean, spliced and zero-ablated zero-shot CE sharing the clean forward
pipeline.py   the stage table and the stages; `reproduce`
report.py     the report stage (imports run.py, not the pipeline)
"""

from __future__ import annotations

from ...registry import Experiment
from .config import SparsityConfig
from .pipeline import STAGES, reproduce

EXPERIMENT = Experiment(
    name="sparsity",
    summary="CLIP-SAE steering paper, claim 1: per-layer, per-token-type sparsity report (EV, L0, alive latents, CE recovered)",
    examples="""examples:
  sparsesteer reproduce sparsity --model laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K --dataset cifar100 --out runs/sparsity
  sparsesteer reproduce sparsity --model openai/clip-vit-base-patch32 --dataset folder:/data/imagenet --blocks 0-11 \\
      --tokens all,cls,patch --arch relu --out runs/sparsity-relu
  sparsesteer reproduce sparsity --model M --dataset cifar10 --sae-dir runs/sparsity/sae --out runs/reuse  # load SAEs
  sparsesteer reproduce sparsity --model M --dataset cifar10 --out runs/sparsity --stage report            # one stage
""",
    config=SparsityConfig,
    stages=STAGES,
    run=reproduce,
)

__all__ = ["EXPERIMENT", "STAGES", "SparsityConfig", "reproduce"]
