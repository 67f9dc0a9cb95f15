"""The feature browser: a static site of latent statistics (`site`: write_site) and a loopback
server for it with pluggable JSON API handlers (`server`: make_server). The model-backed API
(steering, patch explorer) lives in `experiments/browse.py`, which chains models, SAE and steering."""

from __future__ import annotations

from ...utils.lazy import lazy_exports

_EXPORTS = {
    "write_site": "site",
    "read_data": "site",
    "SiteSummary": "site",
    "make_server": "server",
    "ApiRequest": "server",
    "ApiError": "server",
    "Binary": "server",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
