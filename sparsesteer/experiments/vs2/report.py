"""The `report` stage of `reproduce vs2`: results.json, results.md (ours beside the paper's), the
per-class table and the plots. Every table states the model, data, split and settings."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from ...models.hook_names import hook_name
from ...utils import io
from ...utils.report import md_table
from . import paper

if TYPE_CHECKING:
    from .run import VS2Run


def _fmt(v: float | None, digits: int = 2, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _settings_text(s: dict[str, Any]) -> str:
    parts = []
    for k, v in s.items():
        if k == "tuned_on":
            continue
        if isinstance(v, dict):  # e.g. fallback counts: {'fallback': 'group', 'empty_positive': 3, ...}
            v = " ".join(f"{kk}:{vv}" for kk, vv in v.items())
        parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts) or "—"


def collect(run: VS2Run) -> dict[str, Any]:
    c = run.cfg
    ev = io.read_json(run.path("evaluation.json"))
    rows = dict(ev["rows"])
    inforward = io.read_json(run.path("inforward.json")) if run.path("inforward.json").exists() else {}
    y_test = run.load_array("test_labels")
    for key, settings in inforward.items():
        pred = run.load_array(f"logits_{key}").argmax(-1)
        run.save_array(f"pred_{key}", pred)
        rows[key] = {"top1": 100 * float((pred == y_test).mean()), "settings": settings}
    published = paper.numbers(c.dataset, c.model)
    zs, zs_paper = rows["zeroshot"]["top1"], published.get("zeroshot")
    table = []
    for key, label in paper.ROWS:
        if key not in rows:
            continue
        ours = rows[key]["top1"]
        theirs = published.get(key)
        table.append(
            {
                "key": key,
                "method": label,
                "top1": ours,
                "paper_top1": theirs,
                "diff_vs_paper": None if theirs is None else ours - theirs,
                "delta_vs_zeroshot": ours - zs,
                "paper_delta_vs_zeroshot": None if theirs is None or zs_paper is None else theirs - zs_paper,
                "settings": rows[key]["settings"],
            }
        )
    tuning = io.read_json(run.path("tuning.json"))
    bb = run.backbone
    expansion, k = run.sae_shape()
    return {
        "experiment": "vs2",
        "model": {"id": bb.model_id, "revision": bb.revision, "paper_backbone": paper.backbone_key(c.model)},
        "dataset": c.dataset,
        "train_split": c.train_split,
        "test_split": c.test_split,
        "n_test": ev["n_test"],
        "validation": tuning["validation"],
        "sae": {
            "block": run.final_block,
            "expansion": expansion,
            "k": k,
            "fvu": ev["sae_fvu"],
            "paper_fvu_train": paper.fvu(c.dataset, c.model),
        },
        "rows": table,
        "fvu_gate": ev["fvu_gate"],
        "tuning": tuning,
        "settings": dataclasses.asdict(c),
    }


def per_class(run: VS2Run, method: str, top: int = 10) -> dict[str, Any] | None:
    """Per-class accuracy of `method` vs zero-shot on test: largest gains and losses, each with the
    class's most common zero-shot confusion."""
    path = run.path("arrays", f"pred_{method}.npy")
    if not path.exists():
        return None
    classes = run.dataset(run.cfg.test_split).classes
    y = run.load_array("test_labels")
    z = run.load_array("pred_zeroshot")
    m = run.load_array(f"pred_{method}")
    C = len(classes)
    counts = np.bincount(y, minlength=C)
    acc_z = np.bincount(y, weights=(z == y), minlength=C) / np.maximum(counts, 1)
    acc_m = np.bincount(y, weights=(m == y), minlength=C) / np.maximum(counts, 1)
    confusion = np.zeros((C, C), dtype=np.int64)
    np.add.at(confusion, (y, z), 1)
    np.fill_diagonal(confusion, 0)
    entries = []
    for c in range(C):
        if counts[c] == 0:
            continue
        conf = int(confusion[c].argmax()) if confusion[c].any() else None
        entries.append(
            {
                "class": classes[c],
                "n": int(counts[c]),
                "zeroshot": 100 * acc_z[c],
                "method": 100 * acc_m[c],
                "delta": 100 * (acc_m[c] - acc_z[c]),
                "zeroshot_confused_with": classes[conf] if conf is not None else None,
                "confusions": int(confusion[c].max()),
            }
        )
    entries.sort(key=lambda e: e["delta"])
    gains = [e for e in entries[::-1] if e["delta"] > 0][:top]
    losses = [e for e in entries if e["delta"] < 0][:top]
    return {
        "method": method,
        "gains": gains,
        "losses": losses,
        "all": entries,
        "improved": sum(e["delta"] > 0 for e in entries),
        "worse": sum(e["delta"] < 0 for e in entries),
        "unchanged": sum(e["delta"] == 0 for e in entries),
    }


