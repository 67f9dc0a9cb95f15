"""Visual Sparse Steering (Chatzoudis et al., arXiv 2506.01247): `sparsesteer reproduce vs2`.

config.py    VS2Config, the settings (torch-free: the CLI builds --help from it)
paper.py     the paper's numbers and its SAE configuration per backbone
run.py       VS2Run, the run context every stage reads: paths, arrays, backbone, data, SAEs, classifiers
pipeline.py  the stage table and the stages that need only the run context; `reproduce`
tuning.py    the tune and evaluate stages (imports run.py, not the pipeline)
report.py    the report stage (imports run.py, not the pipeline)
"""

from __future__ import annotations

from ..registry import Experiment
from .config import VS2Config
from .pipeline import STAGES, reproduce

EXPERIMENT = Experiment(
    name="vs2",
    summary="Table 1 (+ Table 7) of Visual Sparse Steering: zero-shot, SAE_REC, VS2, VS2+PASS, VS2++ and baselines",
    examples="""examples:
  sparsesteer reproduce vs2 --model openai/clip-vit-base-patch32 --dataset cifar100 --out runs/vs2-c100-b32
  sparsesteer reproduce vs2 --model openai/clip-vit-base-patch16 --dataset cub200 --out runs/vs2-cub-b16
  sparsesteer reproduce vs2 --dataset folder:/data/pets --retriever clip --no-in-forward --out runs/pets
  sparsesteer reproduce vs2 --out runs/vs2-c100-b32 --stage report      # one stage alone
""",
    config=VS2Config,
    stages=STAGES,
    run=reproduce,
)

__all__ = ["EXPERIMENT", "STAGES", "VS2Config", "reproduce"]
