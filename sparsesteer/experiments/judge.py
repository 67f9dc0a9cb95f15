"""The model suites of `sparsesteer evaluate --suite` (`sae.judge.MODEL_SUITES`), chained here because
they need a model (an SAE never imports one):

- spliced: zero-shot CE and accuracy of the cached split's images with the SAE's output spliced in at
  its hook (`steering.splice.spliced_ce`, shared with `reproduce sparsity`), against the clean model
  and zero-ablation; value = % CE recovered, plus `spliced_accuracy`.
- monosemanticity: `interpret.monosemanticity` under a second backbone (`--mono-model`).

`model_suites(cfg)` returns the `extra` callback of `sae.commands.run_judge`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..sae.judge import MetricResult
from ..utils.errors import SparsesteerError

log = logging.getLogger(__name__)


def _cache(cfg: Any):
    from ..activations.cache import ActivationCache

    path = Path(cfg.activations)
    if not (path.is_dir() and (path / "manifest.json").is_file()):
        raise SparsesteerError(
            f"--activations {cfg.activations}: the model suites (spliced, monosemanticity) need an activation "
            "cache directory (its dataset spec and split name the images)"
        )
    return ActivationCache.open(path)


def _dataset(cfg: Any, cache: Any) -> tuple[Any, list[str]]:
    """The cached images (--dataset / --data-root, else the spec the cache records), checked to be the
    images the cache was made from; (dataset, notes of checks overridden by --allow-mismatch)."""
    from ..activations.pairing import ImageSet, open_images

    return open_images(
        ImageSet.of_cache(cache),
        f"the activations ({cache.path})",
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        allow=cfg.allow_mismatch,
    )


def _spliced_inputs(cfg: Any, cache: Any, source: Any, dataset: Any) -> tuple[list[str], Any]:
    """(class names, the rows' provenance) of the spliced suite, after every check that needs no model."""
    from ..models.templates import get_templates
    from ..sae.provenance import Provenance

    classes = cache.settings.classes or getattr(dataset, "classes", None)
    if not classes:
        raise SparsesteerError("--suite spliced: the cache records no class names (zero-shot needs them)")
    prov = Provenance.from_rows(source.describe())
    if not isinstance(prov.tokens, str) or prov.tokens not in ("all", "cls", "patch"):
        raise SparsesteerError(
            f"--suite spliced: the SAE reads tokens {prov.tokens!r}; splicing needs all, cls or patch"
        )
    get_templates(cfg.templates)
    return list(classes), prov


def spliced_metrics(
    cfg: Any, cache: Any, sae: Any, source: Any, backbone: Any, dataset: Any, name: str = "the SAE"
) -> list[MetricResult]:
    """% CE recovered and spliced zero-shot accuracy of `sae` (called `name` in a warning) on the cached
    split's images; a % CE recovered below `MIN_CE_GAP` is flagged not meaningful, with a warning."""
    from ..data.batches import image_batches
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier
    from ..steering.splice import MIN_CE_GAP, Splice, gap_note, spliced_ce

    classes, prov = _spliced_inputs(cfg, cache, source, dataset)
    if not backbone.has_text:
        raise SparsesteerError(f"--suite spliced: model {backbone.model_id} has no text tower (zero-shot needs one)")
    tokens = prov.tokens
    clf = ZeroShotClassifier.build(backbone, classes, get_templates(cfg.templates))
    splice = Splice("sae", prov.hook, tokens, sae)
    batches = image_batches(dataset, backbone.preprocessor, batch_size=cfg.image_batch_size, workers=0)
    pairs = ((b.pixels.to(backbone.device), b.labels) for b in batches if len(b.indices))
    res = spliced_ce(backbone, clf, pairs, [splice], total=-(-len(dataset) // cfg.image_batch_size))
    zero, sp = res.zero[(splice.hook, splice.tokens)], res.spliced["sae"]
    rec = res.recovered(splice)
    settings = {"model": backbone.model_id, "hook": prov.hook, "tokens": tokens, "templates": cfg.templates}
    data = {"images": res.clean.n, "dataset": getattr(dataset, "name", None), "split": cache.settings.split}
    details = {
        "ce_clean": res.clean.ce,
        "ce_spliced": sp.ce,
        "ce_zero_ablation": zero.ce,
        "accuracy_clean": res.clean.accuracy,
        "accuracy_spliced": sp.accuracy,
        "accuracy_zero_ablation": zero.accuracy,
    }
    gap, meaningful = res.gap(splice), res.meaningful(splice)
    if not meaningful:
        log.warning(
            f"{name}: % CE recovered is not meaningful (shown as n/m): zero-ablating {prov.hook} ({tokens}) "
            f"changes the zero-shot CE by {gap:.2g} nats, less than {MIN_CE_GAP:g}"
        )
    ce = MetricResult(
        "ce_recovered",
        float("nan") if rec is None else rec,
        True,
        settings=settings,
        data=data,
        details={**details, "ce_gap": gap, **({} if meaningful else {"note": gap_note(gap)})},
        suite="spliced",
        meaningful=meaningful,
    )
    acc = MetricResult(
        "spliced_accuracy", sp.accuracy, True, settings=settings, data=data, details=details, suite="spliced"
    )
    return [ce, acc]


def model_suites(cfg: Any):
    """`extra(sae_dir, sae, source, suites)` for `run_judge`: checks everything that needs no model (the
    cache, its images opened and checked to be the cached ones, the SAE's tokens, the templates, the
    SAE against the model's config), then returns the function that loads each model once and
    measures. A model the SAE runs in (spliced: --model) goes through `check_sae`, the provenance
    check of every command that puts an SAE into a model; --mono-model only embeds images."""
    from ..models.backbone import load_backbone, model_shape
    from ..utils.device import resolve_device

    loaded: dict[str, Any] = {}

    def backbone(name: str, what: str):
        if name not in loaded:
            try:
                loaded[name] = load_backbone(name, device=resolve_device(cfg.device))
            except SparsesteerError as e:
                raise SparsesteerError(f"{what} {name!r} cannot be loaded: {e}") from None
            except (OSError, ValueError, KeyError) as e:
                raise SparsesteerError(f"{what} {name!r} cannot be loaded: {type(e).__name__}: {e}") from None
        return loaded[name]

    def sae_model(name: str, sae: Any, hook: str, tokens: str) -> tuple[Any, list[str]]:
        """The model `sae` is spliced into, checked against the SAE (`steering.features.check_sae`)."""
        from ..steering.features import check_sae, steer_positions

        bb = backbone(name, "--model")
        return bb, check_sae(bb, sae, hook, steer_positions(bb, tokens, hook), allow_mismatch=cfg.allow_mismatch)

    def extra(sae_dir: str, sae: Any, source: Any, suites: list[str]) -> Callable[[], list[MetricResult]]:
        from ..models.hook_names import HookPoint

        cache = _cache(cfg)
        model, prov = None, None
        if "spliced" in suites:
            model = cfg.model or (cache.settings.model or {}).get("id")
            if not model:
                raise SparsesteerError("--suite spliced: the cache records no model; pass --model")
        dataset, notes = _dataset(cfg, cache)
        if model is not None:
            _, prov = _spliced_inputs(cfg, cache, source, dataset)
            try:
                shape = model_shape(model)
            except SparsesteerError as e:
                raise SparsesteerError(f"--model {model!r} cannot be loaded: {e}") from None
            hook = HookPoint.parse(prov.hook, shape.n_blocks)
            width = shape.d_embed if hook.kind == "head" else shape.d_model
            if sae.d_in != width:
                raise SparsesteerError(
                    f"the SAE reads vectors of width d_in={sae.d_in}, but {hook} of {model!r} has width {width}"
                )
            if not shape.has_text:
                raise SparsesteerError(f"--suite spliced: model {model} has no text tower (zero-shot needs one)")

        def measure() -> list[MetricResult]:
            import torch

            from ..interpret.monosemanticity import monosemanticity

            out: list[MetricResult] = []
            with torch.no_grad():
                if model is not None and prov is not None:
                    bb, overridden = sae_model(model, sae, str(prov.hook), str(prov.tokens))
                    results = spliced_metrics(cfg, cache, sae, source, bb, dataset, name=sae_dir)
                    for r in results:
                        if notes or overridden:
                            r.data["provenance_overridden"] = [*notes, *overridden]
                    out += results
                if "monosemanticity" in suites:
                    bb = backbone(cfg.mono_model, "--mono-model")
                    r = monosemanticity(
                        sae,
                        source,
                        dataset,
                        bb,
                        images_per_latent=cfg.mono_images,
                        max_latents=cfg.mono_latents,
                        seed=cfg.seed,
                        batch_size=cfg.batch_size,
                        image_batch_size=cfg.image_batch_size,
                        max_images=None,
                    )
                    if notes:
                        r.data["provenance_overridden"] = list(notes)
                    out.append(r)
            return out

        return measure

    return extra
