"""The model's head as a plain function of the final-layer CLS vector.

Steering methods such as VS2 modify the cached final-layer CLS (`blocks.{n-1}.resid_post`, token 0)
and then need the embedding it would produce, without rerunning the network:

    CLIP:   visual_projection(post_layernorm(cls))   (= the `head` hook, before L2 normalisation)
    DINOv2: layernorm(cls)                           (= its pooler_output)

SigLIP pools all tokens with an attention head, so it has no CLS-only head: an error.
Gradients flow through (no `no_grad` here); wrap the call yourself when you do not need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from .backbone import Backbone


def clip_head(backbone: Backbone, cls_bd: Tensor) -> Tensor:
    """Embed final-layer CLS vectors [B, d_model] (or [d_model]) -> [B, d_embed] (or [d_embed])."""
    if backbone.arch == "siglip":
        raise SparsesteerError(
            f"model {backbone.model_id!r} (SigLIP) pools all tokens with an attention head; "
            "there is no head that maps a CLS vector to the embedding"
        )
    if cls_bd.shape[-1] != backbone.d_model:
        raise SparsesteerError(
            f"CLS vectors have width {cls_bd.shape[-1]}, but {backbone.model_id!r} has d_model={backbone.d_model}"
        )
    x = cls_bd.to(device=backbone.device, dtype=backbone.dtype)
    if backbone.arch == "clip":
        return backbone.model.get_submodule("visual_projection")(backbone.vision.get_submodule("post_layernorm")(x))
    return backbone.vision.get_submodule("layernorm")(x)
