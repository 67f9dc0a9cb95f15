"""Load a vision transformer (CLIP, SigLIP, DINOv2) from a hub id or a `save_pretrained` directory.

One code path for both: `transformers.AutoConfig/AutoModel.from_pretrained`. The returned
`Backbone` knows the model's geometry (blocks, width, tokens), where its blocks and sub-layers
live, and how to run it with hooks (`run`, `intervene`, `embed_images`; see `hooks.py`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..utils.errors import SparsesteerError
from . import hooks
from .hooks import HookPoint, Intervention, Tokens
from .testbed import resolve as resolve_model

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class _Arch:
    """Where the parts of one architecture family live in its transformers classes."""

    name: str
    layers: str  # attribute path from the vision module to its ModuleList of blocks
    attn: str  # module (in a block) whose output is the attention branch's residual contribution
    mlp: str  # same for the MLP branch
    head: str  # module (from the top-level model) whose output holds the `head` activation


_CLIP = _Arch("clip", "encoder.layers", "self_attn", "mlp", "visual_projection")
_SIGLIP = _Arch("siglip", "encoder.layers", "self_attn", "mlp", "vision_model.head")
# DINOv2 scales each branch by a learned layer-scale before adding it (drop-path is identity in eval).
_DINOV2 = _Arch("dinov2", "encoder.layer", "layer_scale1", "layer_scale2", "layernorm")

ARCHS: dict[str, _Arch] = {
    "clip": _CLIP,
    "siglip": _SIGLIP,
    "siglip_vision_model": _SIGLIP,
    "dinov2": _DINOV2,
    "dinov2_with_registers": _DINOV2,
}
"""Supported transformers `model_type`s."""

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_HASHED_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _supported() -> str:
    return (
        "CLIP (model_type 'clip'), SigLIP ('siglip', 'siglip_vision_model'), DINOv2 ('dinov2', 'dinov2_with_registers')"
    )


def _load_config(model: str, revision: str | None) -> Any:
    from transformers import AutoConfig

    is_dir = Path(model).is_dir()
    if not is_dir and not _HUB_ID.match(model):
        raise SparsesteerError(f"model {model!r}: no such directory, and not a Hugging Face hub id (org/name)")
    if is_dir and not (Path(model) / "config.json").is_file():
        raise SparsesteerError(
            f"model directory {model!r} has no config.json; expected a directory written by save_pretrained"
        )
    if not is_dir:
        from huggingface_hub import try_to_load_from_cache

        from ..utils.hub import check_hub

        def cached() -> bool:
            return isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str)

        check_hub(model, what="model", flag="--model", cached=cached, revision=revision)
    try:
        return AutoConfig.from_pretrained(model, revision=revision)
    except (OSError, ValueError, KeyError) as e:
        where = "in" if is_dir else "in the local Hugging Face cache or on the hub for"
        raise SparsesteerError(f"cannot load a model config {where} {model!r}: {e}") from None


def _resolve_revision(model: str, revision: str | None) -> str:
    """Commit hash of a hub snapshot, or a content hash of a local directory."""
    path = Path(model)
    if path.is_dir():
        h = hashlib.sha256()
        files = [path / n for n in _HASHED_FILES] + sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        for f in files:
            if f.is_file():
                h.update(f.name.encode() + b"\0")
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
        return "sha256-" + h.hexdigest()[:16]
    with contextlib.suppress(Exception):
        from transformers.utils import cached_file

        cfg = cached_file(model, "config.json", revision=revision)
        parts = Path(cfg).parts if cfg else ()
        if "snapshots" in parts:
            return parts[parts.index("snapshots") + 1]
    return revision or "unknown"


def _read_json(model: str, name: str, revision: str | None) -> dict | None:
    """A JSON file of a local directory or hub snapshot, or None when absent."""
    path = Path(model) / name
    if not path.is_file():
        try:
            from transformers.utils import cached_file

            found = cached_file(model, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        except Exception:
            return None
        if not found:
            return None
        path = Path(found)
    return json.loads(path.read_text())


def load_backbone(
    model: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> Backbone:
    """Load a CLIP / SigLIP / DINOv2 model (hub id or `save_pretrained` directory), frozen, in eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from ..utils.progress import quiet

    if quiet():  # `sparsesteer -q` / SPARSESTEER_QUIET: no "Loading weights" bars either
        hf_logging.disable_progress_bar()

    model = str(model)
    source = resolve_model(model)
    config = _load_config(source, revision)
    arch = _arch_of(model, config)
    try:
        net = AutoModel.from_pretrained(source, revision=revision, dtype=dtype)
    except (OSError, ValueError) as e:
        raise SparsesteerError(f"cannot load the weights of {model!r}: {e}") from None
    net = net.to(device).eval().requires_grad_(False)
    return Backbone(net, model_id=model, requested_revision=revision, arch=arch)


