"""Steering CLIP's vision transformer with sparse autoencoders (Joseph et al., arXiv 2504.08729):
one subpackage per claim of the paper (spec: clip-sae-steering.md).

    sparsity/    claim 1: the per-layer, per-token-type sparsity report (`sparsesteer reproduce sparsity`)
    steerability/  claim 2: steerable fraction of SAE features vs neurons vs a random control
                   (`sparsesteer reproduce steerability`)
"""
