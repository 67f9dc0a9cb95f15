"""Interpreting SAE latents: which latents (or neurons) go with an image attribute (`associations`:
streamed scores over a cached activation view, top-n selection for suppression).

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
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
