"""The `sparsesteer interpret` workflow: SAE + cache -> statistics directory (stats.py, store.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..activations.pairing import ImageSet
from ..utils.errors import SparsesteerError
from ..utils.outputs import OwnRun, contents
from .config import InterpretConfig
from .stats import LatentStats
from .store import META, TENSORS

log = logging.getLogger(__name__)


class StreamView:
    """Rows computed by the model (`activations.stream.ModelRows`, one hook) seen as the cache view
    that `latent_stats` reads: image-major rows, `row_index` = (image, token position) pairs, and
    the per-image labels and CLS position a cache records. Nothing is stored: memory stays
    independent of the number of images."""

    def __init__(self, rows: Any, cls_position: int | None, where: str):
        from types import SimpleNamespace

        self.rows, self.n_rows, self.d = rows, rows.n_rows, rows.d
        self.hook = rows.plan.hooks[0]
        self._positions = np.asarray(rows.plan.token_positions, dtype=np.int64)
        self.cache = SimpleNamespace(
            tokens_per_image=rows.tokens_per_image,
            settings=SimpleNamespace(cls_position=cls_position),
            labels=np.asarray(rows.dataset.labels(), dtype=np.int64),
            path=where,
        )

    def row_index(self, start: int, stop: int) -> np.ndarray:
        r = np.arange(start, stop, dtype=np.int64)
        t = len(self._positions)
        return np.stack([r // t, self._positions[r % t]], axis=1)

    def read(self, start: int, stop: int):
        return self.rows.read(start, stop)

    def describe(self) -> dict[str, Any]:
        d = self.rows.describe()
        return {**d, "hook": self.hook, "dataset": (d.get("dataset") or {}).get("name"), "path": None}


class _Source(NamedTuple):
    """Where the rows of an interpret pass come from, and what the statistics record about them."""

    view: Any
    """The rows (a cache view, or a `StreamView` of the model's rows)."""
    activations: dict[str, Any]
    """meta["activations"]."""
    data: dict[str, Any]
    """meta["dataset"]."""
    classes: list | None
    """Class names of the labels."""
    images: ImageSet
    """The images the rows index (meta["images"]: what browse and montages check a dataset against)."""
    dataset: Any
    """The images, opened (and checked against the cache) when --dataset, --split or --montages ask for
    them; None when nothing needs them."""
    notes: list[str]
    """Pairing checks overridden by --allow-mismatch."""


def _cache_source(cfg: InterpretConfig, sae: Any) -> _Source:
    """The rows of an activation cache; the dataset of --dataset / --split (or of the cache's record,
    for montages) opened and checked to be the cache's images before any work."""
    from ..activations.cache import ActivationCache
    from ..activations.pairing import open_images
    from ..sae.provenance import rows_for

    act_path = Path(str(cfg.activations))
    if not (act_path / "manifest.json").is_file():
        raise SparsesteerError(f"--activations {cfg.activations}: not an activation cache directory (no manifest.json)")
    cache = ActivationCache.open(act_path)
    view = rows_for(cache, sae.provenance, hook=cfg.hook, tokens=cfg.tokens)
    images, ds, notes = ImageSet.of_cache(cache), None, list[str]()
    if cfg.dataset or cfg.split or cfg.montages or cfg.labels:  # --labels embeds the images
        ds, notes = open_images(
            images,
            f"the activations ({cfg.activations})",
            dataset=cfg.dataset,
            split=cfg.split,
            data_root=cfg.data_root,
            allow=cfg.allow_mismatch,
        )
        images = ImageSet.of_dataset(ds)  # the same content; the name the user gave (--allow-mismatch)
    s = cache.settings
    dataset = s.dataset or {}
    tokens = view.describe().get("tokens")
    activations = {
        "path": str(act_path.resolve()),
        "settings_sha256": cache.settings_sha256,
        "hook": view.hook,
        "tokens": list(tokens) if isinstance(tokens, tuple) else tokens,
        "cls_position": s.cls_position,
        "model": s.model,
    }
    data = {
        "spec": cfg.dataset or dataset.get("name"),
        "split": s.split,
        "cache_spec": dataset.get("name"),
        **({"subset": dataset["subset"]} if "subset" in dataset else {}),
    }
    classes = list(s.classes) if s.classes is not None else None
    return _Source(view, activations, data, classes, images, ds, notes)


def _model_source(cfg: InterpretConfig, sae: Any, device: Any) -> _Source:
    """The same for rows computed by `--model` on `--dataset` images while the pass runs. The flags
    and the SAE are checked against the model's config before the dataset and the model load."""
    from ..activations.produce import check_hooks, plan_hooks
    from ..activations.stream import ModelRows
    from ..data import limit_dataset, open_dataset
    from ..models import load_backbone
    from ..models.backbone import model_shape
    from ..sae.provenance import Provenance, check_agree

    hook = cfg.hook or sae.provenance.hook
    if not hook:
        raise SparsesteerError(f"{cfg.sae}: the SAE records no hook; pass --hook (e.g. blocks.11.resid_post)")
    tokens = cfg.tokens or (sae.provenance.tokens if isinstance(sae.provenance.tokens, str) else None) or "all"
    shape = model_shape(str(cfg.model))
    (hook,) = check_hooks([hook], tokens, shape)
    width = shape.d_embed if hook == "head" else shape.d_model
    if width != sae.d_in:
        raise SparsesteerError(f"activation width {width} does not match the SAE's d_in={sae.d_in} ({cfg.sae})")
    notes = check_agree(
        f"the SAE ({cfg.sae})",
        sae.provenance,
        f"the model's activations ({cfg.model} at {hook})",
        Provenance(hook=hook, tokens=tokens, d=width),
        fields=("hook", "tokens", "d"),
        allow=cfg.allow_mismatch,
    )
    split = cfg.split or "train"
    ds = limit_dataset(open_dataset(cfg.dataset, split, data_root=cfg.data_root), cfg.limit, 0)
    if cfg.labels:  # before the model loads
        labels_vocab(cfg.labels, list(ds.classes) if ds.classes else None, f"--dataset {cfg.dataset}")
    backbone = load_backbone(cfg.model, device=device)
    rows = ModelRows(backbone, ds, [hook], tokens, split=split, image_batch_size=cfg.image_batch_size)
    cls_position = plan_hooks(backbone, [hook], tokens).cls_position
    where = f"{cfg.model} {rows.plan.hooks[0]} on {cfg.dataset} [{split}]"
    desc = ds.describe()
    activations = {
        "path": None,
        "streamed": True,
        "hook": rows.plan.hooks[0],
        "tokens": tokens,
        "cls_position": cls_position,
        "model": {"id": backbone.model_id, "revision": backbone.revision, "arch": backbone.arch},
    }
    data = {
        "spec": cfg.dataset,
        "split": split,
        **({"subset": desc["subset"]} if "subset" in desc else {}),
    }
    classes = list(ds.classes) if ds.classes else None
    view = StreamView(rows, cls_position, where)
    return _Source(view, activations, data, classes, ImageSet.of_dataset(ds), ds, notes)


LABELS_CLASSES = "classes"
"""--labels value naming the dataset's own class names as the vocabulary (a file of that name wins)."""


def labels_vocab(spec: str, classes: list | None, where: str) -> Any:
    """The vocabulary of --labels: a built-in name or a file (`data.vocab.load_vocab`), or the class
    names of the images (`classes`, recorded by `where`)."""
    from ..data.vocab import BUILTIN_VOCABS, load_vocab, parse_vocab
    from ..utils.errors import did_you_mean

    known = (*BUILTIN_VOCABS, LABELS_CLASSES)
    if not Path(spec).expanduser().exists() and spec not in known:
        raise SparsesteerError(
            f"--labels {spec!r}: no such file, and not a built-in vocabulary{did_you_mean(spec, known)} "
            f"({', '.join(BUILTIN_VOCABS)}, or {LABELS_CLASSES}: the dataset's class names)"
        )
    if spec != LABELS_CLASSES or Path(spec).is_file():
        return load_vocab(spec)
    if not classes:
        raise SparsesteerError(
            f"--labels {LABELS_CLASSES}: {where} records no class names; give a vocabulary (imagenet1k, cifar100 or "
            "a text file of words)"
        )
    return parse_vocab("\n".join(str(c) for c in classes), f"{LABELS_CLASSES} ({where})")


def check_text_model(model: str | None) -> None:
    """Refuse, from its config alone (before any load), a --labels model without a text tower."""
    from ..models.backbone import model_shape

    if not model:
        raise SparsesteerError("--labels: the cache records no model; pass --model (a CLIP or SigLIP model)")
    shape = model_shape(model)
    if not shape.has_text:
        raise SparsesteerError(
            f"--labels: model {model!r} ({shape.arch}) has no text tower; CLIP-Dissect labels embed the vocabulary "
            "with the model's text tower: give --model a CLIP or SigLIP model"
        )


def run_interpret(cfg: InterpretConfig) -> tuple[Path, LatentStats]:
    """Compute, save and return the statistics of `cfg.sae` over `cfg.activations`, or (with
    `--model`) over activations that the model computes on `--dataset` images during the pass."""
    import torch

    from ..sae.base import SparseAutoencoder
    from ..sae.provenance import Provenance, check_agree
    from ..utils.device import resolve_device
    from .neighbours import decoder_neighbours
    from .stats import latent_stats
    from .store import sae_tensors_sha256, sae_weights_sha256, save_stats

    device = resolve_device(cfg.device)
    vocab = None
    if cfg.vocab:  # a missing or empty --vocab fails before any work, not after the pass
        from ..data.vocab import load_vocab

        vocab = load_vocab(cfg.vocab)
    if cfg.labels and (cfg.labels != LABELS_CLASSES or Path(cfg.labels).is_file()):
        labels_vocab(cfg.labels, None, "")  # a missing or empty file fails here, before any work
    sae = SparseAutoencoder.load(cfg.sae, device=device)
    if cfg.activations:
        src = _cache_source(cfg, sae)
        where = f"the activations ({cfg.activations})"
        if cfg.labels:
            check_text_model(cfg.model or (src.activations.get("model") or {}).get("id"))
    else:
        if cfg.labels:
            check_text_model(cfg.model)
        src = _model_source(cfg, sae, device)
        where = f"the model's activations ({cfg.model} on {cfg.dataset})"
    view, activations, data_meta, classes = src.view, src.activations, src.data, src.classes
    dissect_vocab = labels_vocab(cfg.labels, classes, where) if cfg.labels else None
    lens_model = cfg.model or (activations.get("model") or {}).get("id")
    if vocab is not None and not lens_model:
        raise SparsesteerError("--vocab: the cache records no model; pass --model")
    if view.d != sae.d_in:
        raise SparsesteerError(f"activation width {view.d} does not match the SAE's d_in={sae.d_in} ({cfg.sae})")
    data = Provenance.from_rows(view.describe())
    notes = check_agree(f"the SAE ({cfg.sae})", sae.provenance, where, data, allow=cfg.allow_mismatch)
    notes = list(dict.fromkeys([*src.notes, *notes]))  # the model source's early check may repeat one
    stats = latent_stats(
        sae,
        view,
        top_n=cfg.top_n,
        n_bins=cfg.n_bins,
        hist_min=cfg.hist_min,
        hist_max=cfg.hist_max,
        batch_size=cfg.batch_size,
        max_images=cfg.max_images,
        keep_images=cfg.labels_images if dissect_vocab is not None else 0,
        samples=cfg.samples,
    )
    if cfg.neighbours:
        stats.neighbours = decoder_neighbours(sae.W_dec, k=min(cfg.neighbours, sae.n_latents - 1))
    meta: dict[str, Any] = {
        "sae": {
            "path": str(Path(cfg.sae).resolve()),
            "weights_sha256": sae_weights_sha256(cfg.sae),
            "tensors_sha256": sae_tensors_sha256(sae),
            "arch": sae.cfg.arch,
            "k": sae.cfg.k if sae.cfg.uses_k else None,
        },
        "activations": activations,
        "dataset": data_meta,
        "images": src.images.to_json(),
        "classes": classes,
        "hist": {"min": cfg.hist_min, "max": cfg.hist_max, "n_bins": cfg.n_bins, "scale": "log10"},
    }
    if notes:
        meta["provenance_overridden"] = notes
    backbones: dict[str, Any] = {}  # the lens and the labels share one load

    def backbone_of(model: str) -> Any:
        from ..models.backbone import load_backbone

        if model not in backbones:  # a streamed pass already holds its model
            same = isinstance(view, StreamView) and cfg.model == model
            backbones[model] = view.rows.backbone if same else load_backbone(model, device=device)
        return backbones[model]

    if vocab is not None:
        from .lens import concept_lens

        backbone = backbone_of(str(lens_model))
        with torch.no_grad():
            stats.lens = concept_lens(sae, backbone, vocab, k=min(cfg.lens_k, len(vocab)), cache_dir=cfg.text_cache)
        meta["lens"] = {"vocab": vocab.describe(), "model": lens_model, "template": "{}"}
    if dissect_vocab is not None:
        from . import dissect

        probe_top = stats.probe_top
        assert probe_top is not None  # latent_stats keeps it when keep_images > 0
        with torch.no_grad():
            stats.dissect = dissect.dissect_labels(
                probe_top,
                backbone_of(str(lens_model)),
                src.dataset,
                dissect_vocab,
                k=min(cfg.labels_k, len(dissect_vocab)),
                cache_dir=cfg.text_cache,
                image_batch_size=cfg.image_batch_size,
            )
        meta["dissect"] = {
            "vocab": dissect_vocab.describe(),
            "model": lens_model,
            "method": "CLIP-Dissect SoftWPMI (Oikarinen & Weng, ICLR 2023)",
            "template": dissect.TEMPLATE,
            "top_images": cfg.labels_images,
            "temperature": dissect.TEMPERATURE,
            "lambda": dissect.LAMBDA,
            "inclusion": [dissect.P_START, dissect.P_END],
        }
    stats.meta = {**stats.meta, **meta}  # latent_stats records how it drew its samples
    out = Path(cfg.out)
    from ..utils.plots import frequency_histogram

    model = (activations.get("model") or {}).get("id") or "unknown model"
    frequency_histogram(
        out / "plots" / "frequency.png",
        stats.frequency,
        title=f"{model} {view.hook} {activations['tokens']}, {data_meta['spec']} {data_meta['split']}",
    )
    if cfg.montages:
        from .heatmaps import write_montages

        order = np.argsort(-stats.fire_count, kind="stable")[: cfg.montages]
        names = write_montages(stats, order.tolist(), src.dataset, out / "montages")
        log.info("wrote %d montages to %s", len(names), out / "montages")
    save_stats(stats, out)  # last: a folder with stats.json holds a finished run (INTERRUPTED_RUN below)
    return out, stats


INTERRUPTED_RUN = OwnRun(
    "interrupted interpret run",
    holds=lambda out: not (out / META).exists() and set(contents(out)) <= {TENSORS, "plots", "montages"},
)
"""What `interpret` continues in --out (recomputing it): the files of a run killed before stats.json,
which it writes last. Finished statistics are replaced only with --overwrite."""
