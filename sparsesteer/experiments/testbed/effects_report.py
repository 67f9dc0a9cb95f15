"""The table of `reproduce testbed` (numpy): each effect with its measured value (mean and spread
over SAE seeds where it depends on the SAE), its target, the margin and pass / fail.

Suppression is scored as the field's ground-truth benchmarks do: normalised by an oracle (the
model on the same images without the word or the frame), with the collateral damage (the change
on images that carry no shortcut) and the other shortcut's change beside it. The setting (block,
n) of every seed is chosen on the selection split; the table reads the test split only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...models.groups import group_accuracy
from ...utils import io
from ...utils.report import md_table
from .effects_config import TARGETS

ROLES = ("select", "test")


def _acc(pred: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    return float((pred[mask] == y[mask]).mean()) if mask.any() else float("nan")


def figures(pred: np.ndarray, oracle: np.ndarray, none: np.ndarray, t: dict[str, np.ndarray]) -> dict[str, float]:
    """Every suppression figure of one edited prediction vector `pred` on one image set."""
    y, word, cue, group = t["labels"], t["word"], t["cue"], t["group"]
    attacked, neither, no_word = (word == 1) & (cue == 0), (word == 0) & (cue == 0), word == 0

    def groups(p: np.ndarray) -> Any:
        return group_accuracy(p[no_word], y[no_word], group[no_word])

    g_none, g_edit, g_oracle = groups(none), groups(pred), groups(oracle)
    a_none, a_edit, a_oracle = (_acc(p, y, attacked) for p in (none, pred, oracle))
    taken = a_oracle - a_none
    wg_room = g_oracle.worst_group - g_none.worst_group
    return {
        "attacked": a_edit,
        "attacked_gain": a_edit - a_none,
        "word_recovery": (a_edit - a_none) / taken if taken > 0 else float("nan"),
        "clean_cost": _acc(none, y, neither) - _acc(pred, y, neither),
        "worst_group": g_edit.worst_group,
        "worst_group_gain": g_edit.worst_group - g_none.worst_group,
        "cue_recovery": (g_edit.worst_group - g_none.worst_group) / wg_room if wg_room > 0 else float("nan"),
        "average_drop": g_none.average - g_edit.average,
        "group_gap_change": (g_edit.average - g_edit.worst_group) - (g_none.average - g_none.worst_group),
    }


def _baseline(none: np.ndarray, oracle: np.ndarray, t: dict[str, np.ndarray]) -> dict[str, float]:
    y, word, cue, group = t["labels"], t["word"], t["cue"], t["group"]
    no_word = word == 0
    g = group_accuracy(none[no_word], y[no_word], group[no_word])
    g_oracle = group_accuracy(oracle[no_word], y[no_word], group[no_word])
    return {
        "clean": _acc(none, y, (word == 0) & (cue == 0)),
        "attacked": _acc(none, y, (word == 1) & (cue == 0)),
        "attacked_oracle": _acc(oracle, y, (word == 1) & (cue == 0)),
        "worst_group": g.worst_group,
        "worst_group_oracle": g_oracle.worst_group,
        "average": g.average,
        "group_gap": g.average - g.worst_group,
    }


def _choose(rows: dict[str, dict[str, float]], attr: str) -> str:
    """The SAE setting chosen on the selection split: the best recovery (word) or worst-group gain
    (frame) among those within the collateral limit; if none is, the one that costs least."""
    sae = {k: v for k, v in rows.items() if k.startswith("sae/")}
    if attr == "word":
        ok = {k: v for k, v in sae.items() if v["clean_cost"] <= TARGETS["clean_cost"]}
        pool = ok or {min(sae, key=lambda k: sae[k]["clean_cost"]): {}}
        return max(pool, key=lambda k: np.nan_to_num(sae[k]["word_recovery"], nan=-1.0))
    ok = {k: v for k, v in sae.items() if v["average_drop"] <= TARGETS["average_drop"]}
    pool = ok or {min(sae, key=lambda k: sae[k]["average_drop"]): {}}
    return max(pool, key=lambda k: sae[k]["worst_group_gain"])


def _peer(names: list[str], method: str, block: str, n: int) -> str | None:
    """`method` at the same block with the largest n <= `n` it has (a block has only so many heads)."""
    have = [int(k.split("/n")[1]) for k in names if k.startswith(f"{method}/{block}/n")]
    fit = [m for m in have if m <= n]
    return f"{method}/{block}/n{max(fit)}" if fit else None


def suppression_table(sup: dict[str, Any]) -> dict[str, Any]:
    """Per attribute: the chosen setting per seed and the test figures of every method there."""
    t = {r: {k: np.asarray(v) for k, v in sup["truth"][r].items()} for r in ROLES}
    oracle = {r: np.asarray(sup["oracle"][r]) for r in ROLES}
    none = {r: np.asarray(sup["none"][r]) for r in ROLES}
    out: dict[str, Any] = {"baseline": {r: _baseline(none[r], oracle[r], t[r]) for r in ROLES}}
    seeds = sorted({k.split("/seed")[1] for k in sup["edited"]}, key=int)
    first = seeds[0]
    for attr in ("word", "cue"):
        per_seed = []
        for seed in seeds:
            edited = sup["edited"][f"{attr}/seed{seed}"]
            sel = {k: figures(np.asarray(p), oracle["select"], none["select"], t["select"])
                   for k, p in edited["select"].items()}  # fmt: skip
            chosen = _choose(sel, attr)
            _, block, n_text = chosen.split("/")
            n = int(n_text[1:])
            methods: dict[str, Any] = {}
            for method in ("sae", "random", "neurons", "heads"):
                source = edited if method in ("sae", "random") else sup["edited"][f"{attr}/seed{first}"]
                name = _peer(list(source["test"]), method, block, n)
                if name is not None:
                    methods[method] = {"setting": name, **figures(np.asarray(source["test"][name]), oracle["test"],
                                                                  none["test"], t["test"])}  # fmt: skip
            per_seed.append({"seed": int(seed), "chosen": chosen, "select": sel[chosen], "test": methods})
        out[attr] = per_seed
    return out


def _ms(xs: list[float]) -> tuple[float, float]:
    """Mean and sample sd; (nan, 0) for no values (a row whose stage recorded none prints "n/a")."""
    a = np.asarray(xs, dtype=np.float64)
    if a.size == 0:
        return float("nan"), 0.0
    return float(np.mean(a)), float(np.std(a, ddof=1)) if len(a) > 1 else 0.0


def _fmt(mean: float, sd: float, n: int, pct: bool) -> str:
    scale, unit = (100.0, "") if pct else (1.0, "")
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean * scale:.1f}{unit}" if pct else f"{mean:.3f}"
    return text + (f" ± {sd * scale:.1f}" if pct else f" ± {sd:.3f}") if n > 1 else text


def effect_rows(
    det: dict[str, Any],
    sup: dict[str, Any],
    steer: dict[str, Any] | None = None,
    steerability: dict[str, Any] | None = None,
    *,
    control: bool = False,
) -> list[dict[str, Any]]:
    """The rows of the table: (effect, measured mean, spread, n seeds, target text, margin, pass)."""
    rows: list[dict[str, Any]] = []

    def add(effect: str, xs: list[float], target: str | None, margin: float | None, pct: bool) -> None:
        m, sd = _ms(xs)
        ok = None if margin is None or not np.isfinite(margin) else bool(margin >= 0)
        rows.append({"effect": effect, "mean": m, "sd": sd, "n": len(xs), "pct": pct, "target": target,
                     "margin": margin, "pass": ok})  # fmt: skip

    tab = suppression_table(sup)
    for attr, what in (("word", "word present"), ("cue", "frame present")):
        lat = det[attr]["latent"]
        neuron = det[attr]["neuron"]
        au = [r["auroc"] for r in lat]
        if control:  # no planted mechanism: a latent should not single it out
            add(f"detection ({what}): best latent AUROC (control)", au, "< 0.95", TARGETS["detect_auroc"] - _ms(au)[0],
                False)  # fmt: skip
            continue
        add(f"detection ({what}): best latent AUROC", au, ">= 0.95", _ms(au)[0] - TARGETS["detect_auroc"], False)
        add(f"detection ({what}): best neuron AUROC", [neuron["auroc"]], "< best latent", _ms(au)[0] - neuron["auroc"],
            False)  # fmt: skip
        for k in ("auprc", "precision", "recall", "f1"):
            add(f"detection ({what}): best latent {k.upper() if k == 'auprc' else k}", [r[k] for r in lat], None, None,
                False)  # fmt: skip
    w = tab["word"]
    get = lambda rows_, m, k: [r["test"][m][k] for r in rows_ if m in r["test"]]  # noqa: E731
    if control:
        b = tab["baseline"]["test"]
        add("control: accuracy the misleading word takes", [b["attacked_oracle"] - b["attacked"]], None, None, True)
        add("control: word suppression, accuracy gained on attacked images", get(w, "sae", "attacked_gain"),
            "|gain| < 2 pts", 0.02 - abs(_ms(get(w, "sae", "attacked_gain"))[0]), True)  # fmt: skip
        c = tab["cue"]
        add("control: group gap (average - worst group)", [b["group_gap"]], None, None, True)
        add("control: frame suppression, worst-group gain", get(c, "sae", "worst_group_gain"), "|gain| < 2 pts",
            0.02 - abs(_ms(get(c, "sae", "worst_group_gain"))[0]), True)  # fmt: skip
        return rows
    rec = get(w, "sae", "word_recovery")
    add("word suppression: share of the attack's loss recovered (oracle-normalised)", rec, ">= 50%",
        _ms(rec)[0] - TARGETS["word_recovery"], True)  # fmt: skip
    cost = get(w, "sae", "clean_cost")
    add("word suppression: clean accuracy lost (collateral)", cost, "<= 2 pts", TARGETS["clean_cost"] - _ms(cost)[0],
        True)  # fmt: skip
    for m, label in (("random", "n random latents"), ("neurons", "top-n neurons")):
        other = get(w, m, "word_recovery")
        add(f"word suppression: recovered by {label}", other, "< SAE latents", _ms(rec)[0] - _ms(other)[0], True)
    add("word suppression: recovered by top-n heads (ablated)", get(w, "heads", "word_recovery"), None, None, True)
    gap = get(w, "sae", "group_gap_change")
    add("word suppression: change of the frame's group gap (other shortcut)", gap, "<= +2 pts",
        TARGETS["other_shortcut"] - _ms(gap)[0], True)  # fmt: skip
    c = tab["cue"]
    gain = get(c, "sae", "worst_group_gain")
    add("frame suppression: worst-group gain", gain, ">= +10 pts", _ms(gain)[0] - TARGETS["worst_group_gain"], True)
    drop = get(c, "sae", "average_drop")
    add("frame suppression: average accuracy lost", drop, "<= 3 pts", TARGETS["average_drop"] - _ms(drop)[0], True)
    add("frame suppression: worst-group gain, oracle-normalised", get(c, "sae", "cue_recovery"), None, None, True)
    add("frame suppression: clean accuracy lost (collateral)", get(c, "sae", "clean_cost"), None, None, True)
    for m, label in (("random", "n random latents"), ("neurons", "top-n neurons")):
        other = get(c, m, "worst_group_gain")
        add(f"frame suppression: worst-group gain of {label}", other, "< SAE latents", _ms(gain)[0] - _ms(other)[0],
            True)  # fmt: skip
    add("frame suppression: worst-group gain of top-n heads (ablated)", get(c, "heads", "worst_group_gain"), None,
        None, True)  # fmt: skip
    lost = [-x for x in get(c, "sae", "attacked_gain")]
    add("frame suppression: attacked accuracy lost (other shortcut)", lost, "<= 2 pts",
        TARGETS["other_shortcut"] - _ms(lost)[0], True)  # fmt: skip
    if steer is not None:
        seeds = steer["seeds"]
        dp = [float(np.mean([r["test"]["dp"] for r in s["classes"]])) for s in seeds]
        dp_random = [float(np.mean([r["test_random"]["dp"] for r in s["classes"]])) for s in seeds]
        raised = [float(np.mean([r["test"]["dp"] > 0 for r in s["classes"]])) for s in seeds]
        add("steering: p(c) gained on other classes' images, latent most tied to c", dp, "> 0 and > random",
            min(_ms(dp)[0], _ms(dp)[0] - _ms(dp_random)[0]), True)  # fmt: skip
        add("steering: p(c) gained, a random latent set to the same value", dp_random, None, None, True)
        add("steering: share of classes whose p(c) rises", raised, None, None, True)
        flips = [float(np.mean([r["test"]["flip"] for r in s["classes"]])) for s in seeds]
        add("steering: share of other classes' images now predicted c", flips, None, None, True)
    if steerability is not None:
        frac: dict[tuple[str, str], list[float]] = {}
        for r in steerability["rows"]:
            frac.setdefault((r["kind"], r["model"]), []).append(r["steerable_fraction"])
        trained, random_init = frac.get(("sae", "trained"), []), frac.get(("sae", "control"), [])
        if trained and random_init:
            add("steerability: steerable fraction of SAE features (mean over blocks, seed 0)", trained,
                "> random-init", _ms(trained)[0] - _ms(random_init)[0], True)  # fmt: skip
            add("steerability: the same latents on the random-init model", random_init, None, None, True)
        if frac.get(("neurons", "trained")):
            add("steerability: steerable fraction of neurons", frac[("neurons", "trained")], None, None, True)
    return rows


VS2_ROWS = (("vs2", "VS2"), ("vs2_pass", "VS2 + PASS"), ("vs2pp_pseudo", "VS2++ (pseudo labels)"),
            ("vs2pp_oracle", "VS2++ (oracle labels)"))  # fmt: skip
"""The VS2 rows of `reproduce vs2` that the effects table repeats (key, label)."""


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant or has < 2 values)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def paper_rows(vs2: dict[str, Any] | None, sparsity: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows of the paper pipelines run on the testbed, reported with no target (issue: 'whatever the
    sign'): VS2 / VS2++ / PASS top-1 change against zero-shot on the clean test split, and two layouts
    of the sparsity paper (CLS L0 rising with depth; patches denser than the CLS) on all-token SAEs."""
    rows: list[dict[str, Any]] = []

    def add(effect: str, value: float, pct: bool) -> None:
        rows.append({"effect": effect, "mean": value, "sd": 0.0, "n": 1, "pct": pct, "target": None,
                     "margin": None, "pass": None})  # fmt: skip

    if vs2 is not None:
        by_key = {r["key"]: r for r in vs2["rows"]}
        for key, label in VS2_ROWS:
            if key in by_key:
                add(f"{label}: top-1 change vs zero-shot (clean test, final CLS)",
                    by_key[key]["delta_vs_zeroshot"] / 100.0, True)  # fmt: skip
    if sparsity is not None:
        every = sorted((r for r in sparsity["rows"] if r["tokens"] == "all"), key=lambda r: r["block"])
        if every:
            blocks = [r["block"] for r in every]
            add("sparsity: CLS L0 rises with depth (Spearman rho over blocks, all-token SAEs)",
                spearman(blocks, [r["l0_cls"] for r in every]), False)  # fmt: skip
            ratio = [r["l0_patch"] / r["l0_cls"] for r in every if r["l0_cls"]]
            if ratio:
                add("sparsity: patch L0 / CLS L0 (median over blocks, all-token SAEs)", float(np.median(ratio)), False)
    return rows


