"use strict";
// The index: precomputed sorted pages (data/pages/ORDER-P.js), a density filter that skips pages
// whose every latent is denser than the limit, and search by id or by top word. State lives in
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

  // Pages that hold at least one latent at or below the frequency limit.
  function visiblePages() {
    const o = meta.orders[state.order];
    const out = [];
    for (let p = 0; p < o.n_pages; p++) {
      if (state.thr === null || o.min_freq[p] <= state.thr) out.push(p);
    }
    return out;
  }

  function row(r) {
    const [id, freq, max, purity, word] = r;
    return el("tr", {"data-latent": id},
      el("td", {}, el("a", {href: SS.latentHref(id)}, String(id))),
      el("td", {class: "word"}, word || "–"),
      el("td", {}, fmt(freq)), el("td", {}, fmt(max)), el("td", {}, fmt(purity)));
  }

  let token = 0; // the newest render; older ones (slower data loads) do not overwrite it

  function show(rows, info, my) {
    if (my !== token) return;
    const body = document.querySelector("#latents tbody");
    body.replaceChildren(...rows.map(row));
    document.getElementById("status").textContent = info;
  }

  function keep(r) {
    return state.thr === null || (r[1] !== null && r[1] <= state.thr);
  }

  async function showPage(my) {
    const pages = visiblePages();
    document.getElementById("prev").disabled = state.page <= 0;
    document.getElementById("next").disabled = state.page >= pages.length - 1;
    if (!pages.length) {
      document.getElementById("pageinfo").textContent = "no pages";
      show([], "every latent is denser than the limit", my);
      return;
    }
    state.page = Math.min(state.page, pages.length - 1);
    const p = pages[state.page];
    document.getElementById("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages.length;
    const rows = await load("pages/" + state.order + "-" + p);
    const kept = rows.filter(keep);
    show(kept, (rows.length - kept.length) ? (rows.length - kept.length) + " latents on this page hidden by the limit" : "", my);
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

  async function search(my) {
    const q = state.q.trim();
    document.getElementById("prev").disabled = true;
    document.getElementById("next").disabled = true;
    if (/^\d+$/.test(q)) {
      const j = parseInt(q, 10);
      document.getElementById("pageinfo").textContent = "latent " + j;
      if (j >= meta.n_latents) {
        show([], "no latent " + j + ": this SAE has " + meta.n_latents + " latents (0.." + (meta.n_latents - 1) + ")", my);
        return;
      }
      show(await rowsOf([j]), "", my);
      return;
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
    const rows = (await rowsOf(ids.slice(0, 50))).filter(keep);
    document.getElementById("pageinfo").textContent = "search";
    const words_shown = hits.slice(0, 5).map(([, w]) => words[w]).join(", ");
    show(rows, hits.length ? rows.length + " latents for " + words_shown + (hits.length > 5 ? ", …" : "")
      : "no word contains \u201c" + q + "\u201d", my);
  }

  async function render() {
    writeHash();
    const my = ++token;
    try {
      if (state.q.trim()) await search(my);
      else await showPage(my);
    } catch (e) {
      SS.showError(e);
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
