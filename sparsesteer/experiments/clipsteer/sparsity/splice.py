"""% CE recovered of spliced SAEs: the core lives on the steering floor (`sparsesteer.steering.splice`,
shared with `sparsesteer evaluate --suite spliced`); re-exported here for the sparsity report."""

from ....steering.splice import Score, Splice, SpliceCE, ce_recovered, spliced_ce, zero_ablation

__all__ = ["Score", "Splice", "SpliceCE", "ce_recovered", "spliced_ce", "zero_ablation"]
