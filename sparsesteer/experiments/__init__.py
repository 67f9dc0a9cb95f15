"""Experiments: the stages of the pipeline chained into paper tables, one subpackage per paper.

    stages.py    Stage and Pipeline: resumable stages keyed by a hash of their settings (shared)
    registry.py  the experiments `sparsesteer reproduce` knows, by name -> subpackage
    commands.py  `sparsesteer reproduce NAME` (one subcommand per registered experiment)
    vs2/         Visual Sparse Steering, Table 1 and Table 7
    clipsteer/   Steering CLIP's ViT with SAEs: sparsity/ (per-layer, per-token-type sparsity report),
                 steerability/ (steerable fraction, features vs neurons vs control)

Nothing outside this package imports it (import-linter).
"""
