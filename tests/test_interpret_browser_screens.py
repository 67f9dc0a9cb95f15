"""The feature browser's look, in headless Chromium (Debian's `chromium`, through Playwright): screenshots
of the index and of a latent page compared with reference PNGs, an accessibility pass with axe-core,
the heatmap colour scale (a dense latent is not one colour), the patch value on hover, the overlay
toggle, and the pages fitting a laptop screen.

The site is built from tiny synthetic statistics written here (no model, no SAE: the same pixels on
every run). The references live in tests/screens/; after an intended change of the pages, rewrite
them and look at them before committing:

    SPARSESTEER_UPDATE_SCREENSHOTS=1 python -m pytest -q tests/test_interpret_browser_screens.py

A comparison passes when the mean absolute pixel difference and the share of clearly different
pixels are both small (antialiasing noise), and fails on a broken layout: the tests below check that
a page without its style sheet, or with a section missing, fails it. The references were made with
Debian 12's chromium and fonts; other fonts need their own references (the command above).
Skips, saying why, without Playwright or Chromium; tests wait for the state they check, never a time.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_interpret_browser_chromium import axe_violations, browser  # noqa: F401 (browser: a fixture)

from sparsesteer.interpret.browser.site import read_data, write_site

SCREENS = Path(__file__).parent / "screens"
UPDATE = os.environ.get("SPARSESTEER_UPDATE_SCREENSHOTS") == "1"
MEAN_TOL = 4.0
"""Largest mean absolute difference (0..255, over every pixel and channel) that still matches."""
PIXEL_DIFF, FRAC_TOL = 40, 0.006
"""A pixel differs when a channel is off by more than PIXEL_DIFF; at most FRAC_TOL of them may."""
GRID, TOP_N = 4, 5
DENSE, SPARSE = 0, 1
"""Latent 0 fires on every patch of its top images (2 to 6); latent 1 on a blob around one patch."""


class _Shapes:
    """Eight 64 x 64 images: a disc or a square on a coloured ground (no fonts, no randomness)."""

    def __len__(self) -> int:
        return 8

    def __repr__(self) -> str:
        return "shapes"

    def __getitem__(self, i: int):
        from PIL import Image

        yy, xx = np.mgrid[0:64, 0:64]
        ground = np.array([[70, 110, 160], [150, 120, 80], [90, 140, 90], [130, 90, 140]][i % 4], np.float64)
        img = np.broadcast_to(ground * (0.7 + 0.3 * yy / 63)[..., None], (64, 64, 3)).copy()
        cy, cx = 18 + 4 * i, 46 - 4 * i
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 < 144 if i % 2 == 0 else (abs(yy - cy) < 11) & (abs(xx - cx) < 11)
        img[shape] = [235, 225, 200]
        return SimpleNamespace(image=Image.fromarray(img.astype(np.uint8)))


def synthetic_stats():
    """12 latents over 8 images of 17 tokens (CLS first, a 4 x 4 patch grid), with a lens, neighbours and
    random images per activation interval and among the active images."""
    from sparsesteer.interpret.lens import LensWords
    from sparsesteer.interpret.neighbours import Neighbours
    from sparsesteer.interpret.stats import LatentStats, SampledImages, TopImages

    rng = np.random.default_rng(7)
    L, n_images, m = 12, 8, 1 + GRID * GRID
    tokens = np.round(rng.random((L, TOP_N, m)) * 4, 2) * (rng.random((L, TOP_N, m)) < 0.3)
    r, c = np.mgrid[0:GRID, 0:GRID]
    for k in range(TOP_N):
        tokens[DENSE, k, 1:] = (2 + 4 * (r + c) / 6 * (1 - 0.1 * k)).ravel()  # weakest 2 (top left), strongest 6
        tokens[SPARSE, k, 1:] = (np.maximum(0, 5 - 4 * np.hypot(r - 1, c - 2)) * (1 - 0.15 * k)).ravel()
    tokens[2:, :, 0] = 0.5 * tokens[2:, :, 1:].max(2)
    top = {}
    for name, score in (
        ("max", tokens.max(2)),
        ("cls", tokens[:, :, 0]),
        ("patch", tokens[:, :, 1:].max(2)),
    ):
        order = np.argsort(-score, axis=1, kind="stable")
        images = np.stack([rng.permutation(n_images)[:TOP_N] for _ in range(L)])
        values = np.take_along_axis(score, order, 1)
        toks = np.take_along_axis(tokens, order[:, :, None], 1)
        filled = values > 0
        images = np.where(filled, images, -1)
        top[name] = TopImages(
            values.astype(np.float32), images, (toks * filled[:, :, None]).astype(np.float32),
            np.where(filled, images % 4, -1),
        )  # fmt: skip
    fire = np.array([120, 9, 30, 22, 17, 14, 12, 11, 8, 6, 4, 2])
    centres = np.logspace(-2, 2, 24)
    hist = np.zeros((L, 24), np.int64)
    for j in range(L):
        lo = 8 + j % 5
        hist[j, lo : lo + 7] = np.round(fire[j] * np.array([1, 3, 6, 8, 5, 2, 1]) / 26).astype(np.int64) + 1
    words = ("bird", "boat", "car", "dog", "disc", "square")
    # random images: 4 intervals (the third empty) of 4, and 4 among the active images
    bounds = np.tile(np.array([0.25, 0.5, 1, 2, np.inf], np.float32), (L, 1))
    counts = np.tile(np.array([37, 12, 0, 3]), (L, 1))
    iv_images = np.full((L, 4, 4), -1, np.int64)
    iv_values = np.zeros((L, 4, 4), np.float32)
    for j in range(L):
        for i, n in enumerate((4, 4, 0, 3)):
            iv_images[j, i, :n] = rng.permutation(n_images)[:n]
            iv_values[j, i, :n] = np.sort(bounds[j, i] * (1 + rng.random(n) * 0.9))[::-1]
    rd_images = np.stack([rng.permutation(n_images)[:4] for _ in range(L)])
    rd_values = -np.sort(-rng.random((L, 4)) * 3, 1).astype(np.float32)
    intervals = SampledImages(iv_images, iv_values, np.where(iv_images >= 0, iv_images % 4, -1), counts, bounds)
    random = SampledImages(rd_images, rd_values, rd_images % 4, np.minimum(fire, n_images))
    return LatentStats(
        n_rows=n_images * m,
        n_images=n_images,
        token_positions=list(range(m)),
        fire_count=fire,
        image_count=np.minimum(fire, n_images),
        act_sum=fire * 1.5,
        act_max=tokens.max((1, 2)).astype(np.float32),
        hist_centres=centres,
        hist_counts=hist,
        top=top,
        meta={
            "classes": ["bird", "boat", "car", "dog"],
            "activations": {
                "cls_position": 0,
                "model": {"id": "/home/someone/models/tiny-vit"},
                "hook": "blocks.5.resid_post",
                "tokens": "all",
            },
            "sae": {"path": "/home/someone/runs/sae-topk", "arch": "topk", "k": 4, "weights_sha256": "1" * 64},
            "dataset": {"spec": "folder:/home/someone/data/shapes", "split": "test"},
            "tensors_sha256": "0" * 64,
        },
        neighbours=Neighbours(
            np.array([[(j + d) % L for d in (1, 2, 5, 7)] for j in range(L)]),
            np.array([[0.61, 0.42, 0.3, 0.12]] * L, np.float32),
        ),
        lens=LensWords(
            np.array([[(j + d) % 6 for d in (0, 1, 3)] for j in range(L)]),
            np.array([[0.31, 0.24, 0.18]] * L, np.float32),
            words,
        ),
        intervals=intervals,
        random=random,
    )


@pytest.fixture(scope="module")
def shapes_site(browser, tmp_path_factory):  # noqa: F811 (the imported fixture)
    out = tmp_path_factory.mktemp("screens") / "site"
    stats = synthetic_stats()
    decoder = np.random.default_rng(5).normal(size=(stats.n_latents, 8))  # the index's map: PCA, umap-learn or not
    saved = sys.modules.get("umap")
    sys.modules["umap"] = None  # type: ignore[assignment]
    try:
        write_site(stats, out, _Shapes(), page_size=8, title="Synthetic shapes", progress=False, decoder=decoder)
    finally:
        if saved is None:
            del sys.modules["umap"]
        else:
            sys.modules["umap"] = saved
    return out


@pytest.fixture
def page(browser):  # noqa: F811
    pg = browser.new_page(viewport={"width": 1366, "height": 768}, device_scale_factor=1)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield pg, errors
    pg.close()


def _open(pg, site: Path, view: str) -> None:
    """Opens `view` ('index' or a latent id) afresh and waits until it is drawn: data, images, fonts."""
    pg.goto("about:blank")  # a new document even when only the hash would change
    if view == "index":
        pg.goto((site / "index.html").as_uri())
        pg.wait_for_selector("body[data-ready='1']")
    else:
        pg.goto((site / "latent.html").as_uri() + f"#{view}")
        pg.wait_for_selector(f"body[data-ready='{view}']")
    pg.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    pg.wait_for_function("document.fonts.status === 'loaded'")


def _shot(pg) -> np.ndarray:
    from PIL import Image

    png = pg.screenshot(full_page=True, animations="disabled", caret="hide")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def compare(actual: np.ndarray, ref: np.ndarray) -> tuple[bool, str]:
    """Whether a screenshot matches its reference, and the figures that say so."""
    if actual.shape != ref.shape:
        return False, f"size {actual.shape[1]}x{actual.shape[0]}, reference {ref.shape[1]}x{ref.shape[0]}"
    diff = np.abs(actual.astype(np.int16) - ref.astype(np.int16))
    mean, frac = float(diff.mean()), float((diff.max(2) > PIXEL_DIFF).mean())
    figures = f"mean abs difference {mean:.3f} (<= {MEAN_TOL}), {frac:.2%} of pixels differ by > {PIXEL_DIFF} "
    return mean <= MEAN_TOL and frac <= FRAC_TOL, figures + f"(<= {FRAC_TOL:.1%})"


def _check_screen(actual: np.ndarray, name: str, tmp_path: Path) -> None:
    from PIL import Image

    ref_path = SCREENS / f"{name}.png"
    if UPDATE:
        SCREENS.mkdir(exist_ok=True)
        Image.fromarray(actual).save(ref_path, optimize=True)
        pytest.skip(f"wrote {ref_path}: look at it before committing")
    if not ref_path.exists():
        pytest.fail(f"no reference {ref_path}: make it with SPARSESTEER_UPDATE_SCREENSHOTS=1")
    ref = np.asarray(Image.open(ref_path).convert("RGB"))
    ok, figures = compare(actual, ref)
    if not ok:
        Image.fromarray(actual).save(tmp_path / f"{name}.png")
        raise AssertionError(f"{name} differs from {ref_path}: {figures}; this run's screenshot: {tmp_path / name}.png")


@pytest.mark.parametrize("view", ["index", "3"])
def test_pages_match_their_reference_screenshots(shapes_site, page, view, tmp_path):
    pg, errors = page
    _open(pg, shapes_site, view)
    _check_screen(_shot(pg), "index-1366" if view == "index" else f"latent-{view}-1366", tmp_path)
    assert errors == []


def test_a_broken_layout_fails_the_comparison(shapes_site, page):
    """The tolerance passes only noise: the latent page matches its reference, but not without its
    heatmaps, one of its sections or its style sheet."""
    from PIL import Image

    ref_path = SCREENS / "latent-3-1366.png"
    if UPDATE or not ref_path.exists():
        pytest.skip("no reference screenshot to compare with")
    ref = np.asarray(Image.open(ref_path).convert("RGB"))
    pg, _ = page
    _open(pg, shapes_site, "3")
    assert compare(_shot(pg), ref)[0]
    pg.evaluate("document.querySelectorAll('canvas.heat').forEach(c => c.remove())")  # same size, no heatmaps
    assert not compare(_shot(pg), ref)[0]
    _open(pg, shapes_site, "3")
    pg.evaluate("document.querySelector('#labels').remove()")  # one card fewer: the others move
    assert not compare(_shot(pg), ref)[0]
    _open(pg, shapes_site, "3")
    pg.evaluate("document.querySelector('link[rel=stylesheet]').remove()")
    assert pg.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"  # unstyled
    assert not compare(_shot(pg), ref)[0]


@pytest.mark.parametrize("view", ["index", "3", str(DENSE)])
def test_no_accessibility_violations(shapes_site, page, view):
    """axe-core on the index and latent pages: no violations at all (serious and critical ones would be
    labels, contrast, alt text, language; the moderate ones these pages had were missing landmarks)."""
    pg, _ = page
    _open(pg, shapes_site, view)
    assert axe_violations(pg) == []


def _pixel(pg, ranking: str, k: int, row: int, col: int) -> list[int]:
    """RGBA of the heatmap canvas of top image k of `ranking` at the centre of patch (row, col)."""
    return pg.evaluate(
        """([ranking, k, row, col, g]) => {
        const c = document.querySelectorAll(`[data-ranking='${ranking}'] canvas.heat`)[k];
        return [...c.getContext('2d').getImageData((col + 0.5) * c.width / g, (row + 0.5) * c.height / g, 1, 1).data]; }""",
        [ranking, k, row, col, GRID],
    )


def test_heatmap_colour_scale(shapes_site, page):
    """A dense latent's maps span the colour map (weakest shown patch transparent, strongest yellow);
    a sparse latent's silent patches are transparent; the colour bar names the scale's ends."""
    pg, _ = page
    _open(pg, shapes_site, str(DENSE))
    weak, strong = _pixel(pg, "patch", 0, 0, 0), _pixel(pg, "patch", 0, 3, 3)
    assert weak[3] < 60 and strong[3] > 150  # not one colour: the top-left patch (2) shows through, (6) does not
    assert strong[:3] == pytest.approx([253, 231, 37], abs=25)  # viridis' top
    bar = pg.inner_text("[data-ranking='patch'] >> xpath=.. >> .colourbar")
    assert bar.split() == ["2", "6"]  # the smallest and largest patch value shown
    _open(pg, shapes_site, str(SPARSE))
    assert _pixel(pg, "patch", 0, 3, 0)[3] == 0  # silent patch: no overlay at all
    assert _pixel(pg, "patch", 0, 1, 2)[3] > 150  # the blob's centre
    assert pg.inner_text("[data-ranking='patch'] >> xpath=.. >> .colourbar").split()[0] == "0"


def test_hover_shows_the_patch_value_and_the_toggle_hides_the_overlay(shapes_site, page):
    pg, errors = page
    _open(pg, shapes_site, str(DENSE))
    rec = read_data(shapes_site, "latents/0")[DENSE]
    frame = pg.locator("[data-ranking='patch'] .thumb .frame").first
    box = frame.bounding_box()
    frame.hover(position={"x": box["width"] * 2.5 / GRID, "y": box["height"] * 1.5 / GRID})  # row 1, column 2
    probe = frame.locator(".probe")
    probe.wait_for(state="visible")
    q = np.frombuffer(__import__("base64").b64decode(rec["top"]["patch"][0][3]), np.uint8)
    value = q[1 * GRID + 2] / 255 * rec["vmax"]["patch"]
    assert value == pytest.approx(2 + 4 * 3 / 6, abs=0.02)  # the synthetic activation there: 4
    assert probe.inner_text() == f"patch (1, 2): {float(f'{value:.3g}'):g}"
    pg.mouse.move(0, 0)
    probe.wait_for(state="hidden")
    heat = "[...document.querySelectorAll('canvas.heat')].map(c => getComputedStyle(c).visibility)"
    assert set(pg.evaluate(heat)) == {"visible"}
    pg.uncheck("#show-heat")
    assert set(pg.evaluate(heat)) == {"hidden"}  # the raw images
    pg.evaluate("location.hash = '1'")  # stays off on the next latent
    pg.wait_for_selector("body[data-ready='1']")
    assert set(pg.evaluate(heat)) == {"hidden"}
    assert errors == []


def test_the_patch_values_can_be_read_from_the_keyboard(shapes_site, page):
    """Tab reaches a heatmap, the arrows move the outlined patch and its value matches the stored one;
    leaving (Tab on) hides it again."""
    pg, errors = page
    _open(pg, shapes_site, str(DENSE))
    rec = read_data(shapes_site, "latents/0")[DENSE]
    q = np.frombuffer(__import__("base64").b64decode(rec["top"]["patch"][0][3]), np.uint8)
    frame = pg.locator("[data-ranking='patch'] .thumb .frame").first
    frame.focus()
    probe = frame.locator(".probe")
    probe.wait_for(state="visible")

    def text(row, col):
        value = q[row * GRID + col] / 255 * rec["vmax"]["patch"]
        return f"patch ({row}, {col}): {float(f'{value:.3g}'):g}"

    assert probe.inner_text() == text(0, 0)
    scrolled = pg.evaluate("window.scrollY")  # focusing may scroll the frame into view
    for key in ("ArrowDown", "ArrowRight", "ArrowRight", "ArrowUp", "ArrowDown"):
        pg.keyboard.press(key)
    assert probe.inner_text() == text(1, 2)
    assert pg.evaluate("window.scrollY") == scrolled  # the arrows did not scroll the page
    pg.keyboard.press("Home")
    assert probe.inner_text() == text(0, 0)
    pg.keyboard.press("Tab")
    probe.wait_for(state="hidden")
    assert errors == []


@pytest.mark.parametrize("size", [(1366, 768), (1440, 900)])
def test_pages_fit_a_laptop_screen(shapes_site, page, size):
    """No horizontal scrolling at laptop sizes; the favicon is the site's own (no request elsewhere)."""
    pg, _ = page
    pg.set_viewport_size({"width": size[0], "height": size[1]})
    for view in ("index", "3"):
        _open(pg, shapes_site, view)
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), view
        icon = pg.evaluate("document.querySelector('link[rel=icon]').href")
        assert icon == (shapes_site / "assets" / "favicon.svg").as_uri()
    assert (shapes_site / "assets" / "favicon.svg").read_text().startswith("<svg")
