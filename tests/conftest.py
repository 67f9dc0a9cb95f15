import os
from pathlib import Path

import pytest

os.environ.setdefault("SPARSESTEER_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