def _arch_of(model: str, config: Any) -> _Arch:
    model_type = getattr(config, "model_type", "?")
    if model_type not in ARCHS:
        raise SparsesteerError(
            f"model {model!r} is a {model_type!r} model, which has no supported vision tower; "
            f"supported architectures: {_supported()}"
        )
    return ARCHS[model_type]


@dataclass(frozen=True)
class ModelShape:
    """A model's geometry as its config.json says it, read without the weights: commands check their
    flags (block indices, widths) against it before the load, which takes seconds to minutes."""

    model_id: str
    """The model as given (hub id or directory), as `Backbone.model_id`."""
    arch: str
    """'clip', 'siglip' or 'dinov2' (as `Backbone.arch`)."""
    n_blocks: int
    """Blocks of the vision tower (as `Backbone.n_blocks`)."""
    d_model: int
    """Width of the residual stream (as `Backbone.d_model`)."""
    d_embed: int
    """Width of `head` (as `Backbone.d_embed`)."""
    has_cls: bool
    """Whether token 0 is a CLS token (as `Backbone.has_cls`)."""
    has_text: bool
    """Whether the model has a text tower (as `Backbone.has_text`)."""


def model_shape(model: str | os.PathLike, revision: str | None = None) -> ModelShape:
    """The `ModelShape` of a model (hub id or directory) from its config alone; the same errors as
    `load_backbone` for a missing or unsupported model."""
    model = str(model)
    config = _load_config(resolve_model(model), revision)
    arch = _arch_of(model, config)
    vision = getattr(config, "vision_config", config)
    return ModelShape(
        model_id=model,
        arch=arch.name,
        n_blocks=int(vision.num_hidden_layers),
        d_model=int(vision.hidden_size),
        d_embed=int(config.projection_dim) if arch.name == "clip" else int(vision.hidden_size),
        has_cls=arch.name != "siglip",
        has_text=getattr(config, "text_config", None) is not None,
    )


