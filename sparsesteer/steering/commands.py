"""`sparsesteer steer vs2|vs2pp|features|neurons`: VS2 and VS2++ on cached final-layer CLS vectors of a
labelled split; SAE-feature and neuron steering during the forward pass (`steer_run.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from torch import Tensor

    from ..activations.cache import ActivationCache, Rows
    from ..models.backbone import Backbone
    from ..sae.base import SparseAutoencoder
    from ..sae.provenance import Provenance
    from .classify import CLSClassifier
    from .neighbours import LabelMode
    from .settings import ScoredSplit

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


EXAMPLES_FEATURES = """examples:
  sparsesteer steer features --model openai/clip-vit-base-patch32 --sae runs/sae-b5 --latent 123 --strength 150 \\
      --mode set --dataset cifar100 --limit 64 --out runs/steer-123
  sparsesteer steer features --model M --sae runs/sae-b5 --latent 7 --latent 9 --mode zero --tokens patch:0,1,7 \\
      --dataset folder:/data/pets --vocab imagenet1k
  sparsesteer steer features --model M --sae runs/sae-b5 --latent 7 --strength=-5 --mode add --tokens mask:centre.npy ...
(--hook defaults to the SAE's; --tokens patch:I,J are patch indices, row-major over the patch grid)
"""

EXAMPLES_NEURONS = """example:
  sparsesteer steer neurons --model openai/clip-vit-base-patch32 --hook blocks.5.resid_post --neuron 42 \\
      --strength 20 --mode set --dataset cifar100 --limit 64 --vocab imagenet1k --out runs/neuron-42
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter, add_overwrite
    from .settings import SteerFeaturesConfig, SteerNeuronsConfig, SteerVS2Config, SteerVS2ppConfig

    p = sub.add_parser(
        "steer",
        help="steer a model with SAE features (VS2 on cached CLS vectors, feature / neuron edits in the forward pass)",
        description="Steering methods. vs2 / vs2pp: VS2 and VS2++ on cached final-layer CLS vectors, scored by "
        "CLIP zero-shot. features / neurons: edit SAE latents or residual dimensions during the forward pass and "
        "compare the predictions of the same images before and after.",
        formatter_class=HelpFormatter,
    )
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    dirs = {k: "DIR" for k in ("sae", "activations", "tune_on", "gate_on", "out", "database", "retrieval_activations",
                               "retrieval_database")}  # fmt: skip
    v = methods.add_parser(
        "vs2",
        help="VS2 zero-shot accuracy on a cached split",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
        description="Zero-shot top-1 of a labelled cached split with and without VS2 "
        "(x_hat = x + lam * (gamma - 1) W_dec^T encode(x), rescaled to ||x||). The SAE, the caches and the "
        "model must agree (model and revision, hook, tokens, width, class names); --allow-mismatch overrides "
        "that and the outputs say so.",
    )
    config_utils.add_arguments(v, SteerVS2Config, metavars=dirs)
    add_overwrite(v)
    v.set_defaults(func=run_vs2)

    pp = methods.add_parser(
        "vs2pp",
        help="VS2++ (retrieval-augmented) and its baselines on a cached split",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES_PP,
        description="VS2++, CLIP steering and weighted RAG (pseudo and/or oracle labels). Each is tuned on validation "
        "queries carved from the database (TRAIN) cache, retrieving from the rest of it; test queries then retrieve "
        "from the whole database. The test labels are used for scoring only. The database must not be the "
        "scored split.",
    )
    config_utils.add_arguments(pp, SteerVS2ppConfig, metavars=dirs)
    add_overwrite(pp)
    pp.set_defaults(func=run_vs2pp)

    f = methods.add_parser(
        "features",
        help="edit SAE latents in the forward pass: predictions before and after",
        epilog=EXAMPLES_FEATURES,
        formatter_class=HelpFormatter,
        description="Set / add / scale / zero SAE latents at the SAE's hook on a token selection (the SAE error "
        "term kept unless --no-keep-error), and print for the same images the zero-shot prediction (or the top "
        "concepts of --vocab) before and after, with the mean probability change per class or concept. The SAE "
        "must match the model, hook, width and tokens; --allow-mismatch overrides all but the width.",
    )
    config_utils.add_arguments(f, SteerFeaturesConfig, metavars={**dirs, "latent": "J", "neuron": "J"})
    add_overwrite(f)
    f.set_defaults(func=run_features, output_args=("out", "text_cache"))

    n = methods.add_parser(
        "neurons",
        help="edit residual-stream dimensions in the forward pass: predictions before and after",
        epilog=EXAMPLES_NEURONS,
        formatter_class=HelpFormatter,
        description="Set / add / scale / zero residual dimensions at a hook on a token selection (the neuron "
        "baseline of feature steering), and print the predictions of the same images before and after.",
    )
    config_utils.add_arguments(n, SteerNeuronsConfig, metavars={**dirs, "neuron": "J"})
    add_overwrite(n)
    n.set_defaults(func=run_neurons, output_args=("out", "text_cache"))


def run_features(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from .settings import SteerFeaturesConfig
    from .steer_run import run_features as run

    cfg = config_utils.from_args(SteerFeaturesConfig, args, where="steer features settings")
    _claim_out(cfg, args)
    run(cfg)
    return 0


def run_neurons(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from .settings import SteerNeuronsConfig
    from .steer_run import run_neurons as run

    cfg = config_utils.from_args(SteerNeuronsConfig, args, where="steer neurons settings")
    _claim_out(cfg, args)
    run(cfg)
    return 0


def _claim_out(cfg: Any, args: argparse.Namespace) -> None:
    """The output policy (utils/outputs.py) for --out, when given, before the model loads."""
    if cfg.out:
        from ..utils import outputs

        read = ("sae", "activations", "tune_on", "gate_on", "database", "retrieval_activations", "retrieval_database")
        inputs = [getattr(cfg, k, None) for k in (*read, "vocab")]
        outputs.claim(cfg.out, overwrite=args.overwrite, inputs=inputs)


def _model_provenance(bb: Backbone) -> Provenance:
    from ..models.hook_names import final_resid
    from ..sae.provenance import Provenance

    return Provenance(
        model_id=bb.model_id, model_revision=bb.revision, hook=final_resid(bb.n_blocks), tokens="cls", d=bb.d_model
    )


def _cls_rows(path: str, bb: Backbone, what: str, cfg: ScoredSplit, notes: list[str]) -> tuple[ActivationCache, Rows]:
    """The final-block CLS rows of a cache made with this model (checked)."""
    from ..activations.cache import ActivationCache
    from ..models.hook_names import final_resid
    from ..sae.provenance import Provenance, check_agree

    cache = ActivationCache.open(path)
    hook = final_resid(bb.n_blocks)
    if hook not in cache.hooks:
        raise SparsesteerError(
            f"{path} does not hold {hook} (the final block's output); it holds {', '.join(cache.hooks)}"
        )
    view = cache.rows(hook, "cls")
    notes += check_agree(
        f"{what} ({path})",
        Provenance.from_rows(view.describe()),
        f"the model ({bb.model_id})",
        _model_provenance(bb),
        fields=("model_id", "model_revision", "d"),
        allow=cfg.allow_mismatch,
    )
    return cache, view.read_all()


def _not_the_same_split(left: str, a: ActivationCache, right: str, b: ActivationCache, cfg: ScoredSplit) -> list[str]:
    """Tuning or retrieving from the split being scored would report numbers tuned on the test set."""
    da, db = (a.settings.dataset or {}).get("name"), (b.settings.dataset or {}).get("name")
    if da is None or a.settings.split is None or (da, a.settings.split) != (db, b.settings.split):
        return []
    note = (
        f"{left} ({a.path}) and {right} ({b.path}) are both {da} [{a.settings.split}]: tuning or retrieving on the "
        "split being scored reports numbers fitted to it; use a TRAIN cache"
    )
    if cfg.allow_mismatch:
        return [note]
    raise SparsesteerError(note + " (or --allow-mismatch to run anyway; the outputs then say so)")


def _same_classes(what: str, path: str, cfg: ScoredSplit) -> None:
    """A train split (--tune-on, --gate-on, --database) and the scored split must share their class
    names (the labels of one index the classifier of the other): two manifests, checked before the
    model loads."""
    from ..activations.cache import ActivationCache
    from ..activations.pairing import ImageSet, check_same_images

    check_same_images(
        f"{what} ({path})",
        ImageSet.of_cache(ActivationCache.open(path)),
        f"the scored split ({cfg.activations})",
        ImageSet.of_cache(ActivationCache.open(cfg.activations)),
        fields=("classes_sha256",),
    )


def _classes(cache: ActivationCache, cfg: ScoredSplit, notes: list[str]) -> list[str]:
    """Class names: stored in the cache (format 2), or from --dataset, or, for a version-1 cache, from
    the dataset it records (needs it on disk); a dataset opened is checked to hold the cache's images
    (`activations.pairing`: spec, split, number, class names, labels)."""
    from ..activations.pairing import ImageSet, open_images

    stored = cache.classes
    if cfg.dataset is None and stored:
        return stored
    if not (cfg.dataset or (cache.settings.dataset or {}).get("name")):
        raise SparsesteerError("the cache records no dataset and no class names: pass --dataset to name the classes")
    ds, overridden = open_images(
        ImageSet.of_cache(cache),
        f"the activations ({cache.path})",
        dataset=cfg.dataset,
        split=None if cache.settings.split else "test",
        data_root=cfg.data_root,
        allow=cfg.allow_mismatch,
    )
    notes += overridden
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
    classes: list[str]
    """Class names of the labels."""
    notes: list[str]
    """Provenance disagreements run anyway under --allow-mismatch (written into the outputs)."""


def _load_scored(cfg: ScoredSplit, templates: str = "single") -> _Scored:
    from ..activations.cache import ActivationCache
    from ..models import load_backbone
    from ..models.backbone import model_shape
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier
    from ..sae import SparseAutoencoder
    from ..sae.provenance import Provenance, check_agree
    from ..utils.device import resolve_device
    from . import vs2 as V
    from .classify import CLSClassifier

    device = resolve_device(cfg.device)
    shape = model_shape(cfg.model, cfg.revision)  # the model family first (its config): no SAE can make up for it
    V.check_model_for_cls(shape.model_id, shape.arch)
    # what needs only the flags, the SAE and the caches' manifests is refused before the model is loaded
    sae = SparseAutoencoder.load(cfg.sae, device=device)
    V.check_sae_for_cls(sae, sae.d_in)  # its token selection (its width and hook are checked against the model)
    for name in ("activations", "tune_on", "gate_on", "database", "retrieval_activations", "retrieval_database"):
        if getattr(cfg, name, None):
            ActivationCache.open(getattr(cfg, name))
    bb = load_backbone(cfg.model, device=device, revision=cfg.revision)
    V.check_sae_for_cls(sae, bb.d_model, bb.n_blocks)
    notes = check_agree(
        f"the SAE ({cfg.sae})",
        Provenance.from_metadata(sae.metadata, d=sae.d_in),
        f"the model ({bb.model_id})",
        _model_provenance(bb),
        allow=cfg.allow_mismatch,
    )
    cache, (x, labels) = _cls_rows(cfg.activations, bb, "the activations", cfg, notes)
    if labels is None or (labels < 0).all():
        raise SparsesteerError(f"{cfg.activations} has no labels: scoring zero-shot accuracy needs a labelled split")
    classes = _classes(cache, cfg, notes)
    if labels.max() >= len(classes):
        raise SparsesteerError(f"labels go up to {labels.max()} but there are only {len(classes)} class names")
    clf = CLSClassifier(bb, ZeroShotClassifier.build(bb, classes, get_templates(templates)))
    return _Scored(backbone=bb, sae=sae, cache=cache, x=x, labels=labels, classifier=clf, classes=classes, notes=notes)


def _overridden(notes: list[str]) -> list[str]:
    """Markdown lines that say a provenance check was overridden (empty when none was)."""
    if not notes:
        return []
    return ["**Provenance checks overridden (--allow-mismatch):**", *[f"- {n}" for n in notes], ""]


def run_vs2(args: argparse.Namespace) -> int:
    import torch

    from ..utils import config as config_utils
    from ..utils.report import md_table, write_result
    from . import vs2 as V
    from .settings import SteerVS2Config
    from .tuning import validation_split

    cfg = config_utils.from_args(SteerVS2Config, args, where="steer vs2 settings")
    _claim_out(cfg, args)
    train_cache = cfg.tune_on or cfg.gate_on
    what = "the --tune-on cache" if cfg.tune_on else "the --gate-on cache"
    if train_cache:
        _same_classes(what, train_cache, cfg)
    scored = _load_scored(cfg, cfg.templates)
    bb, sae, cache, x, clf, notes = scored.backbone, scored.sae, scored.cache, scored.x, scored.classifier, scored.notes
    y = torch.from_numpy(scored.labels)
    report: dict[str, Any] = {
        "model": bb.model_id,
        "revision": bb.revision,
        "sae": str(Path(cfg.sae).resolve()),
        "activations": str(Path(cfg.activations).resolve()),
        "dataset": (cache.settings.dataset or {}).get("name"),
        "split": cache.settings.split,
        "n": int(len(y)),
        "templates": cfg.templates,
        "rescale": cfg.rescale,
    }
    lam, gamma, mask = cfg.lam, cfg.gamma, None
    if train_cache:
        tcache, (x_train, y_train) = _cls_rows(train_cache, bb, what, cfg, notes)
        notes += _not_the_same_split(what, tcache, "the scored split", cache, cfg)
        fit = None
        if cfg.tune_on:
            if y_train is None or (y_train < 0).all():
                raise SparsesteerError(f"{cfg.tune_on} has no labels: tuning on its validation part needs them")
            fit, val = validation_split(len(y_train), cfg.val_fraction, cfg.seed)
            grid = V.tune_vs2(
                clf,
                sae,
                x_train[val],
                torch.from_numpy(y_train[val]),
                rescale=cfg.rescale,
                split=f"validation part ({cfg.val_fraction:g}) of {cfg.tune_on}",
            )
            lam, gamma = grid.best_lam, grid.best_gamma
            report["tuning"] = grid.to_json()
            if cfg.out:
                grid.heatmap(Path(cfg.out) / "tuning_vs2.png", title=f"VS2 tuning: {bb.model_id}")
        if cfg.gate_quantile is not None:
            gate = V.FVUGate.fit(sae, x_train if fit is None else x_train[fit], cfg.gate_quantile)
            mask = gate.mask(sae, x)
            report["gate"] = {
                "quantile": gate.quantile,
                "tau": gate.tau,
                "coverage": float(mask.double().mean()),
                "fit_on": f"{train_cache}" + ("" if fit is None else " (fit part)"),
            }
    if lam is None or gamma is None:  # not reached: SteerVS2Config needs both, or --tune-on, which set them above
        raise SparsesteerError("give --lam and --gamma, or --tune-on TRAIN_CACHE to tune them on validation")
    V.check_finite(lam=lam, gamma=gamma)
    zs = clf.accuracy(x, y)
    steered = clf.accuracy(V.vs2(sae, x, lam, gamma, rescale=cfg.rescale, mask_b=mask), y)
    report.update({"lam": lam, "gamma": gamma, "zeroshot_top1": 100 * zs, "vs2_top1": 100 * steered})
    if notes:
        report["provenance_overridden"] = notes
    gate_text = (
        f", FVU gate q = {cfg.gate_quantile:g} (coverage {100 * report['gate']['coverage']:.1f}%)"
        if mask is not None
        else ""
    )
    md = "\n".join(
        [
            f"## VS2 on {report['dataset']} [{cache.settings.split}]: {bb.model_id}, SAE {cfg.sae}",
            "",
            *_overridden(notes),
            f"n = {len(y)}, prompts: {cfg.templates}, lam = {lam:g}, gamma = {gamma:g}{gate_text}",
            "",
            md_table(
                ["method", "top-1 %"], [("CLIP zero-shot", f"{100 * zs:.2f}"), ("VS2", f"{100 * steered:.2f}")], "lr"
            ),
            "",
        ]
    )
    print(md)
    if cfg.out:
        write_result(cfg.out, "steer_vs2", report, md)
    return 0


def _head_rows(
    path: str, clip_cache: ActivationCache, what: str, cfg: ScoredSplit, notes: list[str]
) -> tuple[Tensor, Provenance]:
    """A retriever's `head` embeddings of the same images as a CLIP cache (same dataset, split, count),
    and the retriever's provenance."""
    from ..activations.cache import ActivationCache
    from ..activations.pairing import check_same_cached_images
    from ..sae.provenance import Provenance

    head_cache = ActivationCache.open(path)
    view = head_cache.rows("head")
    images = Provenance.from_rows(view.describe())
    notes += check_same_cached_images(what, head_cache, "its CLIP cache", clip_cache, allow=cfg.allow_mismatch)
    if view.n_rows != clip_cache.n_images:
        raise SparsesteerError(
            f"{what} {path} has {view.n_rows} rows but the CLIP cache has {clip_cache.n_images}: cache the same "
            "split and images"
        )
    return view.read_all().x, images


def run_vs2pp(args: argparse.Namespace) -> int:
    import torch

    from ..sae.provenance import check_agree
    from ..utils import config as config_utils
    from ..utils.report import md_table, write_result
    from .neighbours import LABEL_MODES
    from .retrieval_suite import RetrievalRows, RetrievalSuiteSettings, evaluate_all, tune_all
    from .settings import SteerVS2ppConfig
    from .tuning import validation_split

    cfg = config_utils.from_args(SteerVS2ppConfig, args, where="steer vs2pp settings")
    _claim_out(cfg, args)
    _same_classes("the database", cfg.database, cfg)
    scored = _load_scored(cfg)
    bb, sae, cache, x_q, y_q, clf = (
        scored.backbone,
        scored.sae,
        scored.cache,
        scored.x,
        scored.labels,
        scored.classifier,
    )
    notes = scored.notes
    db_cache, (x_db, y_db) = _cls_rows(cfg.database, bb, "the database", cfg, notes)
    notes += _not_the_same_split("the database", db_cache, "the scored split", cache, cfg)
    modes: tuple[LabelMode, ...] = LABEL_MODES if cfg.labels == "both" else (cfg.labels,)
    if y_db is None or (y_db < 0).any():
        raise SparsesteerError(
            f"{cfg.database} is not fully labelled: tuning scores validation queries drawn from it (and oracle mode uses its labels)"
        )
    # SteerVS2ppConfig: both retrieval caches or neither
    if cfg.retrieval_activations is not None and cfg.retrieval_database is not None:
        emb_q, retr_q = _head_rows(cfg.retrieval_activations, cache, "--retrieval-activations", cfg, notes)
        emb_db, retr_db = _head_rows(cfg.retrieval_database, db_cache, "--retrieval-database", cfg, notes)
        notes += check_agree(
            f"--retrieval-activations ({cfg.retrieval_activations})", retr_q,
            f"--retrieval-database ({cfg.retrieval_database})", retr_db,
            fields=("model_id", "model_revision", "d"), allow=cfg.allow_mismatch,
        )  # fmt: skip
        retriever = retr_q.model_id or "head caches"
    else:
        emb_q, emb_db, retriever = clf.embed(x_q), clf.embed(x_db), "clip"
    pseudo_q, pseudo_db = clf.predict(x_q), clf.predict(x_db)
    settings = RetrievalSuiteSettings(
        neighbours=cfg.neighbours, positive_rule=cfg.positive_rule, labels=modes, retriever=retriever
    )
    database = RetrievalRows(cls_nd=x_db, embeds_ne=emb_db, pseudo_n=pseudo_db, labels_n=torch.from_numpy(y_db))
    fit, val = validation_split(len(x_db), cfg.val_fraction, cfg.seed)
    tuned = tune_all(
        sae,
        clf,
        database.take(torch.from_numpy(fit)),
        database.take(torch.from_numpy(val)),
        settings,
        split=f"validation part ({cfg.val_fraction:g}) of {cfg.database}",
    )
    queries = RetrievalRows(cls_nd=x_q, embeds_ne=emb_q, pseudo_n=pseudo_q)  # no labels: scored below
    rows = evaluate_all(tuned, sae, clf, database, queries, settings)
    zs = 100 * float((pseudo_q.numpy() == y_q).mean())
    report: dict[str, Any] = {
        "model": bb.model_id,
        "revision": bb.revision,
        "sae": str(Path(cfg.sae).resolve()),
        "dataset": (cache.settings.dataset or {}).get("name"),
        "split": cache.settings.split,
        "database": str(Path(cfg.database).resolve()),
        "database_split": db_cache.settings.split,
        "n": int(len(y_q)),
        "zeroshot_top1": zs,
        "retriever": retriever,
        "neighbours": cfg.neighbours,
        "positive_rule": cfg.positive_rule,
        "rows": {},
        "tuning": tuned,
    }
    if notes:
        report["provenance_overridden"] = notes
    lines = [
        f"## VS2++ on {report['dataset']} [{cache.settings.split}]: {bb.model_id}, SAE {cfg.sae}",
        "",
        *_overridden(notes),
        f"n = {len(y_q)}, retrieval: {retriever}, {cfg.neighbours} neighbours from {cfg.database} "
        f"[{db_cache.settings.split}], positive rule {cfg.positive_rule}; every method tuned on a validation part "
        "of the database",
        "",
    ]
    table = [("CLIP zero-shot", f"{zs:.2f}", "a photo of a {}.")]
    for key, r in rows.items():
        top1 = 100 * float((np.asarray(r["pred"]) == y_q).mean())
        report["rows"][key] = {"top1": top1, "settings": r["settings"]}
        shown = {k: v for k, v in r["settings"].items() if k in ("lam", "gamma", "alpha", "labels")}
        table.append((key, f"{top1:.2f}", ", ".join(f"{k}={v}" for k, v in shown.items())))
    md = "\n".join([*lines, md_table(["method", "top-1 %", "settings"], table, "lrl")]) + "\n"
    print(md)
    if cfg.out:
        write_result(cfg.out, "steer_vs2pp", report, md)
    return 0
