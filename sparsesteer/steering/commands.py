"""`sparsesteer steer vs2`: VS2 on cached final-layer CLS vectors of a labelled split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..utils.errors import SparsesteerError

EXAMPLES = """examples:
  sparsesteer steer vs2 --model openai/clip-vit-base-patch32 --sae runs/sae --activations runs/c100-test --lam 2.1 --gamma 1.5
  sparsesteer steer vs2 --model openai/clip-vit-base-patch32 --sae runs/sae --activations runs/c100-test \\
      --tune-on runs/c100-train --gate-quantile 0.95 --out runs/vs2-steer
(the caches hold blocks.{last}.resid_post with --tokens cls; `sparsesteer reproduce vs2` runs the whole chain)
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import HelpFormatter

    p = sub.add_parser("steer", help="steer a model with SAE features (VS2 on cached CLS vectors)",
                       description="Steering methods. vs2: VS2 on cached final-layer CLS vectors, scored by CLIP zero-shot.",
                       formatter_class=HelpFormatter)
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    v = methods.add_parser("vs2", help="VS2 zero-shot accuracy on a cached split", epilog=EXAMPLES, formatter_class=HelpFormatter,
                           description="Zero-shot top-1 of a labelled cached split with and without VS2 "
                           "(x_hat = x + lam * (gamma - 1) W_dec^T encode(x), rescaled to ||x||).")
    v.add_argument("--model", required=True, help="CLIP hub id or directory (the one the caches were made with)")
    v.add_argument("--sae", required=True, metavar="DIR", help="SAE trained on the final block's CLS")
    v.add_argument("--activations", required=True, metavar="DIR", help="activation cache of the split to score (final-block CLS, labelled)")
    v.add_argument("--dataset", help="dataset whose class names to use (default: the one recorded in the cache)")
    v.add_argument("--data-root", help="data root of a built-in dataset")
    v.add_argument("--lam", type=float, help="steering strength lambda (or tune with --tune-on)")
    v.add_argument("--gamma", type=float, help="feature scale gamma (or tune with --tune-on)")
    v.add_argument("--tune-on", metavar="DIR", help="TRAIN activation cache: tune (lam, gamma) on a validation part of it")
    v.add_argument("--val-fraction", type=float, default=0.1, help="validation fraction of --tune-on")
    v.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    v.add_argument("--gate-quantile", type=float, help="steer only samples with per-sample FVU <= this quantile of train FVU (needs --tune-on)")
    v.add_argument("--no-rescale", action="store_true", help="do not rescale steered vectors to the original norm")
    v.add_argument("--templates", choices=["single", "ensemble"], default="single", help="zero-shot prompts")
    v.add_argument("--device", default="auto", help="cpu, cuda, ... or auto")
    v.add_argument("--out", metavar="DIR", help="write steer_vs2.json / .md (and the tuning heatmap) here")
    v.set_defaults(func=run_vs2)


def _cls_view(path: str, n_blocks: int):
    from ..activations.cache import ActivationCache

    cache = ActivationCache.open(path)
    hook = f"blocks.{n_blocks - 1}.resid_post"
    if hook not in cache.hooks:
        raise SparsesteerError(f"{path} does not hold {hook} (the final block's output); it holds {', '.join(cache.hooks)}")
    view = cache.rows(hook, "cls")
    x = view.read(0, view.n_rows).float()
    labels = view.labels(0, view.n_rows)
    return cache, x, labels


def _classes(cache, dataset: str | None, data_root: str | None) -> list[str]:
    from ..data import open_dataset

    spec = cache.settings.dataset or {}
    name = dataset or spec.get("name")
    if not name:
        raise SparsesteerError("the cache records no dataset: pass --dataset to name the class list")
    try:
        ds = open_dataset(name, cache.settings.split or "test", data_root=data_root)
    except SparsesteerError as e:
        raise SparsesteerError(f"cannot open {name!r} for its class names ({e}); pass --dataset/--data-root") from None
    if spec.get("classes_sha256") and dataset is None and ds.describe().get("classes_sha256") != spec["classes_sha256"]:
        raise SparsesteerError(f"the class names of {name!r} differ from those recorded in the cache")
    return ds.classes


