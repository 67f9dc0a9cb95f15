"use strict";
// One latent (latent.html#J): facts, top images per ranking with heatmaps, activation histogram,
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

  function fact(name, value) {
    return el("div", {}, el("b", {}, name), value);
  }

  function thumb(image, value, label, grid) {
    const size = meta.thumb;
    const img = el("img", {src: SS.thumbPath(image), width: size, height: size, alt: "image " + image, loading: "eager"});
    const box = el("div", {class: "thumb"}, img);
    if (grid && meta.grid) {
      const canvas = el("canvas", {class: "heat", width: size, height: size});
      SS.drawHeatmap(canvas, grid, meta.grid);
      box.appendChild(canvas);
    }
    box.appendChild(el("div", {}, fmt(value) + " · " + className(label)));
    box.appendChild(el("div", {class: "muted"}, "#" + image));
    return box;
  }

  // Histogram of active values: bars over log-spaced bin centres (inline SVG).
  function histogram(rec) {
    const centres = meta.hist_centres;
    const counts = new Array(centres.length).fill(0);
    for (const [b, c] of rec.hist) counts[b] = c;
    const W = 420, H = 120, n = centres.length, maxc = Math.max(1, ...counts);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H + 20);
    svg.setAttribute("id", "hist");
    counts.forEach((c, i) => {
      if (!c) return;
      const h = Math.max(1, (Math.log1p(c) / Math.log1p(maxc)) * H);
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", (i * W) / n);
      r.setAttribute("y", H - h);
      r.setAttribute("width", Math.max(1, W / n - 1));
      r.setAttribute("height", h);
      r.setAttribute("fill", "#c33");
      const t = document.createElementNS(ns, "title");
      t.textContent = c + " rows near " + fmt(centres[i]);
      r.appendChild(t);
      svg.appendChild(r);
    });
    for (const i of [0, Math.floor(n / 2), n - 1]) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", Math.min((i * W) / n, W - 40));
      t.setAttribute("y", H + 15);
      t.setAttribute("font-size", "11");
      t.textContent = fmt(centres[i]);
      svg.appendChild(t);
    }
    return el("div", {}, svg, el("div", {class: "muted"}, "active values, log scale (bar height: log count)"));
  }

  function bars(items) {
    const maxv = Math.max(1e-9, ...items.map((x) => x[1]));
    return el("div", {class: "bars"}, items.map(([name, v, link]) =>
      el("div", {}, el("span", {class: "bar", style: "width:" + Math.round((Math.max(v, 0) / maxv) * 120) + "px"}),
        link ? el("a", {href: link}, name) : name, el("span", {class: "muted"}, fmt(v)))));
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
    const out = [el("div", {class: "facts", id: "facts"},
      fact("frequency (tokens)", fmt(rec.frequency)), fact("image frequency", fmt(rec.image_frequency)),
      fact("mean when active", fmt(rec.mean_active)), fact("mean", fmt(rec.mean)), fact("max", fmt(rec.max)),
      fact("active tokens", rec.fire_count), fact("active images", rec.image_count),
      fact("label purity (top images)", fmt(rec.purity)))];
    for (const name of meta.rankings) {
      const items = rec.top[name];
      out.push(el("h2", {}, "Top images by " + name + (name === "max" ? " over tokens" : name === "cls" ? " (CLS activation)" : " (best patch)")));
      out.push(items.length
        ? el("div", {class: "thumbs", "data-ranking": name}, items.map(([img, v, lab, grid]) => thumb(img, v, lab, grid)))
        : el("p", {class: "muted"}, "never active"));
    }
    const cols = el("div", {class: "cols"});
    cols.appendChild(el("section", {}, el("h2", {}, "Activation histogram"), histogram(rec)));
    const labs = rec.labels.max || [];
    cols.appendChild(el("section", {id: "labels"}, el("h2", {}, "Labels of the top images"),
      labs.length ? bars(labs.map(([l, c]) => [className(l), c])) : el("p", {class: "muted"}, "no labels")));
    if (rec.lens) {
      cols.appendChild(el("section", {id: "words"}, el("h2", {}, "Top words (concept lens)"),
        bars(rec.lens.map(([w, c]) => [words[w], c]))));
    }
    if (rec.neighbours) {
      cols.appendChild(el("section", {id: "neighbours"}, el("h2", {}, "Decoder neighbours (cosine)"),
        bars(rec.neighbours.map(([i, c]) => ["latent " + i, c, SS.latentHref(i)]))));
    }
    out.push(cols);
    return out;
  }

  // ---- served with a model: steering and the patch explorer ----
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
          el("table", {id: "steer-table"}, el("tr", {}, el("th", {}, "image"), el("th", {class: "word"}, "before"),
            el("th", {class: "word"}, "after")),
          r.images.map((x) => el("tr", {}, el("td", {}, "#" + x.image), el("td", {class: "word"}, probsList(x.before)),
            el("td", {class: "word"}, probsList(x.after))))));
      } catch (e) {
        if (my === asked) out.replaceChildren(el("p", {class: "error"}, String(e.message || e)));
      }
    });
    box.replaceChildren(el("h2", {}, "Steer this latent (model " + info.model + ")"),
      el("p", {}, "mode ", mode, " strength ", strength, " ", go,
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
    box.appendChild(el("p", {}, "dataset image ", index, " or upload ", upload, el("span", {class: "muted"}, " — click a patch")));
    box.appendChild(el("div", {class: "cols"}, wrap, out));
  }

  async function main() {
    try {
      meta = await load("meta");
      window.addEventListener("hashchange", () => render().catch(SS.showError));
      await render();
    } catch (e) {
      SS.showError(e);
    }
  }

  main();
})();
