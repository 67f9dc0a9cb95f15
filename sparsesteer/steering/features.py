"""Feature and neuron steering during the forward pass, on top of the SAE-edit primitive (`edits.py`).

Feature steering edits SAE latents at any block hook (`blocks.{i}.resid_pre|attn_out|mlp_out|resid_post`)
on a token selection, with one of four explicitly named modes (f = encode(x), W_dec[j] latent j's
decoder row):

    set    f_j := s          x' = x + (s - f_j) W_dec[j]        (the paper's rule)
    add    f_j += s         x' = x + s W_dec[j]                 (Neuronpedia's convention)
    scale  f_j *= s         x' = x + (s - 1) f_j W_dec[j]       (the authors' steering_script.py)
    zero   f_j := 0         x' = x - f_j W_dec[j]               (suppression; takes no strength)

with the SAE error term x - decode(f) kept (default): only the change of the code enters, so an edit
that changes no latent returns x exactly. `keep_error=False` writes decode(f') instead (the spliced SAE).
`unit_direction=True` measures the latent along its unit decoder direction u_j = W_dec[j] / |W_dec[j]|
(its value is f_j |W_dec[j]|): set gives x + (s - f_j |W_dec[j]|) u_j, add gives x + s u_j; scale is
unchanged. It equals the plain rule for an SAE with unit-norm decoder rows (the spec notes that the
paper's text and code may differ here).

Neuron steering edits residual-stream dimensions directly with the same modes (x_j := s, x_j += s,
x_j *= s, x_j := 0).

Token selections: 'cls', 'patch', 'all', a list of **patch** indices (0-based, row-major over the patch
grid; patch i is token n_prefix + i), or a boolean patch mask shaped like the model's patch grid
([H / patch, W / patch]). `steer_positions` turns them into what an `Intervention` takes.

Every function returns a `models.hooks.Intervention`; several compose (at one hook they apply in
order, each seeing the previous one's output) through `backbone.run(..., interventions=[...])`,
`embed_images`, `embed_from` or `with backbone.intervene(...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..models.hook_names import HookPoint, Tokens, hook_name
from ..models.hooks import Intervention
from ..sae.base import SparseAutoencoder
from ..sae.provenance import Provenance, check_agree
from ..utils.errors import SparsesteerError, unknown
from . import edits
from .edits import CodeEdit, Latents, check_finite
from .settings import STEER_MODES

if TYPE_CHECKING:
    from ..models.backbone import Backbone

TokenSpec = str | Sequence[int] | np.ndarray | Tensor
"""'cls' | 'patch' | 'all', a list of patch indices, or a boolean [grid_h, grid_w] patch mask."""


# ----------------------------------------------------------------------------- token selections
def patch_grid(backbone: Backbone) -> tuple[int, int]:
    """(rows, columns) of the model's patch grid at its input size."""
    side = backbone.image_size // backbone.patch_size
    return side, side


def n_patches(backbone: Backbone) -> int:
    return backbone.n_tokens - backbone.n_prefix


