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

  // The per-patch activations (base64 uint8, row-major g x g) as a red overlay on `canvas`,
  // bilinearly upsampled, alpha 0.6 at the latent's largest activation (as heatmaps.py draws it).
  function drawHeatmap(canvas, b64, grid) {
    const bytes = atob(b64);
    const small = document.createElement("canvas");
    small.width = grid;
    small.height = grid;
    const sctx = small.getContext("2d");
    const img = sctx.createImageData(grid, grid);
    for (let i = 0; i < grid * grid; i++) {
      img.data[4 * i] = 255;
      img.data[4 * i + 3] = Math.round(bytes.charCodeAt(i) * 0.6);
    }
    sctx.putImageData(img, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
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

  return {put, load, idle, el, fmt, thumbPath, drawHeatmap, latentHref, showError, api, liveInfo};
})();