def random_init_copy(backbone: Backbone, seed: int = 0) -> Backbone:
    """A randomly initialised model of the same architecture (built from `backbone`'s config with
    transformers' own initialisation, under `seed`), for chance-level controls.

    Same config, dtype, device, preprocessing and tokenizer; different weights (a pure function of the
    config and `seed`; the caller's RNG state is untouched). Its `revision` reads
    'random-init-seed{seed}-of-{revision}', so caches keyed by model and revision (zero-shot text
    weights) never mix it up with the trained model; `random_init_seed` holds the seed."""
    from transformers import AutoModel

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SparsesteerError(f"random-init seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AutoModel.from_config(backbone.model.config)
    net = net.to(device=backbone.device, dtype=backbone.dtype).eval().requires_grad_(False)
    copy = Backbone(
        net, model_id=backbone.model_id, requested_revision=backbone.requested_revision, arch=backbone._arch
    )
    copy.__dict__["revision"] = f"random-init-seed{seed}-of-{backbone.revision}"  # fills the cached_property
    copy.random_init_seed = seed
    for name in ("preprocessor", "tokenizer"):  # share what the trained model has already loaded
        if name in backbone.__dict__:
            copy.__dict__[name] = backbone.__dict__[name]
    return copy


class Backbone:
    """A loaded vision transformer plus its geometry and hook points.

    Attributes: `model_id`, `revision`, `arch` ('clip'|'siglip'|'dinov2'), `n_blocks`, `d_model`,
    `has_cls`, `n_prefix` (tokens before the patches: CLS + registers), `n_tokens` (per image, at
    `image_size`), `image_size`, `patch_size`, `d_embed` (width of `head`), `device`, `dtype`,
    `model` (the whole transformers model), `vision` (its vision tower), `blocks`, `has_text`,
    `random_init_seed` (None, or the seed of a `random_init_copy`).
    """

    def __init__(self, model: PreTrainedModel, *, model_id: str, requested_revision: str | None, arch: _Arch):
        self.model = model
        self.model_id = model_id
        self.source = resolve_model(model_id)
        """Where its files are read from: `model_id`, or the shipped testbed's folder for 'testbed'."""
        self.requested_revision = requested_revision
        self.random_init_seed: int | None = None
        self._arch = arch
        self.arch = arch.name
        self.vision: nn.Module = getattr(model, "vision_model", model)
        self.blocks: nn.ModuleList = _get(self.vision, arch.layers)
        vcfg = self.vision_config
        self.n_blocks = len(self.blocks)
        self.d_model = int(vcfg.hidden_size)
        self.patch_size = int(vcfg.patch_size)
        self.has_cls = arch.name != "siglip"
        self.n_registers = int(getattr(vcfg, "num_register_tokens", 0) or 0)
        self.n_prefix = int(self.has_cls) + self.n_registers
        self.image_size = self._input_size()
        self.n_tokens = self.n_prefix + (self.image_size // self.patch_size) ** 2
        self.has_text = hasattr(model, "text_model")
        if arch.name == "clip":
            self.d_embed = int(model.config.projection_dim)
        else:
            self.d_embed = self.d_model

    def _input_size(self) -> int:
        """Side of the square input the model is run at.

        CLIP and SigLIP have fixed position embeddings (`config.image_size`). DINOv2 interpolates
        them and is run at its processor's crop size (224 for facebook/dinov2-*, while its config says
        518), so read that from preprocessor_config.json.
        """
        size = int(self.vision_config.image_size)
        if self.arch == "dinov2":
            pp = _read_json(self.source, "preprocessor_config.json", self.requested_revision) or {}
            crop = pp.get("crop_size") if pp.get("do_center_crop", True) else pp.get("size")
            if isinstance(crop, dict) and crop.get("height"):
                size = int(crop["height"])
            elif isinstance(crop, int):
                size = crop
        return size

    @property
    def vision_config(self) -> PretrainedConfig:
        """The vision tower's transformers config (CLIP/SigLIP: the model's `vision_config`)."""
        # every transformers vision tower keeps its config; nn.Module's __getattr__ types it Tensor | Module
        return cast("PretrainedConfig", self.vision.config)

    def __repr__(self) -> str:
        random = "" if self.random_init_seed is None else f", random_init_seed={self.random_init_seed}"
        return (
            f"Backbone({self.model_id!r}{random}, arch={self.arch}, n_blocks={self.n_blocks}, d_model={self.d_model}, "
            f"n_tokens={self.n_tokens}, image_size={self.image_size}, device={self.device}, dtype={self.dtype})"
        )

    # ---- identity, preprocessing, text --------------------------------------------------------

    @functools.cached_property
    def revision(self) -> str:
        """Resolved hub commit hash, or 'sha256-…' over a local directory's config/weights/tokenizer files."""
        return _resolve_revision(self.source, self.requested_revision)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @functools.cached_property
    def preprocessor(self) -> Any:
        """`sparsesteer.data.preprocess.Preprocessor` for this model (imported lazily)."""
        from ..data.preprocess import Preprocessor

        return Preprocessor.from_pretrained(self.source, revision=self.requested_revision)

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The model's tokenizer (`AutoTokenizer`); only for models with a text tower."""
        if not self.has_text:
            raise SparsesteerError(f"model {self.model_id!r} has no text tower, hence no tokenizer")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.source, revision=self.requested_revision)
        except (OSError, ValueError, ImportError) as e:
            raise SparsesteerError(f"cannot load the tokenizer of {self.model_id!r}: {e}") from None

    # ---- hooks --------------------------------------------------------------------------------

    def hook_point(self, name: str | HookPoint) -> HookPoint:
        """Parse and validate a hook name for this model."""
        return HookPoint.parse(name, self.n_blocks)

    def run(
        self,
        pixel_values: Tensor,
        capture: Sequence[str] | str,
        *,
        tokens: Tokens = "all",
        interventions: Sequence[Intervention] = (),
        grad: bool = False,
    ) -> dict[str, Tensor]:
        """Run the vision tower on `pixel_values` [B, 3, H, W] and return {hook name: activation}.

        Block hooks give [B, T_sel, d] ([B, d] for tokens='cls'); `head` gives [B, d_embed]. The
        forward pass stops right after the deepest captured hook. `interventions` apply during this
        call only, after any installed by an enclosing `intervene`. No autograd graph unless `grad`.
        """
        return hooks.run(self, pixel_values, capture, tokens=tokens, interventions=interventions, grad=grad)

    def run_from(
        self,
        block: int,
        hidden_btd: Tensor,
        capture: Sequence[str] | str,
        *,
        tokens: Tokens = "all",
        interventions: Sequence[Intervention] = (),
        grad: bool = False,
    ) -> dict[str, Tensor]:
        """`run` resumed at `block` from its input `hidden_btd` (= the `resid_pre` of `block`, all
        tokens, as `run` captures it): the embeddings and earlier blocks are not rerun. Steering
        many latents or strengths at block L computes the blocks before L once per image batch."""
        return hooks.run(
            self, None, capture, tokens=tokens, interventions=interventions, grad=grad, start=(block, hidden_btd)
        )

    def embed_from(
        self, block: int, hidden_btd: Tensor, *, interventions: Sequence[Intervention] = (), grad: bool = False
    ) -> Tensor:
        """The `head` output [B, d_embed] of a forward resumed at `block` (see `run_from`)."""
        return self.run_from(block, hidden_btd, ["head"], interventions=interventions, grad=grad)["head"]

    def intervene(self, *interventions: Intervention) -> contextlib.AbstractContextManager[None]:
        """Context manager: `interventions` modify every forward pass of the model inside the block."""
        return hooks.intervene(self, *interventions)

    def embed_images(
        self, pixel_values: Tensor, *, interventions: Sequence[Intervention] = (), grad: bool = False
    ) -> Tensor:
        """The `head` output [B, d_embed] (CLIP: image embedding before L2 normalisation)."""
        return self.run(pixel_values, ["head"], interventions=interventions, grad=grad)["head"]

    def tokens_for(self, pixel_values: Tensor) -> int:
        """Number of tokens the model sees for images of this size."""
        h, w = pixel_values.shape[-2:]
        return self.n_prefix + (h // self.patch_size) * (w // self.patch_size)

    def token_indices(self, tokens: Tokens, n_tokens: int | None = None) -> Tensor:
        """Indices (into the token sequence) that a selection picks, e.g. for an activation cache."""
        n = self.n_tokens if n_tokens is None else n_tokens
        pos = self._positions(tokens, n)
        return torch.arange(n) if pos is None else pos

    # ---- internals used by hooks.py and head.py ----------------------------------------------

    def _attn_module(self, block: nn.Module) -> nn.Module:
        return _get(block, self._arch.attn)

    def _mlp_module(self, block: nn.Module) -> nn.Module:
        return _get(block, self._arch.mlp)

    def _head_module(self) -> nn.Module:
        path = self._arch.head
        if self.arch == "siglip" and self.vision is self.model:
            path = "head"
        if self.arch == "siglip" and not getattr(self.vision, "use_head", False):
            raise SparsesteerError(
                f"model {self.model_id!r} has no pooling head (vision_use_head=False), so no 'head' hook"
            )
        return _get(self.model, path)

    def _positions(self, tokens: Tokens, n_tokens: int) -> Tensor | None:
        return hooks.token_positions(tokens, n_tokens, n_prefix=self.n_prefix, has_cls=self.has_cls)

    def _check_pixels(self, pixel_values: Tensor | np.ndarray | None) -> Tensor:
        if isinstance(pixel_values, np.ndarray):  # e.g. from sparsesteer.data's Preprocessor.batch
            pixel_values = torch.from_numpy(pixel_values)
        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise SparsesteerError(f"pixel_values must be a [B, 3, H, W] tensor, got {shape}")
        h, w = pixel_values.shape[-2:]
        if self.arch == "dinov2":  # interpolated position embeddings: any multiple of the patch size
            ok = h % self.patch_size == 0 and w % self.patch_size == 0
        else:
            ok = h == w == self.image_size
        if not ok:
            raise SparsesteerError(
                f"pixel_values are {h}x{w} but {self.model_id!r} expects {self.image_size}x{self.image_size} "
                f"images (use backbone.preprocessor)"
            )
        return pixel_values.to(device=self.device, dtype=self.dtype)

    def _forward_from(self, block: int, hidden_btd: Tensor, *, head: bool) -> None:
        """Blocks `block`.. on `hidden_btd`, then what follows the last block (as `_forward` does):
        CLIP post-layernorm(CLS) + projection, DINOv2's layernorm, SigLIP's post-layernorm + head."""
        h = hidden_btd
        for layer in self.blocks[block:]:
            out = layer(h) if self.arch == "dinov2" else layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        if not head:
            return
        if self.arch == "clip":
            self.model.get_submodule("visual_projection")(self.vision.get_submodule("post_layernorm")(h[:, 0]))
        elif self.arch == "dinov2":
            self.vision.get_submodule("layernorm")(h)
        else:
            self._head_module()(self.vision.get_submodule("post_layernorm")(h))

    def _forward(self, pixel_values: Tensor, *, head: bool) -> None:
        """One forward pass of the vision tower (+ CLIP's projection when `head` is needed)."""
        out = self.vision(pixel_values=pixel_values)
        if head and self.arch == "clip":
            self.model.get_submodule("visual_projection")(out.pooler_output)