def steer_positions(backbone: Backbone, tokens: TokenSpec, hook: str | HookPoint | None = None) -> Tokens:
    """A token selection as an `Intervention` takes it: 'cls' / 'patch' / 'all' (checked against the
    model), or a tuple of token indices for patch indices and patch masks. At `head` (the pooled
    embedding) only 'all' is valid."""
    if hook is not None and HookPoint.parse(hook).kind == "head":
        if not (isinstance(tokens, str) and tokens == "all"):
            raise SparsesteerError(f"hook 'head' is the pooled embedding: it has no tokens to select (got {tokens!r})")
        return "all"
    n_patch = n_patches(backbone)
    if isinstance(tokens, str):
        if tokens not in ("cls", "patch", "all"):
            raise unknown("token selection", tokens, ("cls", "patch", "all", "a list of patch indices", "a patch mask"))
        if tokens == "cls" and not backbone.has_cls:
            raise SparsesteerError(f"--tokens cls: {backbone.model_id!r} ({backbone.arch}) has no CLS token")
        if tokens == "patch" and n_patch < 1:
            raise SparsesteerError(
                f"--tokens patch: {backbone.model_id!r} has no patch tokens ({backbone.n_tokens} tokens)"
            )
        return tokens
    if n_patch < 1:
        raise SparsesteerError(
            f"patch selection: {backbone.model_id!r} has no patch tokens ({backbone.n_tokens} tokens)"
        )
    grid = patch_grid(backbone)
    arr = tokens.detach().cpu().numpy() if isinstance(tokens, Tensor) else np.asarray(tokens)
    if arr.dtype == bool:
        if arr.shape != grid:
            raise SparsesteerError(
                f"patch mask of shape {arr.shape} does not match the model's patch grid {grid} "
                f"({backbone.image_size} px / patch {backbone.patch_size})"
            )
        if not arr.any():
            raise SparsesteerError("the patch mask selects no patch")
        idx = np.flatnonzero(arr.reshape(-1))
    else:
        if arr.size == 0:
            raise SparsesteerError("empty list of patch indices")
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise SparsesteerError(
                f"patch indices must be a flat list of integers (or a boolean mask shaped {grid}), got {tokens!r}"
            )
        bad = sorted({int(i) for i in arr if not 0 <= i < n_patch})
        if bad:
            raise SparsesteerError(
                f"patch indices {bad} out of range: the model has {n_patch} patches (0..{n_patch - 1})"
            )
        idx = np.unique(arr)
    return tuple(int(i) + backbone.n_prefix for i in idx)


def token_indices(backbone: Backbone, tokens: Tokens) -> list[int]:
    """The token indices a resolved selection picks on the model's token sequence."""
    return backbone.token_indices(tokens).tolist()


# ----------------------------------------------------------------------------- modes
Strength = float | Sequence[float] | Tensor
"""One strength for every unit, or one per unit (in the sorted order of the unit indices)."""


def check_strength(mode: str, strength: Strength | None, n_units: int | None = None) -> float | Tensor:
    """The strength a mode uses: finite and bounded for set/add/scale; 'zero' takes none (0 is accepted).
    Several strengths (one per unit, `n_units` of them) come back as a float32 tensor."""
    if mode not in STEER_MODES:
        raise unknown("steering mode", str(mode), STEER_MODES)
    if isinstance(strength, Tensor) and strength.ndim == 0:
        strength = float(strength)
    several = isinstance(strength, (Tensor, list, tuple))
    if mode == "zero":
        if strength is not None and (several or strength != 0):
            raise SparsesteerError(f"mode 'zero' takes no strength (got {strength!r}); use set with a strength instead")
        return 0.0
    if strength is None:
        raise SparsesteerError(f"mode {mode!r} needs a strength")
    if not several:
        check_finite(strength=strength)  # type: ignore[arg-type]
        return float(strength)  # type: ignore[arg-type]
    values = [float(v) for v in (strength.tolist() if isinstance(strength, Tensor) else strength)]  # type: ignore[union-attr]
    if n_units is not None and len(values) != n_units:
        raise SparsesteerError(f"{len(values)} strengths for {n_units} units: give one, or one per unit")
    for v in values:
        check_finite(strength=v)
    return torch.tensor(values, dtype=torch.float32)


def apply_rule(mode: str, value: Tensor, strength: float | Tensor) -> Tensor:
    """The new value of a latent / neuron under `mode` (value may be any shape; strength broadcasts)."""
    if mode == "set":
        return torch.zeros_like(value) + strength
    if mode == "add":
        return value + strength
    if mode == "scale":
        return value * strength
    if mode == "zero":
        return torch.zeros_like(value)
    raise unknown("steering mode", str(mode), STEER_MODES)


