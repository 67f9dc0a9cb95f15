"""`reproduce disentangle` and `reproduce typographic`: suppress the SAE latents most associated
with a spurious attribute (or with rendered text), one layer at a time, and re-evaluate the task.

    cache  -> every swept block's hook on sae_split (skipped with --sae-dir)
    sae    -> one SAE per swept block (`clipsteer.saes`), or the --sae-dir ones, checked
    select -> on the selection split: latents, neurons and heads ranked by the association score
              (disentangle: attribute 1 vs 0; typographic: attacked vs clean images)
    sweep  -> zero-shot predictions on the selection and test splits: unedited, and per block x n
              the top-n latents zeroed (error kept), n random latents, the top-n neurons, the top-n
              heads' CLS contribution; the clean forward below each block is shared
    report -> results.json / results.md (tables per layer x n, best layer chosen on the selection
              split, reference numbers labelled), plots/

Each stage records its settings (`experiments.stages.Pipeline`): rerunning skips current stages,
`--stage NAME` runs one alone. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ....utils import io
from ....utils.config import to_dict
from ...stages import Pipeline, Stage
from ..saes import SAE_FIELDS, train_sae
from .config import TASKS, SuppressionOptions
from .run import SuppressionRun

log = logging.getLogger(__name__)


def _batches(run: SuppressionRun, ds: Any, offset: int = 0):  # noqa: ANN202
    from ....data.batches import image_batches

    c = run.cfg
    for b in image_batches(
        ds, run.backbone.preprocessor, batch_size=c.batch_size, workers=c.workers, on_bad_image=c.on_bad_image,
        pin_memory=False,
    ):  # fmt: skip
        if len(b.indices):
            yield b.pixels, np.asarray(b.indices, dtype=np.int64) + offset


def cache(run: SuppressionRun) -> None:
    """The swept blocks' hooks on sae_split (for training the SAEs)."""
    from ....activations.produce import CacheConfig

    if not run.trains:
        return
    c = run.cfg
    cfg = CacheConfig(
        model=c.model, revision=c.revision, dataset=run.dataset_spec, split=c.sae_split,
        hooks=tuple(run.hook(b) for b in run.blocks), tokens=c.tokens, out=str(run.path("cache", c.sae_split)),
        batch_size=c.batch_size, limit=c.limit_sae, limit_seed=c.seed, workers=c.workers, device=c.device,
        data_root=c.data_root, on_bad_image=c.on_bad_image,
    )  # fmt: skip
    run.write_cache(cfg)


def sae(run: SuppressionRun) -> None:
    """One SAE per swept block, trained on sae_split (or the --sae-dir ones, checked)."""
    c = run.cfg
    if run.trains:
        for key in run.keys():
            train_sae(run.rows(key), c, run.sae_path(key), seed=c.seed, device=c.device)
    else:
        run.check_sae_dir()
    run.save(
        "saes.json",
        {k.name: {"block": k.block, "hook": run.hook(k.block), "path": str(run.sae_path(k))} for k in run.keys()},
    )


def _finite(xs: list[float]) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in xs]


def select(run: SuppressionRun) -> None:
    """Rank latents, neurons and heads per block on the selection split."""
    from .sweep import rank_units

    c = run.cfg
    saes = {k.block: run.load_sae(k) for k in run.keys()}
    for k in run.keys():
        run.check_ns(saes[k.block].n_latents, k)
    sel = run.image_set("select")
    if run.kind == "disentangle":
        groups = sel.attribute
        batches: Any = _batches(run, sel.images)
        attribute = str(TASKS[c.task]["attribute"])  # type: ignore[attr-defined]
    else:
        n = len(sel.images)
        groups = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        batches = (x for part in (_batches(run, sel.clean), _batches(run, sel.images, n)) for x in part)
        attribute = "attacked (1) vs clean (0)"
    ranking = rank_units(
        run.backbone, {b: run.hook(b) for b in saes}, saes, batches, groups, tokens=c.tokens, score=c.score,
        sign=c.sign, reduce=c.reduce, n_max=max(run.ns), seed=c.seed, attribute=attribute,
    )  # fmt: skip
    run.save(
        "select/ranking.json",
        {
            "selection": {**sel.describe(), "attribute": attribute, "images_per_side": ranking.counts},
            "rule": {"score": c.score, "sign": c.sign, "reduce": c.reduce, "tokens": c.tokens},
            "units": {str(b): u for b, u in ranking.units.items()},
            "scores": {str(b): {m: _finite(v) for m, v in s.items()} for b, s in ranking.scores.items()},
        },
    )


