"""`sparsesteer reproduce steerability`: claim 2 of Joseph et al. (how many SAE features and neurons
steer CLIP's output precisely), for one model and one or several SAEs.

    vocabulary -> concept embeddings of the model (and of its random re-initialisation)
      -> a class-stratified image sample (192 images by default)
      -> features: a seeded 1/20 sample of each SAE's latents, steered at the SAE's hook over the
         strengths, S / power / top concepts per latent and strength (`steering.steerability`)
      -> neurons: every residual dimension at each SAE's hook, the same way
      -> control: the same latents and neurons on a randomly initialised copy of the model
      -> report: results.json, results.md (steerable fraction, S quantiles, power, coverage per row,
         steering curves), plots/hist_S.png, plots/curves.png

Each stage records the settings it used (`experiments.stages.Pipeline`): rerunning skips stages whose
results are current, and `--stage NAME` runs one stage alone. Every stage is a function of the run
context (`run.SteerabilityRun`); `report.py` imports only that. Importing this module does not import
torch (`--help` lists the stages).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ....utils import io
from ...stages import Pipeline, Stage
from .config import SteerabilityConfig
from .run import SteerabilityRun

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- stages
def vocab(run: SteerabilityRun) -> None:
    """The vocabulary's concept embeddings, for the model and (with control) its random copy."""
    from ....steering.steerability import vocab_embeddings

    c = run.cfg
    v = run.vocabulary()
    models = ("trained", "control") if c.control else ("trained",)
    for which in models:
        emb = vocab_embeddings(run.model(which), v, template=c.vocab_template, cache_dir=run.path("text"))
        run.save_array(f"vocab_{which}", emb)
    io.write_json(run.path("vocab.json"), {**v.describe(), "template": c.vocab_template, "concepts": list(v.concepts)})


def measure(
    run: SteerabilityRun, which: str, *, sae_index: int | None = None, hook: str | None = None
) -> dict[str, Any]:
    """One row: the steering curves of a sample of an SAE's latents (`sae_index`) or of the residual
    neurons at `hook`, on the trained model or on the control (`which`)."""
    from ....steering.features import check_sae, sae_tokens, steer_positions
    from ....steering.settings import parse_tokens
    from ....steering.steerability import measure_steerability, sample_units

    c = run.cfg
    bb = run.model(which)
    notes: list[str] = []
    sae = None
    if sae_index is not None:
        sae = run.load_sae(sae_index)
        hook = run.sae_hook(sae, sae_index)
        n_total = sae.n_latents
        units = sample_units(n_total, c.latent_fraction, c.seed)
        label = f"SAE {run.sae_label(c.sae[sae_index])}"
    else:
        n_total = bb.d_model
        units = sample_units(n_total, c.neuron_fraction, c.seed)
        label = "neurons"
    assert hook is not None
    # --tokens, or the tokens of the SAE steered (neurons: of the first SAE at their hook, so both compare alike)
    if c.tokens is not None:
        tokens = steer_positions(bb, parse_tokens(c.tokens), hook)
    else:
        tokens = sae_tokens(bb, sae if sae is not None else run.sae_at(hook), hook)
    if sae is not None and which == "trained":  # the control is a deliberately different model: nothing to check
        notes = check_sae(bb, sae, hook, tokens, allow_mismatch=c.allow_mismatch)
    label = f"{label} @ {hook}" + (" (random init)" if which == "control" else "")
    curves = measure_steerability(
        bb, hook, run.pixel_batches(), run.vocab_embeddings(which), sae=sae, units=units, settings=c, tokens=tokens,
        desc=label,
    )  # fmt: skip
    assert curves.scale is not None
    return {
        "label": label,
        "kind": "sae" if sae is not None else "neurons",
        "model": which,
        "hook": hook,
        "sae": None if sae_index is None else str(Path(c.sae[sae_index]).resolve()),
        "sae_index": sae_index,
        "n_units_total": n_total,
        "units": curves.units.tolist(),
        "strengths": list(curves.strengths),
        "score": curves.score.tolist(),
        "power": curves.power.tolist(),
        "top": curves.top.tolist(),
        "n_images": curves.n_images,
        "tokens": tokens if isinstance(tokens, str) else list(tokens),
        "strength_unit": c.strength_unit,
        "scale_max": curves.scale.max.tolist(),
        "scale_p99": curves.scale.p99.tolist(),
        "active": curves.scale.active.tolist(),
        "provenance_overridden": notes,
    }