def latent_edit(
    sae: SparseAutoencoder, latents: Latents, strength: Strength | None, mode: str = "set", *,
    unit_direction: bool = False,
) -> CodeEdit:  # fmt: skip
    """The code edit f -> f' of `mode` on `latents` (see the module docstring). `strength`: one for all, or
    one per latent of `edits.latent_indices(sae, latents)` (sorted, without repeats)."""
    idx = edits.latent_indices(sae, latents)
    s = check_strength(mode, strength, len(idx))
    norms = sae.W_dec.detach()[idx].norm(dim=-1) if unit_direction else None

    def edit(f: Tensor) -> Tensor:
        cols = idx.to(f.device)
        value = f[:, cols]
        s_f = s.to(f.device, f.dtype) if isinstance(s, Tensor) else s
        if norms is None:
            f[:, cols] = apply_rule(mode, value, s_f)
        else:  # the same rule on the value along the unit direction, f_j |W_dec[j]|
            n = norms.to(f.device, f.dtype)
            f[:, cols] = apply_rule(mode, value * n, s_f) / n
        return f

    return edit


def feature_edit(
    hook: str | HookPoint,
    sae: SparseAutoencoder,
    latents: Latents,
    strength: Strength | None,
    mode: str = "set",
    *,
    tokens: Tokens = "all",
    keep_error: bool = True,
    unit_direction: bool = False,
    check_hook: bool = True,
) -> Intervention:
    """Steer SAE `latents` at `hook` (no model needed: `tokens` is what an Intervention takes). With
    `keep_error` (default) an edit that changes no latent returns the activation exactly."""
    edit = latent_edit(sae, latents, strength, mode, unit_direction=unit_direction)
    return edits.sae_edit(hook, sae, edit, tokens=tokens, keep_error=keep_error, check_hook=check_hook)


def neuron_indices(d: int, neurons: int | Sequence[int] | Tensor) -> Tensor:
    """`neurons` as a sorted int64 tensor without repeats, each checked against the width d."""
    t = torch.as_tensor(neurons)
    if t.numel() == 0:
        raise SparsesteerError("no neuron to edit: give at least one residual dimension")
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.ndim > 1:
        raise SparsesteerError(f"neurons must be integer dimensions (one or a list), got {neurons!r}")
    t = t.reshape(-1).long()
    bad = t[(t < 0) | (t >= d)]
    if bad.numel():
        raise SparsesteerError(
            f"neuron indices {bad.tolist()} out of range: the residual stream has d_model={d} (0..{d - 1})"
        )
    return t.unique()


def neuron_edit(
    hook: str | HookPoint, d_model: int, neurons: int | Sequence[int], strength: Strength | None, mode: str = "set",
    *, tokens: Tokens = "all",
) -> Intervention:  # fmt: skip
    """Steer residual dimensions `neurons` of the activation at `hook` directly (x_j := s, += s, *= s, := 0);
    `strength`: one for all, or one per neuron of `neuron_indices(d_model, neurons)` (sorted)."""
    idx = neuron_indices(d_model, neurons)
    s = check_strength(mode, strength, len(idx))
    name = str(HookPoint.parse(hook))

    def fn(acts_btd: Tensor, positions_t: Tensor) -> Tensor:
        if acts_btd.shape[-1] != d_model:
            raise SparsesteerError(
                f"neuron steering at {name}: activations have width {acts_btd.shape[-1]}, not {d_model}"
            )
        out = acts_btd.clone()
        cols = idx.to(out.device)
        s_f = s.to(out.device) if isinstance(s, Tensor) else s
        out[..., cols] = apply_rule(mode, out[..., cols], s_f).to(out.dtype)
        return out

    return Intervention(name, fn, tokens)


