"""The model suites of `sparsesteer evaluate --suite` (`sae.judge.MODEL_SUITES`), chained here because
they need a model (an SAE never imports one):

- spliced: zero-shot CE and accuracy of the cached split's images with the SAE's output spliced in at
  its hook (`steering.splice.spliced_ce`, shared with `reproduce sparsity`), against the clean model
  and zero-ablation; value = % CE recovered, plus `spliced_accuracy`.
- monosemanticity: `interpret.monosemanticity` under a second backbone (`--mono-model`).

`model_suites(cfg)` returns the `extra` callback of `sae.commands.run_judge`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sae.judge import MetricResult
from ..utils.errors import SparsesteerError


def _cache(cfg: Any):
    from ..activations.cache import ActivationCache

    path = Path(cfg.activations)
    if not (path.is_dir() and (path / "manifest.json").is_file()):
        raise SparsesteerError(
            f"--activations {cfg.activations}: the model suites (spliced, monosemanticity) need an activation "
            "cache directory (its dataset spec and split name the images)"
        )
    return ActivationCache.open(path)


def _dataset(cfg: Any, cache: Any):
    from ..interpret.monosemanticity import cache_dataset

    return cache_dataset(cache.settings, dataset=cfg.dataset, data_root=cfg.data_root)


def spliced_metrics(cfg: Any, cache: Any, sae: Any, source: Any, backbone: Any, dataset: Any) -> list[MetricResult]:
    """% CE recovered and spliced zero-shot accuracy of `sae` on the cached split's images."""
    from ..data.batches import image_batches
    from ..models.templates import get_templates
    from ..models.zeroshot import ZeroShotClassifier
    from ..sae.provenance import Provenance
    from ..steering.splice import Splice, spliced_ce

    classes = cache.settings.classes or getattr(dataset, "classes", None)
    if not classes:
        raise SparsesteerError("--suite spliced: the cache records no class names (zero-shot needs them)")
    if not backbone.has_text:
        raise SparsesteerError(f"--suite spliced: model {backbone.model_id} has no text tower (zero-shot needs one)")
    prov = Provenance.from_rows(source.describe())
    tokens = prov.tokens
    if not isinstance(tokens, str) or tokens not in ("all", "cls", "patch"):
        raise SparsesteerError(f"--suite spliced: the SAE reads tokens {tokens!r}; splicing needs all, cls or patch")
    clf = ZeroShotClassifier.build(backbone, list(classes), get_templates(cfg.templates))
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
    ce = MetricResult(
        "ce_recovered",
        float("nan") if rec is None else rec,
        True,
        settings=settings,
        data=data,
        details={**details, **({"note": "zero-ablation does not change the CE"} if rec is None else {})},
        suite="spliced",
    )
    acc = MetricResult(
        "spliced_accuracy", sp.accuracy, True, settings=settings, data=data, details=details, suite="spliced"
    )
    return [ce, acc]


def model_suites(cfg: Any):
    """`extra(sae_dir, sae, source, suites)` for `run_judge`: loads each model once, lazily."""
    from ..models.backbone import load_backbone
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

    def extra(sae_dir: str, sae: Any, source: Any, suites: list[str]) -> list[MetricResult]:
        import torch

        from ..interpret.monosemanticity import monosemanticity

        cache = _cache(cfg)
        out: list[MetricResult] = []
        with torch.no_grad():
            if "spliced" in suites:
                model = cfg.model or (cache.settings.model or {}).get("id")
                if not model:
                    raise SparsesteerError("--suite spliced: the cache records no model; pass --model")
                bb = backbone(model, "--model")
                out += spliced_metrics(cfg, cache, sae, source, bb, _dataset(cfg, cache))
            if "monosemanticity" in suites:
                bb = backbone(cfg.mono_model, "--mono-model")
                out.append(
                    monosemanticity(
                        sae,
                        source,
                        _dataset(cfg, cache),
                        bb,
                        images_per_latent=cfg.mono_images,
                        max_latents=cfg.mono_latents,
                        seed=cfg.seed,
                        batch_size=cfg.batch_size,
                        image_batch_size=cfg.image_batch_size,
                        max_images=None,
                    )
                )
        return out

    return extra
