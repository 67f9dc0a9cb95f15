"""Hook points, token selection, activation capture and interventions on a vision transformer.

Hook names (0-based, TransformerLens style; see docs/models.md):

    blocks.{i}.resid_pre    input of block i            = transformers hidden_states[i]
    blocks.{i}.attn_out     what attention adds to the residual stream (DINOv2: after layer-scale)
    blocks.{i}.mlp_out      what the MLP adds               (so resid_post = resid_pre + attn_out + mlp_out)
    blocks.{i}.resid_post   output of block i           = transformers hidden_states[i + 1]
    head                    the pooled image embedding (CLIP: projection(post_layernorm(CLS));
                            SigLIP: attention-pool head; DINOv2: layernorm(CLS))

Everything is done with PyTorch forward (pre-)hooks on the transformers modules, registered for the
duration of one call (or one `with` block) and removed in a `finally`, so no state survives an
exception. Capture stops the forward pass right after the deepest hook a call needs by raising a
private exception from that hook; the caller catches it (transformers' own output-capturing
decorators reset their state in `finally` blocks, so aborting is safe).

Order at one hook point: interventions installed earlier run first (an enclosing
`backbone.intervene(...)` before the `interventions=` of `run`, each list in order), then capture.
A capture therefore records what the rest of the network sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..utils.errors import SparsesteerError
from .hook_names import BLOCK_KINDS, TOKEN_SELECTIONS, HookPoint, Tokens, check_tokens, final_resid, hook_name

if TYPE_CHECKING:
    from .backbone import Backbone

InterventionFn = Callable[[Tensor, Tensor], Tensor]
"""fn(acts_btd, positions_t) -> new acts_btd of the same shape; positions are token indices."""

__all__ = [
    "BLOCK_KINDS",
    "TOKEN_SELECTIONS",
    "HookPoint",
    "Intervention",
    "Tokens",
    "check_tokens",
    "final_resid",
    "hook_name",
    "intervene",
    "run",
    "token_positions",
]


@dataclass(frozen=True)
class Intervention:
    """Replace the activation at `hook` by `fn(acts_btd, positions_t)` on the selected tokens.

    `fn` sees only the selected tokens ([B, T_sel, d]) and returns a tensor of that shape; the other
    tokens pass through untouched. At `head` the activation is the embedding as [B, 1, d_embed].
    """

    hook: str
    fn: InterventionFn
    tokens: Tokens = "all"


def token_positions(tokens: Tokens, n_tokens: int, *, n_prefix: int, has_cls: bool) -> Tensor | None:
    """Token indices for a selection on a sequence of `n_tokens`; None means all tokens.

    `n_prefix` is the number of non-patch tokens at the start (CLS + registers; 0 for SigLIP).
    """
    if isinstance(tokens, str):
        check_tokens(tokens, "token selection (or give a list of token indices)")
        if tokens == "all":
            return None
        if tokens == "cls":
            if not has_cls:
                raise SparsesteerError("tokens='cls': this model has no CLS token (SigLIP); use 'patch' or 'all'")
            return torch.tensor([0])
        return torch.arange(n_prefix, n_tokens)  # patch
    idx = [int(i) for i in tokens]
    if not idx:
        raise SparsesteerError("empty list of token indices")
    bad = [i for i in idx if not 0 <= i < n_tokens]
    if bad:
        raise SparsesteerError(f"token indices {bad} out of range 0..{n_tokens - 1}")
    return torch.tensor(idx)


def apply_fn(acts_btd: Tensor, positions: Tensor | None, fn: InterventionFn, where: str) -> Tensor:
    """Return `acts_btd` with `fn` applied to the tokens at `positions` (all when None)."""
    if positions is None:
        sel = acts_btd
        pos = torch.arange(acts_btd.shape[1], device=acts_btd.device)
    else:
        pos = positions.to(acts_btd.device)
        sel = acts_btd[:, pos]
    new = fn(sel, pos)
    if not isinstance(new, Tensor) or new.shape != sel.shape:
        got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
        raise SparsesteerError(f"intervention at {where} returned {got}; expected a tensor of shape {tuple(sel.shape)}")
    new = new.to(acts_btd.dtype)
    if positions is None:
        return new
    out = acts_btd.clone()
    out[:, pos] = new
    return out


class _Stop(BaseException):
    """Raised from the deepest needed hook to end the forward pass early.

    A BaseException so that no `except Exception` inside library code can swallow it.
    """


# ---- where each hook point lives in a transformers model ---------------------------------------


def _main(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_main(output: Any, new: Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _head_view(out: Tensor) -> Tensor:
    """The head activation inside its module output, as [B, 1, d] (DINOv2 hooks a [B, T, d] norm)."""
    return out[:, None] if out.dim() == 2 else out[:, :1]


def _head_write(out: Tensor, new_b1d: Tensor) -> Tensor:
    if out.dim() == 2:
        return new_b1d[:, 0]
    return torch.cat([new_b1d, out[:, 1:]], dim=1)


class _HookSite:
    """One hook point resolved to a module plus how to read/write the activation there."""

    def __init__(self, backbone: Backbone, hp: HookPoint):
        self.hp = hp
        self.backbone = backbone
        if hp.block is None:  # `head` (HookPoint gives every other kind a block)
            self.module = backbone._head_module()
        else:
            block = backbone.blocks[hp.block]
            self.module = {
                "resid_pre": block,
                "resid_post": block,
                "attn_out": backbone._attn_module(block),
                "mlp_out": backbone._mlp_module(block),
            }[hp.kind]

    def register(self, on_acts: Callable[[Tensor], Tensor | None]) -> torch.utils.hooks.RemovableHandle:
        """Register a hook calling `on_acts(acts_btd)`; a returned tensor replaces the activation."""
        if self.hp.kind == "resid_pre":

            def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
                if args:
                    new = on_acts(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = on_acts(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            return self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        if self.hp.kind == "head":

            def head_hook(module: nn.Module, args: tuple, output: Any) -> Any:
                out = _main(output)
                new = on_acts(_head_view(out))
                return None if new is None else _replace_main(output, _head_write(out, new))

            return self.module.register_forward_hook(head_hook)

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            new = on_acts(_main(output))
            return None if new is None else _replace_main(output, new)

        return self.module.register_forward_hook(hook)


def _intervention_callback(backbone: Backbone, hp: HookPoint, ivs: list[Intervention]) -> Callable:
    def on_acts(acts: Tensor) -> Tensor:
        for iv in ivs:
            pos = None if hp.kind == "head" else backbone._positions(iv.tokens, acts.shape[1])
            acts = apply_fn(acts, pos, iv.fn, str(hp))
        return acts

    return on_acts


def _group(backbone: Backbone, interventions: Sequence[Intervention]) -> dict[HookPoint, list[Intervention]]:
    groups: dict[HookPoint, list[Intervention]] = {}
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise SparsesteerError(f"expected an Intervention, got {type(iv).__name__}")
        hp = HookPoint.parse(iv.hook, backbone.n_blocks)
        if hp.kind == "head":
            if iv.tokens not in ("all", "cls"):
                raise SparsesteerError(f"intervention at head: tokens must be 'all' (the embedding), got {iv.tokens!r}")
        else:
            backbone._positions(iv.tokens, backbone.n_tokens)  # validate early, before any forward
        groups.setdefault(hp, []).append(iv)
    return groups


@contextlib.contextmanager
def intervene(backbone: Backbone, *interventions: Intervention) -> Iterator[None]:
    """Install `interventions` as forward hooks for the `with` block; always removed afterwards."""
    handles = []
    try:
        for hp, ivs in _group(backbone, interventions).items():
            handles.append(_HookSite(backbone, hp).register(_intervention_callback(backbone, hp, ivs)))
        yield
    finally:
        for h in handles:
            h.remove()


def run(
    backbone: Backbone,
    pixel_values: Tensor | None,
    capture: Sequence[str],
    tokens: Tokens = "all",
    interventions: Sequence[Intervention] = (),
    grad: bool = False,
    start: tuple[int, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Forward `pixel_values`, returning the activations at `capture` (see `Backbone.run`).

    `start=(block, hidden_btd)`: skip the embeddings and blocks before `block`; `hidden_btd` is the
    input of `block` (its `resid_pre`, as `run` captured it). `pixel_values` is then unused.
    """
    if isinstance(capture, str):
        capture = [capture]
    hps = list(dict.fromkeys(HookPoint.parse(c, backbone.n_blocks) for c in capture))
    if not hps:
        raise SparsesteerError("nothing to capture: pass at least one hook point")
    ivs = _group(backbone, interventions)
    if start is None:
        pixels = backbone._check_pixels(pixel_values)
        n_tokens = backbone.tokens_for(pixels)
    else:
        first, hidden = start
        hidden = _check_start(backbone, first, hidden, [*hps, *ivs])
        n_tokens = hidden.shape[1]
    positions = backbone._positions(tokens, n_tokens)
    deepest = max(hps, key=lambda h: h.depth)
    out: dict[str, Tensor] = {}

    def capture_callback(hp: HookPoint, run_ivs: list[Intervention]) -> Callable:
        apply_ivs = _intervention_callback(backbone, hp, run_ivs)

        def on_acts(acts: Tensor) -> Tensor | None:
            new = apply_ivs(acts) if run_ivs else None
            acts = acts if new is None else new
            if hp in hps:
                out[str(hp)] = _select(acts, hp, positions, tokens)
                if hp == deepest:
                    raise _Stop
            return new

        return on_acts

    handles = []
    grad_ctx = contextlib.nullcontext() if grad else torch.no_grad()
    try:
        for hp in set(hps) | set(ivs):
            handles.append(_HookSite(backbone, hp).register(capture_callback(hp, ivs.get(hp, []))))
        with grad_ctx:
            try:
                if start is None:
                    backbone._forward(pixels, head=deepest.kind == "head")
                else:
                    backbone._forward_from(first, hidden, head=deepest.kind == "head")
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [str(h) for h in hps if str(h) not in out]
    if missing:  # would mean a hook did not fire: a model layout we do not understand
        raise RuntimeError(f"hook points {missing} were not reached during the forward pass")
    return {str(h): out[str(h)] for h in hps}