# ----------------------------------------------------------------------------- checked, on a model
def tokens_agree(sae_tokens: Any, selected: Sequence[int], backbone: Backbone) -> bool:
    """Whether an SAE trained on `sae_tokens` has seen every token in `selected` (token indices):
    'all' sees any; 'cls' only token 0; 'patch' only patch tokens; explicit indices their own."""
    if sae_tokens is None or sae_tokens == "all":
        return True
    sel = set(selected)
    if sae_tokens == "cls":
        return sel == {0} and backbone.has_cls
    if sae_tokens == "patch":
        return min(sel) >= backbone.n_prefix
    if isinstance(sae_tokens, (tuple, list)):
        return sel <= {int(t) for t in sae_tokens}
    return True


def describe_tokens(tokens: Tokens) -> str:
    if isinstance(tokens, str):
        return repr(tokens)
    return f"token indices {list(tokens)}" if len(tokens) <= 12 else f"{len(tokens)} token indices"


def check_sae(
    backbone: Backbone,
    sae: SparseAutoencoder,
    hook: str | HookPoint,
    tokens: Tokens,
    *,
    allow_mismatch: bool = False,
) -> list[str]:
    """Refuse an SAE that does not belong to this model, hook or token selection, naming both sides.

    The width must match (always refused: the edit cannot run). Model and revision, hook and tokens
    are compared with the SAE's provenance; `allow_mismatch` turns those refusals into notes (returned)
    for the outputs. `tokens` is a resolved selection (`steer_positions`)."""
    name = str(backbone.hook_point(hook))
    width = backbone.d_embed if name == "head" else backbone.d_model
    if sae.d_in != width:
        raise SparsesteerError(
            f"the SAE reads vectors of width d_in={sae.d_in}, but {name} of {backbone.model_id!r} has width {width}"
        )
    prov = sae.provenance
    model = Provenance(model_id=backbone.model_id, model_revision=backbone.revision, hook=name, d=width)
    notes = check_agree(
        "the SAE",
        prov,
        f"the model ({backbone.model_id}) at the requested hook",
        model,
        fields=("model_id", "model_revision", "hook", "d"),
        allow=allow_mismatch,
    )
    if name != "head":
        selected = token_indices(backbone, tokens)
        if not tokens_agree(prov.tokens, selected, backbone):
            note = (
                f"the SAE was trained on tokens {prov.tokens!r} but the edit selects {describe_tokens(tokens)}, "
                "which it has not seen"
            )
            if not allow_mismatch:
                raise SparsesteerError(
                    f"{note}: steer the tokens the SAE was trained on, or pass --allow-mismatch to run anyway "
                    "(the outputs then say so)"
                )
            notes.append(note)
    return notes


def steer_features(
    backbone: Backbone,
    sae: SparseAutoencoder,
    latents: Latents,
    strength: Strength | None,
    *,
    mode: str = "set",
    hook: str | HookPoint | None = None,
    tokens: TokenSpec | None = None,
    keep_error: bool = True,
    unit_direction: bool = False,
    allow_mismatch: bool = False,
) -> Intervention:
    """`feature_edit` checked against the model: `hook` and `tokens` default to the SAE's (`sae_tokens`);
    `tokens` may be patch indices or a patch mask; the SAE must match the model, hook, width and tokens
    (`check_sae`)."""
    hook = sae_hook(sae, hook)
    selection = sae_tokens(backbone, sae, hook) if tokens is None else steer_positions(backbone, tokens, hook)
    check_sae(backbone, sae, hook, selection, allow_mismatch=allow_mismatch)
    return feature_edit(
        str(backbone.hook_point(hook)), sae, latents, strength, mode,
        tokens=selection, keep_error=keep_error, unit_direction=unit_direction, check_hook=not allow_mismatch,
    )  # fmt: skip


def steer_neurons(
    backbone: Backbone,
    hook: str | HookPoint,
    neurons: int | Sequence[int],
    strength: Strength | None,
    *,
    mode: str = "set",
    tokens: TokenSpec = "all",
) -> Intervention:
    """`neuron_edit` at a block hook of `backbone` (width d_model), tokens resolved on its patch grid."""
    hp = backbone.hook_point(hook)
    if hp.kind == "head":
        raise SparsesteerError("neuron steering edits the residual stream: give a block hook, not 'head'")
    return neuron_edit(str(hp), backbone.d_model, neurons, strength, mode, tokens=steer_positions(backbone, tokens))


