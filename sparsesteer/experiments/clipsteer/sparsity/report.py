"""The `report` stage of `reproduce sparsity`: results.json, results.md and the plots.

results.md: the settings (model, revision, data, splits, SAEs, prompts), our table (one row per
block x token configuration), the released suite's figures beside ours in a table of their own
(clearly theirs: other SAEs), and the L0 per patch position of every SAE that reads patches as a
grid (row-major from the top-left patch). Plots: L0 by layer (CLS vs patch), alive fraction by
layer, explained variance by layer, % CE recovered by layer, and the patch-position heatmaps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ....utils import io
from ....utils.config import to_dict
from ....utils.report import md_table, write_result
from . import reference

if TYPE_CHECKING:
    from .run import SparsityRun

log = logging.getLogger(__name__)

TOKEN_LABELS = {"all": "all tokens", "cls": "CLS only", "patch": "patches only"}


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:,.{digits}f}"


def _recovered_cell(r: dict[str, Any]) -> str:
    """% CE recovered as results.md shows it: the number, or 'n/m (gap ... nats)' below MIN_CE_GAP."""
    from ....steering.splice import not_meaningful

    return _fmt(r["ce_recovered_pct"]) if r["ce_recovered_meaningful"] else not_meaningful(r["ce_gap"])


def collect(run: SparsityRun) -> dict[str, Any]:
    from ....steering.splice import ce_gap_meaningful

    c, bb = run.cfg, run.backbone
    m = io.read_json(run.path("metrics.json"))
    ce = io.read_json(run.path("ce.json"))
    rows = []
    for key in run.keys():
        tm, sc = m[key.name], ce["saes"][key.name]
        grid = _grid(tm)
        rows.append(
            {
                "name": key.name,
                "block": key.block,
                "hook": run.hook(key.block),
                "tokens": key.tokens,
                "n_latents": tm["n_latents"],
                "n_rows": tm["n_rows"],
                "explained_variance_pct": _pct(tm["explained_variance"]),
                "l0_patch": tm["l0_patch"],
                "l0_cls": tm["l0_cls"],
                "l0_mean": tm["l0_mean"],
                "cosine": tm["cosine"],
                "alive_pct": _pct(tm["alive_frac"]),
                "alive_cls_pct": _pct(tm["alive_cls"]),
                "alive_patch_pct": _pct(tm["alive_patch"]),
                "ce_recovered_pct": sc["ce_recovered"],
                "ce_gap": sc["ce_zero_ablation"] - ce["ce_clean"],
                "ce_recovered_meaningful": ce_gap_meaningful(ce["ce_clean"], sc["ce_zero_ablation"]),
                "ce_spliced": sc["ce_spliced"],
                "ce_zero_ablation": sc["ce_zero_ablation"],
                "accuracy_spliced": sc["accuracy_spliced"],
                "accuracy_zero_ablation": sc["accuracy_zero_ablation"],
                "l0_patch_grid": None if grid is None else grid.tolist(),
            }
        )
    res: dict[str, Any] = {
        "experiment": "sparsity",
        "model": {
            "id": bb.model_id,
            "revision": bb.revision,
            "arch": bb.arch,
            "n_blocks": bb.n_blocks,
            "d_model": bb.d_model,
            "n_tokens": bb.n_tokens,
            "patch_grid": int(round(len(run.patch_positions) ** 0.5)),
        },
        "dataset": c.dataset,
        "train_split": None if not run.trains else c.train_split,
        "test_split": c.test_split,
        "n_test_images": ce["n_images"],
        "hook_kind": c.hook_kind,
        "blocks": list(run.blocks),
        "tokens": list(c.tokens),
        "sae": _sae_summary(run),
        "zeroshot": {
            "templates": c.templates,
            "ce_clean": ce["ce_clean"],
            "accuracy_clean": ce["accuracy_clean"],
            "n_images": ce["n_images"],
        },
        "rows": rows,
        "settings": to_dict(c),
    }
    res["reference"] = {"source": reference.SUITE, "figures": _reference(rows)}
    return res


def _grid(tm: dict[str, Any]) -> np.ndarray | None:
    from ....sae.metrics import TokenMetrics

    fields = {k: v for k, v in tm.items() if k in TokenMetrics.__dataclass_fields__}
    return TokenMetrics(**fields).patch_grid()


def _sae_summary(run: SparsityRun) -> dict[str, Any]:
    """What the SAEs are: trained here (settings, rows, steps) or loaded (from where)."""
    first = run.keys()[0]
    cfg = io.read_json(run.sae_path(first) / "cfg.json")
    training = cfg.get("training", {})
    out: dict[str, Any] = {
        "source": "trained" if run.trains else f"loaded from {run.cfg.sae_dir}",
        "arch": cfg.get("arch"),
        "k": cfg.get("k") if cfg.get("arch") in ("topk", "batchtopk") else None,
        "l1_coeff": cfg.get("l1_coeff") if cfg.get("arch") == "relu" else None,
        "n_latents": cfg.get("n_latents"),
        "expansion": (cfg.get("n_latents") or 0) // max(run.backbone.d_model, 1),
    }
    if training:
        out.update(
            steps=training.get("steps"),
            batch_size=training.get("batch_size"),
            lr=training.get("lr"),
            normalize_input=cfg.get("input_normalisation", {}).get("kind"),
        )
    return out


_COLUMN = {"ev": "explained_variance_pct", "patch_l0": "l0_patch", "cls_l0": "l0_cls", "alive": "alive_pct"}


def _reference(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of the suite's figures with our value(s) for the same quantity and token configuration."""
    out = []
    for f in reference.FIGURES:
        ours = {r["block"]: r[_COLUMN[f.quantity]] for r in rows if r["tokens"] == f.tokens}
        ours = {b: v for b, v in ours.items() if v is not None}
        if not ours:
            text = f"— (no {f.tokens} SAEs in this run)"
        elif f.layers is None:
            first, last = min(ours), max(ours)
            text = f"block {first}: {_fmt(ours[first])} -> block {last}: {_fmt(ours[last])}"
        else:
            have = [b for b in f.layers if b in ours]
            text = ", ".join(f"block {b}: {_fmt(ours[b])}" for b in have) or "— (those blocks not run)"
        out.append({**_figure_json(f), "ours": text})
    return out


