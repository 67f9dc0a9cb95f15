"""Other libraries' hook names -> ours (`blocks.{i}.<point>`, 0-based, models/hook_names.py).

sae/ never imports models/, so the few names a reader produces are spelled here; every mapping keeps
the block index (offset 0), and a name with no equivalent maps to None (the original stays in the
SAE's `source` record). See docs/formats.md for each library's naming."""

from __future__ import annotations

import re

POINTS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Our per-block hook points (models/hook_names.BLOCK_KINDS)."""


def block_hook(block: int, point: str) -> str | None:
    """Our name of `point` of block `block`, or None when either is not one of ours."""
    if point not in POINTS or block < 0:
        return None
    return f"blocks.{block}.{point}"


def from_transformerlens(name: str | None) -> str | None:
    """'blocks.9.hook_resid_post' -> 'blocks.9.resid_post' (TransformerLens, SAELens, ViT-Prisma);
    None for names without an equivalent here (e.g. 'blocks.9.ln2.hook_normalized')."""
    m = re.match(r"^blocks\.(\d+)\.hook_(\w+)$", name or "")
    return block_hook(int(m.group(1)), m.group(2)) if m else None