def sae_hook(sae: SparseAutoencoder, hook: str | HookPoint | None) -> str:
    if hook is not None:
        return str(HookPoint.parse(hook))
    trained_on = sae.metadata.get("hook")
    if not trained_on:
        raise SparsesteerError("the SAE records no hook point: give the hook to steer at (--hook)")
    return str(trained_on)


def sae_tokens(backbone: Backbone, sae: SparseAutoencoder, hook: str | HookPoint) -> Tokens:
    """The token selection the SAE was trained on, resolved on the model: the default of every SAE edit,
    like its hook (an SAE steered on tokens it never saw reads codes off its training distribution).
    'all' when the SAE records none; its token indices when it records some."""
    trained = sae.provenance.tokens
    if isinstance(trained, tuple):
        return trained
    return steer_positions(backbone, trained or "all", hook)


# ----------------------------------------------------------------------------- resumed forwards
class ResumePoint(NamedTuple):
    """Where a forward resumed for steering at a hook starts, and the hook its edit goes to."""

    block: int
    """The block whose input (resid_pre) the resumed forward starts from."""
    hook: str
    """Hook of the edit in the resumed forward: the hook itself, or `blocks.{L+1}.resid_pre` for
    `blocks.{L}.resid_post` (the same tensor), so block L is not rerun."""


def resume_point(backbone: Backbone, hook: str | HookPoint) -> ResumePoint | None:
    """The resume point for steering at `hook`: blocks before it are not rerun. None at `head`."""
    hp = backbone.hook_point(hook)
    block = hp.block
    if hp.kind == "head" or block is None:  # HookPoint: the block is None exactly at the head
        return None
    if hp.kind == "resid_post" and block + 1 < backbone.n_blocks:
        return ResumePoint(block + 1, hook_name(block + 1, "resid_pre"))
    return ResumePoint(block, str(hp))


def moved(iv: Intervention, hook: str) -> Intervention:
    """The same edit installed at another name of the same tensor (see `ResumePoint.hook`)."""
    return Intervention(hook, iv.fn, iv.tokens)


class SteeredEmbeddings(NamedTuple):
    """Image embeddings without and with the interventions, from one shared prefix of the forward."""

    unsteered: Tensor
    """[B, d_embed] the model's `head` output."""
    steered: Tensor
    """[B, d_embed] the same with the interventions applied."""


@torch.no_grad()
def embed_steered(backbone: Backbone, pixel_values: Tensor, interventions: Sequence[Intervention]) -> SteeredEmbeddings:
    """`embed_images` without and with `interventions`: one forward computes the residual stream where
    the earliest edit starts and the unsteered embedding; the steered one resumes there
    (`Backbone.embed_from`), so the blocks before the first edited one run once. Equal to
    `backbone.embed_images(pixels, interventions=...)` (tested)."""
    from ..models.hook_names import HookPoint as HP

    ivs = sorted(interventions, key=lambda iv: HP.parse(iv.hook, backbone.n_blocks).depth)  # stable: list order kept
    points = [resume_point(backbone, iv.hook) for iv in ivs]
    blocks = [p.block for p in points if p is not None]
    if not blocks:  # edits at `head` only
        e0 = backbone.embed_images(pixel_values)
        return SteeredEmbeddings(e0, backbone.embed_images(pixel_values, interventions=ivs))
    start = min(blocks)
    pre = hook_name(start, "resid_pre")
    out = backbone.run(pixel_values, [pre, "head"])
    moved_ivs = [iv if p is None else moved(iv, p.hook) for iv, p in zip(ivs, points)]
    return SteeredEmbeddings(out["head"], backbone.embed_from(start, out[pre], interventions=moved_ivs))
