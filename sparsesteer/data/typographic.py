"""Typographic attacks on any labelled dataset: a misleading class word rendered onto each image.

    ds = open_dataset("typo:cifar10", "test")                 # defaults: seed 0
    ds = open_dataset("typo:seed=3,box=1:folder:/x", "test")  # options inside the spec
    ds = open_dataset("typo:cifar10", "test", seed=3)         # or as keyword options
    ex = ds[i]              # image with the word on it; ex.label = the true label (unchanged)
    ex.attrs["typo_class"]  # the class whose name was rendered (never the true label)
    ds.base[i]              # the clean image: clean and attacked examples pair up by index

Spec: `typo:[OPTIONS:]INNER` where INNER is any other spec (a built-in name, `folder:PATH`,
`hf:REPO_ID`) and OPTIONS a comma-separated `key=value` list (the first segment is read as
options exactly when it contains `=`):

    seed=N      the seed (default 0): words and rendering are a pure function of (seed, image index)
    size=A-B    font size as a fraction of the image's shorter side, drawn uniformly (default 0.15-0.3);
                `size=A` fixes it
    box=P       probability of a filled background box behind the word (default 0.5)
    font=PATH   a TrueType font (default: matplotlib's bundled DejaVu Sans); a path holding ',' or
                ':' can only be given as a keyword option

Per image i the word is a class name other than the true label, drawn with a counter-based hash of
(seed, i) (no state: any subset or worker order gives the same word); size, position, colours and
whether a box is drawn come from `numpy.random.default_rng([seed, i])`. The word is shrunk to fit
the image's width, placed entirely inside it, and its colour is pushed away from the background's
luminance so it stays legible. Images come back as RGB (alpha composited onto white).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..utils.errors import SparsesteerError, did_you_mean
from .datasets import Example, ImageDataset, split_wrapper_spec

PREFIX = "typo:"
ATTRIBUTE = "typo_class"
"""Name of the attribute that holds the rendered word's class."""
MIN_FONT_PX = 4
"""Smallest font size (pixels) a word is shrunk to on small images."""


def default_font() -> Path:
    """matplotlib's bundled DejaVu Sans (matplotlib is a dependency, so the file is always there)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@dataclasses.dataclass(frozen=True)
class TypoOptions:
    """How words are chosen and drawn."""

    seed: int = 0
    """Seed of the words and of the rendering (a pure function of seed and image index)."""
    size: tuple[float, float] = (0.15, 0.3)
    """Font size range as a fraction of the image's shorter side, drawn uniformly per image."""
    box: float = 0.5
    """Probability of a filled background box behind the word."""
    font: str | None = None
    """TrueType font file; None = matplotlib's bundled DejaVu Sans."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise SparsesteerError(f"typo: seed must be a non-negative integer, got {self.seed!r}")
        size = self.size if isinstance(self.size, (tuple, list)) else (self.size, self.size)
        try:
            lo, hi = (float(v) for v in size)
        except (TypeError, ValueError):
            raise SparsesteerError(f"typo: size must be a fraction or a (low, high) pair, got {self.size!r}") from None
        if not 0 < lo <= hi <= 1:
            raise SparsesteerError(f"typo: size must satisfy 0 < low <= high <= 1, got {lo}-{hi}")
        object.__setattr__(self, "size", (lo, hi))
        object.__setattr__(self, "seed", int(self.seed))
        if not 0 <= float(self.box) <= 1:
            raise SparsesteerError(f"typo: box is a probability in [0, 1], got {self.box!r}")
        object.__setattr__(self, "box", float(self.box))

    def spec(self) -> str:
        """The options as the spec writes them ('seed=0,size=0.15-0.3,box=0.5')."""
        lo, hi = self.size
        parts = [f"seed={self.seed}", f"size={lo:g}" if lo == hi else f"size={lo:g}-{hi:g}", f"box={self.box:g}"]
        if self.font is not None:
            parts.append(f"font={self.font}")
        return ",".join(parts)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TypoOptions))


def parse_options(text: str, where: str) -> dict[str, Any]:
    """'seed=3,size=0.1-0.2' -> {'seed': 3, 'size': (0.1, 0.2)} (values checked by TypoOptions)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise SparsesteerError(f"{where}: expected key=value, got {item!r}")
        if key not in OPTION_NAMES:
            raise SparsesteerError(
                f"{where}: unknown typo option {key!r}{did_you_mean(key, OPTION_NAMES)}; valid: {', '.join(OPTION_NAMES)}"
            )
        if key in out:
            raise SparsesteerError(f"{where}: typo option {key!r} given twice")
        try:
            if key == "seed":
                out[key] = int(value)
            elif key == "size":
                lo, dash, hi = value.partition("-")
                out[key] = (float(lo), float(hi if dash else lo))
            elif key == "box":
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise SparsesteerError(f"{where}: bad value for typo option {key}: {value!r}") from None
    return out


