"""The README's Python tour runs as written (on a tiny random CLIP instead of a hub download)."""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparsesteer.sae import SAEConfig, build

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_tour_runs(tmp_path, monkeypatch, tiny_clip_dir):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    clip = tiny_clip_dir
    code = code.replace('"openai/clip-vit-base-patch32"', repr(str(clip))).replace(
        '"blocks.11.resid_post"', '"blocks.2.resid_post"'
    )
    code = code.replace('"blocks.7.resid_post"', '"blocks.1.resid_post"')
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    ns = {
        "images": [Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)) for _ in range(4)],
        "acts_train": torch.randn(512, 32),
        "sae7": build(SAEConfig(k=4, n_latents=64, d_in=32)).eval(),
    }
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["steered"].shape == ns["acts"].shape == (4, 32)
    assert ns["codes"].values.shape == (4, 64)
    assert ns["emb"].shape[0] == 4