def _figure_json(f: reference.Figure) -> dict[str, Any]:
    return {
        "quantity": f.quantity,
        "saes": f.saes,
        "arch": f.arch,
        "tokens": f.tokens,
        "layers": None if f.layers is None else list(f.layers),
        "where": f.where,
        "value": f.value,
    }


def markdown(res: dict[str, Any]) -> str:
    from ....steering.splice import MIN_CE_GAP

    sae, zs, model = res["sae"], res["zeroshot"], res["model"]
    shape = f"k={sae['k']}" if sae["k"] is not None else f"l1 {sae['l1_coeff']:g}" if sae["l1_coeff"] else ""
    trained = (
        f"trained on `{res['train_split']}` ({sae.get('steps')} steps of {sae.get('batch_size')} tokens, "
        f"lr {sae.get('lr')}, input normalisation {sae.get('normalize_input')})"
        if sae["source"] == "trained"
        else sae["source"]
    )
    lines = [
        f"# Per-layer sparsity report: {model['id']} on {res['dataset']}",
        "",
        f"- Model: `{model['id']}` (revision {model['revision']}; {model['n_blocks']} blocks, d {model['d_model']}, "
        f"{model['n_tokens']} tokens: {'CLS + ' if model['arch'] != 'siglip' else ''}"
        f"{model['patch_grid']}x{model['patch_grid']} patches)",
        f"- Hooks: `{res['rows'][0]['hook'].rsplit('.', 1)[-1]}` of blocks {_blocks_text(res['blocks'])}; "
        f"token configurations: {', '.join(TOKEN_LABELS[t] for t in res['tokens'])}",
        f"- SAEs: {sae['arch']} {shape}, {sae['n_latents']:,} latents (expansion {sae['expansion']}), one per block "
        f"and token configuration, {trained}",
        f"- Metrics on the **{res['test_split']}** split ({res['n_test_images']} images): explained variance, L0, "
        f"cosine and alive latents over the cached tokens; zero-shot CE with prompts `{zs['templates']}`: clean CE "
        f"{zs['ce_clean']:.4f}, clean accuracy {zs['accuracy_clean']:.2f}%",
        "- % CE recovered = 100 (CE_zero_ablation - CE_spliced) / (CE_zero_ablation - CE_clean): CE with the hook "
        "replaced, on the SAE's tokens, by the SAE's output (spliced, error term dropped) or by zeros; "
        "100 = splicing costs nothing, 0 = as bad as deleting the activation; n/m (not meaningful) where "
        f"ablating the hook moves the CE by less than {MIN_CE_GAP:g} nats (the gap shown; results.json keeps the "
        "ratio)",
        "",
        "## Ours",
        "",
        md_table(
            [
                "block",
                "tokens",
                "% EV",
                "avg patch L0",
                "avg CLS L0",
                "cos(x, x̂)",
                "% alive",
                "% alive (CLS)",
                "% alive (patch)",
                "% CE recovered",
                "spliced acc %",
                "ablated acc %",
            ],
            [
                (
                    r["block"],
                    r["tokens"],
                    _fmt(r["explained_variance_pct"], 2),
                    _fmt(r["l0_patch"]),
                    _fmt(r["l0_cls"]),
                    _fmt(r["cosine"], 4),
                    _fmt(r["alive_pct"]),
                    _fmt(r["alive_cls_pct"]),
                    _fmt(r["alive_patch_pct"]),
                    _recovered_cell(r),
                    _fmt(r["accuracy_spliced"], 2),
                    _fmt(r["accuracy_zero_ablation"], 2),
                )
                for r in res["rows"]
            ],
            "rl" + "r" * 10,
        ),
        "",
        "Columns: % EV = 100 (1 - FVU) over the SAE's tokens (global mean); avg patch / CLS L0 = mean active "
        "latents on the patch rows / the CLS row (— where the SAE does not read that token type); cos(x, x̂) = mean "
        "cosine of each token with its reconstruction; % alive = latents active on at least one test token (of "
        "that type); spliced / ablated acc = zero-shot top-1 with the SAE spliced in / the hook zeroed.",
        "",
        f"## Beside ours: the {res['reference']['source']}",
        "",
        "Their SAEs and data, not ours: the figures show the layout to compare (how the quantities move with depth "
        "and token type), not numbers these SAEs should match.",
        "",
        md_table(
            ["quantity", "their SAEs", "layers", "theirs", "ours (same token configuration)"],
            [
                (reference.QUANTITIES[f["quantity"]], f["saes"], f["where"], f["value"], f["ours"])
                for f in res["reference"]["figures"]
            ],
        ),
    ]
    grids = [r for r in res["rows"] if r["l0_patch_grid"] is not None]
    if grids:
        side = len(grids[0]["l0_patch_grid"])
        lines += [
            "",
            f"## L0 per patch position ({side} x {side}, row-major from the top-left patch)",
        ]
        for r in grids:
            g = r["l0_patch_grid"]
            lines += [
                "",
                f"block {r['block']}, {TOKEN_LABELS[r['tokens']]} (mean {_fmt(r['l0_patch'])}):",
                "",
                md_table(
                    ["row", *(f"c{j}" for j in range(len(g[0])))],
                    [(f"r{i}", *(_fmt(v) for v in row)) for i, row in enumerate(g)],
                    "r",
                ),
            ]
    lines += [
        "",
        "Plots: `plots/` (L0, alive fraction, explained variance and % CE recovered by layer; L0 per patch position). "
        "Numbers: `results.json`.",
    ]
    return "\n".join(lines) + "\n"


