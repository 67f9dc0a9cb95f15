"""`sparsesteer steer vs2|vs2pp`: VS2 and VS2++ on cached final-layer CLS vectors of a labelled split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from torch import Tensor

    from ..activations.cache import ActivationCache
    from ..models.backbone import Backbone
    from ..sae.base import SparseAutoencoder
    from .classify import CLSClassifier

EXAMPLES = """examples:
  sparsesteer steer vs2 --model openai/clip-vit-base-patch32 --sae runs/sae --activations runs/c100-test --lam 2.1 --gamma 1.5
  sparsesteer steer vs2 --model openai/clip-vit-base-patch32 --sae runs/sae --activations runs/c100-test \\
      --tune-on runs/c100-train --gate-quantile 0.95 --out runs/vs2-steer
(the caches hold blocks.{last}.resid_post with --tokens cls; `sparsesteer reproduce vs2` runs the whole chain)
"""

EXAMPLES_PP = """example (DINOv2 retrieval, as in the paper):
  sparsesteer cache --model facebook/dinov2-base --dataset cifar100 --split train --hook head --tokens cls --out runs/dino-train
  sparsesteer cache --model facebook/dinov2-base --dataset cifar100 --split test --hook head --tokens cls --out runs/dino-test
  sparsesteer steer vs2pp --model openai/clip-vit-base-patch32 --sae runs/sae --activations runs/c100-test \\
      --database runs/c100-train --retrieval-activations runs/dino-test --retrieval-database runs/dino-train
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils.cli import HelpFormatter
    from .tuning import N_NEIGHBOURS

    p = sub.add_parser(
        "steer",
        help="steer a model with SAE features (VS2 on cached CLS vectors)",
        description="Steering methods. vs2: VS2 on cached final-layer CLS vectors, scored by CLIP zero-shot.",
        formatter_class=HelpFormatter,
    )
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    v = methods.add_parser(
        "vs2",
        help="VS2 zero-shot accuracy on a cached split",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
        description="Zero-shot top-1 of a labelled cached split with and without VS2 "
        "(x_hat = x + lam * (gamma - 1) W_dec^T encode(x), rescaled to ||x||).",
    )
    v.add_argument("--model", required=True, help="CLIP hub id or directory (the one the caches were made with)")
    v.add_argument("--sae", required=True, metavar="DIR", help="SAE trained on the final block's CLS")
    v.add_argument(
        "--activations",
        required=True,
        metavar="DIR",
        help="activation cache of the split to score (final-block CLS, labelled)",
    )
    v.add_argument("--dataset", help="dataset whose class names to use (default: the one recorded in the cache)")
    v.add_argument("--data-root", help="data root of a built-in dataset")
    v.add_argument("--lam", type=float, help="steering strength lambda (or tune with --tune-on)")
    v.add_argument("--gamma", type=float, help="feature scale gamma (or tune with --tune-on)")
    v.add_argument(
        "--tune-on", metavar="DIR", help="TRAIN activation cache: tune (lam, gamma) on a validation part of it"
    )
    v.add_argument("--val-fraction", type=float, default=0.1, help="validation fraction of --tune-on")
    v.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    v.add_argument(
        "--gate-quantile",
        type=float,
        help="steer only samples with per-sample FVU <= this quantile of train FVU (needs --tune-on)",
    )
    v.add_argument("--no-rescale", action="store_true", help="do not rescale steered vectors to the original norm")
    v.add_argument("--templates", choices=["single", "ensemble"], default="single", help="zero-shot prompts")
    v.add_argument("--device", default="auto", help="cpu, cuda, ... or auto")
    v.add_argument("--out", metavar="DIR", help="write steer_vs2.json / .md (and the tuning heatmap) here")
    v.set_defaults(func=run_vs2)

    pp = methods.add_parser(
        "vs2pp",
        help="VS2++ (retrieval-augmented) and its baselines on a cached split",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES_PP,
        description="VS2++, CLIP steering and weighted RAG (pseudo and/or oracle labels). Each is tuned on validation "
        "queries carved from the database (TRAIN) cache, retrieving from the rest of it; test queries then retrieve "
        "from the whole database. The test labels are used for scoring only.",
    )
    pp.add_argument("--model", required=True, help="CLIP hub id or directory (the one the caches were made with)")
    pp.add_argument("--sae", required=True, metavar="DIR", help="SAE trained on the final block's CLS")
    pp.add_argument(
        "--activations",
        required=True,
        metavar="DIR",
        help="activation cache of the split to score (final-block CLS, labelled)",
    )
    pp.add_argument(
        "--database",
        required=True,
        metavar="DIR",
        help="TRAIN activation cache (final-block CLS): the retrieval database",
    )
    pp.add_argument(
        "--retrieval-activations",
        metavar="DIR",
        help="retriever `head` cache of the scored split (e.g. DINOv2); default: CLIP image embeddings",
    )
    pp.add_argument("--retrieval-database", metavar="DIR", help="retriever `head` cache of the database split")
    pp.add_argument("--neighbours", type=int, default=N_NEIGHBOURS, help="neighbours per query")
    pp.add_argument(
        "--positive-rule",
        choices=["query", "mode"],
        default="query",
        help="positives: share the query's pseudo-label, or carry the most frequent label",
    )
    pp.add_argument(
        "--labels",
        choices=["both", "pseudo", "oracle"],
        default="both",
        help="neighbour labels: CLIP pseudo-labels and/or the true train labels",
    )
    pp.add_argument("--val-fraction", type=float, default=0.1, help="validation fraction of --database")
    pp.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    pp.add_argument("--dataset", help="dataset whose class names to use (default: the one recorded in the cache)")
    pp.add_argument("--data-root", help="data root of a built-in dataset")
    pp.add_argument("--device", default="auto", help="cpu, cuda, ... or auto")
    pp.add_argument("--out", metavar="DIR", help="write steer_vs2pp.json / .md here")
    pp.set_defaults(func=run_vs2pp)


