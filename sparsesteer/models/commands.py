"""`sparsesteer zeroshot`: zero-shot accuracy of a CLIP/SigLIP model on a dataset split.

A thin wrapper: backbone -> `ZeroShotClassifier` over the dataset's class names and a template set
-> image embeddings of every image (`data.batches.image_batches` + the `head` hook) -> logits ->
`accuracy.evaluate` -> `zeroshot.json` + `zeroshot.md` (overall top-1/top-5, per-class table),
`predictions.jsonl` (top-5 classes of every image) and, with `--on-bad-image skip`, `skipped.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from .accuracy import ClassificationResult

DEFAULT_TEXT_CACHE = "~/.cache/sparsesteer/zeroshot"
TOPK = 5

EXAMPLES = """examples:
  sparsesteer zeroshot --model openai/clip-vit-base-patch32 --dataset cifar100 --split test
  sparsesteer zeroshot --model openai/clip-vit-base-patch16 --dataset cub200 --split test --templates ensemble --out runs/zs
"""


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


def zeroshot(
    model: str | os.PathLike,
    dataset: str,
    split: str,
    *,
    templates: str = "single",
    out: str | os.PathLike | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    limit_seed: int = 0,
    workers: int | None = None,
    device: str = "auto",
    data_root: str | os.PathLike | None = None,
    revision: str | None = None,
    text_cache: str | os.PathLike | None = DEFAULT_TEXT_CACHE,
    on_bad_image: str = "error",
) -> ZeroShotRun:
    """Evaluate zero-shot classification of `model` on `dataset`/`split` and write the reports to `out`
    (default `zeroshot/<model>-<dataset>-<split>`). text_cache: directory for the class weights
    (None = do not cache them). on_bad_image='skip' leaves unreadable images out of the scores and
    lists them in `skipped.jsonl`."""
    from ..data import limit_dataset, open_dataset
    from ..data.batches import image_batches
    from ..utils.device import resolve_device
    from ..utils.io import write_text
    from .accuracy import evaluate, write_result
    from .backbone import load_backbone
    from .templates import get_templates
    from .zeroshot import ZeroShotClassifier, classify

    prompts = get_templates(templates)
    for flag, value in (("--batch-size", batch_size), ("--limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SparsesteerError(f"{flag} must be a positive integer, got {value!r}")
    target = resolve_device(device)
    ds = limit_dataset(open_dataset(dataset, split, data_root=data_root), limit, limit_seed)
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
    bb = load_backbone(model, device=target, revision=revision)
    cache_dir = None if text_cache is None else Path(text_cache).expanduser()
    clf = ZeroShotClassifier.build(bb, ds.classes, prompts, cache_dir=cache_dir)

    batches = image_batches(
        ds,
        bb.preprocessor,
        batch_size=batch_size,
        workers=workers,
        stop=n_images,
        on_bad_image=on_bad_image,
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
        "templates": templates,
        "n_images": len(kept),
    }
    if "subset" in ds.describe():
        meta["subset"] = ds.describe()["subset"]
    if skipped:
        meta["skipped"] = len(skipped)
    result = evaluate(logits, labels_t, ds.classes, ks=(1, TOPK), meta=meta)

    out_dir = Path(out) if out is not None else default_out(model, ds.name, split)
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
    skipped_path = out_dir / "skipped.jsonl"
    if skipped:
        write_text(skipped_path, "".join(json.dumps(s._asdict()) + "\n" for s in skipped))
    elif skipped_path.exists():  # from an earlier run into the same --out
        skipped_path.unlink()
    return ZeroShotRun(result, json_path, md_path, pred_path, [s._asdict() for s in skipped])


def default_out(model: str | os.PathLike, dataset: str, split: str) -> Path:
    """`zeroshot/<model name>-<dataset name>-<split>` in the working directory."""
    name = lambda s: Path(str(s).removeprefix("folder:").removeprefix("hf:").rstrip("/")).name or "model"  # noqa: E731
    return Path("zeroshot") / f"{name(model)}-{name(dataset)}-{split}"


def register(subparsers: Any) -> None:
    from ..data.batches import default_workers
    from ..data.datasets import default_data_root
    from ..utils.cli import HelpFormatter
    from .templates import TEMPLATE_SETS

    z = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification accuracy of a CLIP/SigLIP model on a dataset",
        description="Classify every image of a dataset split by cosine similarity between its image embedding and "
        "the text embeddings of class-name prompts. Writes zeroshot.json + zeroshot.md (top-1/top-5 and a "
        "per-class table) and predictions.jsonl (top-5 classes per image) to --out.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    z.add_argument(
        "--model",
        required=True,
        help="Hugging Face hub id or save_pretrained directory (CLIP or SigLIP with a text tower)",
    )
    z.add_argument("--dataset", required=True, help="built-in name (cifar100, ...), folder:PATH or hf:REPO_ID")
    z.add_argument("--split", required=True, help="dataset split, e.g. test")
    z.add_argument(
        "--templates",
        default="single",
        choices=list(TEMPLATE_SETS),
        help="prompt set: single ('a photo of a {}.'), ensemble (CLIP's 80) or ensemble7",
    )
    z.add_argument(
        "--out", metavar="DIR", default=None, help="output directory (default: zeroshot/<model>-<dataset>-<split>)"
    )
    z.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    z.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="a class-stratified sample of N images, drawn with --limit-seed (default: all)",
    )
    z.add_argument("--limit-seed", type=int, default=0, help="seed of the --limit sample")
    z.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"image-decoding processes, 0 = none (default: half the CPUs, at most 8; here {default_workers()})",
    )
    z.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    z.add_argument(
        "--data-root",
        default=None,
        help=f"where built-in datasets live (default: $SPARSESTEER_DATA or {default_data_root()})",
    )
    z.add_argument("--revision", default=None, help="hub revision of --model (default: main)")
    z.add_argument(
        "--on-bad-image",
        default="error",
        choices=("error", "skip"),
        help="unreadable image: stop with an error, or leave it out of the scores (listed in skipped.jsonl)",
    )
    z.add_argument(
        "--text-cache",
        metavar="DIR",
        default=DEFAULT_TEXT_CACHE,
        help="directory caching the class weights per (model, classes, templates); 'none' disables it",
    )
    z.set_defaults(func=run_zeroshot, output_args=("out", "text_cache"))


def run_zeroshot(args: argparse.Namespace) -> int:
    run = zeroshot(
        args.model, args.dataset, args.split, templates=args.templates, out=args.out, batch_size=args.batch_size,
        limit=args.limit, limit_seed=args.limit_seed, workers=args.workers, device=args.device, data_root=args.data_root,
        revision=args.revision, text_cache=None if str(args.text_cache).lower() == "none" else args.text_cache,
        on_bad_image=args.on_bad_image,
    )  # fmt: skip
    r = run.result
    print(
        f"zero-shot {r.meta['dataset']} [{r.meta['split']}], {r.n_images} images, templates {r.meta['templates']}: "
        f"top-1 {100 * r.topk[1]:.2f} %, top-{TOPK} {100 * r.topk[TOPK]:.2f} %"
    )
    if run.skipped:
        print(
            f"{len(run.skipped)} unreadable images left out (listed in {run.predictions_path.parent / 'skipped.jsonl'})"
        )
    print(f"wrote {run.json_path}, {run.markdown_path}, {run.predictions_path}")
    return 0
