"""Interpreting SAE latents: which latents (or neurons) go with an image attribute (`associations`:
streamed scores over a cached activation view, top-n selection for suppression); per-latent
statistics in one streaming pass (`stats`: frequency, histograms, top images with per-patch
activations), their files (`store`: save_stats / load_stats), decoder neighbours (`neighbours`),
the concept lens (`lens`), CLIP-Dissect labels (`dissect`), patch heatmaps and montages (`heatmaps`).

Attributes are imported lazily so that `sparsesteer --help` stays fast.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "latent_associations": "associations",
    "neuron_associations": "associations",
    "Associations": "associations",
    "AssociationScores": "associations",
    "AssociationAccumulator": "associations",
    "GroupStats": "associations",
    "Selection": "associations",
    "select_top": "associations",
    "SCORES": "associations",
    "latent_stats": "stats",
    "LatentStats": "stats",
    "TopImages": "stats",
    "save_stats": "store",
    "load_stats": "store",
    "decoder_neighbours": "neighbours",
    "Neighbours": "neighbours",
    "concept_lens": "lens",
    "LensWords": "lens",
    "dissect_labels": "dissect",
    "soft_wpmi": "dissect",
    "ConceptLabels": "dissect",
    "heatmap": "heatmaps",
    "montage": "heatmaps",
    "stats_dataset": "heatmaps",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
