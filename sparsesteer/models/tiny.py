"""Tiny randomly initialised models, saved exactly like hub models, for tests and benchmarks.

Each `make_*` writes a `save_pretrained` directory (weights + config + tokenizer + image processor)
that `load_backbone`, `AutoModel`, `AutoTokenizer` and `AutoImageProcessor` open through the same
code path as a hub id. Nothing is downloaded. Weights are a pure function of the arguments (the
seed is applied inside a forked RNG, so the caller's global RNG state is untouched).

The tokenizer is a real CLIP byte-level BPE tokenizer with a small vocabulary: the 256 byte
symbols, their end-of-word (`</w>`) variants, a few merges, then `<|startoftext|>` and
`<|endoftext|>` as the two highest ids (as in OpenAI's CLIP, so both of transformers' EOS-pooling
rules pick the right token). Any text tokenizes; it just takes one token per character.

SigLIP's own tokenizer is SentencePiece-based and needs the `sentencepiece` package (not a
dependency here), so the tiny SigLIP ships this same BPE tokenizer instead, padded to the text
tower's full length as SigLIP expects. The text tower does not care which tokenizer produced the ids.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import unknown

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# ImageNet statistics used by DINOv2's BitImageProcessor config on the hub.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Merges to exercise real BPE behaviour (multi-character tokens) in tests.
_MERGES = (("o", "f</w>"), ("t", "h"), ("th", "e</w>"), ("p", "h"), ("ph", "o"))

# Vision-tower shapes of OpenAI CLIP releases (for `make_random_clip`).
CLIP_PRESETS: dict[str, dict[str, int]] = {
    "ViT-B/32": dict(hidden=768, layers=12, heads=12, mlp=3072, image_size=224, patch_size=32, projection_dim=512),
    "ViT-B/16": dict(hidden=768, layers=12, heads=12, mlp=3072, image_size=224, patch_size=16, projection_dim=512),
    "ViT-L/14": dict(hidden=1024, layers=24, heads=16, mlp=4096, image_size=224, patch_size=14, projection_dim=768),
}


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A working `CLIPTokenizer` with a ~520-token byte-level vocabulary (see module docstring)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # transformers annotates `merges` as list[str]; tokenizers' BPE takes the (a, b) pairs given here
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=model_max_length)  # type: ignore[arg-type]


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _save(model: Any, out: str | os.PathLike, *extras: Any) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    for extra in extras:
        extra.save_pretrained(out)
    return out


def _text_config(tok, hidden: int, heads: int, layers: int, max_len: int) -> dict[str, Any]:
    return dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_len,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def make_tiny_clip(
    out: str | os.PathLike,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 3,
    heads: int = 4,
    projection_dim: int = 16,
    text_layers: int = 2,
    text_hidden: int | None = None,
    text_heads: int | None = None,
    mlp: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a random `CLIPModel` (both towers) + `CLIPTokenizer` + `CLIPImageProcessor` to `out`."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tok = tiny_clip_tokenizer(77)
    text_hidden = text_hidden or hidden
    config = CLIPConfig(
        text_config=_text_config(tok, text_hidden, text_heads or heads, text_layers, 77),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=mlp or 4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    # OpenAI CLIP preprocessing: bicubic resize of the short side, centre crop, CLIP mean/std.
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    with _seeded(seed):
        model = CLIPModel(config)
    return _save(model, out, tok, processor)


def make_random_clip(out: str | os.PathLike, preset: str = "ViT-B/32", *, seed: int = 0) -> Path:
    """A random CLIP with the vision-tower shapes of an OpenAI release (for benchmarks).

    The vision tower, head and preprocessing match the preset exactly; the text tower is small
    (2 blocks of width 64) since benchmarks time the image side.
    """
    if preset not in CLIP_PRESETS:
        raise unknown("CLIP preset", preset, CLIP_PRESETS)
    p = CLIP_PRESETS[preset]
    return make_tiny_clip(
        out,
        image_size=p["image_size"],
        patch_size=p["patch_size"],
        hidden=p["hidden"],
        layers=p["layers"],
        heads=p["heads"],
        mlp=p["mlp"],
        projection_dim=p["projection_dim"],
        text_layers=2,
        text_hidden=64,
        text_heads=4,
        seed=seed,
    )


def make_tiny_siglip(
    out: str | os.PathLike,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 3,
    heads: int = 4,
    text: bool = True,
    seed: int = 0,
) -> Path:
    """Write a random `SiglipModel` (or a vision-only `SiglipVisionModel` with `text=False`).

    Includes SigLIP's attention-pooling head, a `SiglipImageProcessor` (square resize, mean/std
    0.5, no crop) and, with `text=True`, the BPE tokenizer described in the module docstring.
    """
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    vision: dict[str, Any] = dict(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    if not text:
        with _seeded(seed):
            vision_model = SiglipVisionModel(SiglipVisionConfig(**vision))
        return _save(vision_model, out, processor)
    tok = tiny_clip_tokenizer(64)
    config = SiglipConfig(text_config=_text_config(tok, hidden, heads, 2, 64), vision_config=vision)
    with _seeded(seed):
        model = SiglipModel(config)
    return _save(model, out, tok, processor)


def make_tiny_dinov2(
    out: str | os.PathLike,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 3,
    heads: int = 4,
    registers: int = 0,
    seed: int = 0,
) -> Path:
    """Write a random `Dinov2Model` (or `Dinov2WithRegistersModel`) + `BitImageProcessor`.

    Configured like facebook/dinov2-*: the position embeddings are trained for a larger image
    (here 1.5x `image_size`, like 518 vs 224) and interpolated at run time; the processor resizes
    the short side to `image_size * 256/224` and centre-crops `image_size` with ImageNet mean/std.
    Layer-scale factors are randomised per channel so that tests notice if they are left out.
    """
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    kwargs: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=4,
        image_size=patch_size * round(1.5 * image_size / patch_size),
        patch_size=patch_size,
        layerscale_value=0.5,
    )
    processor = BitImageProcessorPil(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    model: PreTrainedModel
    with _seeded(seed):
        if registers:
            from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

            model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs))
        else:
            model = Dinov2Model(Dinov2Config(**kwargs))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lambda1"):
                    p.mul_(1 + 0.5 * torch.rand_like(p))
                elif name.endswith("register_tokens"):
                    p.normal_(std=0.02)  # make registers distinct whatever the library's init
    return _save(model, out, processor)
