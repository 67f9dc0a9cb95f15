"""The workflow behind `sparsesteer steer features|neurons`: the same images before and after an edit.

dataset (+ `--limit` sample), SAE, latents, hook and readout names checked before the model is loaded
-> the steered units' own scale on the steered tokens of the images (one forward to the hook per batch:
what a strength means, and what `--strength-unit max|p99` multiplies) -> for each image batch,
`features.embed_steered` (the blocks before the edit run once; non-finite results are refused, naming
the strength) -> readout: zero-shot probabilities over the dataset's classes (the model's logit rule,
softmax over the classes) or concept probabilities over a vocabulary (softmax(T cos)) -> per image the
top prediction before and after, per class / concept the mean probability change Delta, and the
steerability S = sum Delta^2 and power = max Delta of the edit on these images ->
`steer_features.json` + `.md` (or `steer_neurons.*`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..utils.errors import SparsesteerError
from ..utils.progress import progress
from ..utils.report import md_table
from .settings import SteerFeaturesConfig, SteerImages, SteerNeuronsConfig, parse_tokens

if TYPE_CHECKING:
    from ..models.backbone import Backbone
    from ..models.hook_names import Tokens
    from ..models.hooks import Intervention
    from .steerability import Units, UnitScale


class Readout(NamedTuple):
    """How embeddings become probabilities."""

    kind: str
    """'zeroshot' (the dataset's classes) or 'vocab' (a concept vocabulary)."""
    names: list[str]
    """Class or concept names."""
    weights: Tensor
    """[C, e] unit text embeddings."""
    scale: float
    """Logit scale (CLIP zero-shot: 100; vocab: the temperature)."""
    bias: float
    """Logit bias (SigLIP zero-shot; cancels in the softmax)."""
    describe: dict[str, Any]

    def probs(self, embeds_be: Tensor) -> Tensor:
        e = torch.nn.functional.normalize(embeds_be.float(), dim=-1)
        return torch.softmax(self.scale * e @ self.weights.to(e.device).T + self.bias, dim=-1)


class Comparison(NamedTuple):
    """Probabilities of the same images before and after an edit."""

    before: Tensor
    """[N, C] float32."""
    after: Tensor
    """[N, C] float32."""
    labels: np.ndarray
    """[N] int labels (-1 unlabeled)."""
    indices: list[int]
    """Dataset index of each row."""
    skipped: list[dict]
    """Unreadable images left out (with --on-bad-image skip)."""


class ReadoutNames(NamedTuple):
    """What the readout reads out against, known before the model is loaded."""

    kind: str
    """'zeroshot' or 'vocab'."""
    names: tuple[str, ...]
    describe: dict[str, Any]


def readout_names(cfg: SteerImages, classes: list[str]) -> ReadoutNames:
    """The concept vocabulary (--vocab) or the dataset's class names, checked without the model."""
    if cfg.vocab is not None:
        from ..data.vocab import load_vocab

        vocab = load_vocab(cfg.vocab, limit=cfg.vocab_limit)
        meta = {**vocab.describe(), "template": cfg.vocab_template, "temperature": cfg.temperature}
        return ReadoutNames("vocab", tuple(vocab.concepts), meta)
    if not classes or classes == [str(i) for i in range(len(classes))]:
        raise SparsesteerError(
            "the dataset has no class names: zero-shot needs a name per class, or read out against --vocab FILE"
        )
    return ReadoutNames("zeroshot", tuple(classes), {"templates": cfg.templates})


def build_readout(bb: Backbone, cfg: SteerImages, spec: ReadoutNames) -> Readout:
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier

    cache = (
        None if str(cfg.text_cache).lower() == "none" or cfg.text_cache is None else Path(cfg.text_cache).expanduser()
    )
    if spec.kind == "vocab":
        clf = ZeroShotClassifier.build(bb, spec.names, (cfg.vocab_template,), cache_dir=cache)
        return Readout("vocab", list(spec.names), clf.weights, cfg.temperature, 0.0, spec.describe)
    clf = ZeroShotClassifier.build(bb, spec.names, get_templates(cfg.templates), cache_dir=cache)
    return Readout("zeroshot", list(spec.names), clf.weights, clf.logit_scale, clf.logit_bias, spec.describe)


def _batches(bb: Backbone, cfg: SteerImages, dataset: Any, desc: str):
    from ..data.batches import image_batches

    batches = image_batches(
        dataset, bb.preprocessor, batch_size=cfg.batch_size, workers=cfg.workers, on_bad_image=cfg.on_bad_image,
        pin_memory=bb.device.type == "cuda",
    )  # fmt: skip
    return progress(batches, total=-(-len(dataset) // cfg.batch_size), desc=desc, unit="batch")


@torch.no_grad()
def measure_scale(bb: Backbone, units: Units, hook: str, tokens: Tokens, cfg: SteerImages, dataset: Any) -> UnitScale:
    """Each steered unit's own scale on the steered tokens of the images (one forward to the hook per
    batch): what the strength is compared to, and what a relative strength multiplies."""
    from .steerability import UnitScale

    parts = []
    for b in _batches(bb, cfg, dataset, "scale"):
        if not len(b.indices):
            continue
        acts = bb.run(b.pixels, [hook])[hook]
        if acts.ndim == 3:  # block hooks: the steered tokens; `head` is one vector per image
            acts = acts[:, bb.token_indices(tokens, acts.shape[1]).to(acts.device)]
        parts.append(units.values(acts.reshape(-1, acts.shape[-1])))
    if not parts:
        raise SparsesteerError("steer: no readable images")
    return UnitScale.of(parts)


def compare(
    bb: Backbone, interventions: list[Intervention], readout: Readout, cfg: SteerImages, dataset: Any, what: str
) -> Comparison:
    """Probabilities of every image of `dataset` without and with `interventions` (`what` names the edit
    in the error that refuses a non-finite result)."""
    from .edits import check_finite_result
    from .features import embed_steered

    before, after, labels, indices, skipped = [], [], [], [], []
    for b in _batches(bb, cfg, dataset, "steer"):
        skipped += [s._asdict() for s in b.skipped]
        if not len(b.indices):
            continue
        emb = embed_steered(bb, b.pixels, interventions)
        check_finite_result(emb.steered, what, before=emb.unsteered)
        before.append(readout.probs(emb.unsteered).cpu())
        after.append(readout.probs(emb.steered).cpu())
        labels.append(b.labels.numpy())
        indices += b.indices.tolist()
    if not before:
        raise SparsesteerError("steer: no readable images")
    return Comparison(torch.cat(before), torch.cat(after), np.concatenate(labels), indices, skipped)


def _open_images(cfg: SteerImages):
    from ..data import limit_dataset, open_dataset

    return limit_dataset(open_dataset(cfg.dataset, cfg.split, data_root=cfg.data_root), cfg.limit, cfg.limit_seed)


def run_features(cfg: SteerFeaturesConfig) -> dict[str, Any]:
    """`steer features`: returns the JSON report (and writes it with the Markdown when cfg.out is set)."""
    from ..models import load_backbone
    from ..sae import SparseAutoencoder
    from ..utils.device import resolve_device
    from .features import check_sae, feature_edit, sae_hook, sae_tokens, steer_positions
    from .steerability import LatentUnits

    device = resolve_device(cfg.device)
    ds = _open_images(cfg)
    # what needs only the flags and the SAE is checked before the model is loaded (docs/errors.md)
    sae = SparseAutoencoder.load(cfg.sae, device=device)
    units = LatentUnits(sae, list(cfg.latent), keep_error=cfg.keep_error, unit_direction=cfg.unit_direction)
    hook_name = sae_hook(sae, cfg.hook)
    names = readout_names(cfg, ds.classes)
    bb = load_backbone(cfg.model, device=device, revision=cfg.revision)
    hook = str(bb.hook_point(hook_name))
    tokens = sae_tokens(bb, sae, hook) if cfg.tokens is None else steer_positions(bb, parse_tokens(cfg.tokens), hook)
    notes = check_sae(bb, sae, hook, tokens, allow_mismatch=cfg.allow_mismatch)
    scale = measure_scale(bb, units, hook, tokens, cfg, ds)
    strengths = _strengths(cfg, units, scale, "latent")
    iv = feature_edit(
        hook, sae, units.indices, strengths, cfg.mode, tokens=tokens, keep_error=cfg.keep_error,
        unit_direction=cfg.unit_direction, check_hook=not cfg.allow_mismatch,
    )  # fmt: skip
    edit = {
        "kind": "features",
        "sae": str(Path(cfg.sae).resolve()),
        "n_latents": sae.n_latents,
        "latents": units.indices.tolist(),
        "keep_error": cfg.keep_error,
        "unit_direction": cfg.unit_direction,
    }
    return _run(cfg, bb, ds, names, [iv], hook, tokens, edit, notes, "steer_features", (units, scale, strengths))


def run_neurons(cfg: SteerNeuronsConfig) -> dict[str, Any]:
    """`steer neurons`: as `run_features`, editing residual dimensions directly."""
    from ..models import load_backbone
    from ..utils.device import resolve_device
    from .features import steer_neurons, steer_positions
    from .steerability import NeuronUnits

    ds = _open_images(cfg)
    names = readout_names(cfg, ds.classes)
    bb = load_backbone(cfg.model, device=resolve_device(cfg.device), revision=cfg.revision)
    hook = str(bb.hook_point(cfg.hook))
    spec = parse_tokens(cfg.tokens or "all")
    tokens = steer_positions(bb, spec, hook)
    units = NeuronUnits(bb.d_model, list(cfg.neuron))
    scale = measure_scale(bb, units, hook, tokens, cfg, ds)
    strengths = _strengths(cfg, units, scale, "neuron")
    iv = steer_neurons(bb, hook, units.indices.tolist(), strengths, mode=cfg.mode, tokens=spec)
    edit = {"kind": "neurons", "neurons": units.indices.tolist(), "d_model": bb.d_model}
    return _run(cfg, bb, ds, names, [iv], hook, tokens, edit, [], "steer_neurons", (units, scale, strengths))


def _strengths(cfg: SteerImages, units: Units, scale: UnitScale, kind: str) -> float | Tensor | None:
    """The strength of each unit: --strength itself (absolute), or --strength times the unit's own scale."""
    if cfg.mode == "zero" or cfg.strength_unit == "absolute":
        return cfg.strength
    per = scale.unit(cfg.strength_unit)
    silent = units.indices[per == 0].tolist()
    if silent:
        which = f"{kind} {silent[0]} is" if len(silent) == 1 else f"{kind}s {silent} are"
        raise SparsesteerError(
            f"--strength-unit {cfg.strength_unit}: {which} never active on the steered tokens of these images, so "
            f"there is no {cfg.strength_unit} to multiply; use --strength-unit absolute, or images where it fires"
        )
    return float(cfg.strength) * per  # type: ignore[arg-type]


def _run(
    cfg: SteerImages, bb: Backbone, ds: Any, spec: ReadoutNames, ivs: list, hook: str, tokens: Any, edit: dict,
    notes: list[str], stem: str, scaled: tuple[Units, UnitScale, float | Tensor | None],
) -> dict[str, Any]:  # fmt: skip
    from ..utils.report import write_result
    from .steerability import steerability

    units, scale, strengths = scaled
    readout = build_readout(bb, cfg, spec)
    given = "" if cfg.strength is None else f"{cfg.strength:g}" + _unit_suffix(cfg)
    comp = compare(bb, ivs, readout, cfg, ds, f"--mode {cfg.mode}" + (f" --strength {given}" if given else ""))
    per = strengths.tolist() if isinstance(strengths, Tensor) else [strengths] * len(units.indices)
    edit.update(
        hook=hook, mode=cfg.mode, strength=cfg.strength, strength_unit=cfg.strength_unit,
        tokens=cfg.tokens or (tokens if isinstance(tokens, str) else "token indices"),
        tokens_from_sae=cfg.tokens is None and edit["kind"] == "features",
        token_indices=None if isinstance(tokens, str) else list(tokens),
        units=[
            {"index": int(j), "strength": s, "max": float(scale.max[k]), "p99": float(scale.p99[k]),
             "active": float(scale.active[k])}
            for k, (j, s) in enumerate(zip(units.indices.tolist(), per))
        ],
    )  # fmt: skip
    delta = (comp.after.double() - comp.before.double()).mean(0)
    m = steerability(delta, cfg.top)
    names = readout.names
    pred0, pred1 = comp.before.argmax(-1), comp.after.argmax(-1)
    labelled = readout.kind == "zeroshot" and (comp.labels >= 0).all()
    report: dict[str, Any] = {
        "model": bb.model_id,
        "revision": bb.revision,
        "dataset": ds.name,
        "split": ds.split,
        "subset": ds.describe().get("subset"),
        "n_images": len(comp.indices),
        "edit": edit,
        "readout": {"kind": readout.kind, "n": len(names), **readout.describe},
        "steerability": {"S": float(m.score), "power": float(m.power)},
        "changed_top1": float((pred0 != pred1).double().mean()),
        "mean_change": {n: float(d) for n, d in zip(names, delta)},
        "mean_before": {n: float(p) for n, p in zip(names, comp.before.double().mean(0))},
        "mean_after": {n: float(p) for n, p in zip(names, comp.after.double().mean(0))},
    }
    if labelled:
        y = torch.from_numpy(comp.labels)
        report["top1_before"] = 100 * float((pred0 == y).double().mean())
        report["top1_after"] = 100 * float((pred1 == y).double().mean())
    rows = []
    for r, i in enumerate(comp.indices):
        a, b = int(pred0[r]), int(pred1[r])
        label = int(comp.labels[r])
        rows.append(
            {
                "index": ds.base_index(i),
                "source": ds.source(i),
                "label": label,
                "label_name": ds.classes[label] if 0 <= label < len(ds.classes) else None,
                "before": names[a],
                "p_before": float(comp.before[r, a]),
                "after": names[b],
                "p_after": float(comp.after[r, b]),
                "change_of_before": float(comp.after[r, a] - comp.before[r, a]),
                "change_of_after": float(comp.after[r, b] - comp.before[r, b]),
            }
        )
    report["images"] = rows
    if comp.skipped:
        report["skipped"] = comp.skipped
    if notes:
        report["provenance_overridden"] = notes
    md = _markdown(report, cfg, delta, names)
    print(md)
    if cfg.out:
        write_result(cfg.out, stem, report, md)
    return report


def _markdown(report: dict, cfg: SteerImages, delta: Tensor, names: list[str]) -> str:
    e = report["edit"]
    what = (
        f"SAE latents {e['latents']} of {e['sae']} ({'error term kept' if e['keep_error'] else 'no error term'}"
        f"{', unit directions' if e['unit_direction'] else ''})"
        if e["kind"] == "features"
        else f"residual neurons {e['neurons']}"
    )
    strength = "" if e["strength"] is None else f" s = {e['strength']:g}{_unit_suffix(cfg)}"
    unit = "class" if report["readout"]["kind"] == "zeroshot" else "concept"
    readout = (
        f"zero-shot over {report['readout']['n']} classes ({cfg.templates} prompts)"
        if unit == "class"
        else f"{report['readout']['n']} concepts of {report['readout']['source']} (T = {cfg.temperature:g})"
    )
    lines = [f"## steer {e['kind']}: {report['model']}, {report['dataset']} [{report['split']}]", ""]
    if report.get("provenance_overridden"):
        lines += [
            "**Provenance checks overridden (--allow-mismatch):**",
            *[f"- {n}" for n in report["provenance_overridden"]],
            "",
        ]
    lines += [
        f"{what}, mode {e['mode']}{strength} at {e['hook']}, tokens {_tokens_text(e)}; {report['n_images']} images; "
        f"readout: {readout}",
        "",
        *_scale_table(e),
        f"top-1 changed on {100 * report['changed_top1']:.1f}% of the images; steerability of this edit on them: "
        f"S = {report['steerability']['S']:.4f}, power = {report['steerability']['power']:+.4f}",
    ]
    if "top1_before" in report:
        lines.append(f"zero-shot top-1: {report['top1_before']:.2f}% before, {report['top1_after']:.2f}% after")
    lines.append("")
    k = min(cfg.top, len(names))
    order = torch.argsort(delta, descending=True).tolist()
    for title, picked in (("largest mean increases", order[:k]), ("largest mean decreases", order[::-1][:k])):
        lines += [f"### {unit}es with the {title}" if unit == "class" else f"### concepts with the {title}", ""]
        lines.append(
            md_table(
                [unit, "mean p before", "mean p after", "change"],
                [
                    (
                        names[c],
                        f"{report['mean_before'][names[c]]:.4f}",
                        f"{report['mean_after'][names[c]]:.4f}",
                        f"{float(delta[c]):+.4f}",
                    )
                    for c in picked
                ],
                "lrrr",
            )  # fmt: skip
        )
        lines.append("")
    shown = report["images"][: cfg.show]
    if shown:
        lines += [f"### per image (first {len(shown)} of {len(report['images'])}; all in the JSON)", ""]
        lines.append(
            md_table(
                ["image", "label", "before", "after", f"change of the before {unit}"],
                [
                    (
                        Path(r["source"]).name,
                        r["label_name"] or "—",
                        f"{r['before']} ({r['p_before']:.3f})",
                        f"{r['after']} ({r['p_after']:.3f})",
                        f"{r['change_of_before']:+.3f}",
                    )
                    for r in shown
                ],
                "lllll",
            )  # fmt: skip
        )
        lines.append("")
    return "\n".join(lines)


def _unit_suffix(cfg: SteerImages) -> str:
    return "" if cfg.strength_unit == "absolute" else f" x {cfg.strength_unit}"


def _tokens_text(e: dict) -> str:
    return str(e["tokens"]) + (" (the SAE's own)" if e["tokens_from_sae"] else "")


def _scale_table(e: dict) -> list[str]:
    """Each steered unit's strength beside its own scale on these images (what the strength means)."""
    unit = "latent" if e["kind"] == "features" else "neuron"

    def strength(s: float | None) -> str:
        if e["mode"] == "zero" or s is None:
            return "— (zero)"
        if e["mode"] == "scale":
            return f"x {s:g}"
        return f"{s:.4g}" + (
            "" if e["strength_unit"] == "absolute" else f" (= {e['strength']:g} x {e['strength_unit']})"
        )

    rows = [
        (u["index"], strength(u["strength"]), f"{u['max']:.4g}", f"{u['p99']:.4g}", f"{100 * u['active']:.1f}%")
        for u in e["units"]
    ]
    return [
        f"The {unit}s' own scale on the steered tokens of these images (max |value|; p99 of the non-zero |values|; "
        "share of tokens where non-zero):",
        "",
        md_table([unit, "strength", "max", "p99", "active"], rows, "rrrrr"),
        "",
    ]