def split_spec(arg: str) -> tuple[dict[str, Any], str]:
    """The part after 'typo:' -> (options, inner spec). The first ':'-segment holds options iff it has '='."""
    return split_wrapper_spec(PREFIX, arg, parse_options, verb="attack", example="seed=1")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def word_classes(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """int64 class of the word for each image: uniform over the classes other than its label (over
    all classes for an unlabeled image, label -1), from a hash of (seed, image index)."""
    labels = np.asarray(labels, dtype=np.int64)
    idx = np.arange(len(labels), dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(len(labels), seed, dtype=np.uint64))
        h = _splitmix64(key ^ _splitmix64(idx))
    others = np.uint64(max(n_classes - 1, 1))
    shifted = (labels + 1 + (h % others).astype(np.int64)) % max(n_classes, 1)
    anyclass = (h % np.uint64(max(n_classes, 1))).astype(np.int64)
    return np.where(labels >= 0, shifted, anyclass)


def load_font(path: str | Path, px: int) -> ImageFont.FreeTypeFont:
    """`ImageFont.truetype(path, px)`; a file that cannot be loaded is an error naming it."""
    try:
        return ImageFont.truetype(str(path), int(px))
    except (OSError, ValueError) as e:
        raise SparsesteerError(
            f"typo: cannot load the font {path}: {e}; pass font= a TrueType (.ttf) file, or leave it unset "
            "for matplotlib's DejaVu Sans"
        ) from None


class Rendering(NamedTuple):
    """How the word is drawn on one image (everything but the background's colour is decided by
    (seed, index, image size))."""

    word: str
    """The rendered class name."""
    typo_class: int
    """Its class index."""
    font_px: int
    """Font size in pixels (after shrinking to fit)."""
    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1), x1/y1 exclusive: the only pixels the rendering may change."""
    text_xy: tuple[int, int]
    """Where the text is drawn (Pillow's top-left anchor)."""
    text_color: tuple[int, int, int]
    """RGB of the word before the contrast adjustment against the background."""
    box_color: tuple[int, int, int] | None
    """RGB of the filled background box; None when no box is drawn."""


def _luminance(rgb: tuple[float, float, float] | np.ndarray) -> float:
    r, g, b = (float(v) for v in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _contrasting(text: tuple[int, int, int], background_luma: float) -> tuple[int, int, int]:
    """The text colour, darkened or lightened when too close in luminance to the background."""
    if abs(_luminance(text) - background_luma) >= 96:
        return text
    if background_luma > 127:
        return tuple(int(c) // 4 for c in text)  # type: ignore[return-value]
    return tuple(255 - (255 - int(c)) // 4 for c in text)  # type: ignore[return-value]


def plan_rendering(
    word: str, typo_class: int, size: tuple[int, int], rng: np.random.Generator, options: TypoOptions, font_path: Path
) -> Rendering:
    """Font size, position and colours of `word` on an image of `size` (W, H), drawn from `rng`."""
    width, height = size
    frac, fx, fy, has_box = rng.random(4)
    colours = rng.integers(0, 256, size=6)
    lo, hi = options.size
    px = max(MIN_FONT_PX, round((lo + (hi - lo) * frac) * min(width, height)))
    while True:
        font = load_font(font_path, px)
        left, top, right, bottom = font.getbbox(word)
        pad = max(1, round(0.15 * px))
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        if box_w <= width or px <= MIN_FONT_PX:
            break
        px = max(MIN_FONT_PX, min(px - 1, int(px * width / box_w)))
    x0 = int(fx * (max(width - box_w, 0) + 1))
    y0 = int(fy * (max(height - box_h, 0) + 1))
    box = (x0, y0, min(x0 + box_w, width), min(y0 + box_h, height))
    text_color = tuple(int(c) for c in colours[:3])
    box_color = tuple(int(c) for c in colours[3:]) if has_box < options.box else None
    return Rendering(
        word=word,
        typo_class=int(typo_class),
        font_px=int(px),
        box=box,
        text_xy=(x0 + pad - left, y0 + pad - top),
        text_color=text_color,  # type: ignore[arg-type]
        box_color=box_color,  # type: ignore[arg-type]
    )


def render(image: Image.Image, r: Rendering, font: ImageFont.FreeTypeFont) -> Image.Image:
    """A copy of the RGB `image` with rendering `r` drawn; pixels outside `r.box` are untouched."""
    out = image.copy()
    x0, y0, x1, y1 = r.box
    if x1 <= x0 or y1 <= y0:
        return out
    if r.box_color is not None:
        background = _luminance(r.box_color)
    else:
        background = _luminance(np.asarray(out.crop(r.box), dtype=np.float64).reshape(-1, 3).mean(0))
    layer = out.crop(r.box)
    draw = ImageDraw.Draw(layer)
    if r.box_color is not None:
        draw.rectangle((0, 0, x1 - x0, y1 - y0), fill=r.box_color)
    draw.text((r.text_xy[0] - x0, r.text_xy[1] - y0), r.word, font=font, fill=_contrasting(r.text_color, background))
    out.paste(layer, (x0, y0))  # drawing on the crop keeps every change inside the box
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with an alpha band (or palette transparency) composited onto white."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


class TypographicDataset(ImageDataset):
    """`base` with a misleading class word rendered onto every image (see the module docstring).

    Labels, classes and the base's attributes are unchanged; attribute `typo_class` holds the class
    of the rendered word; `text(i)` gives the word. Picklable (fonts are reloaded in each worker).
    """

    def __init__(self, base: ImageDataset, options: TypoOptions | None = None, **kwargs: Any) -> None:
        options = dataclasses.replace(options, **kwargs) if options is not None else TypoOptions(**kwargs)
        if options.font is not None and any(c in options.font for c in ",:"):
            raise SparsesteerError(
                f"typo: the font path {options.font!r} holds ',' or ':' and could not be named in the dataset spec; "
                "copy or link the font to a plain path"
            )
        self.base = base
        self.options = options
        self.font_path = Path(options.font).expanduser() if options.font is not None else default_font()
        load_font(self.font_path, 12)  # fail now, naming the file
        self.name = f"{PREFIX}{options.spec()}:{base.name}"
        self.split, self.root = base.split, base.root
        self.classes = list(base.classes)
        if len(self.classes) < 2:
            only = f" ({self.classes[0]!r})" if self.classes else ""
            raise SparsesteerError(
                f"{self.name}: {base.name} has {len(self.classes)} class name(s){only}; a misleading word needs a "
                "class other than the true one, so at least two classes"
            )
        if ATTRIBUTE in base.attributes:
            raise SparsesteerError(f"{self.name}: {base.name} already has an attribute {ATTRIBUTE!r}")
        self._labels = base.labels()
        self._typo = word_classes(self._labels, len(self.classes), options.seed)
        self.attributes = [*base.attributes, ATTRIBUTE]
        self._attrs = {a: base.attribute_array(a) for a in base.attributes}
        self._attrs[ATTRIBUTE] = self._typo
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}

    def text(self, i: int) -> str:
        """The word rendered on example i."""
        return self.classes[int(self._typo[self._index(i)])]

    def rendering(self, i: int, size: tuple[int, int]) -> Rendering:
        """How the word is drawn on example i, whose image has `size` (W, H)."""
        i = self._index(i)
        rng = np.random.default_rng([self.options.seed, i])
        return plan_rendering(self.text(i), int(self._typo[i]), size, rng, self.options, self.font_path)

    def clean(self, i: int) -> Example:
        """Example i of the base dataset (the same image without the word)."""
        return self.base[i]

    def _font(self, px: int) -> ImageFont.FreeTypeFont:
        font = self._fonts.get(px)
        if font is None:
            font = self._fonts[px] = load_font(self.font_path, px)
        return font

    def _load_image(self, i: int) -> Image.Image:
        image = to_rgb(self.base._load_image(i))
        r = self.rendering(i, image.size)
        return render(image, r, self._font(r.font_px))

    def source(self, i: int) -> str:
        return self.base.source(i)

    def base_index(self, i: int) -> int:
        return self.base.base_index(i)

    def _describe_extra(self) -> dict[str, Any]:
        import PIL

        lo, hi = self.options.size
        return {
            "typo": {
                "seed": self.options.seed,
                "size": [lo, hi],
                "box": self.options.box,
                "font": self.font_path.name if self.options.font is None else str(self.font_path),
                "font_sha256": hashlib.sha256(self.font_path.read_bytes()).hexdigest(),
                "pillow": PIL.__version__,
            },
            "base": self.base.describe(),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fonts"] = {}  # FreeType handles do not pickle; reloaded on first use
        return state


def open_typographic(arg: str, split: str, open_inner: Any, **options: Any) -> TypographicDataset:
    """The dataset of spec `typo:<arg>`: options from the spec and from keywords (the typo option
    names go to the generator, the rest to the inner dataset); `open_inner(spec, split, **options)`
    opens the inner one."""
    spec_options, inner = split_spec(arg)
    mine = {k: options.pop(k) for k in list(options) if k in OPTION_NAMES}
    for key, value in mine.items():
        if key in spec_options and TypoOptions(**{key: spec_options[key]}) != TypoOptions(**{key: value}):
            raise SparsesteerError(
                f"{PREFIX}{arg}: option {key} is {spec_options[key]!r} in the spec but {value!r} as a keyword"
            )
    return TypographicDataset(open_inner(inner, split, **options), **{**spec_options, **mine})


open_wrapped = open_typographic
"""The registry's name for a wrapper's opener (see `registry.WRAPPERS`)."""
