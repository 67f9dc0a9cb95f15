"""Make docs/browser.png: a latent page of the feature browser for a tiny random CLIP and a small
TopK SAE trained on its activations over 300 real CIFAR-10 test JPEGs (../shared/data/cifar10-jpeg).
The model is random, so the latents mean little; the picture shows the page, not a finding.

    python docs/browser_screenshot.py            # needs chromium and playwright
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def run(argv: list[str]) -> None:
    from sparsesteer.cli import main

    if main(argv) != 0:
        sys.exit(f"failed: sparsesteer {' '.join(argv)}")


def build(tmp: Path) -> Path:
    from sparsesteer.models.tiny import make_tiny_clip

    clip = make_tiny_clip(tmp / "clip")
    hook, data = "blocks.2.resid_post", f"folder:{CIFAR}"
    run(["cache", "--model", str(clip), "--dataset", data, "--split", "test", "--limit", "300", "--hook", hook,
         "--tokens", "all", "--out", str(tmp / "cache"), "--workers", "0"])  # fmt: skip
    run(["train", "--activations", str(tmp / "cache"), "--out", str(tmp / "sae"), "--arch", "topk", "--k", "4",
         "--n-latents", "64", "--steps", "300", "--batch-size", "256", "--device", "cpu"])  # fmt: skip
    words = tmp / "words.txt"
    words.write_text("\n".join(sorted(p.name for p in (CIFAR / "test").iterdir())) + "\n")
    run(["interpret", "--sae", str(tmp / "sae"), "--activations", str(tmp / "cache"), "--out", str(tmp / "stats"),
         "--vocab", str(words), "--lens-k", "5", "--device", "cpu"])  # fmt: skip
    run(["browse", "--stats", str(tmp / "stats"), "--out", str(tmp / "site")])
    return tmp / "site"


def main() -> None:
    from playwright.sync_api import sync_playwright

    from sparsesteer.interpret.browser.site import read_data

    with tempfile.TemporaryDirectory() as tmp:
        site = build(Path(tmp))
        meta = read_data(site, "meta")

        def record(j: int) -> dict:
            return read_data(site, f"latents/{j // meta['chunk_size']}")[j % meta["chunk_size"]]

        # a frequent latent (not among the densest three) that fires on CLS tokens too
        rows = read_data(site, "pages/frequency-0")[3:]
        first = next((r[0] for r in rows if record(r[0])["top"].get("cls")), rows[0][0])
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            pg = b.new_page(viewport={"width": 1150, "height": 1000})
            pg.goto((site / "latent.html").as_uri() + f"#{first}")
            pg.wait_for_selector(f"body[data-ready='{first}']")
            png = pg.screenshot(full_page=False)
            b.close()
    import io

    from PIL import Image

    # 256 colours: a third of the size, no visible difference for a page of text and thumbnails
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(ROOT / "docs" / "browser.png", optimize=True)
    print(f"wrote {ROOT / 'docs' / 'browser.png'} (latent {first})")


if __name__ == "__main__":
    main()