def _cls_view(path: str, n_blocks: int):
    from ..activations.cache import ActivationCache
    from ..models.hook_names import final_resid

    cache = ActivationCache.open(path)
    hook = final_resid(n_blocks)
    if hook not in cache.hooks:
        raise SparsesteerError(
            f"{path} does not hold {hook} (the final block's output); it holds {', '.join(cache.hooks)}"
        )
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


class _Scored(NamedTuple):
    """What both steering commands start from: model, SAE, the scored split and its classifier."""

    backbone: Backbone
    sae: SparseAutoencoder
    cache: ActivationCache
    """The cache of the scored split."""
    x: Tensor
    """[N, d] final-layer CLS vectors of the scored split."""
    labels: np.ndarray
    """[N] true labels of the scored split (for scoring only)."""
    classifier: CLSClassifier
    """The single-prompt or ensemble zero-shot weights on the CLIP head."""


def _load_scored(args: argparse.Namespace, templates: str = "single") -> _Scored:
    from ..models import load_backbone
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier
    from ..sae import SparseAutoencoder
    from ..utils.device import resolve_device
    from . import vs2 as V
    from .classify import CLSClassifier

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
    clf = CLSClassifier(bb, ZeroShotClassifier.build(bb, classes, get_templates(templates)))
    return _Scored(backbone=bb, sae=sae, cache=cache, x=x, labels=labels, classifier=clf)


def run_vs2(args: argparse.Namespace) -> int:
    import torch

    from ..utils import io
    from . import vs2 as V
    from .tuning import validation_split

    if args.tune_on and (args.lam is not None or args.gamma is not None):
        raise SparsesteerError(
            "--lam/--gamma and --tune-on exclude each other: give --lam and --gamma to steer with them, "
            "or --tune-on TRAIN_CACHE to tune both on validation"
        )
    if (args.lam is None) != (args.gamma is None):
        raise SparsesteerError("give both --lam and --gamma, or neither and --tune-on")
    if args.lam is None and not args.tune_on:
        raise SparsesteerError("give --lam and --gamma, or --tune-on TRAIN_CACHE to tune them on validation")
    if args.gate_quantile is not None and not args.tune_on:
        raise SparsesteerError(
            "--gate-quantile learns its threshold on unlabeled train data: give --tune-on TRAIN_CACHE"
        )
    bb, sae, cache, x, labels, clf = _load_scored(args, args.templates)
    y = torch.from_numpy(labels)
    rescale = not args.no_rescale
    report: dict[str, Any] = {
        "model": bb.model_id,
        "revision": bb.revision,
        "sae": str(Path(args.sae).resolve()),
        "activations": str(Path(args.activations).resolve()),
        "split": cache.settings.split,
        "n": int(len(y)),
        "templates": args.templates,
        "rescale": rescale,
    }
    lam, gamma, mask = args.lam, args.gamma, None
    if args.tune_on:
        _, x_train, y_train = _cls_view(args.tune_on, bb.n_blocks)
        if y_train is None or (y_train < 0).all():
            raise SparsesteerError(f"{args.tune_on} has no labels: tuning on its validation part needs them")
        fit, val = validation_split(len(y_train), args.val_fraction, args.seed)
        grid = V.tune_vs2(
            clf,
            sae,
            x_train[val],
            torch.from_numpy(y_train[val]),
            rescale=rescale,
            split=f"validation part ({args.val_fraction:g}) of {args.tune_on}",
        )
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
    md = "\n".join(
        [
            f"## VS2 on {cache.settings.split}: {bb.model_id}, SAE {args.sae}",
            "",
            f"n = {len(y)}, prompts: {args.templates}, lam = {lam:g}, gamma = {gamma:g}"
            + (
                f", FVU gate q = {args.gate_quantile:g} (coverage {100 * report['gate']['coverage']:.1f}%)"
                if mask is not None
                else ""
            ),
            "",
            "| method | top-1 % |",
            "|---|---:|",
            f"| CLIP zero-shot | {100 * zs:.2f} |",
            f"| VS2 | {100 * steered:.2f} |",
            "",
        ]
    )
    print(md)
    if args.out:
        io.write_json(Path(args.out) / "steer_vs2.json", report)
        io.write_text(Path(args.out) / "steer_vs2.md", md)
    return 0


