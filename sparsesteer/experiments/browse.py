"""`sparsesteer browse`: write the feature browser of latent statistics, and serve it, optionally
with a model behind a JSON API (what a static site cannot do).

    stats -> interpret.browser.site.write_site -> SITE/          (static: file:// or any host)
    --serve: interpret.browser.server on 127.0.0.1; with --model (and the stats' SAE):
        POST api/steer {latent, strength, mode, images}   zero-shot (or concept) top-5 before/after
                                                          steering the latent in the forward pass, and
                                                          the 10 largest per-class probability changes
        POST api/search {text, k}                          the live latents closest to a text (CLIP)
        POST api/patch {image | upload, patch, view}       the latents firing on one patch
        GET  api/image?index=I                            dataset image I as the model sees it (PNG)
        GET  api/info                                      what the live API offers

This module chains stages (models + SAE + steering + interpret), which is why it lives here and not
in interpret/ (interpret and steering never import each other).
"""

from __future__ import annotations

import base64
import io as _io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import SparsesteerError
from ..utils.options import DeviceOptions, positive_int

if TYPE_CHECKING:
    from ..interpret.browser.server import ApiRequest, Binary
    from ..interpret.stats import LatentStats

log = logging.getLogger(__name__)

MODES = ("set", "add", "scale", "zero")
DELTAS = 10
"""Classes in the steering answer's `deltas`: the largest changes of mean probability, by magnitude."""


