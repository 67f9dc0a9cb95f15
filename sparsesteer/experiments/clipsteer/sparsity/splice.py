"""% CE recovered of spliced SAEs: the core lives on the steering floor (`sparsesteer.steering.splice`,
shared with `sparsesteer evaluate --suite spliced`); re-exported here for the sparsity report."""

from ....steering.splice import (
    MIN_CE_GAP,
    Score,
    Splice,
    SpliceCE,
    ce_gap_meaningful,
    ce_recovered,
    not_meaningful,
    spliced_ce,
    zero_ablation,
)

__all__ = [
    "MIN_CE_GAP",
    "Score",
    "Splice",
    "SpliceCE",
    "ce_gap_meaningful",
    "ce_recovered",
    "not_meaningful",
    "spliced_ce",
    "zero_ablation",
]