def _head_rows(path: str, n: int, what: str):
    from ..activations.cache import ActivationCache

    view = ActivationCache.open(path).rows("head")
    if view.n_rows != n:
        raise SparsesteerError(
            f"{what} {path} has {view.n_rows} rows but the CLIP cache has {n}: cache the same split and images"
        )
    return view.read(0, n).float()


def run_vs2pp(args: argparse.Namespace) -> int:
    import torch

    from ..utils import io
    from .retrieval_suite import RetrievalRows, RetrievalSuiteSettings, evaluate_all, tune_all
    from .tuning import validation_split

    if (args.retrieval_activations is None) != (args.retrieval_database is None):
        raise SparsesteerError(
            "give both --retrieval-activations and --retrieval-database, or neither (CLIP embeddings)"
        )
    bb, sae, cache, x_q, y_q, clf = _load_scored(args)
    _, x_db, y_db = _cls_view(args.database, bb.n_blocks)
    modes = ("pseudo", "oracle") if args.labels == "both" else (args.labels,)
    if y_db is None or (y_db < 0).any():
        raise SparsesteerError(
            f"{args.database} is not fully labelled: tuning scores validation queries drawn from it (and oracle mode uses its labels)"
        )
    if args.retrieval_activations:
        emb_q = _head_rows(args.retrieval_activations, len(x_q), "--retrieval-activations")
        emb_db = _head_rows(args.retrieval_database, len(x_db), "--retrieval-database")
        retriever = "head caches"
    else:
        emb_q, emb_db, retriever = clf.embed(x_q), clf.embed(x_db), "clip"
    pseudo_q, pseudo_db = clf.predict(x_q), clf.predict(x_db)
    settings = RetrievalSuiteSettings(
        neighbours=args.neighbours, positive_rule=args.positive_rule, labels=modes, retriever=retriever
    )
    database = RetrievalRows(cls_nd=x_db, embeds_ne=emb_db, pseudo_n=pseudo_db, labels_n=torch.from_numpy(y_db))
    fit, val = validation_split(len(x_db), args.val_fraction, args.seed)
    tuned = tune_all(
        sae,
        clf,
        database.take(torch.from_numpy(fit)),
        database.take(torch.from_numpy(val)),
        settings,
        split=f"validation part ({args.val_fraction:g}) of {args.database}",
    )
    queries = RetrievalRows(cls_nd=x_q, embeds_ne=emb_q, pseudo_n=pseudo_q)  # no labels: scored below
    rows = evaluate_all(tuned, sae, clf, database, queries, settings)
    zs = 100 * float((pseudo_q.numpy() == y_q).mean())
    report = {
        "model": bb.model_id,
        "revision": bb.revision,
        "sae": str(Path(args.sae).resolve()),
        "split": cache.settings.split,
        "n": int(len(y_q)),
        "zeroshot_top1": zs,
        "retriever": retriever,
        "neighbours": args.neighbours,
        "positive_rule": args.positive_rule,
        "rows": {},
        "tuning": tuned,
    }
    lines = [
        f"## VS2++ on {cache.settings.split}: {bb.model_id}, SAE {args.sae}",
        "",
        f"n = {len(y_q)}, retrieval: {retriever}, {args.neighbours} neighbours from {args.database}, positive rule "
        f"{args.positive_rule}; every method tuned on a validation part of the database",
        "",
        "| method | top-1 % | settings |",
        "|---|---:|---|",
        f"| CLIP zero-shot | {zs:.2f} | a photo of a {{}}. |",
    ]
    for key, r in rows.items():
        top1 = 100 * float((np.asarray(r["pred"]) == y_q).mean())
        report["rows"][key] = {"top1": top1, "settings": r["settings"]}
        shown = {k: v for k, v in r["settings"].items() if k in ("lam", "gamma", "alpha", "labels")}
        lines.append(f"| {key} | {top1:.2f} | {', '.join(f'{k}={v}' for k, v in shown.items())} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        io.write_json(Path(args.out) / "steer_vs2pp.json", report)
        io.write_text(Path(args.out) / "steer_vs2pp.md", md)
    return 0