def _setting(v: Any) -> str:
    """A tuned setting as `reproduce vs2` prints it: a record as key:value pairs."""
    return " ".join(f"{k}:{x}" for k, x in v.items()) if isinstance(v, dict) else str(v)


def vs2_section(vs2: dict[str, Any]) -> str:
    """`reproduce vs2`'s rows on the testbed, as its own report prints them (top-1 and settings)."""
    sae = vs2["sae"]
    head = (
        f"\n## VS2 / VS2++ / PASS (`reproduce vs2`, in `vs2/`)\n\nClean {vs2['test_split']} split ({vs2['n_test']} "
        f"images); SAE: top-k on block {sae['block']}'s CLS, {sae['expansion']}x, k {sae['k']}, test FVU "
        f"{sae['fvu']['test']:.3f}; tuned on the {vs2['validation']['split']} ({vs2['validation']['n']} images). "
        "No target: reported whatever the sign.\n\n"
    )
    body = md_table(
        ["method", "top-1 %", "Δ vs zero-shot", "settings (tuned on validation)"],
        [[r["method"], f"{r['top1']:.2f}", f"{r['delta_vs_zeroshot']:+.2f}",
          ", ".join(f"{k}={_setting(v)}" for k, v in r["settings"].items() if k != "tuned_on")] for r in vs2["rows"]],
    )  # fmt: skip
    return head + body + "\n"


