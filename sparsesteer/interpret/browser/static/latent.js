"use strict";
// One latent (latent.html#J): facts, top images per ranking with heatmaps, random images per
// activation interval and among its active images, activation histogram,
// label distribution, concept-lens words, decoder neighbours. Its data is one chunk file
// (data/latents/C.js). Served with a model (`browse --serve --model`), the live panel adds
// steering and a patch explorer through the server's JSON API.
(function () {
  const {el, fmt, load} = SS;
  let meta = null;

  function className(label) {
    if (label < 0) return "unlabelled";
    return meta.classes[label] !== undefined ? meta.classes[label] : String(label);
  }

  // A CLIP-Dissect label [word, score] as text ("–" for none).
  function dissectText(x) {
    return x ? x[0] + " (" + fmt(x[1]) + ")" : "–";
  }

  function fact(name, value) {
    return el("div", {}, el("b", {}, name), value);
  }

  // One top image: its thumbnail, the heatmap of its patches on `scale` (hover: the value of the patch
  // under the pointer), its score and label.
  function thumb(image, value, label, grid, scale) {
    const size = meta.thumb;
    const img = el("img", {src: SS.thumbPath(image), width: size, height: size, loading: "eager",
      alt: "image " + image + " (" + className(label) + ")"});
    const frame = el("div", {class: "frame", style: "width:" + size + "px;height:" + size + "px"}, img);
    if (grid && meta.grid) {
      const canvas = el("canvas", {class: "heat", width: size, height: size, "aria-hidden": "true"});
      SS.drawHeatmap(canvas, grid, meta.grid, scale);
      const cell = el("div", {class: "cell", hidden: true});
      const readout = el("div", {class: "probe"});
      frame.append(canvas, cell, readout);
      SS.patchProbe(frame, grid, meta.grid, scale.vmax, readout, cell);
    }
    return el("figure", {class: "thumb", style: "width:" + size + "px"}, frame,
      el("figcaption", {}, el("div", {}, el("span", {class: "score"}, fmt(value)), el("span", {class: "muted"}, " #" + image)),
        el("div", {class: "label", title: className(label)}, className(label))));
  }

  const svg = SS.svg;

  // Tick values 0..top (top >= maxv) at a round step, about four of them; whole numbers for counts.
  function niceTicks(maxv, whole) {
    const raw = Math.max(maxv, whole ? 1 : 1e-9) / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.999);
    if (whole) step = Math.max(1, Math.round(step));
    const n = Math.max(1, Math.ceil(maxv / step - 1e-9));
    return Array.from({length: n + 1}, (_, i) => Number((i * step).toPrecision(6)));
  }

  // Ticks for a log axis over [lo, hi] (log10 units): powers of ten, or 1-2-5 / 1..9 multiples on
  // short ranges, whichever first gives at least three.
  function logTicks(lo, hi) {
    let best = [];
    for (const mults of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
      const ticks = [];
      for (let e = Math.floor(lo) - 1; e <= Math.ceil(hi); e++) {
        for (const m of mults) {
          const v = m * Math.pow(10, e);
          if (Math.log10(v) >= lo - 1e-9 && Math.log10(v) <= hi + 1e-9) ticks.push(v);
        }
      }
      best = ticks;
      if (ticks.length >= 3) break;
    }
    return best;
  }

  // Histogram of the active values: bars over the log-spaced bins the latent occupies (and one empty
  // bin either side), log count up; an inline SVG with both axes ticked and titled.
  function histogram(rec) {
    const centres = meta.hist_centres;
    const n = centres.length;
    const counts = new Array(n).fill(0);
    for (const [b, c] of rec.hist) counts[b] = c;
    const W = 400, H = 170, L = 48, R = 12, T = 10, B = 42;
    const pw = W - L - R, ph = H - T - B;
    const lc = centres.map(Math.log10);
    const d = n > 1 ? (lc[n - 1] - lc[0]) / (n - 1) : 1;
    const used = counts.flatMap((c, i) => (c ? [i] : []));
    const first = used.length ? Math.max(0, used[0] - 1) : 0;
    const last = used.length ? Math.min(n - 1, used[used.length - 1] + 1) : n - 1;
    const x0 = lc[first] - d / 2, x1 = lc[last] + d / 2;
    const X = (lv) => L + ((lv - x0) / (x1 - x0)) * pw;
    const maxc = Math.max(1, ...counts);
    const Y = (c) => T + ph - (Math.log1p(c) / Math.log1p(maxc)) * ph;
    const root = svg("svg", {id: "hist", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "histogram of the latent's active values, log-log"});
    counts.forEach((c, i) => {
      if (!c) return;
      const left = X(lc[i] - d / 2), right = X(lc[i] + d / 2);
      const r = svg("rect", {x: left + 0.5, y: Y(c), width: Math.max(1, right - left - 1), height: Math.max(1, T + ph - Y(c)),
        class: "bin"});
      r.appendChild(svg("title", {}, c + " tokens near " + fmt(centres[i])));
      root.appendChild(r);
    });
    const axis = svg("g", {class: "axis"});
    axis.appendChild(svg("path", {d: "M" + L + "," + T + "V" + (T + ph) + "H" + (L + pw)}));
    let labelled = -Infinity; // a tick is labelled only where its label does not run into the previous one
    for (const v of logTicks(x0, x1)) {
      const x = X(Math.log10(v));
      axis.appendChild(svg("path", {d: "M" + x + "," + (T + ph) + "v5"}));
      if (x - labelled < 30) continue;
      labelled = x;
      axis.appendChild(svg("text", {x, y: T + ph + 17, "text-anchor": "middle"}, fmt(v)));
    }
    const yticks = [0];
    for (let c = 1; c <= maxc; c *= 10) yticks.push(c);
    if (Y(yticks[yticks.length - 1]) - Y(maxc) > 18) yticks.push(maxc);
    for (const c of yticks) {
      const y = Y(c);
      axis.appendChild(svg("path", {d: "M" + L + "," + y + "h-5"}));
      axis.appendChild(svg("text", {x: L - 8, y: y + 4, "text-anchor": "end"}, fmt(c)));
    }
    axis.appendChild(svg("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle", class: "title"}, "activation (log scale)"));
    axis.appendChild(svg("text", {x: 12, y: T + ph / 2, "text-anchor": "middle", class: "title",
      transform: "rotate(-90 12 " + (T + ph / 2) + ")"}, "tokens (log)"));
    root.appendChild(axis);
    return root;
  }

  // A horizontal bar chart: one row per item (name, possibly a link; bar; value) over a ticked axis
  // starting at 0, titled `axisTitle`. `whole`: the values are counts.
  function bars(items, axisTitle, whole) {
    const ticks = niceTicks(Math.max(0, ...items.map((x) => x[1])), whole);
    const top = ticks[ticks.length - 1] || 1;
    const pct = (v) => ((100 * Math.min(Math.max(v, 0), top)) / top).toFixed(2) + "%";
    const cells = [];
    for (const [name, v, link] of items) {
      cells.push(el("span", {class: "name"}, link ? el("a", {href: link}, name) : name),
        el("span", {class: "track"}, el("span", {class: "bar", style: "width:" + pct(v)})),
        el("span", {class: "val"}, fmt(v)));
    }
    cells.push(el("span", {}), el("span", {class: "track ticks", "aria-hidden": "true"},
      ticks.map((t) => el("span", {class: "tick", style: "left:" + pct(t)}, fmt(t)))), el("span", {}));
    cells.push(el("span", {}), el("span", {class: "axis-title"}, axisTitle), el("span", {}));
    return el("div", {class: "bars"}, cells);
  }

  let token = 0; // the newest latent asked for; an older render whose data arrives later is dropped

  function setTitle(text) {
    document.title = text;
    document.getElementById("title").textContent = text;
  }

  // Title, links, body and live panel change together, once the latent's data has arrived, so a
  // slow load never puts one latent's content under another's title (or two latents on one page).
  async function render() {
    const my = ++token;
    const text = decodeURIComponent(location.hash.slice(1));
    const j = /^\d+$/.test(text) ? parseInt(text, 10) : NaN;
    const main = document.getElementById("main");
    if (!(j >= 0 && j < meta.n_latents)) {
      setTitle("No such latent");
      main.replaceChildren();
      document.getElementById("live").hidden = true;
      SS.showError("no latent \u201c" + text + "\u201d: this SAE has " + meta.n_latents + " latents (0.." +
        (meta.n_latents - 1) + ")");
      return;
    }
    let rec, words, info;
    try {
      const chunk = await load("latents/" + Math.floor(j / meta.chunk_size));
      rec = chunk[j - Math.floor(j / meta.chunk_size) * meta.chunk_size];
      words = rec.lens ? await load("words") : null;
      info = await SS.liveInfo();
    } catch (e) {
      if (my === token) SS.showError(e);
      return;
    }
    if (my !== token) return;
    setTitle("Latent " + j);
    document.getElementById("error").hidden = true;
    document.getElementById("prevlat").href = SS.latentHref(Math.max(0, j - 1));
    document.getElementById("nextlat").href = SS.latentHref(Math.min(meta.n_latents - 1, j + 1));
    main.replaceChildren(...content(rec, words));
    document.getElementById("live").hidden = true;
    if (info) live(info, j, rec);
    document.body.dataset.ready = String(j);
  }

  // The elements of latent record `rec` (`words`: the lens vocabulary, when it has a lens).
  function content(rec, words) {
    const out = [el("section", {class: "card"}, el("div", {class: "facts", id: "facts"},
      fact("frequency (tokens)", fmt(rec.frequency)), fact("image frequency", fmt(rec.image_frequency)),
      fact("mean when active", fmt(rec.mean_active)), fact("mean", fmt(rec.mean)), fact("max", fmt(rec.max)),
      fact("active tokens", rec.fire_count), fact("active images", rec.image_count),
      fact("label purity (top images)", fmt(rec.purity)),
      ...(rec.dissect ? [fact("label (CLIP-Dissect)", dissectText(rec.dissect[0]))] : [])))];
    for (const name of meta.rankings) {
      const items = rec.top[name];
      const head = el("div", {class: "card-head"}, el("h2", {}, "Top images by " + name +
        (name === "max" ? " over tokens" : name === "cls" ? " (CLS activation)" : " (best patch)")));
      let body = el("p", {class: "muted"}, "never active");
      if (items.length) {
        const scale = SS.heatScale(items.map((t) => t[3]), rec.vmax[name] || 0);
        if (meta.grid && items.some((t) => t[3])) head.appendChild(SS.colourBar(scale));
        body = el("div", {class: "thumbs", "data-ranking": name},
          items.map(([img, v, lab, grid]) => thumb(img, v, lab, grid, scale)));
      }
      out.push(el("section", {class: "card"}, head, body));
    }
    out.push(...sampleSections(rec));
    const cols = el("div", {class: "cols"});
    cols.appendChild(el("section", {class: "card"}, el("h2", {}, "Activation histogram"), histogram(rec)));
    const labs = rec.labels.max || [];
    cols.appendChild(el("section", {class: "card", id: "labels"}, el("h2", {}, "Labels of the top images"),
      labs.length ? bars(labs.map(([l, c]) => [className(l), c]), "top images (by max)", true)
        : el("p", {class: "muted"}, "no labels")));
    if (rec.lens) {
      cols.appendChild(el("section", {class: "card", id: "words"}, el("h2", {}, "Top words (concept lens)"),
        bars(rec.lens.map(([w, c]) => [words[w], c]), "cosine with the word's text embedding")));
    }
    if (rec.dissect) {
      cols.appendChild(el("section", {class: "card", id: "dissect"}, el("h2", {}, "Labels (CLIP-Dissect)"),
        rec.dissect.length ? el("ol", {}, rec.dissect.map((x) => el("li", {}, dissectText(x))))
          : el("p", {class: "muted"}, "no label: never active"),
        el("p", {class: "muted"}, "SoftWPMI of the word with the latent's top images")));
    }
    if (rec.neighbours) {
      cols.appendChild(el("section", {class: "card", id: "neighbours"}, el("h2", {}, "Decoder neighbours"),
        bars(rec.neighbours.map(([i, c, image, label]) => [neighbourName(i, image, label), c, SS.latentHref(i)]),
          "cosine of decoder directions")));
    }
    out.push(cols);
    return out;
  }

  // A decoder neighbour: its top image (when it ever fires), id and label (CLIP-Dissect, else top class).
  function neighbourName(i, image, label) {
    const thumb = image !== undefined && image >= 0
      ? el("img", {class: "mini", src: SS.thumbPath(image), width: 32, height: 32, alt: "top image of latent " + i})
      : el("span", {class: "mini none", "aria-hidden": "true"});
    return [thumb, "latent " + i, label ? el("span", {class: "muted"}, " " + label) : null];
  }

  // Beyond the top images (statistics that hold them): random images from each activation interval,
  // and random images among all those where the latent fires. A heatmap is drawn where the image is
  // one of the latent's top images too (the stored per-patch values); the others show the image alone.
  function sampleSections(rec) {
    const out = [];
    const grids = (items) => items.map((t) => t[3]);
    const thumbs = (items, scale, attrs) => el("div", {class: "thumbs", ...attrs},
      items.map(([img, v, lab, grid]) => thumb(img, v, lab, grid, scale)));
    if (rec.intervals) {
      const all = rec.intervals.flatMap((x) => x[3]);
      const scale = SS.heatScale(grids(all), rec.vmax.max || 0);
      const head = el("div", {class: "card-head"}, el("h2", {}, "Activation intervals"));
      if (meta.grid && all.some((t) => t[3])) head.appendChild(SS.colourBar(scale));
      // highest interval first, continuing from the top images
      const rows = rec.intervals.map(([lo, hi, count, items], i) => el("div", {class: "interval", "data-interval": i},
        el("h3", {}, fmt(lo) + " \u2013 " + (hi === null ? fmt(rec.max) + " (max)" : fmt(hi)),
          el("span", {class: "muted"}, " \u00b7 " + count + (count === 1 ? " image" : " images") +
            (items.length < count ? ", " + items.length + " at random" : ""))),
        items.length ? thumbs(items, scale, {}) : el("p", {class: "muted"}, "no image in this interval"))).reverse();
      out.push(el("section", {class: "card", id: "intervals"}, head,
        el("p", {class: "muted note"}, "Images drawn at random among those whose largest activation (over tokens) " +
          "lies in each interval."),
        rows.length ? el("div", {class: "intervals"}, rows) : el("p", {class: "muted"}, "never active")));
    }
    if (rec.random) {
      const scale = SS.heatScale(grids(rec.random), rec.vmax.max || 0);
      const head = el("div", {class: "card-head"}, el("h2", {}, "Random active images"),
        el("span", {class: "muted"}, rec.random.length + " of the " + rec.image_count + " images where it fires"));
      out.push(el("section", {class: "card", id: "random"}, head,
        rec.random.length ? thumbs(rec.random, scale, {"data-sample": "random"}) : el("p", {class: "muted"}, "never active")));
    }
    return out;
  }

  // ---- served with a model: steering and the patch explorer ----

  // Mean change of each class's probability (the API's `deltas`, largest magnitude first) as
  // horizontal bars from a zero line, on a ticked symmetric axis: an inline SVG.
  function deltaChart(deltas) {
    const W = 460, rowH = 18, L = 150, R = 56, T = 6, B = 38;
    const H = T + rowH * deltas.length + B;
    const pw = W - L - R;
    const m = Math.max(1e-9, ...deltas.map(([, d]) => Math.abs(d)));
    const ticks = niceTicks(m, false);
    const top = ticks[ticks.length - 1];
    const X = (v) => L + pw / 2 + (v / top) * (pw / 2);
    const root = svg("svg", {id: "steer-deltas", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "mean change of each class's probability when steering"});
    deltas.forEach(([name, d], r) => {
      const y = T + r * rowH;
      root.appendChild(svg("text", {x: L - 8, y: y + rowH - 5, "text-anchor": "end", class: "name"},
        name.length > 22 ? name.slice(0, 21) + "…" : name));
      const bar = svg("rect", {x: Math.min(X(0), X(d)), y: y + 3, width: Math.max(1, Math.abs(X(d) - X(0))),
        height: rowH - 6, class: d >= 0 ? "up" : "down"});
      bar.appendChild(svg("title", {}, name + ": " + (d >= 0 ? "+" : "") + fmt(d)));
      root.appendChild(bar);
      root.appendChild(svg("text", {x: L + pw + 6, y: y + rowH - 5, class: "val"}, (d >= 0 ? "+" : "") + fmt(d)));
    });
    const axis = svg("g", {class: "axis"});
    const yb = T + rowH * deltas.length;
    axis.appendChild(svg("path", {d: "M" + X(0) + "," + T + "V" + yb}));
    axis.appendChild(svg("path", {d: "M" + L + "," + yb + "H" + (L + pw)}));
    for (const t of [...ticks.slice(1).map((v) => -v).reverse(), ...ticks]) {
      axis.appendChild(svg("path", {d: "M" + X(t) + "," + yb + "v5"}));
      axis.appendChild(svg("text", {x: X(t), y: yb + 17, "text-anchor": "middle"}, t > 0 ? "+" + fmt(t) : fmt(t)));
    }
    axis.appendChild(svg("text", {x: L + pw / 2, y: H - 3, "text-anchor": "middle", class: "title"},
      "change of probability (after − before, mean over the images)"));
    root.appendChild(axis);
    return root;
  }

  function probsList(items) {
    return el("ol", {}, items.map(([name, p]) => el("li", {}, name + " " + fmt(p, 2))));
  }

  function live(info, j, rec) {
    const box = document.getElementById("live");
    box.hidden = false;
    const images = (rec.top.max || []).slice(0, info.steer_images).map((t) => t[0]);
    const mode = el("select", {id: "steer-mode"}, info.modes.map((m) => el("option", {value: m}, m)));
    const strength = el("input", {id: "steer-strength", type: "number", step: "any", value: String(rec.max || 1)});
    const out = el("div", {id: "steer-out"});
    const go = el("button", {type: "button", id: "steer-go"}, "Steer");
    let asked = 0; // the newest request: an older answer arriving after it is dropped
    go.addEventListener("click", async () => {
      const my = ++asked;
      out.replaceChildren("running…");
      try {
        const r = await SS.api("steer", {latent: j, strength: parseFloat(strength.value), mode: mode.value, images});
        if (my !== asked) return;
        out.replaceChildren(el("p", {class: "muted"}, r.readout + ", " + r.hook + ", tokens " + r.tokens +
          "; top-1 changed on " + r.changed + " of " + r.images.length + " images"),
          ...(r.deltas && r.deltas.length ? [el("h3", {}, "Change of the " + r.readout + " probabilities"), deltaChart(r.deltas)] : []),
          el("table", {id: "steer-table"}, el("tr", {}, el("th", {}, "image"), el("th", {class: "word"}, "before"),
            el("th", {class: "word"}, "after")),
          r.images.map((x) => el("tr", {}, el("td", {class: "steer-img"}, el("img", {src: SS.thumbPath(x.image), width: 64,
            height: 64, alt: "image " + x.image}), el("div", {}, "#" + x.image)), el("td", {class: "word"}, probsList(x.before)),
            el("td", {class: "word"}, probsList(x.after))))));
      } catch (e) {
        if (my === asked) out.replaceChildren(el("p", {class: "error"}, String(e.message || e)));
      }
    });
    box.replaceChildren(el("h2", {}, "Steer this latent (model " + info.model + ")"),
      el("p", {}, el("label", {}, "mode ", mode), " ", el("label", {}, "strength ", strength), " ", go,
        el("span", {class: "muted"}, " on its top " + images.length + " images")), out);
    patchExplorer(box, info, images[0] === undefined ? 0 : images[0]);
  }

  function patchExplorer(box, info, first) {
    const index = el("input", {id: "patch-image", type: "number", min: "0", max: String(info.n_images - 1), value: String(first)});
    const upload = el("input", {id: "patch-upload", type: "file", accept: "image/*"});
    const view = el("img", {id: "patch-view", alt: "model view", width: 224, height: 224});
    const mark = el("div", {class: "mark", hidden: true});
    const wrap = el("div", {class: "view"}, view, mark);
    const out = el("div", {id: "patch-out"});
    // The newest image asked for and the newest patch clicked: an answer that arrives after a newer
    // request is dropped, so the output always belongs to the marked patch of the image shown.
    let source = {image: first};
    let sourceAsked = 0;
    let patchAsked = 0;
    const setSource = (s, src) => {
      source = s;
      view.src = src;
      patchAsked++;
      mark.hidden = true;
      out.replaceChildren();
    };
    const showIndex = () => {
      sourceAsked++;
      const i = parseInt(index.value, 10);
      setSource({image: i}, "api/image?index=" + i);
    };
    index.addEventListener("change", showIndex);
    upload.addEventListener("change", () => {
      const f = upload.files[0];
      if (!f) return;
      const my = ++sourceAsked;
      const reader = new FileReader();
      reader.onload = async () => {
        try {
          const r = await SS.api("patch", {upload: reader.result, view: true});
          if (my === sourceAsked) setSource({upload: reader.result}, r.view);
        } catch (e) {
          if (my === sourceAsked) out.replaceChildren(String(e.message || e));
        }
      };
      reader.readAsDataURL(f);
    });
    view.addEventListener("click", async (ev) => {
      const my = ++patchAsked;
      const [gh, gw] = info.grid;
      const rect = view.getBoundingClientRect();
      const col = Math.min(gw - 1, Math.floor(((ev.clientX - rect.left) / rect.width) * gw));
      const row = Math.min(gh - 1, Math.floor(((ev.clientY - rect.top) / rect.height) * gh));
      mark.hidden = false;
      mark.style.left = (col * rect.width) / gw + "px";
      mark.style.top = (row * rect.height) / gh + "px";
      mark.style.width = rect.width / gw - 4 + "px";
      mark.style.height = rect.height / gh - 4 + "px";
      out.replaceChildren("running…");
      try {
        const r = await SS.api("patch", {...source, patch: row * gw + col});
        if (my !== patchAsked) return;
        out.replaceChildren(el("p", {}, "patch (" + row + ", " + col + "): " + r.latents.length + " latents fire"),
          el("ol", {id: "patch-latents"}, r.latents.map(([l, a]) =>
            el("li", {}, el("a", {href: SS.latentHref(l)}, "latent " + l), " " + fmt(a)))));
      } catch (e) {
        if (my === patchAsked) out.replaceChildren(String(e.message || e));
      }
    });
    showIndex();
    box.appendChild(el("h2", {}, "Which latents fire on a patch"));
    box.appendChild(el("p", {}, el("label", {}, "dataset image ", index), " or ", el("label", {}, "upload ", upload),
      el("span", {class: "muted"}, " — click a patch")));
    box.appendChild(el("div", {class: "cols"}, wrap, out));
  }

  async function main() {
    try {
      meta = await load("meta");
      const toggle = document.getElementById("show-heat");
      const showHeat = () => document.body.classList.toggle("raw", !toggle.checked);
      toggle.addEventListener("change", showHeat);
      showHeat();
      window.addEventListener("hashchange", () => render().catch(SS.showError));
      await render();
    } catch (e) {
      SS.showError(e);
    }
  }

  main();
})();
