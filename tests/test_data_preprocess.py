"""Preprocessor vs transformers' own image processors (the independent reference)."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from sparsesteer.data.preprocess import Preprocessor, center_crop
from sparsesteer.utils.errors import SparsesteerError

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)  # "falls back to ...Pil" notices

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONFIGS = {
    # OpenAI CLIP: shortest edge 224, centre crop 224, bicubic, CLIP mean/std.
    "clip": lambda: transformers.CLIPImageProcessor(),
    # SigLIP defaults: 224 x 224 without crop, bicubic, mean/std 0.5.
    "siglip": lambda: transformers.SiglipImageProcessor(),
    # facebook/dinov2-base: BitImageProcessor, shortest edge 256, crop 224, bicubic, ImageNet mean/std.
    "dinov2": lambda: transformers.BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    ),  # fmt: skip
}
SIZES = [(32, 32), (300, 200), (200, 300), (500, 17), (17, 500), (768, 1024), (224, 224), (7, 5)]  # (W, H)


def _images(size: tuple[int, int], seed: int = 0) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    w, h = size
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    rgb = rgba.convert("RGB")
    palette_transparent = rgb.convert("P")
    palette_transparent.info["transparency"] = 3
    return {
        "RGB": rgb,
        "RGBA": rgba,
        "L": rgba.convert("L"),
        "LA": rgba.convert("LA"),
        "CMYK": rgb.convert("CMYK"),
        "P": rgb.convert("P"),
        "P+transparency": palette_transparent,
        "1": rgba.convert("1"),
        "I": rgba.convert("I"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)),
        "F": rgba.convert("F"),
    }


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers processor loaded back from disk, our Preprocessor from the same directory)."""
    directory = tmp_path_factory.mktemp(request.param)
    CONFIGS[request.param]().save_pretrained(directory)
    reference = transformers.AutoImageProcessor.from_pretrained(directory)
    return request.param, reference, Preprocessor.from_pretrained(str(directory))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_transformers_for_every_mode(pair, size):
    name, reference, ours = pair
    for mode, image in _images(size).items():
        expected = reference(image, return_tensors="np")["pixel_values"][0]
        got = ours(image)
        assert got.dtype == np.float32 and got.shape == expected.shape, (name, mode)
        assert np.abs(got - expected).max() <= 1e-5, (name, mode, size)


def test_settings_read_from_config(pair):
    name, reference, ours = pair
    assert ours.resample == int(reference.resample) == 3  # bicubic everywhere, SigLIP included
    assert ours.output_size == (224, 224)
    assert np.allclose(ours.image_mean, reference.image_mean) and np.allclose(ours.image_std, reference.image_std)
    assert ours.do_center_crop is (name != "siglip")


def test_batch_and_output_size(pair):
    _, reference, ours = pair
    images = [_images(s, seed=i)["RGB"] for i, s in enumerate(SIZES[:4])]
    got = ours.batch(images)
    expected = reference(images, return_tensors="np")["pixel_values"]
    assert got.shape == (4, 3, 224, 224)
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_resize=False),  # 7 x 5 and 32 x 32 inputs are smaller than the crop: zero padding
        dict(size={"height": 180, "width": 250}, crop_size={"height": 200, "width": 150}),
        dict(do_normalize=False),
        dict(do_rescale=False, image_mean=[100.0, 110.0, 120.0], image_std=[50.0, 60.0, 70.0]),
        dict(do_rescale=False, do_normalize=False),
        dict(resample=2, size={"shortest_edge": 97}, crop_size={"height": 61, "width": 80}),
        dict(resample=1),
        dict(resample=0),
    ],
)
def test_matches_transformers_for_other_settings(kwargs, tmp_path):
    transformers.CLIPImageProcessor(**kwargs).save_pretrained(tmp_path)
    reference = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    ours = Preprocessor.from_pretrained(tmp_path)
    for size in [(7, 5), (32, 32), (300, 200), (150, 400)]:
        for mode in ("RGB", "LA", "P+transparency"):
            image = _images(size)[mode]
            expected = reference(image, return_tensors="np")["pixel_values"][0]
            got = ours(image)
            assert got.shape == expected.shape
            assert np.abs(got - expected.astype(np.float32)).max() <= 1e-5, (kwargs, size, mode)