def run_vs2(args: argparse.Namespace) -> int:
    import torch

    from ..utils.device import resolve_device
    from ..models import load_backbone
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier
    from ..sae import SparseAutoencoder
    from ..utils import io
    from . import vs2 as V
    from .classify import CLSClassifier
    from .tuning import grid_search, validation_split

    if (args.lam is None) != (args.gamma is None):
        raise SparsesteerError("give both --lam and --gamma, or neither and --tune-on")
    if args.lam is None and not args.tune_on:
        raise SparsesteerError("give --lam and --gamma, or --tune-on TRAIN_CACHE to tune them on validation")
    if args.gate_quantile is not None and not args.tune_on:
        raise SparsesteerError("--gate-quantile learns its threshold on unlabeled train data: give --tune-on TRAIN_CACHE")
    device = resolve_device(args.device)
    bb = load_backbone(args.model, device=device)
    sae = SparseAutoencoder.load(args.sae, device=device)
    V.check_sae_for_cls(sae, bb.d_model, bb.n_blocks)
    cache, x, labels = _cls_view(args.activations, bb.n_blocks)
    if labels is None or (labels < 0).all():
        raise SparsesteerError(f"{args.activations} has no labels: scoring zero-shot accuracy needs a labelled split")
    classes = _classes(cache, args.dataset, args.data_root)
    if labels.max() >= len(classes):
        raise SparsesteerError(f"labels go up to {labels.max()} but there are only {len(classes)} class names")
    clf = CLSClassifier(bb, ZeroShotClassifier.build(bb, classes, get_templates(args.templates)))
    y = torch.from_numpy(labels)
    rescale = not args.no_rescale
    report: dict[str, Any] = {"model": bb.model_id, "revision": bb.revision, "sae": str(Path(args.sae).resolve()),
                              "activations": str(Path(args.activations).resolve()), "split": cache.settings.split,
                              "n": int(len(y)), "templates": args.templates, "rescale": rescale}
    lam, gamma, mask = args.lam, args.gamma, None
    if args.tune_on:
        _, x_train, y_train = _cls_view(args.tune_on, bb.n_blocks)
        if y_train is None or (y_train < 0).all():
            raise SparsesteerError(f"{args.tune_on} has no labels: tuning on its validation part needs them")
        fit, val = validation_split(len(y_train), args.val_fraction, args.seed)
        xv, yv = x_train[val], torch.from_numpy(y_train[val])
        u = V.sae_direction(sae, xv)
        if lam is None:
            grid = grid_search(lambda l, g: clf.accuracy(V.vs2(sae, xv, l, g, u_bd=u, rescale=rescale), yv),
                               split=f"validation part ({args.val_fraction:g}) of {args.tune_on}", n=len(val))
            lam, gamma = grid.best_lam, grid.best_gamma
            report["tuning"] = grid.to_json()
            if args.out:
                grid.heatmap(Path(args.out) / "tuning_vs2.png", title=f"VS2 tuning: {bb.model_id}")
        if args.gate_quantile is not None:
            gate = V.FVUGate.fit(sae, x_train[fit], args.gate_quantile)
            mask = gate.mask(sae, x)
            report["gate"] = {"quantile": gate.quantile, "tau": gate.tau, "coverage": float(mask.double().mean())}
    V.check_finite(lam=lam, gamma=gamma)
    zs = clf.accuracy(x, y)
    steered = clf.accuracy(V.vs2(sae, x, lam, gamma, rescale=rescale, mask_b=mask), y)
    report.update({"lam": lam, "gamma": gamma, "zeroshot_top1": 100 * zs, "vs2_top1": 100 * steered})
    md = "\n".join([
        f"## VS2 on {cache.settings.split}: {bb.model_id}, SAE {args.sae}", "",
        f"n = {len(y)}, prompts: {args.templates}, lam = {lam:g}, gamma = {gamma:g}"
        + (f", FVU gate q = {args.gate_quantile:g} (coverage {100 * report['gate']['coverage']:.1f}%)" if mask is not None else ""),
        "", "| method | top-1 % |", "|---|---:|", f"| CLIP zero-shot | {100 * zs:.2f} |", f"| VS2 | {100 * steered:.2f} |", ""])
    print(md)
    if args.out:
        io.write_json(Path(args.out) / "steer_vs2.json", report)
        io.write_text(Path(args.out) / "steer_vs2.md", md)
    return 0
