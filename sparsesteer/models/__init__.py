"""Backbones (CLIP, SigLIP, DINOv2), hook points + interventions, the CLIP head, zero-shot classifier.

Names are imported lazily so that `import sparsesteer.models` (done by the CLI to build `--help`)
does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_backbone": "backbone",
    "Backbone": "backbone",
    "HookPoint": "hooks",
    "Intervention": "hooks",
    "token_positions": "hooks",
    "clip_head": "head",
    "ZeroShotClassifier": "zeroshot",
    "Predictions": "zeroshot",
    "encode_text": "zeroshot",
    "classify": "zeroshot",
    "get_templates": "templates",
    "topk_accuracy": "accuracy",
    "per_class_accuracy": "accuracy",
    "most_confused": "accuracy",
    "confusion_matrix": "accuracy",
    "evaluate": "accuracy",
    "write_result": "accuracy",
    "ClassificationResult": "accuracy",
    "make_tiny_clip": "tiny",
    "make_tiny_siglip": "tiny",
    "make_tiny_dinov2": "tiny",
    "make_random_clip": "tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
