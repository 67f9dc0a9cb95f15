"""Steerability of SAE features vs neurons vs a random control (Joseph et al., arXiv 2504.08729, claim 2):
`sparsesteer reproduce steerability`.

config.py    SteerabilityConfig, the settings (torch-free: the CLI builds --help from them)
run.py       SteerabilityRun, the run context every stage reads: paths, models, images, vocabulary, SAEs
pipeline.py  the stage table and the measuring stages; `reproduce`
report.py    the report stage (imports run.py, not the pipeline)
"""

from __future__ import annotations

from ...registry import Experiment
from .config import SteerabilityConfig
from .pipeline import STAGES, reproduce

EXPERIMENT = Experiment(
    name="steerability",
    summary="Steerability of SAE features vs neurons vs a random control (Joseph et al. 2025, claim 2)",
    examples="""examples:
  sparsesteer reproduce steerability --model laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K --sae runs/sae-b5 \\
      --sae runs/sae-b9 --dataset folder:/data/imagenet --split val --vocab 20k.txt --vocab-limit 5000 --out runs/steer
  sparsesteer reproduce steerability --model M --sae runs/sae-b5 --dataset cifar100 --strengths=-20,0,20,150 --out runs/s
  sparsesteer reproduce steerability --model M --sae runs/sae-b5 --dataset cifar100 --out runs/s --stage report
""",
    config=SteerabilityConfig,
    stages=STAGES,
    run=reproduce,
)

__all__ = ["EXPERIMENT", "STAGES", "SteerabilityConfig", "reproduce"]
