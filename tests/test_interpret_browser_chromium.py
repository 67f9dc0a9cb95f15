"""The feature browser in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright. From file://: the index loads, pages, sorts, filters and searches; a latent page loads
with every image; out-of-range ids say so. Against the server with a model: one steering request
and one patch click. Slow answers (a data file or API call held by `page.route` until released):
the page never shows a page number over another page's rows, one latent under another's title, or
an older patch's answer. Tests wait for the state they assert, never for a time. Skips, saying why,
when Playwright or Chromium is missing. Screenshots go to the test's tmp dir."""

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


def _view(pg) -> tuple[str, list[int]]:
    """The pager's text and the latent ids of the rows, read together."""
    info, ids = pg.evaluate(
        "() => [document.querySelector('#pageinfo').textContent,"
        " [...document.querySelectorAll('#latents tbody tr')].map(r => Number(r.dataset.latent))]"
    )
    return info, ids


def _wait_view(pg, info: str, ids: list[int]) -> None:
    """Waits until the pager says `info` over exactly the rows `ids`; on a timeout, shows what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        pg.wait_for_function(
            """([info, ids]) => document.querySelector('#pageinfo').textContent === info &&
            JSON.stringify([...document.querySelectorAll('#latents tbody tr')].map(r => Number(r.dataset.latent)))
            === JSON.stringify(ids)""",
            arg=[info, ids],
        )
    except PlaywrightTimeout:
        pass
    assert _view(pg) == (info, ids)


def _held(pg, routes: list):
    """The one request held back by a route handler that appends it to `routes` (the handler runs when
    Playwright next reads the browser's messages: a few round trips, not a time)."""
    for _ in range(50):
        if routes:
            break
        pg.evaluate("0")
    assert len(routes) == 1
    return routes[0]


# Records every (pager text, row ids) the index ever shows, at each batch of DOM changes (a mutation
# observer runs before any await resumes, so a page number set before its rows arrive is caught).
_RECORD_VIEWS = """
window.__views = [];
new MutationObserver(() => {
  const info = document.querySelector('#pageinfo');
  if (!info) return;
  const v = [info.textContent, [...document.querySelectorAll('#latents tbody tr')].map(r => Number(r.dataset.latent))];
  const last = window.__views[window.__views.length - 1];
  if (JSON.stringify(v) !== JSON.stringify(last)) window.__views.push(v);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def axe_violations(pg) -> list[str]:
    """What axe-core (bundled by the axe-playwright-python package) reports on the page as it is now:
    every violation, one line each (impact, rule, where)."""
    axe = pytest.importorskip("axe_playwright_python.sync_playwright", reason="pip install axe-playwright-python")
    found = axe.Axe().run(pg).response["violations"]
    return [f"{v['impact']}: {v['id']} ({v['help']}) at {[n['target'] for n in v['nodes']][:3]}" for v in found]


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
    _wait_view(pg, "page 1 of 5", by_freq[:10])
    pg.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    # paging
    pg.click("#next")
    _wait_view(pg, "page 2 of 5", by_freq[10:20])
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
    _wait_view(pg, "latent 17", [17])
    pg.fill("#q", "999")
    pg.wait_for_function("document.querySelector('#status').textContent.includes('no latent 999')")
    word = stats.lens.words[1]
    pg.fill("#q", word)
    w = stats.lens.words.index(word)
    with_word = {j for j in range(L) if w in stats.lens.indices[j, :3].tolist() and stats.fire_count[j] > 0}
    n_pages = -(-len(with_word) // 10)
    info = "search" if n_pages == 1 else f"search: page 1 of {n_pages}"
    pg.wait_for_function(f"document.querySelector('#pageinfo').textContent === '{info}'")
    # every hit counted (no cap), shown a page at a time
    assert pg.inner_text("#status").startswith(f"{len(with_word)} latents for ")
    found = _ids(pg)
    for p in range(1, n_pages):
        pg.click("#next")
        pg.wait_for_function(f"document.querySelector('#pageinfo').textContent === 'search: page {p + 1} of {n_pages}'")
        found += _ids(pg)
    assert sorted(found) == sorted(with_word)
    for _ in range(1, n_pages):
        pg.click("#prev")
    pg.wait_for_function(f"document.querySelector('#pageinfo').textContent === '{info}'")
    # open a latent page from the results
    j = _ids(pg)[0]
    pg.click(f"#latents tbody tr[data-latent='{j}'] a")
    pg.wait_for_selector(f"body[data-ready='{j}']")
    assert pg.inner_text("#title") == f"Latent {j}"
    n_top = sum(int((t.images[j] >= 0).sum()) for t in stats.top.values())
    _check_images(pg)
    n_nb = sum(int(stats.top["max"].images[i, 0] >= 0) for i in stats.neighbours.indices[j])  # neighbours' top images
    tops = ", ".join(f"[data-ranking='{r}'] img" for r in stats.top)
    assert pg.eval_on_selector_all(tops, "is => is.length") == n_top
    assert pg.eval_on_selector_all("#neighbours img", "is => is.length") == n_nb
    assert (
        pg.eval_on_selector_all(tops.replace(" img", " canvas.heat"), "cs => cs.length") == n_top
    )  # a heatmap on every top image
    # the heatmap of the first top image: viridis yellow, nearly opaque, where the latent fires most;
    # clearer where it fires less (the scale spans the smallest to the largest patch value shown)
    grid = stats.top["max"].tokens[j, 0, 1:].reshape(4, 4)
    hot, cold = np.unravel_index(grid.argmax(), grid.shape), np.unravel_index(grid.argmin(), grid.shape)
    alpha = pg.evaluate(
        """([hot, cold]) => { const c = document.querySelector("[data-ranking='max'] canvas.heat");
        const a = ([r, q]) => c.getContext("2d").getImageData((q + 0.5) * c.width / 4, (r + 0.5) * c.height / 4, 1, 1).data;
        return [a(hot), a(cold)]; }""",
        [[int(hot[0]), int(hot[1])], [int(cold[0]), int(cold[1])]],
    )
    shown = stats.top["max"].tokens[j, : int((stats.top["max"].images[j] >= 0).sum()), 1:]
    t_hot = (grid.max() - shown.min()) / (shown.max() - shown.min())
    assert alpha[0][:3] == pytest.approx([253, 231, 37], abs=8) and t_hot == pytest.approx(1)
    assert alpha[0][3] == pytest.approx(255 * 0.85, abs=40)  # smoothing mixes in the neighbouring patches
    assert alpha[1][3] < alpha[0][3]
    assert pg.eval_on_selector_all("#hist rect", "rs => rs.length") == int((stats.hist_counts[j] > 0).sum())
    # random images per activation interval (highest first) and among the active images; heatmaps where known
    rec = read_data(out, f"latents/{j // read_data(out, 'meta')['chunk_size']}")[
        j % read_data(out, "meta")["chunk_size"]
    ]
    shown = pg.eval_on_selector_all("#intervals .interval", "ds => ds.map(d => d.querySelectorAll('img').length)")
    assert shown == [len(x[3]) for x in rec["intervals"]][::-1] and len(shown) >= 1
    heads = pg.eval_on_selector_all("#intervals h3", "hs => hs.map(h => h.textContent)")
    assert (
        heads[-1].startswith(f"{rec['intervals'][0][0]:.3g} \u2013 ")
        and f"\u00b7 {rec['intervals'][0][2]} image" in heads[-1]
    )
    srcs = pg.eval_on_selector_all("#random img", "is => is.map(i => i.getAttribute('src'))")
    assert srcs == [f"img/0/{t[0]}.jpg" for t in rec["random"]] and len(srcs) == min(4, int(stats.image_count[j]))
    n_heat = sum(t[3] is not None for x in rec["intervals"] for t in x[3]) + sum(
        t[3] is not None for t in rec["random"]
    )
    assert pg.eval_on_selector_all("#intervals canvas.heat, #random canvas.heat", "cs => cs.length") == n_heat
    nb = pg.eval_on_selector_all("#neighbours a", "as => as.map(a => a.getAttribute('href'))")
    assert nb == [f"latent.html#{i}" for i in stats.neighbours.indices[j]]
    # each neighbour with its label and its top image
    labels = read_data(out, "map")["labels"]
    names = pg.eval_on_selector_all("#neighbours .name", "ns => ns.map(n => n.textContent)")
    srcs = pg.eval_on_selector_all("#neighbours .name", "ns => ns.map(n => (n.querySelector('img') || {}).src || '')")
    for i, name, src in zip(stats.neighbours.indices[j], names, srcs):
        best = int(stats.top["max"].images[i, 0])
        assert name.startswith(f"latent {i}") and (best < 0 or src.endswith(f"/img/0/{best}.jpg")), (name, src)
        assert name == f"latent {i}" or name[len(f"latent {i} ") :] in labels
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


def test_a_latent_page_of_statistics_without_samples(site, page, tmp_path):
    """Statistics written before the random samples (no intervals / random) still give a latent page,
    without those two sections."""
    from dataclasses import replace

    from sparsesteer.interpret.browser.site import write_site
    from sparsesteer.interpret.heatmaps import stats_dataset

    stats = replace(site[1], intervals=None, random=None)  # a copy: the fixture's statistics stay whole
    out = tmp_path / "site"
    write_site(stats, out, stats_dataset(stats), progress=False)
    assert "intervals" not in read_data(out, "latents/0")[0]
    pg, errors = page
    j = int(np.argmax(stats.fire_count))
    pg.goto((out / "latent.html").as_uri() + f"#{j}")
    pg.wait_for_selector(f"body[data-ready='{j}']")
    assert pg.eval_on_selector_all("#intervals, #random", "s => s.length") == 0
    assert pg.eval_on_selector_all("[data-ranking='max'] img", "is => is.length") >= 1
    _check_images(pg)
    assert errors == []


def test_index_overview_map_and_filters(site, page):
    """The summary card's counts, the map (drawn, hover names a latent, a click opens it), dead latents
    hidden until asked, go to page, and the purity order's minimum support."""
    import base64

    out, stats = site
    pg, errors = page
    L = stats.n_latents
    live = stats.fire_count > 0
    dead = [j for j in range(L) if not live[j]]
    freq = stats.fire_count / stats.n_rows
    pg.goto((out / "index.html").as_uri())
    pg.wait_for_selector("body[data-ready='1']")
    assert pg.is_hidden("#tq-label")  # search by text needs the server's model
    assert pg.inner_text("#n-latents").endswith(str(L))
    assert pg.inner_text("#n-dead").split("\n")[-1].startswith(f"{len(dead)} (")
    assert pg.inner_text("#n-dense").split("\n")[-1].startswith(f"{int((freq > 0.1).sum())} (")
    hist = read_data(out, "overview")["hist"]
    assert pg.eval_on_selector_all("#freq-hist rect", "rs => rs.length") == sum(c > 0 for c in hist["counts"])
    # the map: drawn pixels, one point per live latent
    assert "PCA" in pg.inner_text("#map-method") or "UMAP" in pg.inner_text("#map-method")
    assert pg.get_attribute("#map", "data-drawn") == str(int(live.sum()))
    painted = pg.evaluate(
        """() => { const c = document.getElementById('map'); const d = c.getContext('2d').getImageData(0, 0, c.width,
        c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )
    assert painted > 20
    # hovering and clicking the live latent farthest from any other point
    m = read_data(out, "map")
    xy = np.stack([np.frombuffer(base64.b64decode(m[a]), "<u2").astype(float) / 65534 for a in ("x", "y")], 1)
    box = pg.locator("#map").bounding_box()
    pos = np.stack([8 + xy[:, 0] * (520 - 16), 8 + (1 - xy[:, 1]) * (340 - 16)], 1) * box["width"] / 520
    ids = np.flatnonzero(live)
    dist = np.linalg.norm(pos[ids, None] - pos[None, ids], axis=2) + np.eye(len(ids)) * 1e9
    j = int(ids[dist.min(1).argmax()])
    label = m["labels"][int(np.frombuffer(base64.b64decode(m["label"]), "<u2")[j])]
    pg.hover("#map", position={"x": float(pos[j, 0]), "y": float(pos[j, 1])})
    assert pg.inner_text("#map-hover") == f"latent {j}: {label}" == pg.get_attribute("#map", "title")
    pg.click("#map", position={"x": float(pos[j, 0]), "y": float(pos[j, 1])})
    pg.wait_for_selector(f"body[data-ready='{j}']")
    assert pg.inner_text("#title") == f"Latent {j}"
    # dead latents: hidden by default, shown with the box
    pg.goto((out / "index.html").as_uri() + "#order=id")
    pg.wait_for_selector("body[data-ready='1']")
    page_of = {p: [i for i in range(10 * p, min(10 * p + 10, L)) if live[i]] for p in range(5)}
    p_dead = dead[0] // 10 if dead else 0
    pg.fill("#jump", str(p_dead + 1))  # go to page
    pg.dispatch_event("#jump", "change")
    _wait_view(pg, f"page {p_dead + 1} of 5", page_of[p_dead])
    n_dead = sum(1 for i in dead if i // 10 == p_dead)
    assert pg.inner_text("#status") == (f"on this page: {n_dead} hidden (dead)" if n_dead else "")
    pg.check("#dead")  # a filter changed: back to page 1
    _wait_view(pg, "page 1 of 5", list(range(10)))
    pg.fill("#jump", str(p_dead + 1))
    pg.dispatch_event("#jump", "change")
    _wait_view(pg, f"page {p_dead + 1} of 5", list(range(10 * p_dead, min(10 * p_dead + 10, L))))
    pg.uncheck("#dead")
    # purity: by default only latents active on at least top_n images; the support is an input
    top_n = stats.top["max"].images.shape[1]
    pg.select_option("#order", "purity")
    pg.wait_for_function("document.querySelector('#pageinfo').textContent.startsWith('page 1 of')")
    assert pg.input_value("#support") == str(top_n)
    assert all(stats.image_count[i] >= top_n for i in _ids(pg))
    big = int(stats.image_count.max())
    pg.fill("#support", str(big))
    pg.dispatch_event("#support", "change")
    order = read_order(out, "purity")  # pages without such a latent are skipped, the others show only them
    pages = [order[i : i + 10] for i in range(0, L, 10)]
    pages = [[i for i in p if stats.image_count[i] >= big] for p in pages]
    pages = [p for p in pages if p]
    _wait_view(pg, f"page 1 of {len(pages)}", pages[0])
    n_low = 10 - len(pages[0])
    assert pg.inner_text("#status") == (
        f"on this page: {n_low} hidden (active on fewer than {big} images)" if n_low else ""
    )
    assert errors == []


def read_order(out, name: str) -> list[int]:
    meta = read_data(out, "meta")
    return [r[0] for p in range(meta["orders"][name]["n_pages"]) for r in read_data(out, f"pages/{name}-{p}")]


def test_index_shows_a_page_number_only_over_its_rows(site, page):
    """Data files held back (Playwright routes released by the test): the pager changes only with the
    rows it describes, and a late answer of an older navigation does not replace a newer one."""
    out, stats = site
    pg, errors = page
    freq = stats.fire_count / stats.n_rows
    by_freq = sorted(range(stats.n_latents), key=lambda j: (-freq[j], j))
    pages = {f"page {p + 1} of 5": by_freq[10 * p : 10 * p + 10] for p in range(5)}
    pg.add_init_script(_RECORD_VIEWS)
    page2: list = []
    pg.route("**/data/pages/frequency-1.js", lambda route: page2.append(route))
    pg.goto((out / "index.html").as_uri())
    _wait_view(pg, "page 1 of 5", pages["page 1 of 5"])
    with pg.expect_request("**/data/pages/frequency-1.js"):
        pg.click("#next")
    assert _view(pg) == ("page 1 of 5", pages["page 1 of 5"])  # page 2's rows are on their way
    pg.click("#next")  # a newer navigation, whose data comes at once
    _wait_view(pg, "page 3 of 5", pages["page 3 of 5"])
    _held(pg, page2).continue_()
    pg.wait_for_function("SS.idle()")  # page 2's late rows have arrived and been handled
    assert _view(pg) == ("page 3 of 5", pages["page 3 of 5"])
    pg.click("#prev")
    _wait_view(pg, "page 2 of 5", pages["page 2 of 5"])
    # the same for a search: "latent 17" only over latent 17's row
    ids1: list = []
    pg.route("**/data/pages/id-1.js", lambda route: ids1.append(route))
    with pg.expect_request("**/data/pages/id-1.js"):
        pg.fill("#q", "17")
    assert _view(pg) == ("page 2 of 5", pages["page 2 of 5"])
    _held(pg, ids1).continue_()
    _wait_view(pg, "latent 17", [17])
    shown = [(info, ids) for info, ids in pg.evaluate("window.__views")]
    assert shown and all(ids == {**pages, "latent 17": [17], "": []}.get(info) for info, ids in shown), shown
    assert errors == []


def test_latent_page_shows_only_the_latest_latent(site, page):
    """A latent's data held back while the reader moves on to another latent: when it arrives late it
    is dropped; the page shows the newer latent alone, under its own title."""
    out, stats = site
    pg, errors = page
    meta = read_data(out, "meta")
    first, last = 0, stats.n_latents - 1
    chunk: list = []
    pg.route(f"**/data/latents/{first // meta['chunk_size']}.js", lambda route: chunk.append(route))
    with pg.expect_request(f"**/data/latents/{first // meta['chunk_size']}.js"):
        pg.goto((out / "latent.html").as_uri() + f"#{first}", wait_until="commit")
    # the page's own hashchange listener was added first, so it has started the render of `last`
    pg.evaluate(
        f"""() => new Promise(done => {{
        window.addEventListener('hashchange', () => done(), {{once: true}}); location.hash = '{last}'; }})"""
    )
    _held(pg, chunk).continue_()
    pg.wait_for_selector(f"body[data-ready='{last}']")
    pg.wait_for_function("SS.idle()")  # every load has arrived and been handled
    assert pg.inner_text("#title") == f"Latent {last}" and pg.title() == f"Latent {last}"
    assert pg.eval_on_selector_all("#facts", "fs => fs.length") == 1
    fact = "b => [...document.querySelectorAll('#facts div')].find(d => d.firstChild.textContent === b).lastChild.textContent"
    assert pg.evaluate(fact, "active tokens") == str(int(stats.fire_count[last]))
    n_top = sum(int((t.images[last] >= 0).sum()) for t in stats.top.values())
    n_top += sum(int((s.images[last] >= 0).sum()) for s in (stats.intervals, stats.random))  # and its random images
    assert pg.eval_on_selector_all("#main .thumb", "ts => ts.length") == n_top
    assert pg.get_attribute("body", "data-ready") == str(last)
    assert errors == []


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
        pg.wait_for_selector("#patch-image")
        assert [v for v in axe_violations(pg) if v.startswith(("serious", "critical"))] == []  # labelled inputs
        pg.fill("#steer-strength", "40")
        pg.select_option("#steer-mode", "add")
        pg.click("#steer-go")
        pg.wait_for_selector("#steer-out p")  # the answer: a summary line, or an error
        assert pg.locator("#steer-table").count() == 1, pg.inner_text("#steer-out")
        n = min(int((stats.top["max"].images[j] >= 0).sum()), 4)
        assert pg.eval_on_selector_all("#steer-table tr", "rs => rs.length") == n + 1
        # per-class changes as bars on a ticked axis (3 classes here), a thumbnail on every row
        assert pg.eval_on_selector_all("#steer-deltas rect", "rs => rs.length") == 3
        assert pg.eval_on_selector_all("#steer-deltas .axis text", "ts => ts.length") >= 4
        pg.wait_for_function("[...document.querySelectorAll('#steer-table img')].every(i => i.complete)")
        assert pg.eval_on_selector_all("#steer-table img", "is => is.filter(i => i.naturalWidth > 0).length") == n
        # click the patch in row 2, column 3 of the 4 x 4 grid of the first dataset image shown, and
        # while its answer is held back, the patch in row 1, column 2: the late answer about (2, 3) is
        # dropped, the output stays that of the marked patch (1, 2)
        pg.wait_for_function("document.querySelector('#patch-view').naturalWidth > 0")
        box = pg.locator("#patch-view").bounding_box()
        held: list = []
        pg.route("**/api/patch", lambda route: route.continue_() if held else held.append(route))
        with pg.expect_request("**/api/patch"):
            pg.locator("#patch-view").click(position={"x": box["width"] * 3.5 / 4, "y": box["height"] * 2.5 / 4})
        pg.locator("#patch-view").click(position={"x": box["width"] * 2.5 / 4, "y": box["height"] * 1.5 / 4})
        pg.wait_for_selector("#patch-latents")
        assert "patch (1, 2)" in pg.inner_text("#patch-out")
        _held(pg, held).continue_()
        pg.wait_for_function("SS.idle()")  # the late answer has arrived and been handled
        pg.unroute("**/api/patch")
        assert "patch (1, 2)" in pg.inner_text("#patch-out")
        image = int(stats.top["max"].images[j, 0])
        from sparsesteer.interpret.browser.server import ApiRequest

        want = live.patch(ApiRequest("POST", {}, {"image": image, "patch": 6}))["latents"]
        got = pg.eval_on_selector_all("#patch-latents a", "as => as.map(a => a.getAttribute('href'))")
        assert got == [f"latent.html#{i}" for i, _ in want]
        pg.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        # search by text on the index, through api/search: the closest live latents, a page at a time
        pg.goto(f"{base}/index.html")
        pg.wait_for_selector("body[data-ready='1']")
        pg.wait_for_selector("#tq-label:not([hidden])")
        pg.fill("#tq", "a photo of a dog")
        pg.press("#tq", "Enter")
        pg.wait_for_function("document.querySelector('#pageinfo').textContent.startsWith('text search')")
        found = live.search(ApiRequest("POST", {}, {"text": "a photo of a dog", "k": 200}))["latents"]
        assert _ids(pg) == [i for i, _ in found][:10]
        assert pg.inner_text("#status").startswith(f"the {len(found)} of {len(found)} live latents closest to")
        # a latent out of range in a URL: the server's 404 page
        r = pg.goto(f"{base}/latent/{stats.n_latents}")
        assert r.status == 404 and "No such latent" in pg.inner_text("h1")
        assert [e for e in errors if "404" not in e] == []
    finally:
        srv.shutdown()
        srv.server_close()
