"""Benchmark: page weight of the feature browser (`sparsesteer browse`) at 50,000 latents.

Synthetic statistics with the shapes of a real run (top-10 images for the max, cls and patch
rankings, per-patch activations of every token, 50-bin histograms, 10 decoder neighbours, a
1,000-word concept lens, 1,000 classes) are written as a site; the script then weighs what a
browser loads:

- index page: index.html + its CSS and JS + data/meta.js + the first index page (any order; the
  largest is counted);
- latent page: latent.html + its CSS and JS + meta.js + words.js (the lens words) + the chunk file
  holding the latent + the thumbnails of its top images; the heaviest latent is reported.

Targets: index < 300 KB, latent page < 500 KB (1 KB = 1,000 bytes). The index's summary card and
decoder map (data/overview.js, data/map.js of a random decoder) load after the table and are weighed
apart. `--load` also times the pages in headless Chromium from the file system (a user's
`browse --out` site opened with file://): from navigation to the index table rendered
(body[data-ready]), to the map drawn (#map[data-drawn]), and to the heaviest latent page rendered with
every thumbnail decoded; the median of --repeats fresh page loads. The images are real CIFAR-10
JPEGs when ../shared/data/cifar10-jpeg exists (upscaled to the thumbnail size like any image),
else random-noise images (a worst case for JPEG).

    python benchmarks/browse.py                                   # 50,000 latents, ViT-B/32 tokens
    python benchmarks/browse.py --latents 50000 --tokens 197      # ViT-B/16 shapes (more memory)
    python benchmarks/browse.py --latents 49152 --load            # + page-load times in Chromium
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def synthetic_stats(L: int, n_images: int, tokens: int, top_n: int, n_classes: int, n_words: int, seed: int = 0):
    """Random statistics shaped like `sparsesteer interpret`'s (all-token SAE, CLS at position 0)."""
    from sparsesteer.interpret.lens import LensWords
    from sparsesteer.interpret.neighbours import Neighbours
    from sparsesteer.interpret.stats import LatentStats, SampledImages, TopImages

    rng = np.random.default_rng(seed)
    n_rows = n_images * tokens
    fire = (rng.pareto(1.2, L) * 200).astype(np.int64).clip(0, n_rows)
    act_max = (rng.random(L) * 20).astype(np.float32)
    top = {}
    for name in ("max", "cls", "patch"):
        values = -np.sort(-rng.random((L, top_n), dtype=np.float32) * act_max[:, None], axis=1)
        toks = rng.random((L, top_n, tokens), dtype=np.float32) * values[:, :, None]
        toks[rng.random(toks.shape, dtype=np.float32) < 0.7] = 0  # most patches silent
        top[name] = TopImages(
            values, rng.integers(0, n_images, (L, top_n)), toks, rng.integers(0, n_classes, (L, top_n))
        )
    k = 10
    lens_words = tuple(f"word{i}" for i in range(n_words))
    # 4 random images per activation interval (4 intervals) and 4 among the active ones (`--samples 4`)
    iv = -np.sort(-rng.random((L, 4, 4), dtype=np.float32), axis=-1) * act_max[:, None, None]
    bounds = np.concatenate([np.zeros((L, 1)), np.sort(rng.random((L, 3)), axis=1), np.full((L, 1), np.inf)], 1)
    intervals = SampledImages(rng.integers(0, n_images, (L, 4, 4)), iv, rng.integers(0, n_classes, (L, 4, 4)),
                              np.full((L, 4), 100), bounds.astype(np.float32))  # fmt: skip
    rv = -np.sort(-rng.random((L, 4), dtype=np.float32), axis=-1) * act_max[:, None]
    random = SampledImages(rng.integers(0, n_images, (L, 4)), rv, rng.integers(0, n_classes, (L, 4)), np.full(L, 400))
    return LatentStats(
        n_rows=n_rows,
        n_images=n_images,
        token_positions=list(range(tokens)),
        fire_count=fire,
        image_count=np.minimum(fire, n_images),
        act_sum=fire * 2.0,
        act_max=act_max,
        hist_centres=np.logspace(-3, 3, 50),
        hist_counts=rng.integers(0, 1000, (L, 50)) * (rng.random((L, 50)) < 0.4),
        top=top,
        meta={
            "classes": [f"class {i}" for i in range(n_classes)],
            "activations": {"cls_position": 0, "model": {"id": "synthetic"}, "hook": "blocks.11.resid_post"},
            "sae": {"arch": "topk", "k": 64},
            "dataset": {"spec": "synthetic", "split": "train"},
            "tensors_sha256": "0" * 64,
        },
        neighbours=Neighbours(rng.integers(0, L, (L, k)), rng.random((L, k), dtype=np.float32)),
        lens=LensWords(rng.integers(0, n_words, (L, k)), rng.random((L, k), dtype=np.float32), lens_words),
        intervals=intervals,
        random=random,
    )