def sweep(run: SuppressionRun) -> None:
    """Predictions, unedited and per setting, on the selection and test splits."""
    from .sweep import build_settings, predictions

    c, bb = run.cfg, run.backbone
    saes = {k.block: run.load_sae(k) for k in run.keys()}
    units = {int(b): u for b, u in run.load("select/ranking.json")["units"].items()}
    settings = build_settings(bb, {b: run.hook(b) for b in saes}, saes, units, run.ns, c.tokens)
    clf = run.classifier()
    _, owners = run.prompts()
    out: dict[str, Any] = {}
    for role in ("select", "test"):
        s = run.image_set(role)
        variants = {"images": s.images} if run.kind == "disentangle" else {"attacked": s.images, "clean": s.clean}
        for variant, ds in variants.items():
            if ds is None:
                continue
            base, edited = predictions(bb, clf, (p for p, _ in _batches(run, ds)), settings)
            arrays = {"none": owners[base], **{k: owners[v] for k, v in edited.items()}}
            arrays = {k: v.tolist() for k, v in arrays.items()}
            run.save(f"sweep/{role}-{variant}.json", arrays)
            out[f"{role}-{variant}"] = len(base)
    run.save("sweep/settings.json", {"settings": [s.name for s in settings], "images": out})


def report(run: SuppressionRun) -> None:
    from . import report as write_report

    write_report.write(run)


COMMON = ("model", "revision", "data_root", "seed", "blocks", "tokens", "hook_kind", "sae_dir")
SELECT_FIELDS = ("n_select", "score", "reduce", "sign", "ns", "task", "select_split", "select_dataset", "dataset")
SWEEP_FIELDS = ("n_test", "test_split", "prompts", "templates", "batch_size")


def stages(cfg: SuppressionOptions) -> tuple[Stage[SuppressionRun], ...]:
    """The stage table; fields the config lacks (task-specific) are left out."""
    have = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else None

    def f(*names: str) -> tuple[str, ...]:
        return tuple(n for n in names if have is None or n in have)

    return (
        Stage(
            "cache",
            f(*COMMON, "sae_split", "limit_sae", "task", "dataset"),
            (),
            cache,
            "caching the swept blocks of sae_split",
        ),
        Stage("sae", f(*SAE_FIELDS), ("cache",), sae, "one SAE per swept block"),
        Stage(
            "select", f(*SELECT_FIELDS), ("sae",), select, "ranking latents, neurons and heads on the selection split"
        ),
        Stage("sweep", f(*SWEEP_FIELDS), ("select",), sweep, "zero-shot predictions per method x block x n"),
        Stage("report", (), ("sweep",), report, "results.json, results.md, plots"),
    )


STAGES = stages(None)  # type: ignore[arg-type]
"""The stage names and order (for --help); a run filters the fields by its config."""


def reproduce(cfg: SuppressionOptions, out: str | Path, stage: str | None = None) -> Path:
    """Check the inputs, then run the experiment into `out`; returns the path of results.md."""
    run = SuppressionRun(cfg, out)
    run.check_inputs()
    run.out.mkdir(parents=True, exist_ok=True)
    io.write_json(run.path("config.json"), to_dict(cfg))
    Pipeline(run.out, cfg, stages(cfg)).run(run, stage, log=lambda m: log.info("%s", m))
    return run.path("results.md")
