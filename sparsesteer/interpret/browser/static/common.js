"use strict";
// Shared by every page: JSONP-style data loading (works on file:// where fetch() of JSON is
// refused), DOM helpers, number formatting and heatmap drawing.
window.SS = (function () {
  const loaded = {};
  const pending = {};
  // Data loads and API calls under way. Pages drop answers that a newer navigation made stale, so a
  // test that wants to see that an answer was dropped waits for idle(): 0 outstanding means every
  // answer has been handled (the code after an `await` runs in the same microtask checkpoint).
  let busy = 0;

  // Data files are scripts that call SS.put(key, payload).
  function put(key, data) {
    loaded[key] = data;
    if (pending[key]) pending[key].settle(true, data);
  }

  function load(key) {
    if (key in loaded) return Promise.resolve(loaded[key]);
    if (pending[key]) return pending[key].promise;
    const entry = {};
    entry.promise = new Promise((resolve, reject) => {
      entry.settle = (ok, value) => {
        delete pending[key];
        busy--;
        if (ok) resolve(value);
        else reject(value);
      };
    });
    pending[key] = entry;
    busy++;
    const s = document.createElement("script");
    s.src = "data/" + key + ".js";
    s.onload = () => {
      s.remove();
      if (pending[key] === entry) entry.settle(false, new Error("data/" + key + ".js did not deliver its data"));
    };
    s.onerror = () => {
      s.remove();
      if (pending[key] === entry) entry.settle(false, new Error("cannot load data/" + key + ".js"));
    };
    document.head.appendChild(s);
    return entry.promise;
  }

  function idle() {
    return busy === 0;
  }

  // el("a", {href: "x", class: "y"}, "text", child): text is always set as text, never as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a >= 1e4 || a < 1e-3) return x.toExponential((digits || 3) - 1);
    return String(Number(x.toPrecision(digits || 3)));
  }

  function thumbPath(image) {
    return "img/" + Math.floor(image / 1000) + "/" + image + ".jpg";
  }

  // Viridis (perceptually uniform, readable in grey and by most colour-blind readers): 17 stops,
  // linearly interpolated.
  const VIRIDIS = ["440154", "48186a", "472d7b", "424086", "3b528b", "33638d", "2c728e", "26828e", "21918c",
    "1fa088", "28ae80", "3fbc73", "5ec962", "84d44b", "addc30", "d8e219", "fde725"]
    .map((h) => [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)));

  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + (VIRIDIS[i + 1][k] - c) * f));
  }

  // Overlay opacity at scale position t: transparent at the bottom of the scale, rising with the value.
  function heatAlpha(t) {
    return t > 0 ? 0.25 + 0.6 * Math.min(1, t) : 0;
  }

  function gridBytes(b64) {
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  // The colour scale of one set of shown heatmaps (one ranking's top images), in the stored 0..255
  // units of `vmax`: from the smallest to the largest patch value shown. A sparse latent has silent
  // patches, so its scale starts at 0; a dense one that fires on every shown patch starts at its
  // weakest patch, so its maps still show where it fires most instead of one colour everywhere.
  function heatScale(grids, vmax) {
    let lo = 255, hi = 0;
    for (const b64 of grids) {
      if (!b64) continue;
      for (const q of gridBytes(b64)) {
        lo = Math.min(lo, q);
        hi = Math.max(hi, q);
      }
    }
    if (lo > hi) lo = hi = 0;
    return {lo, hi, vmax, min: (lo / 255) * vmax, max: (hi / 255) * vmax};
  }

  function scaleT(q, scale) {
    return scale.hi > scale.lo ? (q - scale.lo) / (scale.hi - scale.lo) : q > 0 ? 1 : 0;
  }

  // The per-patch activations (base64 uint8 of scale.vmax, row-major g x g) as a viridis overlay on
  // `canvas`, bilinearly upsampled: colour and opacity by position on `scale` (see heatScale).
  function drawHeatmap(canvas, b64, grid, scale) {
    const bytes = gridBytes(b64);
    const small = document.createElement("canvas");
    small.width = grid;
    small.height = grid;
    const sctx = small.getContext("2d");
    const img = sctx.createImageData(grid, grid);
    for (let i = 0; i < grid * grid; i++) {
      const t = scaleT(bytes[i], scale);
      const [r, g, b] = viridis(t);
      img.data.set([r, g, b, Math.round(255 * heatAlpha(t))], 4 * i);
    }
    sctx.putImageData(img, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  // The key of a heatScale: the colour ramp (drawn at its overlay opacity) between its min and max.
  function colourBar(scale) {
    const c = el("canvas", {class: "ramp", width: 128, height: 12, "aria-hidden": "true"});
    const ctx = c.getContext("2d");
    for (let x = 0; x < c.width; x++) {
      const t = x / (c.width - 1);
      const [r, g, b] = viridis(t);
      ctx.fillStyle = "rgba(" + r + "," + g + "," + b + "," + heatAlpha(t) + ")";
      ctx.fillRect(x, 0, 1, c.height);
    }
    return el("div", {class: "colourbar", role: "img",
      "aria-label": "heatmap colour scale from " + fmt(scale.min) + " to " + fmt(scale.max)},
      el("span", {class: "lo"}, fmt(scale.min)), c, el("span", {class: "hi"}, fmt(scale.max)));
  }

  // Hovering a heatmap shows the latent's value on the patch under the pointer (in `readout`) and
  // outlines that patch (`cell`). Works with the overlay hidden too. From the keyboard: the frame takes
  // the focus (Tab), the arrow keys move the outlined patch, Home goes back to the first; leaving hides it.
  function patchProbe(frame, b64, grid, vmax, readout, cell) {
    const bytes = gridBytes(b64);
    let at = null;
    function show(row, col) {
      at = [row, col];
      readout.textContent = "patch (" + row + ", " + col + "): " + fmt((bytes[row * grid + col] / 255) * vmax);
      cell.style.left = (100 * col) / grid + "%";
      cell.style.top = (100 * row) / grid + "%";
      cell.style.width = cell.style.height = 100 / grid + "%";
      cell.hidden = false;
    }
    function hide() {
      readout.textContent = "";
      cell.hidden = true;
    }
    const clamp = (v) => Math.min(grid - 1, Math.max(0, v));
    frame.addEventListener("mousemove", (ev) => {
      const rect = frame.getBoundingClientRect();
      show(clamp(Math.floor(((ev.clientY - rect.top) / rect.height) * grid)),
        clamp(Math.floor(((ev.clientX - rect.left) / rect.width) * grid)));
    });
    frame.addEventListener("mouseleave", () => {
      if (document.activeElement !== frame) hide();
    });
    frame.tabIndex = 0;
    frame.setAttribute("role", "group");
    frame.setAttribute("aria-label", "patch values: arrow keys move between the " + grid + " x " + grid + " patches");
    readout.setAttribute("aria-live", "polite");
    frame.addEventListener("focus", () => show(...(at || [0, 0])));
    frame.addEventListener("blur", hide);
    const moves = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]};
    frame.addEventListener("keydown", (ev) => {
      if (ev.key === "Home") {
        show(0, 0);
      } else if (moves[ev.key]) {
        const [r, c] = at || [0, 0];
        show(clamp(r + moves[ev.key][0]), clamp(c + moves[ev.key][1]));
      } else {
        return;
      }
      ev.preventDefault();  // the arrows move the patch, not the page
    });
  }


  function latentHref(j) {
    return "latent.html#" + j;
  }

  function showError(err) {
    const box = document.getElementById("error");
    if (box) {
      box.textContent = String(err && err.message ? err.message : err);
      box.hidden = false;
    }
  }

  // The live API exists only when the site is served by `sparsesteer browse --serve --model`.
  async function api(path, body) {
    const opts = body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    };
    busy++;
    try {
      const r = await fetch("api/" + path, opts);
      let data = null;
      try {
        data = await r.json();
      } catch (e) {
        data = null;
      }
      if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
      return data;
    } finally {
      busy--;
    }
  }

  async function liveInfo() {
    if (!location.protocol.startsWith("http")) return null;
    try {
      const info = await api("info");
      return info && info.live ? info : null;
    } catch (e) {
      return null;
    }
  }

  // An SVG element with attributes (and text): the charts of the index and latent pages.
  function svg(tag, attrs, text) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  return {put, load, idle, el, svg, fmt, thumbPath, viridis, heatScale, drawHeatmap, colourBar, patchProbe, latentHref,
    showError, api, liveInfo};
})();
