"""`sparsesteer reproduce vs2`: the VS2 paper's Table 1 (and Table 7) for one backbone and dataset.

    dataset (downloaded if missing)
      -> cached final-layer CLS of train and test (+ every block's CLS of train for SAE_REC^A)
      -> retrieval embeddings (DINOv2 `head`, or CLIP image embeddings)
      -> SAEs with the paper's configuration (final block; PASS; one per block for in-forward rows),
         trained on the train split minus a validation part
      -> zero-shot logits (single prompt and 80-prompt ensemble), CLIP pseudo-labels of train
      -> tuning of every steering method on the validation part of TRAIN (never on test)
      -> every row on the test split -> results.json, results.md, per_class.json, plots/

Each stage records the settings it used (`experiments.stages.Pipeline`): rerunning skips stages
whose results are current, and `--stage NAME` runs one stage alone. Every stage is a function of the
run context (`run.VS2Run`: paths, arrays, backbone, datasets, SAEs, classifiers); this module holds
the stages that need no more than that, and the stage table. `tuning.py` and `report.py` hold the
others and import only `run.py`. Importing this module does not import torch (`--help` lists the stages).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ...models.hook_names import HookPoint, hook_name
from ...sae.provenance import Provenance
from ...utils import io
from ..stages import Pipeline, Stage
from .config import VS2Config
from .run import VS2Run

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- stages
def cache(run: VS2Run) -> None:
    """CLS of every block's output for train (only the final one without in-forward rows), of the
    final block for test; the labels of both as arrays."""
    from ...activations.produce import cache_activations

    c = run.cfg
    final = hook_name(run.final_block)
    train_hooks = [hook_name(b) for b in range(run.backbone.n_blocks)] if c.in_forward else [final]
    for split, hooks in ((c.train_split, train_hooks), (c.test_split, [final])):
        run.dataset(split)  # download / validate first, with clear errors
        cache_activations(run.cache_config(split, hooks, "cls", run.path("cache", split), dtype=c.cache_dtype))
    run.save_array("train_labels", run.cls_rows(c.train_split).labels)
    run.save_array("test_labels", run.cls_rows(c.test_split).labels)


def retrieval(run: VS2Run) -> None:
    """Retrieval embeddings of train and test: the retriever's `head`, or CLIP image embeddings."""
    c = run.cfg
    for split in (c.train_split, c.test_split):
        if c.retriever == "clip":
            emb = run.cls_classifier().embed(run.cls_rows(split).x)
        else:
            from ...activations.cache import ActivationCache
            from ...activations.pairing import check_same_cached_images
            from ...activations.produce import cache_activations

            head = str(HookPoint.head())
            out = run.path("cache", f"retriever-{split}")
            cache_activations(run.cache_config(split, (head,), "cls", out, model=c.retriever))
            retriever = ActivationCache.open(out, verify="none")
            check_same_cached_images(
                f"the CLIP cache of {split}",
                run.open_cache(split, run.path("cache", split)),
                "its retriever cache",
                retriever,
            )
            emb = retriever.rows(head).read_all().x
        run.save_array(f"retrieval_{split}", emb)


def _sae_config(run: VS2Run, pass_weight: float = 0.0):
    from ...sae import SAEConfig

    expansion, k = run.sae_shape()
    return SAEConfig(
        arch="topk",
        k=k,
        expansion=expansion,
        dead_after=run.cfg.sae_dead_after_steps * run.cfg.sae_batch_size,
        pass_weight=pass_weight,
    )


def _train_config(run: VS2Run):
    from ...sae.train import TrainConfig

    c = run.cfg
    return TrainConfig(
        batch_size=c.sae_batch_size,
        lr=c.sae_lr,
        decay="linear",
        epochs=c.sae_epochs,
        seed=c.seed,
        b_dec_init="mean",
        device=c.device,
        checkpoint_every=0,
        bf16=False,  # the paper's tables train in float32: the numbers must not depend on the CPU or GPU model
    )


def _train_sae(run: VS2Run, name: str, block: int, *, pass_weight: float = 0.0):
    import shutil

    from ...activations.loader import TensorSource
    from ...sae.train import Trainer

    c = run.cfg
    fit, _ = run.split_indices()
    x, labels = run.cls_rows(c.train_split, block)
    out = run.path("sae", name)
    shutil.rmtree(out, ignore_errors=True)  # a stage rerun retrains from scratch
    source = TensorSource(x[fit], labels=labels[fit], name=f"{c.train_split} CLS block {block} (fit part)")
    provenance = Provenance(
        model_id=run.backbone.model_id,
        model_revision=run.backbone.revision,
        hook=hook_name(block),
        tokens="cls",
        dataset=c.dataset,
        split=f"{c.train_split} (minus validation)",
    )
    trainer = Trainer(source, _sae_config(run, pass_weight), _train_config(run), out, metadata=provenance.to_metadata())
    return trainer.fit().saes[0]


