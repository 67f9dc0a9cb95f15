"""The feature browser without a browser: the site's data against the statistics (computed again
here), sizes, refusals (existing site, another SAE, missing images), and the server: 404 for a
latent out of range, path traversal, malformed requests, a port in use, the live API against
direct model runs."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsesteer.cli import main
from sparsesteer.interpret.browser.server import make_server
from sparsesteer.interpret.browser.site import ORDERS, dequantise_grid, read_data, thumb_path, write_site
from sparsesteer.interpret.heatmaps import stats_dataset
from sparsesteer.interpret.stats import LatentStats, TopImages
from sparsesteer.interpret.store import load_stats
from sparsesteer.utils.errors import SparsesteerError


@pytest.fixture(scope="module")
def site(browser_run, tmp_path_factory):
    tmp, data, sae_dir, stats_dir, _ = browser_run
    out = tmp_path_factory.mktemp("site") / "site"
    rc = main(["browse", "--stats", str(stats_dir), "--sae", str(sae_dir), "--out", str(out), "--page-size", "10"])
    assert rc == 0
    return out, load_stats(stats_dir)


def test_site_data_matches_the_statistics(site):
    out, stats = site
    L = stats.n_latents
    meta = read_data(out, "meta")
    assert meta["n_latents"] == L and meta["page_size"] == 10 and meta["grid"] == 4  # 16 patches of 17 tokens
    freq = stats.fire_count / stats.n_rows
    purity = []
    for j in range(L):  # the most common label's share of the top images, counted here with Counter
        labs = [int(lab) for img, lab in zip(stats.top["max"].images[j], stats.top["max"].labels[j]) if img >= 0]
        purity.append(Counter(labs).most_common(1)[0][1] / len(labs) if labs else -1.0)
    expected = {
        "frequency": sorted(range(L), key=lambda j: (-freq[j], j)),
        "max": sorted(range(L), key=lambda j: (-float(stats.act_max[j]), j)),
        "purity": sorted(range(L), key=lambda j: (-purity[j], j)),
        "id": list(range(L)),
    }
    for name in ORDERS:
        n_pages = meta["orders"][name]["n_pages"]
        assert n_pages == 5
        rows = [r for p in range(n_pages) for r in read_data(out, f"pages/{name}-{p}")]
        assert [r[0] for r in rows] == expected[name], name
        for p in range(n_pages):  # the page's lower bound on frequency holds (the density filter skips by it)
            page = read_data(out, f"pages/{name}-{p}")
            assert meta["orders"][name]["min_freq"][p] <= min(r[1] for r in page)
    row = {r[0]: r for r in (r for p in range(5) for r in read_data(out, f"pages/id-{p}"))}
    words = read_data(out, "words")
    assert words == list(stats.lens.words)
    keep = [i for i, p in enumerate(stats.token_positions) if p != 0]
    for j in range(L):
        rec = read_data(out, f"latents/{j // meta['chunk_size']}")[j % meta["chunk_size"]]
        assert rec["id"] == j and rec["fire_count"] == stats.fire_count[j]
        assert rec["frequency"] == pytest.approx(freq[j], rel=1e-4) and row[j][1] == pytest.approx(freq[j], rel=1e-3)
        assert rec["max"] == pytest.approx(float(stats.act_max[j]), rel=1e-4)
        assert row[j][4] == stats.lens.words[stats.lens.indices[j, 0]]
        hist = np.zeros(len(stats.hist_centres), np.int64)
        for b, c in rec["hist"]:
            hist[b] = c
        np.testing.assert_array_equal(hist, stats.hist_counts[j])
        for name, top in stats.top.items():
            n = int((top.images[j] >= 0).sum())
            assert [t[0] for t in rec["top"][name]] == top.images[j, :n].tolist()
            vmax = float(top.tokens[j, :n].max()) if n else 0.0
            for r, t in enumerate(rec["top"][name]):
                grid = dequantise_grid(t[3], rec["vmax"][name])
                np.testing.assert_allclose(grid, top.tokens[j, r, keep], atol=vmax / 255 / 2 + 1e-6)
        dist = {stats.meta["classes"][a]: c for a, c in rec["labels"]["max"]}
        assert dist == stats.label_distribution(j)
        assert [n[0] for n in rec["neighbours"]] == stats.neighbours.indices[j].tolist()
        assert [w[0] for w in rec["lens"]] == stats.lens.indices[j].tolist()
        check_sample_records(rec, stats, j, keep)
    # search: a word lists the latents that have it among their first lens words
    group = read_data(out, "words/0")
    for w in range(len(words)):
        want = {j for j in range(L) if w in stats.lens.indices[j, :3].tolist()}
        assert set(group[str(w)]) == want
    # one thumbnail per distinct top or sampled image, at the thumbnail size
    sampled = np.concatenate([stats.intervals.images.ravel(), stats.random.images.ravel()])
    imgs = {int(i) for t in stats.top.values() for i in t.images.ravel() if i >= 0} | {
        int(i) for i in sampled if i >= 0
    }
    assert {int(p.stem) for p in (out / "img").rglob("*.jpg")} == imgs
    assert Image.open(out / thumb_path(min(imgs))).size == (96, 96)


def check_sample_records(rec: dict, stats: LatentStats, j: int, keep: list[int]) -> None:
    """Latent j's "intervals" and "random" records against the statistics: ranges, counts, images,
    values; a heatmap exactly for the images that are top images too (their stored tokens)."""
    iv, rd = stats.intervals, stats.random
    known = {int(i): t.tokens[j, r, keep] for t in stats.top.values() for r, i in enumerate(t.images[j]) if i >= 0}
    n_int = max(int((~np.isnan(iv.bounds[j])).sum()) - 1, 0)
    assert len(rec["intervals"]) == n_int
    pairs = [(x[3], iv.images[j, i], iv.values[j, i]) for i, x in enumerate(rec["intervals"])]
    for i, (lo, hi, count, _) in enumerate(rec["intervals"]):
        assert lo == pytest.approx(float(iv.bounds[j, i]), rel=1e-3) and count == iv.counts[j, i]
        assert (
            hi is None if np.isinf(iv.bounds[j, i + 1]) else hi == pytest.approx(float(iv.bounds[j, i + 1]), rel=1e-3)
        )
    for items, images, values in [*pairs, (rec["random"], rd.images[j], rd.values[j])]:
        assert [t[0] for t in items] == [int(i) for i in images if i >= 0]
        for (img, v, _, grid), want in zip(items, values):
            assert v == pytest.approx(float(want), rel=1e-4)
            assert (grid is not None) == (img in known)
            if grid is not None:
                vmax = rec["vmax"]["max"]
                np.testing.assert_allclose(dequantise_grid(grid, vmax), known[img], atol=vmax / 255 / 2 + 1e-5)


def _synthetic(L: int, n_images: int, top_n: int, m: int, seed: int = 0) -> LatentStats:
    rng = np.random.default_rng(seed)
    fire = rng.integers(0, 1000, L)
    top = {
        name: TopImages(
            rng.random((L, top_n), np.float32) * 5, rng.integers(0, n_images, (L, top_n)),
            rng.random((L, top_n, m), np.float32) * 5, rng.integers(0, 10, (L, top_n)),
        )
        for name in ("max", "cls", "patch")
    }  # fmt: skip
    return LatentStats(
        n_rows=n_images * m, n_images=n_images, token_positions=list(range(m)), fire_count=fire,
        image_count=np.minimum(fire, n_images), act_sum=fire * 1.5, act_max=rng.random(L).astype(np.float32) * 9,
        hist_centres=np.logspace(-3, 3, 50), hist_counts=rng.integers(0, 30, (L, 50)), top=top,
        meta={"classes": [f"c{i}" for i in range(10)], "activations": {"cls_position": 0}},
    )  # fmt: skip


class _Images:
    classes = [f"c{i}" for i in range(10)]

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from types import SimpleNamespace

        return SimpleNamespace(image=Image.new("RGB", (32, 32), (i % 255, 0, 0)))


def test_sizes_stay_bounded_at_vit_b16_shapes(tmp_path):
    """197 tokens per image, 3 rankings x 10 images: latent files stay near the chunk target, and
    the index loads the same few small files whatever the number of latents."""
    stats = _synthetic(600, 200, 10, 197)
    s = write_site(stats, tmp_path / "site", _Images(200), chunk_bytes=100_000, progress=False)
    chunks = sorted((tmp_path / "site/data/latents").glob("*.js"))
    assert len(chunks) == s.n_chunks > 1
    assert max(p.stat().st_size for p in chunks) < 130_000
    pages = list((tmp_path / "site/data/pages").glob("frequency-*.js"))
    assert len(pages) == 6 and max(p.stat().st_size for p in pages) < 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_existing_site_missing_images_and_another_sae_are_refused(site, browser_run, tmp_path, capsys):
    out, stats = site
    tmp, data, sae_dir, stats_dir, _ = browser_run
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SparsesteerError, match="already exists; pass --overwrite"):
        write_site(stats, out, stats_dataset(stats), progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    # --overwrite replaces it (through a staging directory)
    copy = tmp_path / "copy"
    write_site(stats, copy, stats_dataset(stats), page_size=7, progress=False)
    write_site(stats, copy, stats_dataset(stats), page_size=10, overwrite=True, progress=False)
    assert read_data(copy, "meta")["page_size"] == 10 and sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    # images the statistics reference are missing: one clear error before anything is written
    with pytest.raises(SparsesteerError, match=r"reference image \d+, but .* has 2 images"):
        write_site(stats, tmp_path / "x", _Images(2), progress=False)
    assert not (tmp_path / "x").exists()
    # statistics of another SAE: refused, naming the checksum
    from sparsesteer.sae import SAEConfig, build

    other = build(SAEConfig(arch="topk", d_in=32, n_latents=48, k=8)).save(tmp_path / "other")
    rc = main(["browse", "--stats", str(stats_dir), "--sae", str(other), "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert rc == 2 and "different SAE: weights_sha256" in err and str(other) in err
    recorded = json.loads((stats_dir / "stats.json").read_text())["sae"]["weights_sha256"]
    given = json.loads((other / "cfg.json").read_text())["weights_sha256"]
    assert recorded[:16] in err and given[:16] in err
    assert not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------- the server
@pytest.fixture
def server(site):
    srv = make_server(site[0], port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(srv, path: str, method: str = "GET", body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = conn.getresponse()
    return r.status, r.read(), dict(r.getheaders())


def _raw(srv, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_server_serves_the_site_and_refuses_what_is_not_in_it(server, site):
    out, stats = site
    status, body, headers = _get(server, "/")
    assert status == 200 and body == (out / "index.html").read_bytes()
    status, body, headers = _get(server, "/data/meta.js")
    assert status == 200 and headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    # a latent URL: a redirect to its page when it exists, a 404 page otherwise
    status, _, headers = _get(server, "/latent/7")
    assert status == 302 and headers["Location"] == "/latent.html#7"
    for bad in ("/latent/48", "/latent/99999999999999999999", "/latent/-1", "/latent/abc"):
        status, body, headers = _get(server, bad)
        assert status == 404 and b"No such latent" in body and b"Traceback" not in body, bad
        assert headers["Content-Type"].startswith("text/html")
    # nothing outside the site: .. segments, encoded ones, absolute paths, a symlink out
    (out / "escape").symlink_to(out.parent)
    (out.parent / "secret.txt").write_text("not part of the site")
    try:
        for bad in (
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/data/..%2f..%2fsecret.txt",
            "/escape/secret.txt",
            "/escape/",
        ):
            status, body, _ = _get(server, bad)
            assert status == 404, bad
        reply = _raw(server, b"GET /../../../../etc/passwd HTTP/1.0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 404") and b"root:" not in reply
    finally:
        (out / "escape").unlink()
        (out.parent / "secret.txt").unlink()
    # malformed requests: 4xx, never a traceback
    for bad in (
        b"GARBAGE IN HERE NOW\r\n\r\n",
        b"GET / HTTP/one\r\n\r\n",
        b"GET /\x00 HTTP/1.0\r\n\r\n",
        b"GET /%ff%fe HTTP/1.0\r\n\r\n",
        b"BREW /pot HTTP/1.0\r\n\r\n",
    ):
        reply = _raw(server, bad)
        assert reply.split(b" ")[1][:1] == b"4" and b"Traceback" not in reply, (bad, reply[:80])
    assert _get(server, "/index.html", "DELETE")[0] == 405
    assert _get(server, "/index.html", "POST", b"{}")[0] == 405
    status, body, _ = _get(server, "/api/steer", "POST", b"{not json")
    assert status in (400, 404) and b"error" in body
    status, body, _ = _get(server, "/api/steer")
    assert status == 404 and b"--model" in body  # no live API without a model


def test_port_in_use_and_non_loopback_host_are_refused(server, site):
    port = server.server_address[1]
    with pytest.raises(SparsesteerError, match=f"port {port} on 127.0.0.1 is already in use"):
        make_server(site[0], port=port)
    with pytest.raises(SparsesteerError, match="loopback only"):
        make_server(site[0], host="0.0.0.0")
    with pytest.raises(SparsesteerError, match="not a browser site"):
        make_server(site[0].parent)


# ----------------------------------------------------------------------------- the live API
@pytest.fixture(scope="module")
def live(site, browser_run):
    from sparsesteer.experiments.browse import BrowseConfig, LiveModel

    tmp, data, sae_dir, stats_dir, clip = browser_run
    cfg = BrowseConfig(
        stats=str(stats_dir), out=str(site[0]), sae=str(sae_dir), serve=True, model=str(clip), device="cpu"
    )
    return LiveModel.open(cfg, site[1])


def test_live_steer_matches_a_direct_forward(live, site):
    from sparsesteer.interpret.browser.server import ApiError, ApiRequest
    from sparsesteer.models.templates import get_templates
    from sparsesteer.models.zeroshot import ZeroShotClassifier
    from sparsesteer.steering import edits

    j, s = 5, 40.0
    r = live.steer(ApiRequest("POST", {}, {"latent": j, "strength": s, "mode": "add", "images": [0, 3]}))
    # direct: the dataset's classes, CLIP's single template, the edit x + s W_dec[j] through edits.add_latents
    bb, sae = live.bb, live.sae
    classes = live.ds.classes
    clf = ZeroShotClassifier.build(bb, classes, get_templates("single"))
    pixels = torch.from_numpy(bb.preprocessor.batch([live.ds[i].image for i in (0, 3)]))
    with torch.no_grad():
        p0 = torch.softmax(clf.logits(bb.embed_images(pixels)), -1)
        iv = edits.add_latents(live.hook, sae, j, s)
        p1 = torch.softmax(clf.logits(bb.embed_images(pixels, interventions=[iv])), -1)
    for row, b, a in zip(r["images"], p0, p1):
        assert [n for n, _ in row["before"]] == [classes[i] for i in b.argsort(descending=True)[:3].tolist()]
        assert [p for _, p in row["before"]] == pytest.approx(sorted(b.tolist(), reverse=True)[:3], abs=1e-5)
        assert [p for _, p in row["after"]] == pytest.approx(sorted(a.tolist(), reverse=True)[:3], abs=1e-5)
    assert r["changed"] == int((p0.argmax(-1) != p1.argmax(-1)).sum())
    # the panel's bar chart: every class's mean change of probability over the images, largest first
    mean_delta = {classes[c]: float((p1[:, c] - p0[:, c]).mean()) for c in range(len(classes))}
    want = sorted(mean_delta, key=lambda n: -abs(mean_delta[n]))[:10]
    assert [n for n, _ in r["deltas"]] == want
    assert [d for _, d in r["deltas"]] == pytest.approx([mean_delta[n] for n in want], abs=1e-5)
    for bad, status in (
        ({"latent": 48, "strength": 1.0, "images": [0]}, 404),
        ({"latent": 1, "strength": float("nan"), "images": [0]}, 400),
        ({"latent": 1, "strength": 1.0, "images": [99]}, 404),
        ({"latent": 1, "strength": 1.0, "mode": "bogus", "images": [0]}, 400),
        ({"latent": 1, "strength": 1.0, "images": [0] * 9}, 400),
    ):
        with pytest.raises(ApiError) as e:
            live.steer(ApiRequest("POST", {}, bad))
        assert e.value.status == status


def test_live_steer_answers_400_for_huge_or_overflowing_strengths(live, site):
    """Item 7 through HTTP: a strength beyond +-1e6, a non-finite one (JSON's Infinity), or one that
    overflows the model (a 1e35-long decoder row) is a 400 with a JSON error, never a dropped connection;
    an answer that cannot be JSON (NaN) is a 500 with a JSON error."""
    srv = make_server(site[0], port=0, api={**live.handlers(), "nan": lambda req: {"x": float("nan")}})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        for body, message in (
            (b'{"latent": 5, "strength": 1e30, "mode": "set", "images": [0]}', "strength 1e+30 is out of range"),
            (b'{"latent": 5, "strength": -Infinity, "mode": "add", "images": [0]}', "must be a finite number"),
            (b'{"latent": 5, "strength": 2e6, "mode": "scale", "images": [0]}', "strength 2e+06 is out of range"),
        ):
            status, reply, _ = _get(srv, "/api/steer", "POST", body)
            assert status == 400 and message in json.loads(reply)["error"], reply
        W = live.sae.W_dec
        row = W[5].detach().clone()
        with torch.no_grad():
            W[5] *= 1e35
        try:
            status, reply, _ = _get(srv, "/api/steer", "POST", b'{"latent": 5, "strength": 1e4, "images": [0]}')
        finally:
            with torch.no_grad():
                W[5] = row
        assert status == 400 and "strength 10000 made the results non-finite" in json.loads(reply)["error"]
        status, reply, _ = _get(srv, "/api/steer", "POST", b'{"latent": 5, "strength": 1e6, "images": [0]}')
        assert status == 200 and json.loads(reply)["strength"] == 1e6  # the bound itself is accepted
        status, reply, _ = _get(srv, "/api/nan")
        assert status == 500 and "not valid JSON" in json.loads(reply)["error"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_live_patch_lists_the_latents_of_that_token(live):
    import base64
    import io

    from sparsesteer.interpret.browser.server import ApiError, ApiRequest

    p = 6  # row 1, column 2 of the 4 x 4 grid: token 1 + 6 (after the CLS)
    r = live.patch(ApiRequest("POST", {}, {"image": 2, "patch": p}))
    bb, sae = live.bb, live.sae
    pixels = torch.from_numpy(bb.preprocessor.batch([live.ds[2].image]))
    with torch.no_grad():
        x = bb.run(pixels, [live.hook])[live.hook][0, 1 + p].double()
        pre = torch.relu((x - sae.b_dec.double()) @ sae.W_enc.double().T + sae.b_enc.double())  # TopK by hand
    top = torch.topk(pre, sae.cfg.k)
    want = [(int(i), float(v)) for v, i in zip(top.values, top.indices) if v > 0]
    assert [i for i, _ in r["latents"]] == [i for i, _ in want]
    assert [v for _, v in r["latents"]] == pytest.approx([v for _, v in want], rel=1e-4)
    # an upload: the same image as PNG bytes gives the same latents, and the model's view back
    buf = io.BytesIO()
    live.ds[2].image.save(buf, format="PNG")
    up = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r2 = live.patch(ApiRequest("POST", {}, {"upload": up, "patch": p, "view": True}))
    assert r2["latents"] == r["latents"] and r2["view"].startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(live.image(ApiRequest("GET", {"index": "2"})).data)).size == (32, 32)
    for bad in ({"image": 2, "patch": 16}, {"upload": "data:image/png;base64,AAAA", "patch": 0}, {"patch": 0}):
        with pytest.raises(ApiError):
            live.patch(ApiRequest("POST", {}, bad))


def test_live_api_errors_name_the_parameter_sent(live):
    """GET api/image takes `index` (not `image`); a bad entry of `images` names that list."""
    from sparsesteer.interpret.browser.server import ApiError, ApiRequest

    with pytest.raises(ApiError) as e:
        live.image(ApiRequest("GET", {}))
    assert e.value.status == 400 and str(e.value).startswith("index must be a non-negative integer")
    with pytest.raises(ApiError) as e:
        live.image(ApiRequest("GET", {"index": "99"}))
    assert e.value.status == 404 and "no image 99" in str(e.value)
    with pytest.raises(ApiError) as e:
        live.steer(ApiRequest("POST", {}, {"latent": 1, "strength": 1.0, "images": ["x"]}))
    assert e.value.status == 400 and str(e.value).startswith("every entry of images must be")


def test_cli_serve_refusals(browser_run, site, tmp_path, capsys):
    tmp, data, sae_dir, stats_dir, clip = browser_run
    rc = main(["browse", "--stats", str(stats_dir), "--out", str(tmp_path / "s"), "--model", str(clip)])
    assert rc == 2 and "--model adds the live API" in capsys.readouterr().err
    srv = make_server(site[0], port=0)
    try:
        port = srv.server_address[1]
        rc = main(["browse", "--stats", str(stats_dir), "--out", str(site[0]), "--serve", "--port", str(port)])
        err = capsys.readouterr().err
        assert rc == 2 and f"port {port} on 127.0.0.1 is already in use" in err
    finally:
        srv.server_close()
    assert Path(site[0] / "index.html").is_file()


def test_cli_serves_the_site(site, browser_run):
    """`browse --serve --port 0` in a process of its own: it prints its URL, serves the site, and
    reuses the existing site of the same statistics (no --overwrite needed)."""
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    out, _ = site
    stats_dir = browser_run[3]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "sparsesteer", "browse", "--stats", str(stats_dir), "--out", str(out), "--serve"]
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/latent.html", timeout=10) as r:
            assert r.status == 200 and r.read() == (out / "latent.html").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_without_a_lens_the_search_words_are_the_top_labels(tmp_path):
    stats = _synthetic(40, 30, 5, 5)
    write_site(stats, tmp_path / "site", _Images(30), page_size=8, progress=False)
    words = read_data(tmp_path / "site", "words")
    assert words == [f"c{i}" for i in range(10)]
    index = read_data(tmp_path / "site", "words/0")
    rows = {r[0]: r for p in range(5) for r in read_data(tmp_path / "site", f"pages/id-{p}")}
    for j in range(40):  # the most common label of the top images (ties: the lower label), counted here
        labels = Counter(stats.top["max"].labels[j].tolist())
        best = min(labels, key=lambda lab: (-labels[lab], lab))
        assert j in index[str(best)] and rows[j][4] == f"c{best}"
        assert rows[j][3] == pytest.approx(labels[best] / 5, abs=1e-3)
    assert sorted(j for v in index.values() for j in v) == list(range(40))


def test_the_site_holds_no_absolute_local_path(site, tmp_path_factory):
    """A site is shared: the model, SAE and dataset folders of the writer's machine appear as names only."""
    out, _ = site
    base = str(tmp_path_factory.getbasetemp())
    meta = read_data(out, "meta")
    assert (meta["model"], meta["sae"]["path"], meta["dataset"]["spec"]) == ("clip", "sae", "folder:images")
    leaks = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and base.encode() in p.read_bytes()]
    assert leaks == []