def _blocks_text(blocks: list[int]) -> str:
    if len(blocks) > 2 and blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0]}-{blocks[-1]}"
    return ", ".join(map(str, blocks))


def plots(run: SparsityRun, res: dict[str, Any]) -> None:
    from ....utils.plots import by_layer, figure

    rows = res["rows"]
    title = f"{res['model']['id']} on {res['dataset']} {res['test_split']}"

    def plot(
        stem: str,
        ylabel: str,
        series: Sequence[tuple[str, str, str | None]],
        shown: Callable[[dict], bool] | None = None,
    ) -> None:
        by_layer(
            run.path("plots", f"{stem}.png"),
            [
                (
                    label,
                    [
                        (r["block"], r[column])
                        for r in rows
                        if (tokens is None or r["tokens"] == tokens) and (shown is None or shown(r))
                    ],
                )
                for label, column, tokens in series
            ],
            ylabel=ylabel,
            title=title,
        )

    configs = res["tokens"]
    l0 = []
    if "all" in configs:
        l0 += [("CLS token (all-token SAE)", "l0_cls", "all"), ("patch tokens (all-token SAE)", "l0_patch", "all")]
    if "cls" in configs:
        l0.append(("CLS-only SAE", "l0_cls", "cls"))
    if "patch" in configs:
        l0.append(("patch-only SAE", "l0_patch", "patch"))
    plot("l0_by_layer", "average L0 (active latents per token)", l0)
    alive = [(f"{TOKEN_LABELS[t]} SAE", "alive_pct", t) for t in configs]
    if "all" in configs:
        alive += [
            ("all-token SAE, on CLS", "alive_cls_pct", "all"),
            ("all-token SAE, on patches", "alive_patch_pct", "all"),
        ]
    plot("alive_by_layer", "% alive latents", alive)
    plot(
        "ev_by_layer",
        "% explained variance",
        [(f"{TOKEN_LABELS[t]} SAE", "explained_variance_pct", t) for t in configs],
    )
    plot(
        "ce_recovered_by_layer",
        "% CE recovered (n/m left out)",
        [(f"{TOKEN_LABELS[t]} SAE", "ce_recovered_pct", t) for t in configs],
        shown=lambda r: r["ce_recovered_meaningful"],
    )

    for tokens in configs:
        grids = [r for r in rows if r["tokens"] == tokens and r["l0_patch_grid"] is not None]
        if not grids:
            continue
        n = len(grids)
        cols = min(n, 4)
        nrows = -(-n // cols)
        with figure(
            run.path("plots", f"l0_patch_positions_{tokens}.png"),
            figsize=(2.6 * cols, 2.5 * nrows),
            nrows=nrows,
            ncols=cols,
            squeeze=False,
        ) as (fig, axes):
            for ax in axes.flat[n:]:
                ax.axis("off")
            for ax, r in zip(axes.flat, grids):
                g = np.array(r["l0_patch_grid"], dtype=float)
                im = ax.imshow(g, cmap="viridis")
                ax.set_title(f"block {r['block']}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                if g.shape[0] <= 8:
                    for (i, j), v in np.ndenumerate(g):
                        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5, color="white")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            fig.suptitle(f"L0 per patch position, {TOKEN_LABELS[tokens]} SAEs: {title}", fontsize=8)


def warn_not_meaningful(rows: list[dict[str, Any]]) -> None:
    """One warning naming the SAEs whose % CE recovered is not meaningful, with their gaps."""
    from ....steering.splice import MIN_CE_GAP

    small = [f"{r['name']} (gap {r['ce_gap']:.2g})" for r in rows if not r["ce_recovered_meaningful"]]
    if small:
        log.warning(
            f"% CE recovered is not meaningful for {len(small)} SAE(s), shown as n/m: zero-ablating their hook "
            f"changes the zero-shot CE by less than {MIN_CE_GAP:g} nats: {', '.join(small)}"
        )


def write(run: SparsityRun) -> None:
    res = collect(run)
    warn_not_meaningful(res["rows"])
    run.path("plots").mkdir(parents=True, exist_ok=True)
    plots(run, res)
    write_result(run.out, "results", res, markdown(res))