@dataclass(frozen=True, kw_only=True)
class BrowseConfig(DeviceOptions):
    """Settings of `sparsesteer browse`."""

    stats: str
    """Statistics directory written by `sparsesteer interpret` (stats.json + stats.safetensors)."""
    out: str
    """Site directory to write (open OUT/index.html, or --serve it)."""
    sae: str | None = None
    """SAE directory: refuse statistics of another SAE; needed for --model (default: the one the stats record)."""
    overwrite: bool = False
    """Replace an existing OUT."""
    dataset: str | None = None
    """Dataset spec of the images; None = the one the statistics record. It must hold the statistics'
    images (same split, number, class names and labels)."""
    data_root: str | None = None
    """Where built-in datasets live; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    thumb: int = 96
    """Thumbnail side in pixels (one JPEG per top image, shared by every latent)."""
    page_size: int = 100
    """Latents per index page."""
    serve: bool = False
    """Serve the site on --host:--port until interrupted (an existing OUT of the same stats is reused)."""
    host: str = "127.0.0.1"
    """Address to bind: loopback only (127.0.0.1, localhost or ::1)."""
    port: int = 8000
    """Port to serve on (0 = any free port)."""
    model: str | None = None
    """With --serve: the model behind the live API (steering, patch explorer); None = static only."""
    revision: str | None = None
    """Hub revision of --model; None = main."""
    steer_images: int = 4
    """Images steered per request (a latent's top images)."""
    templates: str = "single"
    """Zero-shot prompt templates of the steering readout (single, ensemble, ensemble7)."""
    allow_mismatch: bool = False
    """Serve even when the SAE and --model disagree on model, revision, hook or tokens, or when --dataset
    names the statistics' images under another spec or split (the images moved)."""

    def __post_init__(self) -> None:
        for name in ("thumb", "page_size", "steer_images"):
            positive_int(getattr(self, name), "--" + name.replace("_", "-"))
        if self.model is not None and not self.serve:
            raise SparsesteerError("--model adds the live API of the server: give --serve too")
        super().__post_init__()


def _site_stats_sha(site: Path) -> str | None:
    from ..interpret.browser.site import read_data

    try:
        return read_data(site, "meta").get("stats_sha256")
    except (OSError, ValueError, SparsesteerError):
        return None


def run_browse(cfg: BrowseConfig) -> dict[str, Any]:
    """Write (or reuse, with --serve) the site; serve it when asked. Returns what was done."""
    from ..interpret.browser.site import write_site
    from ..interpret.heatmaps import stats_dataset
    from ..interpret.store import load_stats
    from ..utils import outputs

    stats = load_stats(cfg.stats, sae=cfg.sae)  # refuses stats of another SAE, naming the checksum
    out = Path(cfg.out)
    sha = stats.meta.get("tensors_sha256")
    site = outputs.OwnRun("site of these statistics", holds=lambda p: sha is not None and _site_stats_sha(p) == sha)
    # --serve reuses a site of the same statistics; write_site replaces a site atomically (--overwrite)
    own = site if cfg.serve else None
    reuse = outputs.claim(out, overwrite=cfg.overwrite, own=own, clear=False, inputs=[cfg.stats, cfg.sae]) == "own"
    result: dict[str, Any] = {"site": out, "written": not reuse}
    live = None
    if cfg.model is not None:  # load the model before writing: a bad --model fails before any work
        live = LiveModel.open(cfg, stats)
    if not reuse:
        ds = stats_dataset(stats, dataset=cfg.dataset, data_root=cfg.data_root, allow=cfg.allow_mismatch)
        result["summary"] = write_site(
            stats, out, ds, overwrite=cfg.overwrite, thumb=cfg.thumb, page_size=cfg.page_size,
            decoder=live.sae.W_dec if live is not None else decoder_directions(cfg, stats),
        )  # fmt: skip
    if cfg.serve:
        serve(out, cfg, live)
    return result


def decoder_directions(cfg: BrowseConfig, stats: LatentStats) -> Any:
    """The SAE's decoder directions for the index's map (--sae, else the SAE the statistics record,
    when it is still there and still the one they were computed with), or why there are none."""
    from ..interpret.browser.site import public_name
    from ..interpret.store import load_stats
    from ..sae import SparseAutoencoder

    sae_dir = cfg.sae or (stats.meta.get("sae") or {}).get("path")
    if not sae_dir or not Path(sae_dir).exists():
        return f"the SAE the statistics record ({public_name(sae_dir)}) is not here: give browse --sae DIR for the map"
    if cfg.sae is None:
        try:
            load_stats(cfg.stats, sae=sae_dir)
        except SparsesteerError:
            return (
                f"the SAE at {public_name(sae_dir)} is not the one of the statistics: give browse --sae DIR for the map"
            )
    return SparseAutoencoder.load(sae_dir, device="cpu").W_dec


def serve(site: Path, cfg: BrowseConfig, live: LiveModel | None) -> None:
    from ..interpret.browser.server import make_server

    server = make_server(site, host=cfg.host, port=cfg.port, api=live.handlers() if live else {})
    host, port = server.server_address[:2]
    print(f"serving {site} on http://{cfg.host if cfg.host != '::1' else '[::1]'}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def model_view(preprocessor: Any, image: Any) -> Any:
    """The image as the model sees it (the preprocessor's resize and centre crop, no normalisation):
    a click on it maps to a patch of the model's grid."""
    import numpy as np
    from PIL import Image

    from ..data.preprocess import center_crop

    rgb = image.convert("RGB")
    if preprocessor.do_resize:
        h, w = preprocessor.resize_shape(rgb.height, rgb.width)
        rgb = rgb.resize((w, h), resample=preprocessor.resample)
    if preprocessor.do_center_crop and preprocessor.crop_size:
        arr = center_crop(np.asarray(rgb), preprocessor.crop_size["height"], preprocessor.crop_size["width"])
        rgb = Image.fromarray(np.ascontiguousarray(arr))
    return rgb


class LiveModel:
    """The model, SAE and images behind the server's live API (one request at a time: a lock)."""

    def __init__(self, bb, sae, hook: str, tokens: Any, readout, ds, stats: LatentStats, steer_images: int, notes):
        self.bb, self.sae, self.hook, self.tokens = bb, sae, hook, tokens
        self.readout, self.ds, self.stats, self.steer_images, self.notes = readout, ds, stats, steer_images, notes
        self.lock = threading.Lock()
        self._search: tuple[str, Any, Any] | None = None  # (method, per-latent vectors or labels, label vectors)

    @classmethod
    def open(cls, cfg: BrowseConfig, stats: LatentStats) -> LiveModel:
        from ..interpret.heatmaps import stats_dataset
        from ..models import load_backbone
        from ..sae import SparseAutoencoder
        from ..steering.features import check_sae, sae_hook, steer_positions
        from ..utils.device import resolve_device

        sae_dir = cfg.sae or (stats.meta.get("sae") or {}).get("path")
        if not sae_dir or not Path(sae_dir).exists():
            raise SparsesteerError(
                f"--model needs the SAE of the statistics: give --sae DIR (the stats record {sae_dir!r})"
            )
        if cfg.sae is None:
            from ..interpret.store import load_stats

            load_stats(cfg.stats, sae=sae_dir)  # the recorded SAE must still be the one the stats came from
        device = resolve_device(cfg.device)
        sae = SparseAutoencoder.load(sae_dir, device=device)
        if sae.n_latents != stats.n_latents:
            raise SparsesteerError(f"the SAE {sae_dir} has {sae.n_latents} latents, the statistics {stats.n_latents}")
        bb = load_backbone(cfg.model, device=device, revision=cfg.revision)
        hook = str(bb.hook_point(sae_hook(sae, None)))
        trained = sae.provenance.tokens
        tokens = steer_positions(bb, trained if trained in ("cls", "patch", "all") else "all", hook)
        notes = check_sae(bb, sae, hook, tokens, allow_mismatch=cfg.allow_mismatch)
        ds = stats_dataset(stats, dataset=cfg.dataset, data_root=cfg.data_root, allow=cfg.allow_mismatch)
        readout = _readout(bb, ds, stats, cfg.templates)
        return cls(bb, sae, hook, tokens, readout, ds, stats, cfg.steer_images, notes)

    def handlers(self) -> dict[str, Any]:
        return {"info": self.info, "steer": self.steer, "patch": self.patch, "image": self.image, "search": self.search}

    # ---- helpers ------------------------------------------------------------------------------
    def _index(self, value: Any, what: str, n: int, param: str | None = None) -> int:
        """`value` as an index of one of `n` `what`s; a 400 names the request parameter `param` (default:
        `what`) that carried it, a 404 the missing thing."""
        from ..interpret.browser.server import ApiError

        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
            raise ApiError(400, f"{param or what} must be a non-negative integer, got {value!r}")
        i = int(value)
        if i >= n:
            raise ApiError(404, f"no {what} {i}: there are {n} (0..{n - 1})")
        return i

    def _pixels(self, images: list[Any]):
        import torch

        arr = self.bb.preprocessor.batch([im.convert("RGB") for im in images])
        return torch.from_numpy(arr).to(device=self.bb.device, dtype=self.bb.dtype)

    def _dataset_image(self, i: int):
        from ..interpret.browser.server import ApiError

        try:
            return self.ds[i].image
        except (OSError, SparsesteerError) as e:
            raise ApiError(404, f"image {i} of {self.ds!r} is missing or unreadable: {e}") from None

    def _source(self, body: dict):
        """A dataset image (`image`) or an uploaded one (`upload`: a data URL or base64)."""
        from PIL import Image, UnidentifiedImageError

        from ..interpret.browser.server import ApiError

        if "upload" in body:
            text = body["upload"]
            if not isinstance(text, str):
                raise ApiError(400, "upload must be a data URL or base64 text")
            try:
                raw = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
                im = Image.open(_io.BytesIO(raw))
                im.load()
            except (ValueError, OSError, UnidentifiedImageError, IndexError) as e:
                raise ApiError(400, f"the upload is not a readable image: {e}") from None
            return im
        if "image" in body:
            return self._dataset_image(self._index(body["image"], "image", len(self.ds)))
        raise ApiError(400, "give image (a dataset index) or upload (a data URL)")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.bb.image_size // self.bb.patch_size
        return side, side

    # ---- endpoints ----------------------------------------------------------------------------
    def info(self, req: ApiRequest) -> dict[str, Any]:
        return {
            "live": True,
            "model": self.bb.model_id,
            "hook": self.hook,
            "tokens": self.tokens if isinstance(self.tokens, str) else list(self.tokens),
            "n_latents": self.sae.n_latents,
            "n_images": len(self.ds),
            "grid": list(self.grid),
            "readout": self.readout.kind,
            "modes": list(MODES),
            "steer_images": self.steer_images,
            "notes": self.notes,
            "search": bool(self.bb.has_text),
        }

    def steer(self, req: ApiRequest) -> dict[str, Any]:
        """Top-5 readout of a few images without and with latent `latent` steered (`mode`, `strength`).
        A strength that is not a finite number within +-MAX_STEER, or an edit that overflows, is a 400."""
        import torch

        from ..interpret.browser.server import ApiError
        from ..steering.edits import check_finite_result
        from ..steering.features import embed_steered, feature_edit
        from ..steering.settings import check_steer_value

        b = req.body
        if req.method != "POST":
            raise ApiError(405, "POST a JSON object {latent, strength, mode, images}")
        j = self._index(b.get("latent"), "latent", self.sae.n_latents)
        mode = b.get("mode", "set")
        if mode not in MODES:
            raise ApiError(400, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            strength = None if mode == "zero" else check_steer_value("strength", b.get("strength"))
        except SparsesteerError as e:
            raise ApiError(400, str(e)) from None
        images = b.get("images")
        if not isinstance(images, list) or not images:
            raise ApiError(400, "images must be a non-empty list of dataset indices")
        if len(images) > self.steer_images:
            raise ApiError(400, f"at most {self.steer_images} images per request (--steer-images)")
        ids = [self._index(i, "image", len(self.ds), param="every entry of images") for i in images]
        with self.lock:
            iv = feature_edit(self.hook, self.sae, [j], strength, mode, tokens=self.tokens, check_hook=False)
            pixels = self._pixels([self._dataset_image(i) for i in ids])
            emb = embed_steered(self.bb, pixels, [iv])
            what = f"steering latent {j} with mode {mode}" + ("" if strength is None else f", strength {strength:g}")
            try:
                check_finite_result(emb.steered, what, emb.unsteered)
            except SparsesteerError as e:
                raise ApiError(400, str(e)) from None
            before, after = self.readout.probs(emb.unsteered).cpu(), self.readout.probs(emb.steered).cpu()
        names = self.readout.names

        def top(p) -> list[list[Any]]:
            v, i = p.topk(min(5, len(names)))
            return [[names[int(a)], float(x)] for x, a in zip(v, i)]

        rows = [{"image": i, "before": top(before[r]), "after": top(after[r])} for r, i in enumerate(ids)]
        changed = int((before.argmax(-1) != after.argmax(-1)).sum())
        delta = (after - before).mean(0)  # per class, mean over the images: what the panel's bar chart shows
        biggest = torch.argsort(delta.abs(), descending=True, stable=True)[:DELTAS]
        return {
            "latent": j, "mode": mode, "strength": strength, "hook": self.hook, "readout": self.readout.kind,
            "tokens": self.tokens if isinstance(self.tokens, str) else "selected", "images": rows, "changed": changed,
            "deltas": [[names[int(i)], float(delta[i])] for i in biggest],
        }  # fmt: skip

    def _search_index(self) -> tuple[str, Any, Any]:
        """What a text is compared with, computed once: each latent's concept direction (its decoder
        direction through the CLIP head, `lens.head_directions`) when the SAE reads the final-layer
        CLS; else the text embedding of each latent's label (CLIP-Dissect, else its top images' most
        common class; `browser.site.latent_labels`)."""
        import torch

        from ..interpret.browser.site import latent_labels, latent_table
        from ..interpret.lens import head_directions, lens_refusal
        from ..models.zeroshot import encode_text

        if self._search is None:
            if lens_refusal(self.sae, self.bb) is None:
                ln = self.bb.vision.get_parameter("post_layernorm.weight").detach().cpu()
                proj = self.bb.model.get_parameter("visual_projection.weight").detach().cpu()
                W = self.sae.W_dec.detach().cpu()
                dirs = torch.cat([head_directions(W[a : a + 4096], ln, proj) for a in range(0, len(W), 4096)])
                self._search = ("concept directions (decoder through the CLIP head)", dirs, None)
            else:
                classes = list(self.stats.meta.get("classes") or getattr(self.ds, "classes", None) or [])
                labels = latent_labels(self.stats, latent_table(self.stats), classes)
                names = sorted({x for x in labels if x})
                pos = {x: i for i, x in enumerate(names)}
                emb = encode_text(self.bb, names) if names else torch.zeros(0, 1)
                emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
                self._search = ("the latents' labels", torch.tensor([pos.get(x, -1) for x in labels]), emb)
        return self._search

    def search(self, req: ApiRequest) -> dict[str, Any]:
        """The `k` (default 50, at most 1000) live latents whose concept direction or label (see
        `_search_index`) is closest to `text` by cosine with its text embedding, closest first (ties: lower id)."""
        import numpy as np

        from ..interpret.browser.server import ApiError
        from ..models.zeroshot import encode_text

        if req.method != "POST":
            raise ApiError(405, "POST a JSON object {text, k}")
        text = req.body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "text must be a non-empty string")
        k = req.body.get("k", 50)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise ApiError(400, f"k must be an integer in 1..1000, got {k!r}")
        if not self.bb.has_text:
            raise ApiError(400, f"search by text needs a model with a text tower; {self.bb.model_id} has none")
        with self.lock:
            method, vecs, label_emb = self._search_index()
            q = encode_text(self.bb, [text.strip()])[0]
            q = q / q.norm().clamp_min(1e-12)
            if label_emb is None:
                score = (vecs @ q).numpy().astype(np.float64)
            else:
                sims = (label_emb @ q).numpy().astype(np.float64) if len(label_emb) else np.zeros(0)
                idx = vecs.numpy()
                score = np.where(idx >= 0, sims[np.maximum(idx, 0)] if len(sims) else 0.0, -np.inf)
        ok = (self.stats.fire_count > 0) & np.isfinite(score)
        ids = np.flatnonzero(ok)
        best = ids[np.lexsort((ids, -score[ids]))][:k]
        return {
            "text": text.strip(),
            "method": method,
            "n_latents": int(ok.sum()),
            "latents": [[int(j), float(score[j])] for j in best],
        }

    def patch(self, req: ApiRequest) -> dict[str, Any]:
        """The latents active on patch `patch` (row-major) of an image, largest first; `view`: also
        the image as the model sees it (a data URL), for uploads."""
        import torch

        from ..interpret.browser.server import ApiError

        if req.method != "POST":
            raise ApiError(405, "POST a JSON object {image | upload, patch, view}")
        b = req.body
        im = self._source(b)
        gh, gw = self.grid
        out: dict[str, Any] = {"grid": [gh, gw]}
        if b.get("view"):
            buf = _io.BytesIO()
            model_view(self.bb.preprocessor, im).save(buf, format="PNG")
            out["view"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        if b.get("patch") is not None:
            p = self._index(b["patch"], "patch", gh * gw)
            with self.lock, torch.no_grad():
                acts = self.bb.run(self._pixels([im]), [self.hook])[self.hook]
                if acts.shape[1] != self.bb.n_prefix + gh * gw:
                    raise ApiError(400, f"the image gives {acts.shape[1]} tokens, not {self.bb.n_prefix + gh * gw}")
                codes = self.sae.encode(acts[0, self.bb.n_prefix + p][None].to(self.sae.dtype))
            vals, idx = codes.values[0].float().cpu(), codes.indices[0].cpu()
            keep = vals > 0
            order = torch.argsort(vals[keep], descending=True)
            out["patch"] = p
            out["latents"] = [[int(i), float(v)] for v, i in zip(vals[keep][order], idx[keep][order])]
        return out

    def image(self, req: ApiRequest) -> Binary:
        from ..interpret.browser.server import Binary

        i = self._index(req.query.get("index"), "image", len(self.ds), param="index")
        buf = _io.BytesIO()
        model_view(self.bb.preprocessor, self._dataset_image(i)).save(buf, format="PNG")
        return Binary(buf.getvalue(), "image/png")


@dataclass
class _Readout:
    kind: str
    names: list[str]
    clf: Any

    def probs(self, emb):
        import torch

        return torch.softmax(self.clf.logits(emb), dim=-1)


def _readout(bb, ds, stats: LatentStats, templates: str) -> _Readout:
    """Zero-shot over the dataset's classes; without class names, over the stats' lens words."""
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier

    classes = list(stats.meta.get("classes") or getattr(ds, "classes", None) or [])
    if classes and classes != [str(i) for i in range(len(classes))]:
        return _Readout(
            "zero-shot over the dataset's classes",
            classes,
            ZeroShotClassifier.build(bb, classes, get_templates(templates)),
        )
    if stats.lens is not None:
        words = list(stats.lens.words)
        return _Readout("concepts (the lens vocabulary)", words, ZeroShotClassifier.build(bb, words, ("{}",)))
    raise SparsesteerError(
        "steering needs names to read out: the dataset has no class names and the statistics no concept lens "
        "(run `sparsesteer interpret --vocab ...`)"
    )
