"""Hook names and token selections: their only home (torch-free, so `--help` stays fast).

Hook names are 0-based, TransformerLens style (see docs/models.md):

    blocks.{i}.resid_pre    input of block i            = transformers hidden_states[i]
    blocks.{i}.attn_out     what attention adds to the residual stream (DINOv2: after layer-scale)
    blocks.{i}.mlp_out      what the MLP adds               (so resid_post = resid_pre + attn_out + mlp_out)
    blocks.{i}.resid_post   output of block i           = transformers hidden_states[i + 1]
    head                    the pooled image embedding

Build names with the constructors (`HookPoint.resid_post(i)`, `hook_name(i, kind)`,
`final_resid(n_blocks)`), never with f-strings: an off-by-one between block indices and
`hidden_states` is the most common bug in this field, and one constructor is one place to get it right.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ..utils.errors import SparsesteerError, did_you_mean

BLOCK_KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Per-block hook kinds, in the order they occur inside a block."""
HEAD = "head"

TokenSelection = Literal["cls", "patch", "all"]
"""Named token selections: 'cls' (index 0), 'patch' (after CLS and any registers), 'all'."""
TOKEN_SELECTIONS: tuple[str, ...] = get_args(TokenSelection)

Tokens = str | Sequence[int]
"""Token selection: one of TOKEN_SELECTIONS, or explicit token indices."""

_NAME_RE = re.compile(r"^blocks\.(-?\d+)\.(\w+)$")


def check_tokens(tokens: str, what: str = "token selection") -> str:
    """`tokens` if it is a named selection, else an error listing them (with a suggestion)."""
    if tokens not in TOKEN_SELECTIONS:
        raise SparsesteerError(
            f"unknown {what} {tokens!r}{did_you_mean(str(tokens), TOKEN_SELECTIONS)}; valid: {', '.join(TOKEN_SELECTIONS)}"
        )
    return tokens


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook name. `block` is None for `head`; `str(hp)` gives the name back."""

    kind: str
    block: int | None = None

    def __post_init__(self) -> None:
        if self.kind == HEAD:
            if self.block is not None:
                raise SparsesteerError(f"hook 'head' takes no block index, got {self.block}")
            return
        if self.kind not in BLOCK_KINDS:
            raise SparsesteerError(
                f"unknown hook kind {self.kind!r}{did_you_mean(self.kind, BLOCK_KINDS)}; valid: {', '.join(BLOCK_KINDS)}"
            )
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 0:
            raise SparsesteerError(f"hook {self.kind!r}: block index must be an integer >= 0, got {self.block!r}")

    # ---- constructors: the only way code outside models/ builds a hook name ----
    @classmethod
    def resid_post(cls, block: int) -> HookPoint:
        return cls("resid_post", block)

    @classmethod
    def resid_pre(cls, block: int) -> HookPoint:
        return cls("resid_pre", block)

    @classmethod
    def attn_out(cls, block: int) -> HookPoint:
        return cls("attn_out", block)

    @classmethod
    def mlp_out(cls, block: int) -> HookPoint:
        return cls("mlp_out", block)

    @classmethod
    def head(cls) -> HookPoint:
        return cls(HEAD)

    @classmethod
    def parse(cls, name: str | HookPoint, n_blocks: int | None = None) -> HookPoint:
        """Parse `name`; with `n_blocks`, also check the block index exists in that model."""
        if isinstance(name, HookPoint):
            hp = name
        elif name == HEAD:
            return cls(HEAD)
        else:
            m = _NAME_RE.match(str(name))
            if m is None or m.group(2) not in BLOCK_KINDS:
                n = n_blocks or 12
                valid = [f"blocks.{i}.{k}" for i in range(n) for k in BLOCK_KINDS] + [HEAD]
                rng = f"0..{n_blocks - 1}" if n_blocks else "0..n_blocks-1"
                raise SparsesteerError(
                    f"unknown hook point {name!r}{did_you_mean(str(name), valid)}; valid: "
                    f"blocks.{{i}}.{{{','.join(BLOCK_KINDS)}}} with i in {rng}, or head"
                )
            block = int(m.group(1))
            if block < 0 or (n_blocks is not None and block >= n_blocks):
                within = (
                    f"this model has {n_blocks} blocks, valid indices 0..{n_blocks - 1}"
                    if n_blocks
                    else "it is negative"
                )
                raise SparsesteerError(f"hook point {name!r}: block index {block} out of range; {within}")
            hp = cls(m.group(2), block)
        if n_blocks is not None and hp.block is not None and hp.block >= n_blocks:
            raise SparsesteerError(
                f"hook point {str(hp)!r}: block index {hp.block} out of range; this model has "
                f"{n_blocks} blocks, valid indices 0..{n_blocks - 1}"
            )
        return hp

    def __str__(self) -> str:
        return HEAD if self.block is None else f"blocks.{self.block}.{self.kind}"

    @property
    def depth(self) -> tuple[int, int]:
        """Sort key in forward order: (block, position inside the block); head is last."""
        if self.block is None:
            return (1 << 30, 0)
        return (self.block, BLOCK_KINDS.index(self.kind))


def hook_name(block: int, kind: str = "resid_post") -> str:
    """The name of hook `kind` at `block`, e.g. hook_name(11) == 'blocks.11.resid_post'."""
    return str(HookPoint(kind, block))


def final_resid(n_blocks: int) -> str:
    """The output of the last block, 'blocks.{n_blocks - 1}.resid_post' (where VS2 steers)."""
    return hook_name(n_blocks - 1)