def sae(run: VS2Run) -> None:
    """The final-block SAE, the PASS SAE, and one SAE per other block for the in-forward rows."""
    final = run.final_block
    _train_sae(run, "final", final)
    if run.cfg.pass_weight:
        _train_sae(run, "pass", final, pass_weight=run.cfg.pass_weight)
    if run.cfg.in_forward:
        for b in range(run.backbone.n_blocks):
            if b != final:
                _train_sae(run, f"block{b:02d}", b)


def zeroshot(run: VS2Run) -> None:
    """Zero-shot logits of test (single prompt, 80-prompt ensemble); pseudo-labels of train and test."""
    c = run.cfg
    single = run.cls_classifier("single")
    x_test = run.cls_rows(c.test_split).x
    run.save_array("logits_zeroshot", single.logits(x_test))
    run.save_array("logits_zeroshot_ensemble", run.cls_classifier("ensemble").logits(x_test))
    x_train = run.cls_rows(c.train_split).x
    run.save_array("pseudo_train", single.logits(x_train).argmax(-1))
    run.save_array("pseudo_test", single.logits(x_test).argmax(-1))


def tune(run: VS2Run) -> None:
    from . import tuning

    tuning.tune(run)


def evaluate(run: VS2Run) -> None:
    from . import tuning

    tuning.evaluate_test(run)


def inforward(run: VS2Run) -> None:
    """SAE_REC^A and VS2 on the last n blocks, through model forwards over the test images."""
    from ...steering import inforward as steer

    c = run.cfg
    rows: dict[str, Any] = {}
    if c.in_forward:
        tuned = io.read_json(run.path("tuning.json"))
        lam, gamma = tuned["vs2"]["best_lam"], tuned["vs2"]["best_gamma"]
        saes = run.block_saes()
        clf = run.classifier("single")
        ds = run.dataset(c.test_split)
        run.open_cache(c.test_split, run.path("cache", c.test_split))  # scored against its labels: the same images
        runs = {"sae_rec_a": steer.sae_rec_all(saes)}
        for n in c.multi_layer:
            if 1 < n <= run.backbone.n_blocks:
                runs[f"vs2_last{n}"] = steer.vs2_last_blocks(saes, run.backbone.n_blocks, n, lam, gamma)
        for key, interventions in runs.items():
            logits, _ = steer.classify_dataset(
                run.backbone, clf, ds, interventions, batch_size=c.batch_size, workers=c.workers, stop=None
            )
            run.save_array(f"logits_{key}", logits)
            rows[key] = {"lam": lam, "gamma": gamma} if key.startswith("vs2") else {}
    io.write_json(run.path("inforward.json"), rows)


def report(run: VS2Run) -> None:
    from . import report as write_report

    write_report.write(run)


CACHE_FIELDS = (
    "model",
    "dataset",
    "train_split",
    "test_split",
    "limit_train",
    "limit_test",
    "cache_dtype",
    "in_forward",
)
SAE_FIELDS = (
    "sae_k",
    "sae_expansion",
    "sae_lr",
    "sae_batch_size",
    "sae_epochs",
    "sae_dead_after_steps",
    "pass_weight",
    "val_fraction",
    "seed",
)

STAGES: tuple[Stage[VS2Run], ...] = (
    Stage(
        name="cache", fields=CACHE_FIELDS, needs=(), run=cache, help="caching CLIP CLS activations of train and test"
    ),
    Stage(
        name="retrieval",
        fields=("retriever",),
        needs=("cache",),
        run=retrieval,
        help="retrieval embeddings of train and test",
    ),
    Stage(name="sae", fields=SAE_FIELDS, needs=("cache",), run=sae, help="training SAEs"),
    Stage(name="zeroshot", fields=(), needs=("cache",), run=zeroshot, help="zero-shot logits and pseudo-labels"),
    Stage(
        name="tune",
        fields=("neighbours", "positive_rule", "lams", "gammas", "clip_lams", "alphas"),
        needs=("sae", "zeroshot", "retrieval"),
        run=tune,
        help="tuning on the validation part of train",
    ),
    Stage(
        name="evaluate",
        fields=("gamma_rec", "gate_quantiles"),
        needs=("tune",),
        run=evaluate,
        help="rows on the test split",
    ),
    Stage(
        name="inforward",
        fields=("multi_layer",),
        needs=("tune",),
        run=inforward,
        help="rows that need model forwards (SAE_REC^A, multi-layer VS2)",
    ),
    Stage(
        name="report",
        fields=(),
        needs=("evaluate", "inforward"),
        run=report,
        help="writing results.json, results.md, per-class table and plots",
    ),
)
"""The stages in run order: what each reads from the settings and from earlier stages."""


# ---------------------------------------------------------------------- entry
def reproduce(cfg: VS2Config, out: str | Path, stage: str | None = None) -> Path:
    """Run the experiment into `out` (every stage that is not current, or `stage` alone); returns
    the path of results.md."""
    run = VS2Run(cfg, out)
    run.check_inputs()
    run.out.mkdir(parents=True, exist_ok=True)
    io.write_json(run.path("config.json"), dataclasses.asdict(cfg))
    Pipeline(run.out, cfg, STAGES).run(run, stage, log=lambda m: log.info("%s", m))
    return run.path("results.md")
