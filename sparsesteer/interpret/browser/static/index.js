"use strict";
// The index: precomputed sorted pages (data/pages/ORDER-P.js), a density filter that skips pages
// whose every latent is denser than the limit, and search by id or by top word (or CLIP-Dissect label). State lives in
// the URL hash (order, page, thr, q) so that views can be linked.
(function () {
  const {el, fmt, load} = SS;
  let meta = null;
  const state = {order: "frequency", page: 0, thr: null, q: ""};

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.has("order") && meta.orders[h.get("order")]) state.order = h.get("order");
    state.page = Math.max(0, parseInt(h.get("page") || "0", 10) || 0);
    const t = parseFloat(h.get("thr"));
    state.thr = Number.isFinite(t) ? t : null;
    state.q = h.get("q") || "";
  }

  function writeHash() {
    const h = new URLSearchParams();
    h.set("order", state.order);
    h.set("page", String(state.page));
    if (state.thr !== null) h.set("thr", String(state.thr));
    if (state.q) h.set("q", state.q);
    history.replaceState(null, "", "#" + h.toString());
  }

  // Pages of order `s.order` that hold at least one latent at or below the frequency limit.
  function visiblePages(s) {
    const o = meta.orders[s.order];
    const out = [];
    for (let p = 0; p < o.n_pages; p++) {
      if (s.thr === null || o.min_freq[p] <= s.thr) out.push(p);
    }
    return out;
  }

  function row(r) {
    const [id, freq, max, purity, word, label, score] = r;
    const tr = el("tr", {"data-latent": id},
      el("td", {}, el("a", {href: SS.latentHref(id)}, String(id))),
      el("td", {class: "word"}, word || "–"),
      el("td", {}, fmt(freq)), el("td", {}, fmt(max)), el("td", {}, fmt(purity)));
    // CLIP-Dissect label and its SoftWPMI score, when the statistics have labels
    if (meta.dissect) tr.appendChild(el("td", {class: "word label"}, label ? label + " (" + fmt(score) + ")" : "–"));
    return tr;
  }

  let token = 0; // the newest navigation; an older one whose data arrives later is dropped

  // The pager, the rows and the status line are set together, from one finished view, once its data
  // has arrived: the page number never stands over another page's rows (a slow data file used to
  // leave "page 2" above page 1's rows).
  function show(my, view) {
    if (my !== token) return;
    document.getElementById("pageinfo").textContent = view.info;
    document.getElementById("prev").disabled = !view.prev;
    document.getElementById("next").disabled = !view.next;
    document.querySelector("#latents tbody").replaceChildren(...view.rows.map(row));
    document.getElementById("status").textContent = view.status;
  }

  function keep(s, r) {
    return s.thr === null || (r[1] !== null && r[1] <= s.thr);
  }

  // The view of page `s.page` of the visible pages.
  async function pageView(s) {
    const pages = visiblePages(s);
    if (!pages.length) return {info: "no pages", prev: false, next: false, rows: [], status: "every latent is denser than the limit"};
    const i = s.page;
    const rows = await load("pages/" + s.order + "-" + pages[i]);
    const kept = rows.filter((r) => keep(s, r));
    const hidden = rows.length - kept.length;
    return {info: "page " + (i + 1) + " of " + pages.length, prev: i > 0, next: i < pages.length - 1, rows: kept,
      status: hidden ? hidden + " latents on this page hidden by the limit" : ""};
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
    const ids = [];
    for (const [, w] of hits.slice(0, 20)) {
      const group = await load("words/" + Math.floor(w / meta.word_groups));
      for (const j of group[String(w)] || []) if (!ids.includes(j)) ids.push(j);
      if (ids.length >= 50) break;
    }
    const rows = (await rowsOf(ids.slice(0, 50))).filter((r) => keep(s, r));
    const words_shown = hits.slice(0, 5).map(([, w]) => words[w]).join(", ");
    return {info: "search", prev: false, next: false, rows,
      status: hits.length ? rows.length + " latents for " + words_shown + (hits.length > 5 ? ", …" : "")
        : "no word contains \u201c" + q + "\u201d"};
  }

  // Renders a copy of the state as it is now: later changes start a newer render instead.
  async function render() {
    state.page = Math.max(0, Math.min(state.page, visiblePages(state).length - 1));
    writeHash();
    const my = ++token;
    const s = {...state};
    try {
      show(my, s.q.trim() ? await searchView(s) : await pageView(s));
    } catch (e) {
      if (my === token) SS.showError(e);
    }
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
    document.getElementById("q").addEventListener("input", (e) => {
      state.q = e.target.value;
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
    await render();
    document.body.dataset.ready = "1";
  }

  main();
})();
