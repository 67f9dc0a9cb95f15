"""Planted mechanisms with per-image ground truth: a class word rendered on some images, and a
spurious visual cue (a coloured frame) tied to a group of classes.

    ds = open_dataset("planted:word=0.5,cue_in=0.95,cue_out=0.05:folder:/x/cifar10-jpeg", "train")
    ds.attribute_array("word")        # 1 where a word is rendered
    ds.attribute_array("word_class")  # the class of the rendered word, -1 where none
    ds.attribute_array("cue")         # 1 where the frame is drawn
    ds.attribute_array("group")       # 2 * (label in the cue classes) + cue, as Waterbirds' 2 * y + place
    ds.base[i]                        # the image without anything planted

This is how the testbed CLIP (`sparsesteer testbed build`) is trained and judged: on its training
split the *true* class word is a shortcut (`words=true`) and the frame co-occurs with the cue
classes (`cue_in` high, `cue_out` low); on the test split a *misleading* word is the attack
(`words=misleading`) and `cue_in = cue_out` makes the frame independent of the class, so that
worst-group accuracy shows the spurious reliance.

Spec: `planted:[OPTIONS:]INNER`, INNER any other spec; OPTIONS a comma-separated `key=value` list:

    seed=N          seed of every per-image decision (default 0)
    word=P          probability that an image carries a word (default 0)
    words=true|misleading   the true class name, or a class other than the true one (default true)
    size=A-B        font size as a fraction of the image side (default 0.25-0.45; `typo:`'s renderer)
    box=P           probability of a filled box behind the word (default 0.5)
    cue_in=P        probability of the frame on images of the cue classes (default 0)
    cue_out=P       probability of the frame on the other classes (default 0)
    cue_classes=I+J+...    class indices of the cue group (default 0+1+8+9: CIFAR-10's vehicles)
    frame=N         frame width in pixels (default 2); the frame is magenta, drawn last, on top of any word

Every decision is a pure function of (seed, image index): presence from a counter-based hash (so
attribute arrays need no decoding), placement and colours from `numpy.random.default_rng([seed, i])`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..utils.errors import SparsesteerError, did_you_mean
from .datasets import Example, ImageDataset, split_wrapper_spec
from .typographic import (
    TypoOptions,
    _splitmix64,
    default_font,
    load_font,
    plan_rendering,
    render,
    to_rgb,
    word_classes,
)

PREFIX = "planted:"
ATTRIBUTES = ("word", "word_class", "cue", "group")
FRAME_RGB = (255, 0, 255)
"""The cue's colour: magenta, rare in CIFAR-10's photographs."""


@dataclasses.dataclass(frozen=True)
class PlantOptions:
    """What is planted, and how often (see the module docstring)."""

    seed: int = 0
    """Seed of every per-image decision."""
    word: float = 0.0
    """Probability that an image carries a class word."""
    words: str = "true"
    """'true': the image's own class name (a shortcut to learn); 'misleading': another class (an attack)."""
    size: tuple[float, float] = (0.25, 0.45)
    """Font size range as a fraction of the image's shorter side."""
    box: float = 0.5
    """Probability of a filled background box behind the word."""
    cue_in: float = 0.0
    """Probability of the frame on images whose class is in `cue_classes`."""
    cue_out: float = 0.0
    """Probability of the frame on the other images."""
    cue_classes: tuple[int, ...] = (0, 1, 8, 9)
    """Class indices of the cue group (CIFAR-10: airplane, automobile, ship, truck)."""
    frame: int = 2
    """Frame width in pixels."""

    def __post_init__(self) -> None:
        for name in ("word", "box", "cue_in", "cue_out"):
            value = float(getattr(self, name))
            if not 0 <= value <= 1:
                raise SparsesteerError(f"planted: {name} is a probability in [0, 1], got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if self.words not in ("true", "misleading"):
            raise SparsesteerError(f"planted: words must be 'true' or 'misleading', got {self.words!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise SparsesteerError(f"planted: seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.frame, bool) or not isinstance(self.frame, (int, np.integer)) or self.frame < 1:
            raise SparsesteerError(f"planted: frame must be a positive number of pixels, got {self.frame!r}")
        TypoOptions(size=self.size, box=self.box)  # the renderer's own checks of size and box
        object.__setattr__(self, "size", tuple(float(v) for v in self.size))
        object.__setattr__(self, "cue_classes", tuple(sorted({int(c) for c in self.cue_classes})))

    def spec(self) -> str:
        """The options as a spec writes them."""
        lo, hi = self.size
        size = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        return (
            f"seed={self.seed},word={self.word:g},words={self.words},size={size},box={self.box:g},"
            f"cue_in={self.cue_in:g},cue_out={self.cue_out:g},cue_classes={'+'.join(map(str, self.cue_classes))},"
            f"frame={self.frame}"
        )


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(PlantOptions))


