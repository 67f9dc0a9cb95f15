"use strict";
// The index: an overview (summary card with the frequency histogram; the map of the decoder
// directions) over the table of latents. The table reads precomputed sorted pages
// (data/pages/ORDER-P.js, rows [id, frequency, max, purity, top word, label, score, active images]);
// filters (density limit, dead latents hidden unless asked, the purity order's minimum support) skip
// the pages none of whose latents pass; search by id, top word or CLIP-Dissect label lists every
// hit, paged. Served with a model (`browse --serve --model`), search by text asks the server's
// api/search. State lives in the URL hash (order, page, thr, sup, dead, q, tq) so that views can be linked.
(function () {
  const {el, fmt, load} = SS;
  let meta = null;
  const state = {order: "frequency", page: 0, thr: null, sup: null, dead: false, q: "", tq: ""};

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.has("order") && meta.orders[h.get("order")]) state.order = h.get("order");
    state.page = Math.max(0, parseInt(h.get("page") || "0", 10) || 0);
    const t = parseFloat(h.get("thr"));
    state.thr = Number.isFinite(t) ? t : null;
    const sup = parseInt(h.get("sup"), 10);
    state.sup = Number.isFinite(sup) && sup >= 0 ? sup : meta.top_n || 0;
    state.dead = h.get("dead") === "1";
    state.q = h.get("q") || "";
    state.tq = h.get("tq") || "";
  }

  function writeHash() {
    const h = new URLSearchParams();
    h.set("order", state.order);
    h.set("page", String(state.page));
    if (state.thr !== null) h.set("thr", String(state.thr));
    if (state.sup !== (meta.top_n || 0)) h.set("sup", String(state.sup));
    if (state.dead) h.set("dead", "1");
    if (state.q) h.set("q", state.q);
    if (state.tq) h.set("tq", state.tq);
    history.replaceState(null, "", "#" + h.toString());
  }

  // The minimum support applies to the purity order only: a purity over one or two images says little.
  function support(s) {
    return s.order === "purity" ? s.sup || 0 : 0;
  }

  // Pages of order `s.order` that may hold a latent passing the filters (per-page summaries in meta).
  function visiblePages(s) {
    const o = meta.orders[s.order];
    const out = [];
    for (let p = 0; p < o.n_pages; p++) {
      if (s.thr !== null && o.min_freq[p] > s.thr) continue;
      if (!s.dead && o.n_live && o.n_live[p] === 0) continue;
      if (o.max_support && o.max_support[p] < support(s)) continue;
      out.push(p);
    }
    return out;
  }

  // Why row r is hidden ("" when it is shown).
  function hiddenBy(s, r) {
    if (!s.dead && r[7] === 0) return "dead";
    if (s.thr !== null && !(r[1] !== null && r[1] <= s.thr)) return "above the frequency limit";
    if (r[7] < support(s)) return "active on fewer than " + support(s) + " images";
    return "";
  }

  function hiddenText(rows, s) {
    const why = {};
    for (const r of rows) {
      const w = hiddenBy(s, r);
      if (w) why[w] = (why[w] || 0) + 1;
    }
    return Object.entries(why).map(([w, n]) => n + " hidden (" + w + ")").join(", ");
  }

  function row(r) {
    const [id, freq, max, purity, word, label, score, images] = r;
    const tr = el("tr", {"data-latent": id},
      el("td", {}, el("a", {href: SS.latentHref(id)}, String(id))),
      el("td", {class: "word"}, word || "–"),
      el("td", {}, fmt(freq)), el("td", {}, fmt(max)), el("td", {}, fmt(purity)), el("td", {}, String(images)));
    // CLIP-Dissect label and its SoftWPMI score, when the statistics have labels
    if (meta.dissect) tr.appendChild(el("td", {class: "word label"}, label ? label + " (" + fmt(score) + ")" : "–"));
    return tr;
  }

  let token = 0; // the newest navigation; an older one whose data arrives later is dropped
  let lastPages = 1; // pages of the view shown: the bound of "go to page"

  // The pager, the rows and the status line are set together, from one finished view, once its data
  // has arrived: the page number never stands over another page's rows (a slow data file used to
  // leave "page 2" above page 1's rows).
  function show(my, view) {
    if (my !== token) return;
    document.getElementById("pageinfo").textContent = view.info;
    document.getElementById("prev").disabled = !view.prev;
    document.getElementById("next").disabled = !view.next;
    lastPages = view.pages || 1;
    const jump = document.getElementById("jump");
    jump.max = String(lastPages);
    jump.disabled = lastPages <= 1;
    document.querySelector("#latents tbody").replaceChildren(...view.rows.map(row));
    document.getElementById("status").textContent = view.status;
  }

  // The view of page `s.page` of the visible pages.
  async function pageView(s) {
    const pages = visiblePages(s);
    if (!pages.length) return {info: "no pages", prev: false, next: false, rows: [], status: "no latent passes the filters"};
    const i = s.page;
    const rows = await load("pages/" + s.order + "-" + pages[i]);
    const kept = rows.filter((r) => !hiddenBy(s, r));
    return {info: "page " + (i + 1) + " of " + pages.length, prev: i > 0, next: i < pages.length - 1, rows: kept,
      pages: pages.length, status: kept.length < rows.length ? "on this page: " + hiddenText(rows, s) : ""};
  }

  // Rows of the given latent ids, read from the id-ordered pages.
  async function rowsOf(ids) {
    const size = meta.page_size;
    const out = [];
    for (const j of ids) {
      const page = await load("pages/id-" + Math.floor(j / size));
      out.push(page[j % size]);
    }
    return out;
  }

  // Every latent of every word containing the query (exact word first, then words starting with it),
  // in the words' own order; all of them are counted, shown a page at a time.
  async function searchView(s) {
    const q = s.q.trim();
    if (/^\d+$/.test(q)) {
      const j = parseInt(q, 10);
      if (j >= meta.n_latents) {
        return {info: "latent " + j, prev: false, next: false, rows: [],
          status: "no latent " + j + ": this SAE has " + meta.n_latents + " latents (0.." + (meta.n_latents - 1) + ")"};
      }
      return {info: "latent " + j, prev: false, next: false, rows: await rowsOf([j]), status: ""};
    }
    const words = await load("words");
    const needle = q.toLowerCase();
    const hits = [];
    words.forEach((w, i) => {
      const lw = w.toLowerCase();
      if (lw.includes(needle)) hits.push([lw === needle ? 0 : lw.startsWith(needle) ? 1 : 2, i]);
    });
    hits.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    if (!hits.length) return {info: "search", prev: false, next: false, rows: [], status: "no word contains \u201c" + q + "\u201d"};
    const ids = [];
    const seen = new Set();
    for (const [, w] of hits) {
      const group = await load("words/" + Math.floor(w / meta.word_groups));
      for (const j of group[String(w)] || []) {
        if (!seen.has(j)) {
          seen.add(j);
          ids.push(j);
        }
      }
    }
    const all = await rowsOf(ids);
    const kept = all.filter((r) => !hiddenBy({...s, order: "search"}, r));
    const size = meta.page_size;
    const pages = Math.max(1, Math.ceil(kept.length / size));
    const i = Math.min(s.page, pages - 1);
    const wordsShown = hits.slice(0, 5).map(([, w]) => words[w]).join(", ") + (hits.length > 5 ? ", …" : "");
    const hidden = all.length - kept.length;
    return {info: pages > 1 ? "search: page " + (i + 1) + " of " + pages : "search", prev: i > 0, next: i < pages - 1,
      pages, rows: kept.slice(i * size, (i + 1) * size),
      status: kept.length + " latent" + (kept.length === 1 ? "" : "s") + " for " + hits.length + " word" +
        (hits.length === 1 ? "" : "s") + " (" + wordsShown + ")" +
        (hidden ? "; " + hiddenText(all, {...s, order: "search"}) : "")};
  }

  // The latents the server finds closest to a text (its model's text embedding against each latent's
  // concept direction or label), closest first, a page at a time.
  async function textView(s) {
    const r = await SS.api("search", {text: s.tq, k: 200});
    const all = await rowsOf(r.latents.map((x) => x[0]));
    const t = {...s, order: "search"};
    const kept = all.filter((row) => !hiddenBy(t, row));
    const size = meta.page_size;
    const pages = Math.max(1, Math.ceil(kept.length / size));
    const i = Math.min(s.page, pages - 1);
    const hidden = all.length - kept.length;
    return {info: pages > 1 ? "text search: page " + (i + 1) + " of " + pages : "text search", prev: i > 0,
      next: i < pages - 1, pages, rows: kept.slice(i * size, (i + 1) * size),
      status: "the " + all.length + " of " + r.n_latents + " live latents closest to \u201c" + r.text + "\u201d (cosine with " +
        r.method + ")" + (hidden ? "; " + hiddenText(all, t) : "")};
  }

  // Renders a copy of the state as it is now: later changes start a newer render instead.
  async function render() {
    if (!state.q.trim() && !state.tq) state.page = Math.max(0, Math.min(state.page, visiblePages(state).length - 1));
    writeHash();
    const my = ++token;
    const s = {...state};
    try {
      show(my, s.tq ? await textView(s) : s.q.trim() ? await searchView(s) : await pageView(s));
    } catch (e) {
      if (my === token) SS.showError(e);
    }
  }

  // ---- the overview: summary card and map ----
  const svg = SS.svg;

  function countTicks(maxv) {
    const raw = Math.max(maxv, 1) / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = Math.max(1, Math.round([1, 2, 5, 10].map((m) => m * mag).find((x) => x >= raw * 0.999)));
    const n = Math.max(1, Math.ceil(maxv / step - 1e-9));
    return Array.from({length: n + 1}, (_, i) => i * step);
  }

  // Live latents per bin of log10 frequency: bars over the bins, both axes ticked and titled.
  function freqHistogram(h) {
    const W = 400, H = 170, L = 48, R = 12, T = 10, B = 42;
    const pw = W - L - R, ph = H - T - B;
    const root = svg("svg", {id: "freq-hist", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "histogram of the live latents' firing frequencies, log10"});
    if (!h.counts.length) return root;
    const x0 = h.edges[0], x1 = h.edges[h.edges.length - 1];
    const X = (v) => L + ((v - x0) / (x1 - x0)) * pw;
    const yt = countTicks(Math.max(...h.counts));
    const top = yt[yt.length - 1];
    const Y = (c) => T + ph - (c / top) * ph;
    h.counts.forEach((c, i) => {
      if (!c) return;
      const r = svg("rect", {x: X(h.edges[i]) + 0.5, y: Y(c), width: Math.max(1, X(h.edges[i + 1]) - X(h.edges[i]) - 1),
        height: Math.max(1, T + ph - Y(c)), class: "bin"});
      r.appendChild(svg("title", {}, c + " latents with frequency in [" + fmt(Math.pow(10, h.edges[i])) + ", " +
        fmt(Math.pow(10, h.edges[i + 1])) + ")"));
      root.appendChild(r);
    });
    const axis = svg("g", {class: "axis"});
    axis.appendChild(svg("path", {d: "M" + L + "," + T + "V" + (T + ph) + "H" + (L + pw)}));
    const step = Math.max(1, Math.ceil((x1 - x0) / 6));
    for (let e = Math.ceil(x0); e <= x1 + 1e-9; e += step) {
      const x = X(e);
      axis.appendChild(svg("path", {d: "M" + x + "," + (T + ph) + "v5"}));
      axis.appendChild(svg("text", {x, y: T + ph + 17, "text-anchor": "middle"}, e === 0 ? "1" : "1e" + e));
    }
    for (const c of yt) {
      axis.appendChild(svg("path", {d: "M" + L + "," + Y(c) + "h-5"}));
      axis.appendChild(svg("text", {x: L - 8, y: Y(c) + 4, "text-anchor": "end"}, String(c)));
    }
    axis.appendChild(svg("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle", class: "title"},
      "firing frequency (share of tokens, log scale)"));
    axis.appendChild(svg("text", {x: 12, y: T + ph / 2, "text-anchor": "middle", class: "title",
      transform: "rotate(-90 12 " + (T + ph / 2) + ")"}, "latents"));
    root.appendChild(axis);
    return root;
  }

  function summary(ov) {
    const pct = (x) => fmt((100 * x) / Math.max(ov.n_latents, 1)) + "%";
    const fact = (name, value, id) => el("div", {id}, el("b", {}, name), value);
    document.getElementById("summary-facts").replaceChildren(
      fact("latents", String(ov.n_latents), "n-latents"),
      fact("dead (never active)", ov.dead + " (" + pct(ov.dead) + ")", "n-dead"),
      fact("dense (active on > " + fmt(100 * ov.dense_threshold) + "% of tokens)", ov.dense + " (" + pct(ov.dense) + ")",
        "n-dense"));
    document.getElementById("freqhist").replaceChildren(freqHistogram(ov.hist),
      el("p", {class: "muted"}, "live latents only (a dead latent's frequency has no logarithm)"));
  }

  // Colours of the legend's labels (Tableau 10, distinguishable by most colour-blind readers); other
  // labels and unlabelled latents grey.
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac"];
  const OTHER = "rgba(110, 119, 129, 0.45)";
  const PAD = 8;
  const NONE = 65535;

  function u16(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const out = new Uint16Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
    return out;
  }

  // The map: one dot per live latent on a canvas (49,152 points stay one canvas, no DOM node per
  // point); hover names the nearest latent (a grid of buckets finds it), a click opens its page.
  function drawMap(m) {
    const canvas = document.getElementById("map");
    const xs = u16(m.x), ys = u16(m.y), labs = u16(m.label);
    const colour = new Map(m.legend.map(([lab], i) => [lab, PALETTE[i % PALETTE.length]]));
    const w = canvas.width, h = canvas.height;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = w + "px";
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    const px = (i) => PAD + (xs[i] / (NONE - 1)) * (w - 2 * PAD);
    const py = (i) => PAD + (1 - ys[i] / (NONE - 1)) * (h - 2 * PAD);
    const r = m.n_drawn > 5000 ? 1.2 : m.n_drawn > 500 ? 2 : 3.5;
    const drawn = [];
    for (let i = 0; i < xs.length; i++) if (xs[i] !== NONE) drawn.push(i);
    // grey first, the legend's colours over them
    for (const pass of [false, true]) {
      for (const i of drawn) {
        const c = colour.get(labs[i]);
        if ((c !== undefined) !== pass) continue;
        ctx.fillStyle = c || OTHER;
        ctx.fillRect(px(i) - r, py(i) - r, 2 * r, 2 * r);
      }
    }
    const cell = 10;
    const buckets = new Map();
    for (const i of drawn) {
      const k = Math.floor(px(i) / cell) + "," + Math.floor(py(i) / cell);
      if (!buckets.has(k)) buckets.set(k, []);
      buckets.get(k).push(i);
    }
    const labelOf = (i) => (labs[i] === NONE ? "no label" : m.labels[labs[i]]);
    function nearest(ev) {
      const rect = canvas.getBoundingClientRect();
      const x = ((ev.clientX - rect.left) / rect.width) * w, y = ((ev.clientY - rect.top) / rect.height) * h;
      let best = -1, bd = 8 * 8;
      const cx = Math.floor(x / cell), cy = Math.floor(y / cell);
      for (let a = cx - 1; a <= cx + 1; a++) {
        for (let b = cy - 1; b <= cy + 1; b++) {
          for (const i of buckets.get(a + "," + b) || []) {
            const d = (px(i) - x) ** 2 + (py(i) - y) ** 2;
            if (d < bd || (d === bd && i < best)) [best, bd] = [i, d];
          }
        }
      }
      return best;
    }
    const hover = document.getElementById("map-hover");
    canvas.addEventListener("mousemove", (ev) => {
      const i = nearest(ev);
      const text = i < 0 ? "" : "latent " + i + ": " + labelOf(i);
      canvas.title = text;
      canvas.style.cursor = i < 0 ? "default" : "pointer";
      hover.textContent = text || "\u00a0";
    });
    canvas.addEventListener("click", (ev) => {
      const i = nearest(ev);
      if (i >= 0) location.href = SS.latentHref(i);
    });
    canvas.setAttribute("aria-label", "map of the decoder directions of " + m.n_drawn + " live latents (" +
      m.method.toUpperCase() + "), coloured by label");
    hover.textContent = "\u00a0";
    const total = drawn.length;
    const inLegend = m.legend.reduce((a, [, c]) => a + c, 0);
    document.getElementById("map-legend").replaceChildren(
      ...m.legend.map(([lab, c], i) => el("span", {class: "key"}, el("i", {style: "background:" + PALETTE[i % PALETTE.length]}),
        m.labels[lab] + " (" + c + ")")),
      el("span", {class: "key"}, el("i", {style: "background:" + OTHER}), "other labels or none (" + (total - inLegend) + ")"));
    canvas.dataset.drawn = String(total);
  }

  async function overview() {
    let ov;
    try {
      ov = await load("overview");
    } catch (e) { // a site written before the overview existed
      document.getElementById("summary-facts").replaceChildren(
        el("p", {class: "muted"}, "no overview in this site: rewrite it with `sparsesteer browse --overwrite`"));
      document.getElementById("mapcard").hidden = true;
      return;
    }
    summary(ov);
    const method = document.getElementById("map-method");
    if (ov.map !== true) {
      method.textContent = "no map";
      document.getElementById("map").hidden = true;
      document.getElementById("map-hover").textContent = String(ov.map);
      return;
    }
    const m = await load("map");
    method.textContent = (m.method === "umap" ? "UMAP (cosine)" : "PCA (umap-learn not installed)") + "; dead latents not drawn";
    drawMap(m);
  }

  async function main() {
    try {
      meta = await load("meta");
    } catch (e) {
      SS.showError(e);
      return;
    }
    document.title = meta.title;
    document.getElementById("title").textContent = meta.title;
    if (meta.dissect) {
      document.querySelector("#latents thead tr").appendChild(el("th", {class: "word label"}, "label (score)"));
    }
    const ds = meta.dataset || {};
    document.getElementById("about").textContent =
      "SAE " + (meta.sae.arch || "?") + (meta.sae.k ? " k=" + meta.sae.k : "") + " on " + (meta.model || "?") +
      " " + (meta.hook || "") + " (" + (meta.tokens || "?") + " tokens); " + meta.n_images + " images of " +
      (ds.spec || "?") + " [" + (ds.split || "?") + "]";
    readHash();
    document.getElementById("order").value = state.order;
    document.getElementById("thr").value = state.thr === null ? "" : state.thr;
    document.getElementById("support").value = String(state.sup);
    document.getElementById("dead").checked = state.dead;
    document.getElementById("q").value = state.q;
    document.getElementById("order").addEventListener("change", (e) => {
      state.order = e.target.value;
      state.page = 0;
      render();
    });
    document.getElementById("thr").addEventListener("change", (e) => {
      const t = parseFloat(e.target.value);
      state.thr = Number.isFinite(t) ? t : null;
      state.page = 0;
      render();
    });
    document.getElementById("support").addEventListener("change", (e) => {
      const v = parseInt(e.target.value, 10);
      state.sup = Number.isFinite(v) && v >= 0 ? v : 0;
      state.page = 0;
      render();
    });
    document.getElementById("dead").addEventListener("change", (e) => {
      state.dead = e.target.checked;
      state.page = 0;
      render();
    });
    document.getElementById("q").addEventListener("input", (e) => {
      state.q = e.target.value;
      state.tq = "";
      document.getElementById("tq").value = "";
      state.page = 0;
      render();
    });
    document.getElementById("tq").value = state.tq;
    document.getElementById("tq").addEventListener("change", (e) => {
      state.tq = e.target.value.trim();
      state.q = "";
      document.getElementById("q").value = "";
      state.page = 0;
      render();
    });
    document.getElementById("jump").addEventListener("change", (e) => {
      const p = parseInt(e.target.value, 10);
      if (!Number.isFinite(p)) return;
      state.page = Math.max(0, Math.min(p, lastPages) - 1);
      e.target.value = String(state.page + 1);
      render();
    });
    document.getElementById("controls").addEventListener("submit", (e) => e.preventDefault());
    document.getElementById("prev").addEventListener("click", () => {
      state.page = Math.max(0, state.page - 1);
      render();
    });
    document.getElementById("next").addEventListener("click", () => {
      state.page += 1;
      render();
    });
    const ov = overview().catch(SS.showError);
    const info = await SS.liveInfo();
    document.getElementById("tq-label").hidden = !(info && info.search);
    if (!(info && info.search)) state.tq = "";
    await render();
    await ov;
    document.body.dataset.ready = "1";
  }

  main();
})();