def test_cifar_jpegs_upsampled_like_clip(cifar10_jpeg, tmp_path):
    """Real 32 px CIFAR JPEGs through the CLIP recipe (upsampled to 224)."""
    transformers.CLIPImageProcessor().save_pretrained(tmp_path)
    reference = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    ours = Preprocessor.from_pretrained(tmp_path)
    files = sorted((cifar10_jpeg / "test").glob("*/000[0-2].jpg"))
    assert files
    images = [Image.open(f) for f in files]
    expected = reference(images, return_tensors="np")["pixel_values"]
    got = ours.batch(images)
    assert got.shape == (len(files), 3, 224, 224)
    assert np.abs(got - expected).max() <= 1e-5


def test_legacy_hub_config_with_integer_sizes():
    """openai/clip-vit-base-patch32 style: ints, a feature_extractor_type, missing keys -> class defaults."""
    config = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
    }  # fmt: skip
    ours = Preprocessor.from_dict(config)
    assert ours.size == {"shortest_edge": 224} and ours.crop_size == {"height": 224, "width": 224}
    assert ours.do_convert_rgb and ours.do_rescale and ours.rescale_factor == 1 / 255
    reference = transformers.CLIPImageProcessor(**{k: v for k, v in config.items() if k != "feature_extractor_type"})
    image = _images((300, 200))["RGBA"]
    assert np.abs(ours(image) - reference(image, return_tensors="np")["pixel_values"][0]).max() <= 1e-5


def test_null_values_take_the_class_defaults():
    config = {"image_processor_type": "SiglipImageProcessor", "do_center_crop": None, "resample": None, "size": None}
    assert Preprocessor.from_dict(config) == Preprocessor.from_dict({"image_processor_type": "SiglipImageProcessor"})


def test_to_dict_round_trip_and_cheap_pickle():
    ours = Preprocessor.from_dict({"image_processor_type": "SiglipImageProcessor"})
    assert ours.size == {"height": 224, "width": 224} and not ours.do_center_crop
    again = Preprocessor.from_dict(json.loads(json.dumps(ours.to_dict())))
    assert again == ours and hash(again) == hash(ours)
    blob = pickle.dumps(ours)
    assert len(blob) < 1000
    assert pickle.loads(blob) == ours


def test_hub_id_goes_through_hf_hub_download(monkeypatch, tmp_path):
    transformers.CLIPImageProcessor().save_pretrained(tmp_path)
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    ours = Preprocessor.from_pretrained("openai/clip-vit-base-patch32", revision="abc123")
    assert calls == [("openai/clip-vit-base-patch32", "preprocessor_config.json", "abc123")]
    assert ours == Preprocessor.from_pretrained(tmp_path)


def test_clear_errors(tmp_path):
    with pytest.raises(SparsesteerError, match="no preprocessor_config.json"):
        Preprocessor.from_pretrained(tmp_path)
    with pytest.raises(SparsesteerError, match="neither an existing directory nor a valid hub model id"):
        Preprocessor.from_pretrained("not a//valid id")
    with pytest.raises(SparsesteerError, match="unsupported key.*crop_pct"):
        Preprocessor.from_dict({"image_processor_type": "CLIPImageProcessor", "crop_pct": 0.9})
    with pytest.raises(SparsesteerError, match="resample=9"):
        Preprocessor.from_dict({"image_processor_type": "CLIPImageProcessor", "resample": 9})
    with pytest.raises(SparsesteerError, match="lacks"):
        Preprocessor.from_dict({"image_processor_type": "MysteryImageProcessor", "do_resize": True})
    with pytest.raises(SparsesteerError, match="size must be"):
        Preprocessor.from_dict({"image_processor_type": "CLIPImageProcessor", "size": {"longest_edge": 3}})
    no_convert = Preprocessor.from_dict({"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": False})
    with pytest.raises(SparsesteerError, match="mode L needs RGB conversion"):
        no_convert(Image.new("L", (8, 8)))
    variable = Preprocessor.from_dict({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False})
    assert variable.output_size is None
    with pytest.raises(SparsesteerError, match="different sizes"):
        variable.batch([Image.new("RGB", (10, 20)), Image.new("RGB", (20, 10))])


def test_center_crop_offsets_hand_worked():
    a = np.arange(5 * 6).reshape(5, 6)
    assert center_crop(a, 3, 4).tolist() == a[1:4, 1:5].tolist()  # (5-3)//2 = 1, (6-4)//2 = 1
    padded = center_crop(np.ones((2, 3), dtype=np.uint8), 5, 4)  # pad ceil(3/2)=2 above, ceil(1/2)=1 left
    assert padded.shape == (5, 4)
    assert padded.tolist() == [[0] * 4, [0] * 4, [0, 1, 1, 1], [0, 1, 1, 1], [0] * 4]