def test_public_name_cuts_absolute_paths_to_their_last_component():
    from sparsesteer.interpret.browser.site import public_name

    assert public_name("/home/me/models/vit") == "vit" and public_name("~/runs/sae/") == "sae"
    assert (
        public_name("planted:seed=3,word=0.33:folder:/data/cifar10-jpeg")
        == "planted:seed=3,word=0.33:folder:cifar10-jpeg"
    )
    assert public_name("cifar10:root=/data/c10") == "cifar10:root=c10" and public_name(r"C:\data\imgs") == "imgs"
    for kept in ("openai/clip-vit-base-patch32", "runs/sae", "hf:org/name", None, 8):
        assert public_name(kept) == kept


def test_live_search_by_text_matches_a_direct_computation(live, site, monkeypatch):
    """api/search: the live latents closest to a text, by the concept directions (this SAE reads the tiny
    CLIP's final block) or, where the lens does not apply, by the text embedding of each latent's label."""
    from sparsesteer.interpret import lens
    from sparsesteer.interpret.browser.server import ApiError, ApiRequest
    from sparsesteer.models.zeroshot import encode_text

    _, stats = site
    bb, sae = live.bb, live.sae
    q = encode_text(bb, ["a photo of a dog"])[0]
    q = q / q.norm()
    live_ids = [j for j in range(stats.n_latents) if stats.fire_count[j] > 0]

    def expect(score: dict[int, float], k: int) -> list[int]:
        return sorted(score, key=lambda j: (-score[j], j))[:k]

    r = live.search(ApiRequest("POST", {}, {"text": " a photo of a dog ", "k": 7}))
    assert r["method"].startswith("concept directions") and r["n_latents"] == len(live_ids)
    ln = bb.vision.get_parameter("post_layernorm.weight").detach()
    proj = bb.model.get_parameter("visual_projection.weight").detach()
    with torch.no_grad():
        W = sae.W_dec.detach().float()
        e = ((W - W.mean(1, keepdim=True)) * ln) @ proj.T  # the head's linear part, computed here
        cos = {j: float(e[j] @ q / e[j].norm()) for j in live_ids}
    assert [j for j, _ in r["latents"]] == expect(cos, 7)
    assert [s for _, s in r["latents"]] == pytest.approx([cos[j] for j in expect(cos, 7)], abs=1e-5)
    # an SAE the lens does not apply to: each latent's label (here the most common class of its top images)
    monkeypatch.setattr(lens, "lens_refusal", lambda sae, bb: "not the final CLS")
    live._search = None
    try:
        r = live.search(ApiRequest("POST", {}, {"text": "a photo of a dog", "k": 50}))
    finally:
        live._search = None
    classes = live.ds.classes
    emb = {c: v / v.norm() for c, v in zip(classes, encode_text(bb, classes))}
    score = {}
    for j in live_ids:
        labs = Counter(int(x) for x, i in zip(stats.top["max"].labels[j], stats.top["max"].images[j]) if i >= 0)
        best = min(labs, key=lambda lab: (-labs[lab], lab))
        score[j] = float(emb[classes[best]] @ q)
    assert r["method"] == "the latents' labels" and [j for j, _ in r["latents"]] == expect(score, 50)
    for bad in ({"text": ""}, {"text": 3}, {"text": "dog", "k": 0}, {"text": "dog", "k": True}):
        with pytest.raises(ApiError) as e:
            live.search(ApiRequest("POST", {}, bad))
        assert e.value.status == 400
