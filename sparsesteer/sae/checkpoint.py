"""Kept for imports: the checkpoint readers and writer live in `sae/formats/`."""

from .formats import (  # noqa: F401
    ACTIVATION_RULES,
    FORMAT,
    FORMAT_VERSION,
    HF_PREFIX,
    LAYOUTS,
    WEIGHTS,
    activation_rule,
    download,
    load_sae,
    parse_hub_spec,
    save_sae,
)
