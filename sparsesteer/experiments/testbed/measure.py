"""The testbed's own targets, measured on a test split through `sparsesteer zeroshot`'s path.

    clean       zero-shot top-1 (CLIP's 80-template ensemble) on the plain test images
    misleading  the same with a misleading class word on every image (planted: words=misleading)
    groups      the frame drawn on half the images, independent of the class (cue_in = cue_out =
                0.5): accuracy per group (2 * cue class + frame), worst group and average

Targets (issue "testbed"): clean >= 50%; the misleading word costs >= 25 points; the worst group is
>= 15 points below the average. Each is reported with its margin, pass or fail, never tuned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...utils import io
from ...utils.report import md_table

TARGETS = {"clean_top1": 0.50, "word_drop": 0.25, "group_gap": 0.15}
ATTACK_SEED = 1
"""Seed of the test split's planting (the training split's is the build's own seed)."""


def _predictions(out: Path) -> tuple[list[int], list[int]]:
    """(image index in the split, top-1 class) of every line of `zeroshot`'s predictions.jsonl."""
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line]
    return [r["index"] for r in rows], [r["top5"][0] for r in rows]


@dataclass(frozen=True, kw_only=True)
class MeasureConfig:
    """Settings of `sparsesteer testbed measure`."""

    model: str
    """The testbed model (OUT/model of `testbed build`, or any CLIP trained on CIFAR-10's classes)."""
    dataset: str
    """CIFAR-10's test images: cifar10, or folder:PATH."""
    out: str
    """Where the three zero-shot runs and testbed_metrics.json/.md go."""
    split: str = "test"
    """Split to measure on."""
    data_root: str | None = None
    """Where built-in datasets live; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    limit: int | None = None
    """A class-stratified sample of N images (quick runs); None = all."""
    batch_size: int = 256
    """Images per forward pass."""
    overwrite: bool = False
    """Replace what OUT holds."""


def measure(cfg: MeasureConfig) -> dict[str, Any]:
    """Measure the three targets of the testbed model on the dataset's split; write
    `testbed_metrics.json` and `.md` to `cfg.out` and return the figures."""
    from ...data.registry import open_dataset
    from ...models.groups import group_accuracy
    from ...models.zeroshot_run import ZeroShotConfig, zeroshot
    from ...utils import outputs

    out, dataset, split, model = Path(cfg.out), cfg.dataset, cfg.split, cfg.model
    outputs.claim(out, overwrite=cfg.overwrite)
    specs = {
        "clean": dataset,
        "misleading": f"planted:seed={ATTACK_SEED},word=1,words=misleading:{dataset}",
        "groups": f"planted:seed={ATTACK_SEED},cue_in=0.5,cue_out=0.5:{dataset}",
    }
    top1: dict[str, float] = {}
    for name, spec in specs.items():
        run_cfg = ZeroShotConfig(
            model=str(model),
            dataset=spec,
            split=split,
            data_root=cfg.data_root,
            templates="ensemble",
            out=str(out / name),
            text_cache=None,
            limit=cfg.limit,
            batch_size=cfg.batch_size,
            workers=0,
        )
        top1[name] = zeroshot(run_cfg, overwrite=True).result.top1  # OUT/NAME: ours, claimed above
    grouped = open_dataset(specs["groups"], split, data_root=cfg.data_root)
    index, preds = _predictions(out / "groups")
    ga = group_accuracy(preds, grouped.labels()[index], grouped.attribute_array("group")[index])
    figures: dict[str, Any] = {
        "clean_top1": top1["clean"],
        "misleading_top1": top1["misleading"],
        "word_drop": top1["clean"] - top1["misleading"],
        "group_average": ga.average,
        "worst_group": ga.worst_group,
        "worst_group_id": ga.worst_group_id,
        "group_gap": ga.average - ga.worst_group,
        "per_group": {str(g): {"n": n, "accuracy": a} for g, n, a in zip(ga.groups, ga.n, ga.accuracy)},
    }
    rows: list[dict[str, Any]] = [
        {"target": name, "measured": float(figures[name]), "needed": need, "pass": float(figures[name]) >= need}
        for name, need in TARGETS.items()
    ]
    table = md_table(
        ["target", "measured", "needed", "margin", ""],
        [
            [r["target"], f"{r['measured']:.4f}", f">= {r['needed']:.2f}", f"{r['measured'] - r['needed']:+.4f}",
             "pass" if r["pass"] else "**FAIL**"]
            for r in rows
        ],
    )  # fmt: skip
    result = {"model": str(model), "dataset": dataset, "split": split, "specs": specs, **figures, "targets": rows}
    io.write_json(out / "testbed_metrics.json", result)
    io.write_text(
        out / "testbed_metrics.md",
        f"# Testbed targets\n\nModel `{model}`, dataset `{dataset}`, **{split}** split, CLIP's 80-template "
        f"ensemble.\n\n{table}\n",
    )
    return result
