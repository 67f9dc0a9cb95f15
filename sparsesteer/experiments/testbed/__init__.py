"""The testbed CLIP: `sparsesteer testbed build|measure` trains and measures it (build.py,
measure.py); `sparsesteer reproduce testbed` judges every method on it by its effect (effects*.py)."""

from __future__ import annotations

from ..registry import Experiment
from .effects import STAGES, reproduce
from .effects_config import EffectsConfig

EXPERIMENT = Experiment(
    name="testbed",
    summary="every method judged by its effect on the testbed CLIP's planted word and frame (detection, suppression)",
    examples="""examples:
  sparsesteer reproduce testbed --dataset cifar10 --out runs/testbed
  sparsesteer reproduce testbed --dataset folder:cifar10-jpeg --control ctl/model --out runs/testbed   # + negative control
""",
    config=EffectsConfig,
    stages=STAGES,
    run=reproduce,
)

__all__ = ["EXPERIMENT"]