class Images:
    """Images for the thumbnails: CIFAR-10 JPEGs (cycled) when present, else random noise."""

    def __init__(self, n: int):
        from types import SimpleNamespace

        self.n = n
        self.files = sorted(CIFAR.glob("test/*/*.jpg")) if CIFAR.is_dir() else []
        self.source = f"CIFAR-10 JPEGs ({len(self.files)} files, cycled)" if self.files else "random noise"
        self._ns = SimpleNamespace

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from PIL import Image

        if self.files:
            return self._ns(image=Image.open(self.files[i % len(self.files)]))
        rng = np.random.default_rng(i)
        return self._ns(image=Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))


def weigh(site: Path, stats) -> tuple[dict[str, int], dict[str, int], int]:
    from sparsesteer.interpret.browser.site import read_data, thumb_path

    def size(rel: str) -> int:
        return (site / rel).stat().st_size

    meta = read_data(site, "meta")
    shell = {"index.html": size("index.html"), "assets (css+js)": sum(size(f"assets/{a}") for a in
             ("browser.css", "common.js", "index.js"))}  # fmt: skip
    first = max(size(f"data/pages/{o}-0.js") for o in meta["orders"])
    index = {**shell, "data/meta.js": size("data/meta.js"), "first index page (largest order)": first}
    # heaviest latent: its chunk plus its thumbnails
    shown = [t.images for t in stats.top.values()]
    shown += [x.images.reshape(stats.n_latents, -1) for x in (stats.intervals, stats.random) if x is not None]
    thumbs = {}
    for t in shown:
        for i in np.unique(t):
            if i >= 0 and int(i) not in thumbs:
                thumbs[int(i)] = size(thumb_path(int(i)))
    sizes = np.zeros(max(thumbs) + 1, np.int64)
    for i, s in thumbs.items():
        sizes[i] = s
    allimgs = np.concatenate(shown, axis=1)
    per_latent = np.array([sizes[np.unique(row[row >= 0])].sum() for row in allimgs])
    chunk = meta["chunk_size"]
    chunk_sizes = np.array([size(f"data/latents/{c}.js") for c in range(-(-stats.n_latents // chunk))])
    total = per_latent + chunk_sizes[np.arange(stats.n_latents) // chunk]
    j = int(np.argmax(total))
    latent = {
        "latent.html": size("latent.html"),
        "assets (css+js)": sum(size(f"assets/{a}") for a in ("browser.css", "common.js", "latent.js")),
        "data/meta.js": size("data/meta.js"),
        "data/words.js": size("data/words.js"),
        f"chunk {j // chunk} ({chunk} latents)": int(chunk_sizes[j // chunk]),
        "thumbnails of its top and sampled images": int(per_latent[j]),
    }
    return index, latent, j


def load_times(site: Path, latent: int, repeats: int) -> dict[str, float]:
    """Median seconds from navigation to each page state, in a fresh page per load (no warm cache of
    the page's data; Chromium's own file cache is warm after the first load, as on a user's
    second visit)."""
    import shutil
    import statistics

    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("--load: no chromium on PATH (Debian: apt-get install -y chromium)")
    times: dict[str, list[float]] = {"index table": [], "index map drawn": [], f"latent {latent} page": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            t0 = time.perf_counter()
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            times["index table"].append(time.perf_counter() - t0)
            page.wait_for_selector("#map[data-drawn]", timeout=120_000)
            times["index map drawn"].append(time.perf_counter() - t0)
            page.close()
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            t0 = time.perf_counter()
            page.goto((site / "latent.html").as_uri() + f"#{latent}")
            page.wait_for_selector(f"body[data-ready='{latent}']", timeout=120_000)
            page.wait_for_function("[...document.images].every(i => i.complete)", timeout=120_000)
            times[f"latent {latent} page"].append(time.perf_counter() - t0)
            page.close()
        browser.close()
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=50_000)
    ap.add_argument("--images", type=int, default=10_000, help="distinct images the top lists draw from")
    ap.add_argument("--tokens", type=int, default=50, help="tokens per image (50: ViT-B/32, 197: ViT-B/16)")
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--thumb", type=int, default=96)
    ap.add_argument("--out", type=Path, default=None, help="keep the site here (default: a temp dir)")
    ap.add_argument("--load", action="store_true", help="also time the pages in headless Chromium")
    ap.add_argument("--repeats", type=int, default=3, help="--load: page loads per page (median)")
    ap.add_argument("--d", type=int, default=768, help="decoder width of the random decoder (the map)")
    args = ap.parse_args()

    from sparsesteer.interpret.browser.site import write_site

    t0 = time.perf_counter()
    stats = synthetic_stats(args.latents, args.images, args.tokens, args.top_n, 1000, 1000)
    t_stats = time.perf_counter() - t0
    images = Images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        site = args.out or Path(tmp) / "site"
        t0 = time.perf_counter()
        decoder = np.random.default_rng(1).standard_normal((args.latents, args.d)).astype(np.float32)
        s = write_site(stats, site, images, thumb=args.thumb, overwrite=True, progress=False, decoder=decoder)
        t_site = time.perf_counter() - t0
        index, latent, j = weigh(site, stats)
        after = {f"data/{n}.js": (site / "data" / f"{n}.js").stat().st_size for n in ("overview", "map")}
        loads = load_times(site, j, args.repeats) if args.load else None
        n_files = sum(1 for p in site.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    print(
        f"{args.latents} latents, {args.tokens} tokens per image, top-{args.top_n} x 3 rankings, 1,000 classes, "
        f"1,000 lens words; {s.n_images} thumbnails of {args.thumb} px from {images.source}"
    )
    print(
        f"synthetic stats {t_stats:.1f} s; site written in {t_site:.1f} s: {n_files} files, {total / 1e6:.1f} MB, "
        f"{s.n_pages} index pages per order, {s.n_chunks} chunks of {s.chunk_size} latents"
    )
    for title, parts, target in (("index page", index, 300_000), (f"latent page (heaviest: {j})", latent, 500_000)):
        print(f"| {title} | bytes |\n|---|---:|")
        for k, v in parts.items():
            print(f"| {k} | {v:,} |")
        tot = sum(parts.values())
        print(
            f"| **total** | **{tot:,}** ({tot / 1000:.0f} KB; target < {target // 1000} KB: {tot / target:.2f} of it) |\n"
        )
    print("loaded by the index after its table: " + ", ".join(f"{k} {v:,} bytes" for k, v in after.items()))
    if loads is not None:
        print(f"page loads in headless Chromium from file:// (median of {args.repeats}):")
        for k, v in loads.items():
            print(f"  {k}: {v:.2f} s")


if __name__ == "__main__":
    main()
