"""The report stage of `reproduce disentangle` / `reproduce typographic`: results.json, results.md
and plots, from the saved predictions (no model run).

Per setting (method x block x n) and split: disentangle: average accuracy, worst-group accuracy and
per-group accuracy (`models.groups.compare_groups`); typographic: clean accuracy, attacked accuracy
and attack success rate (`compare_typographic`); each as the edited value with the unedited value
and the difference. The best setting of each method (block and n) is chosen on the selection split
(disentangle: worst-group accuracy; typographic: mean of clean and attacked accuracy) and reported
on the test split. Published numbers of the baselines the spec names are listed as references.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ....utils.report import md_table, write_result
from .config import METHODS, TASKS

if TYPE_CHECKING:
    from .run import SuppressionRun

REFERENCES = {
    "disentangle": [
        (
            "RoboShot",
            "+15.98 worst-group accuracy points, averaged over 9 tasks",
            "their models and tasks (spec: clip-sae-steering.md)",
        ),
        ("LTC (arXiv 2505.17425)", "> 50% worst-group gain over post-hoc baselines", "their models and tasks (spec)"),
        ("Joseph et al. (the CLIP-SAE paper)", "no accuracy numbers published; best layers are middle layers", "spec"),
    ],
    "typographic": [
        (
            "Dyslexify (ICLR 2026)",
            "up to +22.06 points attacked accuracy on ImageNet-100-Typo, < 1 point clean loss",
            "their models (spec)",
        ),
        (
            "SamplingTAR",
            "71.7 mean object accuracy over RTA-100 / Disentangling / PAINT / IN-100-Text",
            "their models (spec)",
        ),
        ("Dyslexify", "67.0 mean object accuracy, same four sets", "their models (spec)"),
        ("Defense-Prefix", "63.6 mean object accuracy, same four sets", "their models (spec)"),
    ],
}
"""(source, number, setting): printed beside our tables as references, not comparisons."""

METHOD_LABEL = {
    "none": "no edit",
    "sae": "SAE latents (top-n by association)",
    "random": "random SAE latents (control)",
    "neurons": "residual neurons (top-n by association)",
    "heads": "attention heads' CLS contribution (top-n)",
}


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def metrics(run: SuppressionRun, role: str) -> dict[str, dict[str, Any]]:
    """setting name -> {metric: {baseline, edited, delta}} on `role`'s images."""
    from ....models.groups import compare_groups, compare_typographic

    s = run.image_set(role)
    out: dict[str, dict[str, Any]] = {}
    if run.kind == "disentangle":
        preds = run.load(f"sweep/{role}-images.json")
        base = np.asarray(preds["none"])
        for name, p in preds.items():
            ch = compare_groups(base, np.asarray(p), s.labels, s.groups)
            out[name] = {
                "accuracy": ch.average._asdict(),
                "worst_group": ch.worst_group._asdict(),
                "per_group": {str(g): c._asdict() for g, c in ch.per_group.items()},
            }
        return out
    att = run.load(f"sweep/{role}-attacked.json")
    clean_path = run.path("sweep", f"{role}-clean.json")
    clean = run.load(f"sweep/{role}-clean.json") if clean_path.is_file() else None
    for name, p in att.items():
        tc = compare_typographic(
            None if clean is None else np.asarray(clean["none"]), np.asarray(att["none"]),
            None if clean is None else np.asarray(clean[name]), np.asarray(p), s.labels, s.attribute,
        )  # fmt: skip
        out[name] = {
            k: {"baseline": _num(getattr(tc.baseline, k)), "edited": _num(getattr(tc.edited, k)),
                "delta": _num(getattr(tc.edited, k) - getattr(tc.baseline, k))}
            for k in ("clean_accuracy", "attacked_accuracy", "attack_success_rate")
        }  # fmt: skip
    return out


def criterion(run: SuppressionRun, m: dict[str, Any]) -> float:
    """What the best setting maximises on the selection split."""
    if run.kind == "disentangle":
        return m["worst_group"]["edited"]
    vals = [m[k]["edited"] for k in ("clean_accuracy", "attacked_accuracy") if m[k]["edited"] is not None]
    return float(np.mean(vals)) if vals else -math.inf


def _parse(name: str) -> tuple[str, int, int] | None:
    if name == "none":
        return None
    method, b, n = name.split("/")
    return method, int(b[1:]), int(n[1:])


