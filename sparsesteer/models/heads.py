"""Attention heads' contributions to the CLS token: read them, and zero chosen heads' (head ablation).

An attention layer's output is `out_proj(concat_h z_h)` with z_h [T, d_head] the output of head h,
so head h adds `W_o[:, h d_head:(h + 1) d_head] z_h` to the residual stream (the bias belongs to no
head). Both functions hook the input of the attention module's `out_proj` (CLIP and SigLIP name it
so; DINOv2 is not supported):

    with ablate_heads(bb, HeadAblation(block=5, heads=(1, 7))):    # z_h := 0 on the CLS row
        emb = bb.embed_images(pixels)
    with capture_head_inputs(bb, [5, 7]) as z:                     # z[5]: [B, H * d_head] CLS rows
        bb.run(pixels, ["blocks.7.resid_post"])
    per_head = head_outputs(bb, 5, z[5][0])                        # [B, H, d_model]

Ablating heads on the CLS row only zeroes those heads' contribution to the CLS token at that layer
(the training-free typographic defence of Dyslexify); the patch tokens are left as they are. The
hooks are removed when the `with` block ends, also on an exception, and compose with `intervene`,
`run_from` and `embed_from`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from .backbone import Backbone


@dataclass(frozen=True)
class HeadAblation:
    """Zero heads `heads` of block `block`'s attention on the CLS token."""

    block: int
    heads: tuple[int, ...]


def out_proj(backbone: Backbone, block: int) -> nn.Linear:
    """The output projection of block `block`'s attention (CLIP, SigLIP)."""
    if not backbone.has_cls:
        raise SparsesteerError(f"head ablation acts on the CLS token: {backbone.model_id!r} ({backbone.arch}) has none")
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < backbone.n_blocks:
        raise SparsesteerError(f"block {block!r} out of range 0..{backbone.n_blocks - 1}")
    attn = backbone._attn_module(backbone.blocks[block])
    proj = getattr(attn, "out_proj", None)
    if not isinstance(proj, nn.Linear):
        raise SparsesteerError(
            f"head ablation needs the attention's out_proj (CLIP, SigLIP); {backbone.arch} models are not supported"
        )
    return proj


def n_heads(backbone: Backbone) -> int:
    return int(backbone.vision_config.num_attention_heads)


def _check_heads(backbone: Backbone, heads: Sequence[int]) -> list[int]:
    h = n_heads(backbone)
    out = [int(x) for x in heads]
    bad = [x for x in out if not 0 <= x < h]
    if bad:
        raise SparsesteerError(f"heads {bad} out of range: the model has {h} heads per block (0..{h - 1})")
    return out


@contextlib.contextmanager
def ablate_heads(backbone: Backbone, *ablations: HeadAblation) -> Iterator[None]:
    """Forward pre-hooks on `out_proj` that zero the chosen heads' slices of its input on the CLS row."""
    d_head = backbone.d_model // n_heads(backbone)
    handles = []
    try:
        for ab in ablations:
            heads = _check_heads(backbone, ab.heads)
            if not heads:
                continue
            cols = torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for h in heads])

            def pre_hook(module: nn.Module, args: tuple, cols: Tensor = cols) -> tuple:
                z = args[0].clone()
                z[:, 0, cols.to(z.device)] = 0
                return (z, *args[1:])

            handles.append(out_proj(backbone, ab.block).register_forward_pre_hook(pre_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_head_inputs(backbone: Backbone, blocks: Sequence[int]) -> Iterator[dict[int, list[Tensor]]]:
    """Record the CLS row of `out_proj`'s input ([B, H * d_head], one tensor per forward) of each block."""
    store: dict[int, list[Tensor]] = {b: [] for b in blocks}
    handles = []
    try:
        for b in blocks:

            def pre_hook(module: nn.Module, args: tuple, b: int = b) -> None:
                store[b].append(args[0][:, 0].detach().clone())

            handles.append(out_proj(backbone, b).register_forward_pre_hook(pre_hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def head_outputs(backbone: Backbone, block: int, z_cls: Tensor) -> Tensor:
    """[B, H, d_model]: what each head adds to the CLS token (without the bias), from `out_proj`'s
    CLS input `z_cls` [B, H * d_head]."""
    proj = out_proj(backbone, block)
    h = n_heads(backbone)
    d_head = z_cls.shape[-1] // h
    w = proj.weight.to(z_cls.dtype).view(proj.weight.shape[0], h, d_head)  # [d, H, d_head]
    return torch.einsum("bhk,dhk->bhd", z_cls.view(z_cls.shape[0], h, d_head), w)