def features(run: SteerabilityRun) -> None:
    """A seeded sample of each SAE's latents, steered at the SAE's hook."""
    run.save_rows("features", [measure(run, "trained", sae_index=i) for i in range(len(run.cfg.sae))])


def neurons(run: SteerabilityRun) -> None:
    """Residual neurons at each SAE's hook (none with --no-neurons)."""
    hooks = list(dict.fromkeys(run.sae_hooks())) if run.cfg.neurons else []
    run.save_rows("neurons", [measure(run, "trained", hook=h) for h in hooks])


def control(run: SteerabilityRun) -> None:
    """The same latents and neurons on the randomly initialised model (none with --no-control)."""
    c = run.cfg
    rows = []
    if c.control:
        rows = [measure(run, "control", sae_index=i) for i in range(len(c.sae))]
        if c.neurons:
            rows += [measure(run, "control", hook=h) for h in dict.fromkeys(run.sae_hooks())]
    run.save_rows("control", rows)


def report(run: SteerabilityRun) -> None:
    from . import report as write_report

    write_report.write(run)


IMAGE_FIELDS = ("model", "dataset", "split", "n_images", "image_seed", "batch_size")
"""What selects and preprocesses the images (batch size changes the batches, hence the float sums)."""
MEASURE_FIELDS = (
    "strengths", "at_strength", "strength_unit", "temperature", "mode", "tokens", "keep_error", "unit_direction", "top",
)  # fmt: skip
"""The measurement's own settings (`SteerabilitySettings`, less the threshold: a report setting)."""
VOCAB_FIELDS = ("model", "vocab", "vocab_limit", "vocab_template", "control", "control_seed")

STAGES: tuple[Stage[SteerabilityRun], ...] = (
    Stage(name="vocab", fields=VOCAB_FIELDS, needs=(), run=vocab, help="embedding the concept vocabulary"),
    Stage(
        name="features",
        fields=(*IMAGE_FIELDS, *MEASURE_FIELDS, "sae", "latent_fraction", "seed", "allow_mismatch"),
        needs=("vocab",),
        run=features,
        help="steering curves of a sample of each SAE's latents",
    ),
    Stage(
        name="neurons",
        fields=(*IMAGE_FIELDS, *MEASURE_FIELDS, "sae", "neurons", "neuron_fraction", "seed"),
        needs=("vocab",),
        run=neurons,
        help="steering curves of the residual neurons at each SAE's hook",
    ),
    Stage(
        name="control",
        fields=(
            *IMAGE_FIELDS,
            *MEASURE_FIELDS,
            "sae",
            "latent_fraction",
            "neurons",
            "neuron_fraction",
            "seed",
            "control",
            "control_seed",
        ),
        needs=("vocab",),
        run=control,
        help="the same on a randomly initialised copy of the model",
    ),  # fmt: skip
    Stage(
        name="report",
        fields=("threshold",),
        needs=("features", "neurons", "control"),
        run=report,
        help="writing results.json, results.md and plots",
    ),
)
"""The stages in run order: what each reads from the settings and from earlier stages."""


# ---------------------------------------------------------------------- entry
def reproduce(cfg: SteerabilityConfig, out: str | Path, stage: str | None = None) -> Path:
    """Run the experiment into `out` (every stage that is not current, or `stage` alone); returns the
    path of results.md."""
    run = SteerabilityRun(cfg, out)
    run.vocabulary()  # a bad vocabulary or SAE fails now, before any model is loaded
    run.check_saes()
    run.out.mkdir(parents=True, exist_ok=True)
    io.write_json(run.path("config.json"), dataclasses.asdict(cfg))
    Pipeline(run.out, cfg, STAGES).run(run, stage, log=lambda m: log.info("%s", m))
    return run.path("results.md")
