"""The testbed CLIP: a small CLIP trained by sparsesteer on CIFAR-10 with planted mechanisms.

`make_testbed_clip(out, TestbedShape())` writes the untrained model (both towers, tokenizer, image
processor) with `save_pretrained`; `sparsesteer testbed build` (experiments/testbed) trains it. The
shapes are chosen so that layers and token types mean something at a CPU's budget: 6 blocks, 32 px
images in 8 px patches (16 patch tokens + CLS), width 128.

The tokenizer is the tiny byte-level CLIP BPE of `tiny.py` plus one merge chain per word of the
training captions (class names and the prompt templates), so those words are single tokens and the
text tower learns them; any other text still tokenizes, one token per character.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .tiny import _MERGES, _save, _seeded, _text_config


@dataclasses.dataclass(frozen=True)
class TestbedShape:
    """Shapes of the testbed CLIP's two towers."""

    image_size: int = 32
    """Input side in pixels (CIFAR-10's own size: no resizing)."""
    patch_size: int = 8
    """Patch side: (32 / 8)^2 = 16 patch tokens + CLS."""
    hidden: int = 128
    """Vision width."""
    layers: int = 6
    """Vision blocks."""
    heads: int = 4
    """Vision attention heads."""
    text_hidden: int = 128
    """Text width."""
    text_layers: int = 3
    """Text blocks."""
    text_heads: int = 4
    """Text attention heads."""
    context: int = 32
    """Text context length in tokens."""
    projection_dim: int = 64
    """Shared embedding width."""


def caption_words(texts: Iterable[str]) -> list[str]:
    """The lower-cased words of `texts` as CLIP's tokenizer splits them (letters, digits, punctuation runs)."""
    words: dict[str, None] = {}
    for text in texts:
        for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
            words[w] = None
    return list(words)


def testbed_tokenizer(words: Iterable[str], model_max_length: int = 32) -> Any:
    """A `CLIPTokenizer` whose vocabulary holds every one of `words` as one token (see module docstring)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab[s] = len(vocab)
    merges: list[tuple[str, str]] = list(_MERGES)
    for word in sorted(set(words)):
        if len(word) < 2 or not word.isalpha():
            continue
        head = word[0]
        for i, ch in enumerate(word[1:], start=1):
            tail = ch + "</w>" if i == len(word) - 1 else ch
            merges.append((head, tail))
            head = head + tail
    merges = list(dict.fromkeys(merges))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # transformers annotates merges as list[str]; tokenizers' BPE takes the (a, b) pairs given here
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)  # type: ignore[arg-type]


def make_testbed_clip(out: str | os.PathLike, shape: TestbedShape, words: Iterable[str], *, seed: int = 0) -> Path:
    """Write the untrained testbed `CLIPModel` + tokenizer + image processor to `out`."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tok = testbed_tokenizer(words, shape.context)
    config = CLIPConfig(
        text_config=_text_config(tok, shape.text_hidden, shape.text_heads, shape.text_layers, shape.context),
        vision_config=dict(
            hidden_size=shape.hidden,
            intermediate_size=4 * shape.hidden,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
        ),
        projection_dim=shape.projection_dim,
    )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size}
    )
    with _seeded(seed):
        model = CLIPModel(config)
    return _save(model, out, tok, processor)


NAME = "testbed"
"""`--model testbed`: the trained testbed shipped with the package (see `shipped_dir`)."""


def shipped_dir() -> Path:
    """Where the package keeps the trained testbed (package data: weights, config, tokenizer,
    image processor and `card.json`)."""
    return Path(__file__).resolve().parent / "testbed_model"


def resolve(model: str) -> str:
    """The directory to load for `model`: the shipped testbed for 'testbed' (its weights checked
    against the card's sha256 first), anything else unchanged."""
    if model != NAME:
        return model
    from ..utils.errors import SparsesteerError
    from ..utils.io import read_json, sha256_file

    folder = shipped_dir()
    card, weights = folder / "card.json", folder / "model.safetensors"
    if not card.is_file() or not weights.is_file():
        raise SparsesteerError(
            f"--model testbed: this installation has no trained testbed ({folder} holds no card.json and "
            "model.safetensors); train one with `sparsesteer testbed build` and pass its OUT/model as --model"
        )
    want = read_json(card).get("weights_sha256")
    got = sha256_file(weights)
    if got != want:
        raise SparsesteerError(
            f"--model testbed: {weights} has sha256 {got}, but its card.json records {want}: the shipped file is "
            "damaged or was replaced; reinstall sparsesteer"
        )
    return str(folder)