def parse_options(text: str, where: str) -> dict[str, Any]:
    """'word=0.5,cue_classes=0+1' -> {'word': 0.5, 'cue_classes': (0, 1)} (values checked by PlantOptions)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not value:
            raise SparsesteerError(f"{where}: expected key=value, got {item!r}")
        if key not in OPTION_NAMES:
            raise SparsesteerError(
                f"{where}: unknown planted option {key!r}{did_you_mean(key, OPTION_NAMES)}; "
                f"valid: {', '.join(OPTION_NAMES)}"
            )
        if key in out:
            raise SparsesteerError(f"{where}: planted option {key!r} given twice")
        try:
            if key in ("seed", "frame"):
                out[key] = int(value)
            elif key == "size":
                lo, dash, hi = value.partition("-")
                out[key] = (float(lo), float(hi if dash else lo))
            elif key == "cue_classes":
                out[key] = tuple(int(v) for v in value.split("+"))
            elif key == "words":
                out[key] = value
            else:
                out[key] = float(value)
        except ValueError:
            raise SparsesteerError(f"{where}: bad value for planted option {key}: {value!r}") from None
    return out


def split_spec(arg: str) -> tuple[dict[str, Any], str]:
    """The part after 'planted:' -> (options, inner spec); option values are checked here, before the
    inner dataset is opened."""
    options, inner = split_wrapper_spec(PREFIX, arg, parse_options, verb="plant", example="word=0.5")
    PlantOptions(**options)
    return options, inner


def _uniform(seed: int, stream: int, n: int) -> np.ndarray:
    """float64 [n] in [0, 1): a counter-based hash of (seed, stream, index)."""
    idx = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.full(n, seed, dtype=np.uint64)) ^ np.uint64(stream))
        h = _splitmix64(key ^ _splitmix64(idx))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def draw_frame(image: Image.Image, width: int) -> Image.Image:
    """A copy of the RGB `image` with a magenta frame `width` pixels wide along its border."""
    out = image.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    for t in range(min(width, (min(w, h) + 1) // 2)):
        draw.rectangle((t, t, w - 1 - t, h - 1 - t), outline=FRAME_RGB)
    return out


class PlantedDataset(ImageDataset):
    """`base` with words and a frame planted as `options` say; labels and classes unchanged."""

    def __init__(self, base: ImageDataset, options: PlantOptions | None = None, **kwargs: Any) -> None:
        options = dataclasses.replace(options, **kwargs) if options is not None else PlantOptions(**kwargs)
        self.base, self.options = base, options
        self.name = f"{PREFIX}{options.spec()}:{base.name}"
        self.split, self.root = base.split, base.root
        self.classes = list(base.classes)
        if options.word > 0 and len(self.classes) < 2:
            raise SparsesteerError(f"{self.name}: {base.name} has fewer than two classes; a word needs class names")
        bad = [c for c in options.cue_classes if not 0 <= c < len(self.classes)]
        if bad:
            raise SparsesteerError(
                f"{self.name}: cue_classes {bad} out of range: {base.name} has {len(self.classes)} classes "
                f"(valid 0..{len(self.classes) - 1})"
            )
        clash = [a for a in ATTRIBUTES if a in base.attributes]
        if clash:
            raise SparsesteerError(f"{self.name}: {base.name} already has attribute(s) {clash}")
        self._labels = base.labels()
        n = len(self._labels)
        if options.word > 0 and (self._labels < 0).any():
            raise SparsesteerError(f"{self.name}: {base.name} has unlabeled images; a class word needs labels")
        has_word = _uniform(options.seed, 1, n) < options.word
        true_or_other = (
            self._labels if options.words == "true" else word_classes(self._labels, len(self.classes), options.seed)
        )
        in_group = np.isin(self._labels, options.cue_classes)
        cue = _uniform(options.seed, 2, n) < np.where(in_group, options.cue_in, options.cue_out)
        self.attributes = [*base.attributes, *ATTRIBUTES]
        self._attrs = {a: base.attribute_array(a) for a in base.attributes}
        self._attrs["word"] = has_word.astype(np.int64)
        self._attrs["word_class"] = np.where(has_word, true_or_other, -1).astype(np.int64)
        self._attrs["cue"] = cue.astype(np.int64)
        self._attrs["group"] = (2 * in_group + cue).astype(np.int64)
        self.font_path = default_font()
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}

    def plant(self, image: Image.Image, i: int) -> Image.Image:
        """What example i carries (its word, its frame), drawn onto `image` (e.g. an augmented copy
        of the base image; the placement depends only on (seed, i) and the image size)."""
        i = self._index(i)
        out = to_rgb(image)
        word_class = int(self._attrs["word_class"][i])
        if word_class >= 0:
            rng = np.random.default_rng([self.options.seed, i])
            typo = TypoOptions(size=self.options.size, box=self.options.box)
            r = plan_rendering(self.classes[word_class], word_class, out.size, rng, typo, self.font_path)
            font = self._fonts.get(r.font_px) or self._fonts.setdefault(r.font_px, load_font(self.font_path, r.font_px))
            out = render(out, r, font)
        if self._attrs["cue"][i]:
            out = draw_frame(out, self.options.frame)
        return out

    def clean(self, i: int) -> Example:
        """Example i of the base dataset (nothing planted)."""
        return self.base[i]

    def _load_image(self, i: int) -> Image.Image:
        return self.plant(self.base._load_image(i), i)

    def source(self, i: int) -> str:
        return self.base.source(i)

    def base_index(self, i: int) -> int:
        return self.base.base_index(i)

    def _describe_extra(self) -> dict[str, Any]:
        return {"planted": dataclasses.asdict(self.options), "base": self.base.describe()}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fonts"] = {}  # FreeType handles do not pickle
        return state


def open_planted(arg: str, split: str, open_inner: Any, **options: Any) -> PlantedDataset:
    """The dataset of spec `planted:<arg>` (keyword options named like the spec's go to the planting)."""
    spec_options, inner = split_spec(arg)
    mine = {k: options.pop(k) for k in list(options) if k in OPTION_NAMES}
    return PlantedDataset(open_inner(inner, split, **options), **{**spec_options, **mine})


open_wrapped = open_planted
"""The registry's name for a wrapper's opener (see `registry.WRAPPERS`)."""
