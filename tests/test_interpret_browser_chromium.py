"""The feature browser in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright. From file://: the index loads, pages, sorts, filters and searches; a latent page loads
with every image; out-of-range ids say so. Against the server with a model: one steering request
and one patch click. Skips, saying why, when Playwright or Chromium is missing. Screenshots go to
the test's tmp dir."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from sparsesteer.cli import main
from sparsesteer.interpret.browser.server import make_server
from sparsesteer.interpret.browser.site import read_data
from sparsesteer.interpret.store import load_stats


def _chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests: the playwright package is not installed (pip install playwright)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("browser tests: no chromium on PATH (Debian: apt-get install -y chromium)")
    return exe


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        except Error as e:
            pytest.skip(f"browser tests: chromium at {exe} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(browser, request, tmp_path_factory):
    # the browser first, the statistics after: without chromium the tests skip before any work
    tmp, data, sae_dir, stats_dir, clip = request.getfixturevalue("browser_run")
    out = tmp_path_factory.mktemp("chromium") / "site"
    assert main(["browse", "--stats", str(stats_dir), "--out", str(out), "--page-size", "10"]) == 0
    return out, load_stats(stats_dir)


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg, errors
    pg.close()


def _ids(pg) -> list[int]:
    return [int(x) for x in pg.eval_on_selector_all("#latents tbody tr", "rs => rs.map(r => r.dataset.latent)")]


def _check_images(pg) -> int:
    """Every <img> finished loading with pixels (no broken image); returns how many."""
    pg.wait_for_function("[...document.images].every(i => i.complete)")
    broken = pg.eval_on_selector_all("img", "is => is.filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    assert broken == []
    return pg.eval_on_selector_all("img", "is => is.length")


def test_static_site_from_the_file_system(site, page, tmp_path):
    out, stats = site
    pg, errors = page
    L = stats.n_latents
    freq = stats.fire_count / stats.n_rows
    by_freq = sorted(range(L), key=lambda j: (-freq[j], j))
    pg.goto((out / "index.html").as_uri())
    pg.wait_for_selector("#latents tbody tr")
    assert _ids(pg) == by_freq[:10]
    assert pg.inner_text("#pageinfo") == "page 1 of 5"
    pg.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    # paging
    pg.click("#next")
    pg.wait_for_function("document.querySelector('#pageinfo').textContent === 'page 2 of 5'")
    assert _ids(pg) == by_freq[10:20]
    # sorting by max activation
    pg.select_option("#order", "max")
    pg.wait_for_function("document.querySelector('#pageinfo').textContent === 'page 1 of 5'")
    pg.wait_for_function(
        f"document.querySelector('#latents tbody tr').dataset.latent === '{int(np.argmax(stats.act_max))}'"
    )
    # the density filter: latents above the limit disappear, pages of only those are skipped
    thr = float(np.quantile(freq, 0.5))
    pg.select_option("#order", "frequency")
    pg.fill("#thr", str(thr))
    pg.dispatch_event("#thr", "change")
    want = [j for j in by_freq if round(float(freq[j]), 4) <= thr or float(f"{freq[j]:.4g}") <= thr]
    pg.wait_for_function(f"document.querySelector('#latents tbody tr').dataset.latent === '{want[0]}'")
    shown = _ids(pg)
    assert shown and all(float(f"{freq[j]:.4g}") <= thr for j in shown) and shown == want[: len(shown)]
    pg.fill("#thr", "")
    pg.dispatch_event("#thr", "change")
    # search by id, then by a word (the latents with it among their first lens words)
    pg.fill("#q", "17")
    pg.wait_for_function("document.querySelector('#pageinfo').textContent === 'latent 17'")
    assert _ids(pg) == [17]
    pg.fill("#q", "999")
    pg.wait_for_function("document.querySelector('#status').textContent.includes('no latent 999')")
    word = stats.lens.words[1]
    pg.fill("#q", word)
    pg.wait_for_function("document.querySelector('#pageinfo').textContent === 'search'")
    w = stats.lens.words.index(word)
    with_word = {j for j in range(L) if w in stats.lens.indices[j, :3].tolist()}
    assert set(_ids(pg)) == with_word
    # open a latent page from the results
    j = _ids(pg)[0]
    pg.click(f"#latents tbody tr[data-latent='{j}'] a")
    pg.wait_for_selector(f"body[data-ready='{j}']")
    assert pg.inner_text("#title") == f"Latent {j}"
    n_top = sum(int((t.images[j] >= 0).sum()) for t in stats.top.values())
    assert _check_images(pg) == n_top
    assert pg.eval_on_selector_all("canvas.heat", "cs => cs.length") == n_top  # a heatmap on every top image
    # the heatmap of the first top image is red where the latent fires most, clear where it is silent
    grid = stats.top["max"].tokens[j, 0, 1:].reshape(4, 4)
    hot, cold = np.unravel_index(grid.argmax(), grid.shape), np.unravel_index(grid.argmin(), grid.shape)
    alpha = pg.evaluate(
        """([hot, cold]) => { const c = document.querySelector("[data-ranking='max'] canvas.heat");
        const a = ([r, q]) => c.getContext("2d").getImageData((q + 0.5) * c.width / 4, (r + 0.5) * c.height / 4, 1, 1).data;
        return [a(hot), a(cold)]; }""",
        [[int(hot[0]), int(hot[1])], [int(cold[0]), int(cold[1])]],
    )
    vmax = float(stats.top["max"].tokens[j, : int((stats.top["max"].images[j] >= 0).sum())].max())
    assert alpha[0][0] == 255 and alpha[0][3] == pytest.approx(0.6 * 255 * grid.max() / vmax, abs=40)
    assert alpha[1][3] < alpha[0][3]
    assert pg.eval_on_selector_all("#hist rect", "rs => rs.length") == int((stats.hist_counts[j] > 0).sum())
    nb = pg.eval_on_selector_all("#neighbours a", "as => as.map(a => a.getAttribute('href'))")
    assert nb == [f"latent.html#{i}" for i in stats.neighbours.indices[j]]
    assert all(stats.lens.words[i] in pg.inner_text("#words") for i in stats.lens.indices[j])
    pg.screenshot(path=str(tmp_path / "latent.png"), full_page=True)
    # following a neighbour link loads that latent's page
    pg.click("#neighbours a >> nth=0")
    pg.wait_for_selector(f"body[data-ready='{stats.neighbours.indices[j, 0]}']")
    _check_images(pg)
    # an id out of range says so
    pg.goto((out / "latent.html").as_uri() + "#4800")
    pg.wait_for_selector("#error:not([hidden])")
    assert "no latent" in pg.inner_text("#error") and "48 latents" in pg.inner_text("#error")
    assert errors == []
    # the data one latent page loads: meta + one chunk (+ words) + assets, far below 500 KB
    meta = read_data(out, "meta")
    assert meta["chunk_size"] >= 1


def test_server_with_a_model_steers_and_explores_patches(site, page, request, tmp_path):
    from sparsesteer.experiments.browse import BrowseConfig, LiveModel

    out, stats = site
    tmp, data, sae_dir, stats_dir, clip = request.getfixturevalue("browser_run")
    cfg = BrowseConfig(stats=str(stats_dir), out=str(out), sae=str(sae_dir), serve=True, model=str(clip), device="cpu")
    live = LiveModel.open(cfg, stats)
    srv = make_server(out, port=0, api=live.handlers())
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pg, errors = page
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        j = int(np.argmax(stats.fire_count))
        pg.goto(f"{base}/latent/{j}")  # redirected to latent.html#j
        pg.wait_for_selector(f"body[data-ready='{j}']")
        _check_images(pg)
        pg.wait_for_selector("#live:not([hidden])")
        pg.fill("#steer-strength", "40")
        pg.select_option("#steer-mode", "add")
        pg.click("#steer-go")
        pg.wait_for_function("document.querySelector('#steer-out').textContent !== 'running…'")
        assert pg.locator("#steer-table").count() == 1, pg.inner_text("#steer-out")
        n = min(int((stats.top["max"].images[j] >= 0).sum()), 4)
        assert pg.eval_on_selector_all("#steer-table tr", "rs => rs.length") == n + 1
        # click the patch in row 1, column 2 of the 4 x 4 grid of the first dataset image shown
        pg.wait_for_function("document.querySelector('#patch-view').naturalWidth > 0")
        box = pg.locator("#patch-view").bounding_box()
        pg.locator("#patch-view").click(position={"x": box["width"] * 2.5 / 4, "y": box["height"] * 1.5 / 4})
        pg.wait_for_function("!['', 'running…'].includes(document.querySelector('#patch-out').textContent)")
        assert "patch (1, 2)" in pg.inner_text("#patch-out")
        image = int(stats.top["max"].images[j, 0])
        from sparsesteer.interpret.browser.server import ApiRequest

        want = live.patch(ApiRequest("POST", {}, {"image": image, "patch": 6}))["latents"]
        got = pg.eval_on_selector_all("#patch-latents a", "as => as.map(a => a.getAttribute('href'))")
        assert got == [f"latent.html#{i}" for i, _ in want]
        pg.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        # a latent out of range in a URL: the server's 404 page
        r = pg.goto(f"{base}/latent/{stats.n_latents}")
        assert r.status == 404 and "No such latent" in pg.inner_text("h1")
        assert [e for e in errors if "404" not in e] == []
    finally:
        srv.shutdown()
        srv.server_close()