def _num(x: Any, fmt: str) -> str:
    return "—" if x is None or not np.isfinite(x) else format(x, fmt)


def sparsity_section(sp: dict[str, Any]) -> str:
    """`reproduce sparsity`'s per-block table on the testbed."""
    sae = sp["sae"]
    head = (
        f"\n## Sparsity by block and token type (`reproduce sparsity`, in `sparsity/`)\n\nReLU + L1 SAEs "
        f"(l1 {sae.get('l1_coeff', '?')}, {sae.get('expansion', '?')}x) on the clean {sp['train_split']} split, "
        f"measured on {sp['n_test_images']} {sp['test_split']} images; % CE recovered with the "
        f"{sp['zeroshot']['templates']} prompts.\n\n"
    )
    body = md_table(
        ["block", "tokens", "patch L0", "CLS L0", "% EV", "% CE recovered", "% alive"],
        [[str(r["block"]), r["tokens"], _num(r["l0_patch"], ".1f"), _num(r["l0_cls"], ".1f"),
          _num(r["explained_variance_pct"], ".1f"), _num(r["ce_recovered_pct"], ".1f"), _num(r["alive_pct"], ".1f")]
         for r in sorted(sp["rows"], key=lambda r: (r["block"], r["tokens"]))],
    )  # fmt: skip
    return head + body + "\n"