def _check_start(backbone: Backbone, block: int, hidden: Tensor, hooks: Sequence[HookPoint]) -> Tensor:
    """Validate a resumed forward: the block exists, the hidden state has the model's width, and no
    capture or intervention sits before the block (it would never fire)."""
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < backbone.n_blocks:
        raise SparsesteerError(f"start block {block!r} out of range 0..{backbone.n_blocks - 1}")
    if not isinstance(hidden, Tensor) or hidden.dim() != 3 or hidden.shape[-1] != backbone.d_model:
        shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise SparsesteerError(
            f"the hidden state to resume from must be [B, T, {backbone.d_model}] (resid_pre of block {block}), got {shape}"
        )
    early = [str(h) for h in hooks if h.block is not None and h.block < block]
    if early:
        raise SparsesteerError(f"hooks {early} come before block {block}, where this forward pass starts")
    return hidden.to(device=backbone.device, dtype=backbone.dtype)


def _select(acts: Tensor, hp: HookPoint, positions: Tensor | None, tokens: Tokens) -> Tensor:
    if hp.kind == "head":
        return acts[:, 0]
    if positions is None:
        return acts
    sel = acts[:, positions.to(acts.device)]
    return sel[:, 0] if isinstance(tokens, str) and tokens == "cls" else sel