def collect(run: SuppressionRun) -> dict[str, Any]:
    c = run.cfg
    sel, test = metrics(run, "select"), metrics(run, "test")
    ranking = run.load("select/ranking.json")
    rows: list[dict[str, Any]] = []
    for name, m in test.items():
        parsed = _parse(name)
        method, block, n = parsed if parsed else ("none", None, 0)
        rows.append(
            {
                "setting": name,
                "method": method,
                "block": block,
                "n": n,
                "test": m,
                "select_criterion": criterion(run, sel[name]),
            }
        )
    best = {}
    for method in METHODS:
        cands = [r for r in rows if r["method"] == method]
        if cands:
            top = max(cands, key=lambda r: (r["select_criterion"], -r["block"], -r["n"]))
            best[method] = {
                "setting": top["setting"],
                "block": top["block"],
                "n": top["n"],
                "select_criterion": top["select_criterion"],
                "test": top["test"],
            }
    bb = run.backbone
    task = getattr(c, "task", None)
    return {
        "experiment": run.kind,
        "task": task,
        "model": {"id": bb.model_id, "revision": bb.revision},
        "held_out": {
            "selection": ranking["selection"],
            "test": run.image_set("test").describe(),
            "note": "units ranked and best settings chosen on the selection split; every table is the test split",
        },
        "spurious_attribute": TASKS[task]["attribute"] if task else "rendered text (typo_class)",
        "rule": ranking["rule"],
        "best_by": "worst-group accuracy" if run.kind == "disentangle" else "mean of clean and attacked accuracy",
        "best": best,
        "rows": rows,
        "references": [{"source": s, "number": v, "setting": w} for s, v, w in REFERENCES[run.kind]],
    }


def _cells(run: SuppressionRun, m: dict[str, Any]) -> list[str]:
    keys = (
        ("accuracy", "worst_group")
        if run.kind == "disentangle"
        else ("clean_accuracy", "attacked_accuracy", "attack_success_rate")
    )
    out = []
    for k in keys:
        out += [_pct(m[k]["edited"]), _pct(m[k]["baseline"]), _pct(m[k]["delta"], signed=True)]
    return out


def _columns(run: SuppressionRun) -> list[str]:
    names = ("acc", "worst-group") if run.kind == "disentangle" else ("clean acc", "attacked acc", "attack success")
    return [x for k in names for x in (k, f"{k} unedited", f"Δ {k}")]


def markdown(run: SuppressionRun, res: dict[str, Any]) -> str:
    h = res["held_out"]
    title = f"{res['task']} ({res['spurious_attribute']} spurious)" if res["task"] else "typographic attacks"
    lines = [
        f"# Feature suppression: {title}",
        "",
        f"Model {res['model']['id']}. Units ranked by {res['rule']['score']} ({res['rule']['sign']}, per-image "
        f"{res['rule']['reduce']}) on the **selection split** {h['selection']['dataset']} [{h['selection']['split']}] "
        f"({h['selection']['n']} images); every table below is the **test split** {h['test']['dataset']} "
        f"[{h['test']['split']}] ({h['test']['n']} images). Accuracies in %.",
        "",
        f"## Best setting per method (chosen on the selection split by {res['best_by']})",
        "",
    ]
    rows = [[METHOD_LABEL[m], b["block"], b["n"], *_cells(run, b["test"])] for m, b in res["best"].items()]
    none = next(r for r in res["rows"] if r["method"] == "none")
    rows.insert(0, [METHOD_LABEL["none"], "—", 0, *_cells(run, none["test"])])
    lines += [md_table(["method", "block", "n", *_columns(run)], rows), ""]
    lines += ["## Every setting (test split)", ""]
    table = [
        [r["method"], "—" if r["block"] is None else r["block"], r["n"], *_cells(run, r["test"])] for r in res["rows"]
    ]
    lines += [md_table(["method", "block", "n", *_columns(run)], table), ""]
    lines += ["## Published reference numbers (their models and settings: a reference, not a comparison)", ""]
    lines += [
        md_table(
            ["source", "number", "setting"], [[r["source"], r["number"], r["setting"]] for r in res["references"]]
        ),
        "",
    ]
    return "\n".join(lines)


def plot(run: SuppressionRun, res: dict[str, Any]) -> None:
    from ....utils.plots import figure

    keys = ("accuracy", "worst_group") if run.kind == "disentangle" else ("clean_accuracy", "attacked_accuracy")
    none = next(r for r in res["rows"] if r["method"] == "none")
    with figure(
        run.path("plots", "by_layer.png"), figsize=(5 * len(keys), 3.6), dpi=100, ncols=len(keys), squeeze=False
    ) as (_, axes):
        for ax, key in zip(axes[0], keys):
            for method in METHODS:
                by_block: dict[int, dict[str, Any]] = {}
                for r in res["rows"]:  # per block: the n the selection split prefers
                    if r["method"] == method and (
                        r["block"] not in by_block or r["select_criterion"] > by_block[r["block"]]["select_criterion"]
                    ):
                        by_block[r["block"]] = r
                xs = sorted(by_block)
                ys = [100 * (by_block[b]["test"][key]["edited"] or math.nan) for b in xs]
                ax.plot(xs, ys, marker="o", label=method)
            base = none["test"][key]["edited"]
            if base is not None:
                ax.axhline(100 * base, color="gray", linestyle="--", label="no edit")
            ax.set_xlabel("block")
            ax.set_ylabel(f"{key.replace('_', ' ')} (%)")
            ax.set_title(f"{key.replace('_', ' ')} by layer (test; n chosen on selection)")
        axes[0][0].legend(fontsize=7)


def write(run: SuppressionRun) -> None:
    res = collect(run)
    write_result(run.out, "results", res, markdown(run, res))
    plot(run, res)