def render(rows: list[dict[str, Any]]) -> str:
    return md_table(
        ["effect", "measured", "target", "margin", ""],
        [
            [r["effect"], _fmt(r["mean"], r["sd"], r["n"], r["pct"]), r["target"] or "(reported)",
             "" if r["margin"] is None or not np.isfinite(r["margin"]) else
             (f"{r['margin'] * 100:+.1f} pts" if r["pct"] else f"{r['margin']:+.3f}"),
             {True: "pass", False: "**FAIL**", None: ""}[r["pass"]]]
            for r in rows
        ],
    )  # fmt: skip


def write(run: Any) -> Path:
    """results.json and results.md of a run (and of its control, when it has one)."""
    c = run.cfg
    det, sup = io.read_json(run.path("detect.json")), io.read_json(run.path("suppress.json"))
    steer = io.read_json(run.path("steer.json"))
    steerability = io.read_json(run.path("steerability", "results.json"))
    vs2 = io.read_json(run.path("vs2", "results.json")) if c.paper_runs else None
    sparsity = io.read_json(run.path("sparsity", "results.json")) if c.paper_runs else None
    rows = effect_rows(det, sup, steer, steerability) + paper_rows(vs2, sparsity)
    tab = suppression_table(sup)
    result: dict[str, Any] = {
        "model": c.model, "dataset": c.dataset, "splits": {"select": c.select_split, "test": c.test_split},
        "sets": det["sets"], "seeds": list(run.seeds), "blocks": list(run.blocks), "tokens": c.tokens,
        "sae": {"arch": c.arch, "k": c.k, "expansion": c.expansion, "steps": c.sae_steps, "n_sae": c.n_sae},
        "rows": rows, "detection": {a: det[a] for a in ("word", "cue")}, "suppression": tab, "steering": steer,
        "paper_runs": {"vs2": "vs2/results.json", "sparsity": "sparsity/results.json"} if c.paper_runs else None,
    }  # fmt: skip
    control_md = ""
    if c.control is not None:
        cdet = io.read_json(run.path("control", "detect.json"))
        csup = io.read_json(run.path("control", "suppress.json"))
        crows = effect_rows(cdet, csup, control=True)
        result["control"] = {"model": c.control, "rows": crows}
        control_md = (
            f"\n## Negative control: `{c.control}` (no planted mechanism; seed {run.seeds[0]})\n\n{render(crows)}\n"
        )
    io.write_json(run.path("results.json"), result)
    b = tab["baseline"]["test"]
    sets = det["sets"]
    text = (
        f"# Testbed effects\n\nModel `{c.model}`; data `{c.dataset}`; choices (units, block, n, thresholds) on the "
        f"**{c.select_split}** split ({sets['select']['n']} images), every figure on the **{c.test_split}** split "
        f"({sets['test']['n']} images, a misleading word on half, the frame on half, independently). SAEs: {c.arch}, "
        f"k {c.k}, {c.expansion}x, {c.sae_steps} steps on {c.n_sae} training images, tokens {c.tokens}, blocks "
        f"{', '.join(map(str, run.blocks))}, seeds {', '.join(map(str, run.seeds))} (mean ± sd over seeds).\n\n"
        f"Unedited on the test split: clean {b['clean'] * 100:.1f}%, attacked {b['attacked'] * 100:.1f}% (oracle "
        f"{b['attacked_oracle'] * 100:.1f}%), worst group {b['worst_group'] * 100:.1f}% (oracle "
        f"{b['worst_group_oracle'] * 100:.1f}%) vs average {b['average'] * 100:.1f}%.\n\n{render(rows)}\n{control_md}"
        + (vs2_section(vs2) if vs2 is not None else "")
        + (sparsity_section(sparsity) if sparsity is not None else "")
    )
    io.write_text(run.path("results.md"), text)
    return run.path("results.md")
