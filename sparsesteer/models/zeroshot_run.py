"""Zero-shot accuracy of a CLIP/SigLIP model on a dataset split: the workflow behind `sparsesteer zeroshot`.

backbone -> `ZeroShotClassifier` over the dataset's class names and a template set -> image
embeddings of every image (`data.batches.image_batches` + the `head` hook) -> logits ->
`accuracy.evaluate` -> `zeroshot.json` + `zeroshot.md` (overall top-1/top-5, per-class table),
`predictions.jsonl` (top-5 classes of every image) and, with `on_bad_image="skip"`, `skipped.jsonl`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.errors import SparsesteerError
from ..utils.options import DataOptions, ModelOptions, RunOptions
from .templates import TemplateSet

if TYPE_CHECKING:
    from .accuracy import ClassificationResult

DEFAULT_TEXT_CACHE = "~/.cache/sparsesteer/zeroshot"
TOPK = 5


@dataclass(frozen=True, kw_only=True)
class ZeroShotConfig(RunOptions, DataOptions, ModelOptions):
    """Settings of `sparsesteer zeroshot`."""

    templates: TemplateSet = "single"
    """Prompt set: single ('a photo of a {}.'), ensemble (CLIP's 80 ImageNet templates) or ensemble7."""
    out: str | None = None
    """Output directory; None = zeroshot/<model>-<dataset>-<split>."""
    text_cache: str | None = DEFAULT_TEXT_CACHE
    """Directory caching the class weights per (model, classes, templates); 'none' or None disables it."""


@dataclass(frozen=True)
class ZeroShotRun:
    """What `zeroshot` computed and where it wrote it."""

    result: ClassificationResult
    """Top-k and per-class accuracies, with meta (model, revision, dataset, split, templates, n_images)."""
    json_path: Path
    """`zeroshot.json`."""
    markdown_path: Path
    """`zeroshot.md`."""
    predictions_path: Path
    """`predictions.jsonl`: one line per image with its index, source, label, top-5 classes and logits."""
    skipped: list[dict]
    """{index, source, error} of each unreadable image left out (on_bad_image='skip'; also in skipped.jsonl)."""


def zeroshot(cfg: ZeroShotConfig, *, overwrite: bool = False) -> ZeroShotRun:
    """Evaluate zero-shot classification of `cfg.model` on `cfg.dataset`/`cfg.split` and write the
    reports to `cfg.out` (default `zeroshot/<model>-<dataset>-<split>`): a new or empty directory, or
    with `overwrite` one whose contents are replaced (`utils.outputs.claim`). `cfg.text_cache` caches
    the class weights (None = do not). on_bad_image='skip' leaves unreadable images out of the scores
    and lists them in `skipped.jsonl`."""
    from ..data import limit_dataset, open_dataset
    from ..data.batches import image_batches
    from ..utils import outputs
    from ..utils.device import resolve_device
    from ..utils.io import write_text
    from .accuracy import evaluate, write_result
    from .backbone import load_backbone, model_shape
    from .templates import get_templates
    from .zeroshot import ZeroShotClassifier, classify, require_text_tower

    model, split, batch_size = cfg.model, cfg.split, cfg.batch_size
    prompts = get_templates(cfg.templates)
    target = resolve_device(cfg.device)
    ds = limit_dataset(open_dataset(cfg.dataset, split, data_root=cfg.data_root), cfg.limit, cfg.limit_seed)
    if not ds.classes or ds.classes == [str(i) for i in range(len(ds.classes))]:
        raise SparsesteerError(
            f"{ds.name} [{split}] has no class names (only {'integer labels' if ds.classes else 'no labels'}); "
            "zero-shot classification needs a name per class"
        )
    n_images = len(ds)
    labels = ds.labels()
    if (labels < 0).any():
        raise SparsesteerError(
            f"{ds.name} [{split}]: image {int((labels < 0).argmax())} has no label (-1); accuracy needs labelled images"
        )
    out_dir = Path(cfg.out) if cfg.out is not None else default_out(model, ds.name, split)
    outputs.claim(out_dir, overwrite=overwrite)  # before the model is read
    require_text_tower(model_shape(model, cfg.revision))  # from its config, before the load
    bb = load_backbone(model, device=target, revision=cfg.revision)
    text_cache = None if str(cfg.text_cache).lower() == "none" else cfg.text_cache
    cache_dir = None if text_cache is None else Path(text_cache).expanduser()
    clf = ZeroShotClassifier.build(bb, ds.classes, prompts, cache_dir=cache_dir)

    batches = image_batches(
        ds,
        bb.preprocessor,
        batch_size=batch_size,
        workers=cfg.workers,
        stop=n_images,
        on_bad_image=cfg.on_bad_image,
        pin_memory=target.type == "cuda",
    )
    kept, skipped = [], []

    def pairs():
        for b in batches:
            kept.extend(b.indices.tolist())
            skipped.extend(b.skipped)
            if len(b.indices):
                yield b.pixels, b.labels

    logits, labels_t = classify(bb, clf, pairs(), total=-(-n_images // batch_size))
    meta = {
        "model": bb.model_id,
        "revision": bb.revision,
        "dataset": ds.name,
        "split": split,
        "templates": cfg.templates,
        "n_images": len(kept),
    }
    if "subset" in ds.describe():
        meta["subset"] = ds.describe()["subset"]
    if skipped:
        meta["skipped"] = len(skipped)
    result = evaluate(logits, labels_t, ds.classes, ks=(1, TOPK), meta=meta)

    json_path, md_path = write_result(result, out_dir, stem="zeroshot")
    top_logits, top = logits.topk(min(TOPK, clf.n_classes), dim=-1)
    lines = [
        json.dumps(
            {
                "index": ds.base_index(i),
                "source": ds.source(i),
                "label": int(labels_t[row]),
                "top5": top[row].tolist(),
                "top5_names": [ds.classes[c] for c in top[row].tolist()],
                "top5_logits": [round(float(v), 6) for v in top_logits[row]],
            }
        )
        for row, i in enumerate(kept)
    ]
    pred_path = out_dir / "predictions.jsonl"
    write_text(pred_path, "\n".join(lines) + "\n")
    if skipped:
        write_text(out_dir / "skipped.jsonl", "".join(json.dumps(s._asdict()) + "\n" for s in skipped))
    return ZeroShotRun(result, json_path, md_path, pred_path, [s._asdict() for s in skipped])


def default_out(model: str | os.PathLike, dataset: str, split: str) -> Path:
    """`zeroshot/<model name>-<dataset name>-<split>` in the working directory."""
    name = lambda s: Path(str(s).removeprefix("folder:").removeprefix("hf:").rstrip("/")).name or "model"  # noqa: E731
    return Path("zeroshot") / f"{name(model)}-{name(dataset)}-{split}"
