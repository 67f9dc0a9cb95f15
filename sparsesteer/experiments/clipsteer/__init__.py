"""Steering CLIP's vision transformer with sparse autoencoders (Joseph et al., arXiv 2504.08729):
one subpackage per claim of the paper (spec: clip-sae-steering.md).

    sparsity/    claim 1: the per-layer, per-token-type sparsity report (`sparsesteer reproduce sparsity`)
"""