def markdown(res: dict[str, Any], classes: list[dict[str, Any]]) -> str:
    s = res["settings"]
    v = res["validation"]
    lines = [
        f"# VS2 reproduction: {res['model']['id']} on {res['dataset']}",
        "",
        f"- Model: `{res['model']['id']}` (revision {res['model']['revision']}); paper backbone: {res['model']['paper_backbone'] or 'not in the paper'}",
        f"- Data: `{res['dataset']}`; rows evaluated on the **{res['test_split']}** split ({res['n_test']} images); "
        f"SAEs and tuning use `{res['train_split']}`: tuned on its {v['split']} ({v['n']} images), SAEs trained on the other {v['n_fit']}",
        f"- SAE: TopK on {hook_name(res['sae']['block'])} CLS, expansion {res['sae']['expansion']}, k={res['sae']['k']}, "
        f"lr {s['sae_lr']}, batch {s['sae_batch_size']}, {s['sae_epochs']:g} epochs; FVU test {res['sae']['fvu']['test']:.4f}, "
        f"train {res['sae']['fvu']['train_fit']:.4f} (paper, train: {_fmt(res['sae']['paper_fvu_train'], 4)})",
        f'- Zero-shot prompt: "a photo of a {{}}." (ensemble row: CLIP\'s 80 ImageNet templates); VS2++: retriever '
        f"`{s['retriever']}`, {s['neighbours']} neighbours, positive rule `{s['positive_rule']}`; seed {s['seed']}",
        "",
        md_table(
            [
                "Method",
                "top-1 % (ours)",
                "paper",
                "ours − paper",
                "Δ vs zero-shot (ours)",
                "Δ vs zero-shot (paper)",
                "settings (tuned on validation)",
            ],
            [
                (
                    r["method"],
                    _fmt(r["top1"]),
                    _fmt(r["paper_top1"]),
                    _fmt(r["diff_vs_paper"], sign=True),
                    _fmt(r["delta_vs_zeroshot"], sign=True),
                    _fmt(r["paper_delta_vs_zeroshot"], sign=True),
                    _settings_text(r["settings"]),
                )
                for r in res["rows"]
            ],
            "lrrrrrl",
        ),  # fmt: skip
        "",
        "## FVU gate (VS2 applied only where per-sample FVU <= tau; tau from unlabeled train)",
        "",
        md_table(
            ["quantile q", "tau", "top-1 %", "coverage (fraction steered)"],
            [
                (f"{g['quantile']:g}", f"{g['tau']:.4f}", _fmt(g["top1"]), f"{100 * g['coverage']:.1f}%")
                for g in res["fvu_gate"]
            ],
            "rrrr",
        ),  # fmt: skip
    ]
    for pc in classes:
        lines += [
            "",
            f"## Per class: {pc['method']} vs zero-shot on {res['test_split']} "
            f"({pc['improved']} classes improve, {pc['worse']} get worse, {pc['unchanged']} unchanged)",
        ]
        for title, group in (("largest gains", pc["gains"]), ("largest losses", pc["losses"])):
            if not group:
                continue
            lines += [
                "",
                f"{title}:",
                "",
                md_table(
                    ["class", "n", "zero-shot %", "method %", "Δ", "zero-shot most often confused with (count)"],
                    [
                        (
                            e["class"],
                            e["n"],
                            f"{e['zeroshot']:.1f}",
                            f"{e['method']:.1f}",
                            f"{e['delta']:+.1f}",
                            f"{e['zeroshot_confused_with'] or '—'} ({e['confusions']})",
                        )
                        for e in group
                    ],
                    "lrrrrl",
                ),  # fmt: skip
            ]
    lines += ["", "Plots: `plots/` (tuning heatmaps, per-class deltas, FVU gate). Numbers: `results.json`."]
    return "\n".join(lines) + "\n"


def plots(run: VS2Run, res: dict[str, Any], classes: list[dict[str, Any]]) -> None:
    from ...utils.plots import deltas_bar, figure

    for pc in classes:
        deltas_bar(
            run.path("plots", f"per_class_{pc['method']}.png"),
            [e["delta"] for e in pc["all"]],
            xlabel="classes, sorted by change",
            ylabel="top-1 change vs zero-shot (points)",
            title=f"{pc['method']} per class: {res['model']['id']} on {res['dataset']} {res['test_split']}",
        )
    gate = res["fvu_gate"]
    if gate:
        with figure(run.path("plots", "fvu_gate.png"), figsize=(5, 3.5)) as (_, ax):
            ax.plot([100 * g["coverage"] for g in gate], [g["top1"] for g in gate], "o-")
            for g in gate:
                ax.annotate(f"q={g['quantile']:g}", (100 * g["coverage"], g["top1"]), fontsize=7)
            ax.set_xlabel("coverage (% of test samples steered)")
            ax.set_ylabel("top-1 %")
            ax.set_title("VS2 with the FVU gate", fontsize=9)


def write(run: VS2Run) -> None:
    res = collect(run)
    classes = [pc for pc in (per_class(run, m) for m in ("vs2", "vs2pp_pseudo")) if pc is not None]
    res["per_class"] = [{k: v for k, v in pc.items() if k != "all"} for pc in classes]
    run.path("plots").mkdir(parents=True, exist_ok=True)
    plots(run, res, classes)
    io.write_json(run.path("results.json"), res)
    io.write_text(run.path("results.md"), markdown(res, classes))
    io.write_json(run.path("per_class.json"), {pc["method"]: pc["all"] for pc in classes})
