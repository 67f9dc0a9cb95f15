"""Backbones (CLIP, SigLIP, DINOv2), hook points + interventions, the CLIP head, zero-shot classifier.

Names are imported lazily so that `import sparsesteer.models` (done by the CLI to build `--help`)
does not import torch or transformers.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "load_backbone": "backbone",
    "Backbone": "backbone",
    "HookPoint": "hook_names",
    "hook_name": "hook_names",
    "final_resid": "hook_names",
    "TOKEN_SELECTIONS": "hook_names",
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
    "group_accuracy": "groups",
    "typographic_accuracy": "groups",
    "compare_groups": "groups",
    "compare_typographic": "groups",
    "GroupAccuracy": "groups",
    "TypographicAccuracy": "groups",
    "Change": "groups",
    "make_tiny_clip": "tiny",
    "make_tiny_siglip": "tiny",
    "make_tiny_dinov2": "tiny",
    "make_random_clip": "tiny",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
