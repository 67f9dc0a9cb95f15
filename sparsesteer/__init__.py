"""sparsesteer: sparse autoencoders for vision transformers, to interpret and steer them.

The package follows the pipeline: `data` (images) -> `models` (backbones, hook points, zero-shot
heads) -> `activations` (on-disk caches, shuffled loaders) -> `sae` (architectures, training,
metrics, checkpoints) -> `steering` (VS2, VS2++, PASS, feature steering) -> `interpret` ->
`experiments` (one module per paper table). The CLI lives in `sparsesteer.cli`.
"""

__version__ = "0.1.0"
