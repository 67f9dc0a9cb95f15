"""The `report` stage of `reproduce steerability`: results.json, results.md and the plots. The table
puts SAE features, neurons and the random control side by side: steerable fraction at the deciding
strength, S quantiles, power, concept-space coverage; then the steering curves."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ....utils import io
from ....utils.report import md_table

if TYPE_CHECKING:
    from .run import SteerabilityRun

PAPER = (
    "The paper (their model laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K, ReLU x64 SAEs, the first 5,000 words of "
    "CLIP-Dissect's vocabulary, 192 ImageNet-val images, s = 150, threshold 0.10): 10-15% of neurons and of SAE "
    "features are steerable, and the SAEs give thousands more steerable features than there are neurons. "
    "Reference only: their settings, not ours."
)


def _unit_words(unit: str) -> str:
    if unit == "absolute":
        return "absolute values of the latent (neuron) itself"
    return f"multiples of each unit's {unit} on the steered tokens of these images"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summarize_row(row: dict[str, Any], concepts: list[str], at_strength: float, threshold: float) -> dict[str, Any]:
    import torch

    from ....steering.steerability import SteerabilityCurves, is_steerable, summarize

    curves = SteerabilityCurves(
        units=torch.tensor(row["units"], dtype=torch.int64),
        strengths=tuple(float(s) for s in row["strengths"]),
        score=torch.tensor(row["score"], dtype=torch.float64).reshape(len(row["units"]), -1),
        power=torch.tensor(row["power"], dtype=torch.float64).reshape(len(row["units"]), -1),
        top=torch.tensor(row["top"], dtype=torch.int64).reshape(len(row["units"]), len(row["strengths"]), -1),
        n_images=row["n_images"],
    )
    s = summarize(curves, at_strength=at_strength, threshold=threshold)
    steer = is_steerable(curves.score, threshold)
    scale_max, scale_p99 = (
        torch.tensor(row.get(k) or [float("nan")], dtype=torch.float64) for k in ("scale_max", "scale_p99")
    )
    return {
        "label": row["label"],
        "kind": row["kind"],
        "model": row["model"],
        "hook": row["hook"],
        "sae": row["sae"],
        "n_units": s.n_units,
        "n_units_total": row["n_units_total"],
        "n_steerable": s.n_steerable,
        "steerable_fraction": s.steerable_fraction,
        "estimated_steerable_units": s.steerable_fraction * row["n_units_total"],
        "coverage": s.coverage,
        "top1_concepts": [concepts[k] for k in s.top1_concepts[:10]],
        "score_quantiles": s.score_quantiles,
        "power_median": s.power_median,
        "power_max": s.power_max,
        "curves": {
            "strengths": list(curves.strengths),
            "median_S": torch.quantile(curves.score, 0.5, dim=0).tolist(),
            "q90_S": torch.quantile(curves.score, 0.9, dim=0).tolist(),
            "steerable_fraction": steer.double().mean(dim=0).tolist(),
        },
        "S_at_strength": curves.score[:, curves.column(at_strength)].tolist(),
        "tokens": row.get("tokens"),
        "scale": {
            "max_median": float(scale_max.nanquantile(0.5)),
            "p99_median": float(scale_p99.nanquantile(0.5)),
            "never_active": int((scale_max == 0).sum()),
        },
        "provenance_overridden": row.get("provenance_overridden") or [],
    }


def collect(run: SteerabilityRun) -> dict[str, Any]:
    c = run.cfg
    vocab = io.read_json(run.path("vocab.json"))
    rows = [*run.load_rows("features"), *run.load_rows("neurons"), *run.load_rows("control")]
    summaries = [summarize_row(r, vocab["concepts"], c.at_strength, c.threshold) for r in rows]
    ds = run.dataset
    bb = run.backbone
    return {
        "experiment": "steerability",
        "model": {"id": bb.model_id, "revision": bb.revision, "control_seed": c.control_seed if c.control else None},
        "dataset": ds.name,
        "split": ds.split,
        "n_images": rows[0]["n_images"] if rows else 0,
        "subset": ds.describe().get("subset"),
        "vocab": {k: v for k, v in vocab.items() if k != "concepts"},
        "settings": {
            "mode": c.mode,
            "tokens": c.tokens,
            "strength_unit": c.strength_unit,
            "keep_error": c.keep_error,
            "unit_direction": c.unit_direction,
            "temperature": c.temperature,
            "strengths": list(c.all_strengths),
            "at_strength": c.at_strength,
            "threshold": c.threshold,
            "latent_fraction": c.latent_fraction,
            "neuron_fraction": c.neuron_fraction,
            "seed": c.seed,
        },
        "rows": summaries,
        "paper": PAPER,
    }


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    v = res["vocab"]
    notes = [n for r in res["rows"] for n in r["provenance_overridden"]]
    unit = s.get("strength_unit", "absolute")
    tokens = s["tokens"] or "each SAE's own (" + ", ".join(sorted({str(r.get("tokens")) for r in res["rows"]})) + ")"
    lines = [
        f"# Steerability: {res['model']['id']}",
        "",
        f"Images: {res['n_images']} of {res['dataset']} [{res['split']}]; vocabulary: {v['n_concepts']} concepts of "
        f"{v['source']} (template {v['template']!r}); mode {s['mode']} on tokens {tokens}, error term "
        f"{'kept' if s['keep_error'] else 'dropped'}, {'unit' if s['unit_direction'] else 'raw'} decoder directions, "
        f"T = {s['temperature']:g}. Strengths s are {_unit_words(unit)}. "
        f"Steerable: S > {s['threshold']:g} at s = {s['at_strength']:g}. Latents: a seeded "
        f"sample of {s['latent_fraction']:g} of each SAE (seed {s['seed']}); neurons: "
        f"{'all' if s['neuron_fraction'] == 1 else format(s['neuron_fraction'], 'g') + ' of the'} residual dimensions; control: the same on a random re-initialisation (seed {res['model']['control_seed']}).",
        "",
    ]
    if notes:
        lines += ["**Provenance checks overridden (--allow-mismatch):**", *[f"- {n}" for n in notes], ""]
    lines += [
        md_table(
            [
                "row",
                "units measured",
                "steerable %",
                "est. steerable units",
                "S median",
                "S q90",
                "S q99",
                "S max",
                "power median",
                "power max",
                "coverage",
                "unit scale: median max / p99",
                "most frequent top-1 concepts",
            ],
            [
                (
                    r["label"],
                    f"{r['n_units']} of {r['n_units_total']}",
                    _fmt(100 * r["steerable_fraction"], 1),
                    f"{r['estimated_steerable_units']:.0f}",
                    _fmt(r["score_quantiles"]["q50"], 4),
                    _fmt(r["score_quantiles"]["q90"], 4),
                    _fmt(r["score_quantiles"]["q99"], 4),
                    _fmt(r["score_quantiles"]["max"], 4),
                    _fmt(r["power_median"], 4),
                    _fmt(r["power_max"], 4),
                    r["coverage"],
                    f"{_fmt(r['scale']['max_median'])} / {_fmt(r['scale']['p99_median'])}",
                    ", ".join(r["top1_concepts"][:5]) or "—",
                )
                for r in res["rows"]
            ],
            "lrrrrrrrrrrrl",
        ),  # fmt: skip
        "",
        "Coverage: distinct top-1 concepts (largest mean probability increase) among the steerable units. "
        "Est. steerable units: steerable fraction x all units of that kind. Unit scale: each unit's largest |value| "
        "and 99th percentile of its non-zero |values| on the steered tokens of these images (median over the units), "
        "the scale an absolute strength compares to.",
        "",
    ]
    never = [f"{r['label']}: {r['scale']['never_active']}" for r in res["rows"] if r["scale"]["never_active"]]
    if never and unit != "absolute":
        lines += [
            f"Units never active on these images have no {unit} (scale 0), so they were steered at s = 0 and count "
            f"as not steerable: {'; '.join(never)}.",
            "",
        ]
    lines += [
        "## Steering curves: median S (steerable %) per strength",
        "",
    ]
    strengths = s["strengths"]
    lines += [
        md_table(
            ["row", *[f"s = {x:g}" for x in strengths]],
            [
                (
                    r["label"],
                    *[
                        f"{m:.4f} ({100 * f:.0f}%)"
                        for m, f in zip(r["curves"]["median_S"], r["curves"]["steerable_fraction"])
                    ],
                )
                for r in res["rows"]
            ],
            "l" + "r" * len(strengths),
        ),  # fmt: skip
        "",
        f"Paper reference: {res['paper']}",
        "",
        "Plots: `plots/hist_S.png` (S at the deciding strength), `plots/curves.png` (steering curves). "
        "Numbers: `results.json`; per-unit curves: `measurements/*.json`.",
    ]
    return "\n".join(lines) + "\n"


def plots(run: SteerabilityRun, res: dict[str, Any]) -> None:
    from ....utils.plots import figure

    s = res["settings"]
    with figure(run.path("plots", "hist_S.png"), figsize=(6.5, 4)) as (_, ax):
        bins = [2 * i / 50 for i in range(51)]
        for r in res["rows"]:
            ax.hist(r["S_at_strength"], bins=bins, histtype="step", lw=1.4, label=r["label"])
        ax.axvline(s["threshold"], color="black", ls="--", lw=0.8, label=f"threshold {s['threshold']:g}")
        ax.set_yscale("log")
        ax.set_xlabel(f"steerability S at s = {s['at_strength']:g}")
        ax.set_ylabel("units")
        ax.set_title(f"Steerability: {res['model']['id']}", fontsize=9)
        ax.legend(fontsize=7)

    with figure(run.path("plots", "curves.png"), figsize=(6.5, 4)) as (_, ax):
        for r in res["rows"]:
            line = ax.plot(r["curves"]["strengths"], r["curves"]["median_S"], "o-", label=f"{r['label']} (median)")[0]
            ax.plot(r["curves"]["strengths"], r["curves"]["q90_S"], ":", color=line.get_color())
        ax.set_xscale("symlog", linthresh=5)
        ax.axhline(s["threshold"], color="black", ls="--", lw=0.8)
        ax.set_xlabel(
            "strength s" + ("" if s.get("strength_unit", "absolute") == "absolute" else f" (x {s['strength_unit']})")
        )
        ax.set_ylabel("S (median; dotted: 90th percentile)")
        ax.set_title("Steering curves", fontsize=9)
        ax.legend(fontsize=7)


def write(run: SteerabilityRun) -> None:
    res = collect(run)
    run.path("plots").mkdir(parents=True, exist_ok=True)
    plots(run, res)
    io.write_json(run.path("results.json"), res)
    io.write_text(run.path("results.md"), markdown(res))
