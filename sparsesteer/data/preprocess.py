"""Model preprocessing (image -> normalised pixels) with Pillow and numpy only.

`Preprocessor` reads a model's `preprocessor_config.json` and reproduces, value for value, what
transformers' Pillow image processors (`CLIPImageProcessorPil`, `SiglipImageProcessorPil`,
`BitImageProcessorPil`, `ViTImageProcessorPil`) compute. That is the backend transformers itself uses
when torchvision is absent, and it is the original CLIP recipe (PIL bicubic resize). The steps, in
transformers' order and with its arithmetic:

1. convert to RGB; an image with an alpha band (or a `transparency` entry, e.g. palette images)
   is composited onto a white background first;
2. resize with Pillow: `shortest_edge` keeps the aspect ratio, the long side is
   `int(N * long / short)` (truncated, as torchvision does); `height`/`width` resizes exactly;
3. centre crop with offsets `(size - crop) // 2`; an image smaller than the crop is zero-padded
   (padding `ceil(diff / 2)` before), still in uint8;
4. rescale: `float64(uint8) * rescale_factor`, then cast to float32;
5. normalise in float32: `(x - mean) / std`.

Steps 4-5 only ever see 256 distinct values per channel, so they are applied through a 3 x 256
float32 lookup table computed with exactly those operations; the result is bit-identical and fast.
The object is a small frozen dataclass (a few numbers), cheap to pickle into DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

# Class-level defaults of the transformers image processors we mirror, used for keys a config omits
# (old hub configs often carry only a few keys). `default_to_square` says how an integer `size`
# is read: True -> {"height": N, "width": N}, False -> {"shortest_edge": N}.
_CLIP_LIKE: dict[str, Any] = dict(
    do_convert_rgb=True, do_resize=True, size={"shortest_edge": 224}, resample=3,
    do_center_crop=True, crop_size={"height": 224, "width": 224}, do_rescale=True,
    rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    default_to_square=False,
)  # fmt: skip
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": _CLIP_LIKE,
    "BitImageProcessor": _CLIP_LIKE,  # DINOv2 checkpoints use it with ImageNet mean/std in the config
    "SiglipImageProcessor": dict(
        do_convert_rgb=True, do_resize=True, size={"height": 224, "width": 224}, resample=3,
        do_center_crop=False, crop_size=None, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD,
        default_to_square=False,
    ),
    "ViTImageProcessor": dict(
        do_convert_rgb=False, do_resize=True, size={"height": 224, "width": 224}, resample=2,
        do_center_crop=False, crop_size=None, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD,
        default_to_square=True,
    ),
}  # fmt: skip

_FIELDS = (
    "do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size",
    "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
)  # fmt: skip
# Keys transformers writes that do not change the pixels for these processors.
_IGNORED_KEYS = {
    "image_processor_type", "feature_extractor_type", "processor_class", "default_to_square",
    "data_format", "input_data_format", "return_tensors", "device", "disable_grouping",
    "image_seq_length", "pad_size", "model_input_names", "auto_map", "_processor_class",
    "image_processor_backend", "backend",
}  # fmt: skip
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Pillow/numpy twin of a transformers image processor: `PIL image -> float32 [3, H, W]`."""

    do_convert_rgb: bool = True
    """Convert to RGB first (alpha composited onto white)."""
    do_resize: bool = True
    """Resize before cropping."""
    size: dict[str, int] = dataclasses.field(default_factory=lambda: {"shortest_edge": 224})
    """`{"shortest_edge": N}` (keep aspect ratio) or `{"height": H, "width": W}`."""
    resample: int = 3
    """Pillow resampling filter (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)."""
    do_center_crop: bool = True
    """Centre-crop to `crop_size` after resizing."""
    crop_size: dict[str, int] | None = dataclasses.field(default_factory=lambda: {"height": 224, "width": 224})
    """`{"height": H, "width": W}` of the centre crop."""
    do_rescale: bool = True
    """Multiply uint8 values by `rescale_factor`."""
    rescale_factor: float = 1 / 255
    """Scale applied to uint8 values (1/255 maps them into [0, 1])."""
    do_normalize: bool = True
    """Subtract `image_mean` and divide by `image_std` per channel."""
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    """Per-channel mean (RGB)."""
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    """Per-channel standard deviation (RGB)."""

    def __post_init__(self) -> None:
        _check_size(self.size, "size", allow_shortest=True)
        if self.do_center_crop:
            if self.crop_size is None:
                raise SparsesteerError("preprocessor: do_center_crop is true but crop_size is missing")
            _check_size(self.crop_size, "crop_size", allow_shortest=False)
        if self.resample not in _RESAMPLE_NAMES:
            raise SparsesteerError(
                f"preprocessor: resample={self.resample!r} is not a Pillow filter; "
                f"valid: {', '.join(f'{k} ({v})' for k, v in _RESAMPLE_NAMES.items())}"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise SparsesteerError(f"preprocessor: {name} needs 3 values (RGB), got {list(value)}")
        if self.do_normalize and any(s == 0 for s in self.image_std):
            raise SparsesteerError(f"preprocessor: image_std contains 0: {list(self.image_std)}")

    def __hash__(self) -> int:  # dict fields: hash the canonical JSON instead
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, where: str = "preprocessor config") -> Preprocessor:
        """Build from a `preprocessor_config.json` mapping (or from `to_dict()` output).

        Keys the config omits take the defaults of its `image_processor_type`, as transformers does.
        """
        config = {k: v for k, v in config.items() if v is not None}  # null = "use the default", as in transformers
        kind = _processor_type(config)
        if kind in PROCESSOR_DEFAULTS:
            defaults = PROCESSOR_DEFAULTS[kind]
        else:
            needed = [
                k for k in _FIELDS if k not in config and not (k == "crop_size" and not config.get("do_center_crop"))
            ]
            if needed:
                what = f"image processor type {kind!r}" if kind else "a config without image_processor_type"
                raise SparsesteerError(
                    f"{where}: {what} has no known defaults (known: {', '.join(PROCESSOR_DEFAULTS)}) "
                    f"and lacks {', '.join(needed)}; add those keys to the config"
                )
            defaults = {"default_to_square": True}
        if config.get("do_pad"):
            raise SparsesteerError(f"{where}: do_pad=true is not supported (no padding step for these models)")
        extra = sorted(set(config) - set(_FIELDS) - _IGNORED_KEYS - {"do_pad", "use_square_size"})
        if extra:
            raise SparsesteerError(
                f"{where}: unsupported key(s) {', '.join(extra)}; sparsesteer reproduces "
                f"CLIP/SigLIP/DINOv2-style processors with keys {', '.join(_FIELDS)}"
            )
        merged: dict[str, Any] = {k: config.get(k, defaults.get(k)) for k in _FIELDS}  # JSON values, checked below
        square = config.get("default_to_square", defaults.get("default_to_square", True))
        try:
            merged["size"] = _size_dict(merged["size"], square=bool(square), where=f"{where}: size")
            if merged["crop_size"] is not None:
                merged["crop_size"] = _size_dict(merged["crop_size"], square=True, where=f"{where}: crop_size")
            merged["image_mean"] = _triple(merged["image_mean"], f"{where}: image_mean")
            merged["image_std"] = _triple(merged["image_std"], f"{where}: image_std")
            merged["resample"] = int(merged["resample"] if merged["resample"] is not None else 2)
            merged["rescale_factor"] = float(merged["rescale_factor"])
            for k in ("do_convert_rgb", "do_resize", "do_center_crop", "do_rescale", "do_normalize"):
                merged[k] = bool(merged[k])
        except (TypeError, ValueError) as e:
            raise SparsesteerError(f"{where}: {e}") from None
        if config.get("use_square_size") and "shortest_edge" in merged["size"]:  # KOSMOS-2 style CLIP config
            edge = merged["size"]["shortest_edge"]
            merged["size"] = {"height": edge, "width": edge}
        return cls(**merged)

    @classmethod
    def from_pretrained(cls, model_id_or_dir: str | Path, revision: str | None = None) -> Preprocessor:
        """Read `preprocessor_config.json` from a `save_pretrained` directory or a hub repo.

        A local directory and a hub id go through the same path: locate the JSON file (the hub one
        via `huggingface_hub.hf_hub_download`, which uses the local cache), then `from_dict`.
        """
        path = Path(model_id_or_dir).expanduser()
        if path.is_dir():
            config_path = path / "preprocessor_config.json"
            if not config_path.is_file():
                raise SparsesteerError(
                    f"{path} has no preprocessor_config.json; pass a directory written by save_pretrained "
                    "(model and image processor) or a hub model id"
                )
        elif path.is_file() and path.suffix == ".json":
            config_path = path
        else:
            config_path = _hub_config(str(model_id_or_dir), revision)
        try:
            config = json.loads(Path(config_path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SparsesteerError(f"cannot read {config_path}: {e}") from None
        if not isinstance(config, dict):
            raise SparsesteerError(f"{config_path}: expected a JSON object")
        return cls.from_dict(config, where=str(config_path))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for manifests; `from_dict(to_dict())` rebuilds the same object."""
        return {
            "do_convert_rgb": self.do_convert_rgb,
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": dict(self.crop_size) if self.crop_size else None,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    # ---------------------------------------------------------------------------------- applying
    @property
    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of every output, or None when it depends on the input (shortest_edge, no crop)."""
        if self.do_center_crop and self.crop_size:
            return (self.crop_size["height"], self.crop_size["width"])
        if self.do_resize and "height" in self.size:
            return (self.size["height"], self.size["width"])
        return None

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 `[3, H, W]`."""
        if not isinstance(image, Image.Image):
            raise SparsesteerError(f"preprocessor expects a PIL image, got {type(image).__name__}")
        rgb = self._to_rgb(image)
        if self.do_resize:
            height, width = self.resize_shape(rgb.height, rgb.width)
            rgb = rgb.resize((width, height), resample=self.resample)
        pixels_hwc = np.asarray(rgb)
        if self.do_center_crop:
            assert self.crop_size is not None
            pixels_hwc = center_crop(pixels_hwc, self.crop_size["height"], self.crop_size["width"])
        lut = _lookup_table(self.do_rescale, self.rescale_factor, self.do_normalize, self.image_mean, self.image_std)
        out_chw = np.empty((3,) + pixels_hwc.shape[:2], dtype=np.float32)
        for c in range(3):
            np.take(lut[c], pixels_hwc[:, :, c], out=out_chw[c])
        return out_chw

    def batch(self, images: Iterable[Image.Image]) -> np.ndarray:
        """Several PIL images -> float32 `[B, 3, H, W]` (all outputs must share one size)."""
        arrays = [self(im) for im in images]
        if not arrays:
            h_w = self.output_size or (0, 0)
            return np.zeros((0, 3) + h_w, dtype=np.float32)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise SparsesteerError(
                f"preprocessed images have different sizes {sorted(shapes)}; this config "
                f"(size={self.size}, no centre crop) keeps aspect ratios, so process them one by one"
            )
        return np.stack(arrays)

    def resize_shape(self, height: int, width: int) -> tuple[int, int]:
        """Target (H, W) of the resize step for an input of (height, width), as transformers computes it."""
        if "shortest_edge" in self.size:
            target = self.size["shortest_edge"]
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = target, int(target * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        return (self.size["height"], self.size["width"])

    def _to_rgb(self, image: Image.Image) -> Image.Image:
        if not self.do_convert_rgb:
            if image.mode != "RGB":
                raise SparsesteerError(
                    f"image mode {image.mode} needs RGB conversion, but this preprocessor has "
                    "do_convert_rgb=false; convert images to RGB first or enable do_convert_rgb"
                )
            return image
        try:
            if "A" in image.getbands() or image.info.get("transparency") is not None:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return image.convert("RGB")
        except (ValueError, OSError) as e:
            raise SparsesteerError(f"cannot convert a {image.mode} image to RGB: {e}") from None


# ------------------------------------------------------------------------------------- helpers
def center_crop(pixels_hwc: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """transformers' centre crop on an HWC array, zero-padding images smaller than the crop."""
    height, width = pixels_hwc.shape[:2]
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    bottom, right = top + crop_height, left + crop_width
    if top >= 0 and left >= 0 and bottom <= height and right <= width:
        return pixels_hwc[top:bottom, left:right]
    new_h, new_w = max(crop_height, height), max(crop_width, width)
    canvas = np.zeros((new_h, new_w) + pixels_hwc.shape[2:], dtype=pixels_hwc.dtype)
    top_pad = math.ceil((new_h - height) / 2)
    left_pad = math.ceil((new_w - width) / 2)
    canvas[top_pad : top_pad + height, left_pad : left_pad + width] = pixels_hwc
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return canvas[max(0, top) : min(new_h, bottom), max(0, left) : min(new_w, right)]


@functools.lru_cache(maxsize=32)
def _lookup_table(
    do_rescale: bool, factor: float, do_normalize: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    """float32 [3, 256]: the value transformers produces for each uint8 level of each channel."""
    levels = np.arange(256, dtype=np.uint8)
    if do_rescale:
        values = (levels.astype(np.float64) * factor).astype(np.float32)
    else:
        values = levels.astype(np.float32)
    table = np.tile(values, (3, 1))
    if do_normalize:
        mean32 = np.asarray(mean, dtype=np.float32)[:, None]
        std32 = np.asarray(std, dtype=np.float32)[:, None]
        table = (table - mean32) / std32
    table = np.ascontiguousarray(table, dtype=np.float32)
    table.setflags(write=False)
    return table


def _processor_type(config: Mapping[str, Any]) -> str | None:
    kind = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not kind:
        return None
    kind = str(kind)
    for suffix in ("Pil", "Fast"):
        if kind.endswith(suffix):
            kind = kind[: -len(suffix)]
    return kind.replace("FeatureExtractor", "ImageProcessor")


def _size_dict(value: Any, *, square: bool, where: str) -> dict[str, int]:
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, Sequence) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, Sequence) and len(value) == 1:
        return _size_dict(int(value[0]), square=square, where=where)
    raise ValueError(f"cannot read size {value!r}")


def _check_size(size: Mapping[str, int] | None, name: str, *, allow_shortest: bool) -> None:
    keys = set(size or {})
    valid = [{"height", "width"}] + ([{"shortest_edge"}] if allow_shortest else [])
    if keys not in valid:
        forms = " or ".join("{" + ", ".join(f'"{k}": N' for k in sorted(v)) + "}" for v in valid)
        raise SparsesteerError(f"preprocessor: {name} must be {forms}, got {dict(size or {})}")
    if any(int(v) <= 0 for v in (size or {}).values()):
        raise SparsesteerError(f"preprocessor: {name} values must be positive, got {dict(size or {})}")


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"needs 3 values (RGB), got {list(values)}")
    return values  # type: ignore[return-value]


def _hub_config(repo_id: str, revision: str | None) -> Path:
    """Fetch (or find in the cache) the hub repo's preprocessor_config.json."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub is a hard dependency
        raise SparsesteerError(f"huggingface_hub is needed to read hub models: {e}") from None
    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(hf_hub_download(repo_id, "preprocessor_config.json", revision=revision))
    except HFValidationError:
        raise SparsesteerError(f"{repo_id!r} is neither an existing directory nor a valid hub model id") from None
    except RepositoryNotFoundError:
        raise SparsesteerError(f"hub model {at} not found (or private); check the id") from None
    except RevisionNotFoundError:
        raise SparsesteerError(f"hub model {repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError, its base class: not cached is not missing
        raise SparsesteerError(
            f"preprocessor_config.json of {at} is not in the local cache and the hub cannot be reached "
            "(offline?); download the model once with network access or pass a local directory"
        ) from None
    except EntryNotFoundError:
        raise SparsesteerError(f"hub model {at} has no preprocessor_config.json") from None
