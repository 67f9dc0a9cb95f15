import os
from pathlib import Path

import pytest

os.environ.setdefault("SPARSESTEER_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests (hypothesis) draw the same examples on every run, so that CI passes or fails for the
# code and not for the draw; SPARSESTEER_HYPOTHESIS=explore draws new ones (run it when changing a parser).
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    _hypothesis_settings.register_profile("explore")
    _hypothesis_settings.load_profile("explore" if os.environ.get("SPARSESTEER_HYPOTHESIS") == "explore" else "ci")
except ImportError:  # hypothesis is in the test extra; without it only the property tests cannot run
    pass

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip cleanly on machines without a GPU (CI); gpu_check.sh runs them."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cifar10_jpeg() -> Path:
    """The real CIFAR-10 JPEGs beside the project; tests using it skip cleanly without them."""
    if not (CIFAR10_JPEG / "test").is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {CIFAR10_JPEG}")
    return CIFAR10_JPEG


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """One tiny random CLIP per test session (`make_tiny_clip` defaults: 3 blocks, d 32, 32 px,
    patch 8: 17 tokens; head d 16), written once and shared. Tests must not modify it."""
    from sparsesteer.models.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="session")
def browser_run(tiny_clip_dir, tmp_path_factory):
    """Statistics of a tiny all-token TopK SAE over a tiny CLIP's cache of 7 folder images (with
    a concept lens and neighbours), for the browser tests: (tmp, data, sae_dir, stats_dir, clip)."""
    import torch
    from helpers import make_folder_dataset

    from sparsesteer.cli import main
    from sparsesteer.sae import SAEConfig, build

    tmp = tmp_path_factory.mktemp("browser")
    data = make_folder_dataset(tmp / "images", (3, 2, 2), split="train")
    cache, hook = tmp / "cache", "blocks.2.resid_post"
    args = ["cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train"]
    assert main([*args, "--hook", hook, "--tokens", "all", "--out", str(cache), "--workers", "0"]) == 0
    torch.manual_seed(0)
    sae_dir = build(SAEConfig(arch="topk", d_in=32, n_latents=48, k=8)).save(tmp / "sae", hook=hook, tokens="all")
    words = tmp / "words.txt"
    words.write_text("cat\ndog\ncar\ntree\nboat\n")
    stats = tmp / "stats"
    rc = main(
        [
            "interpret", "--sae", str(sae_dir), "--activations", str(cache), "--out", str(stats),
            "--top-n", "3", "--neighbours", "4", "--vocab", str(words), "--lens-k", "2", "--device", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0
    return tmp, data, sae_dir, stats, tiny_clip_dir
