"""sparsesteer: sparse autoencoders for vision transformers, to interpret and steer them.

The package follows the pipeline: `data` (images) -> `models` (backbones, hook points, zero-shot
heads) -> `activations` (on-disk caches, shuffled loaders) -> `sae` (architectures, training,
metrics, checkpoints, PASS) -> `steering` (the SAE-edit primitive, VS2, VS2++) -> `interpret`
(not built yet) -> `experiments` (one subpackage per paper). The CLI lives in `sparsesteer.cli`;
each stage's `commands.py` parses its flags into a config dataclass.
"""

__version__ = "0.1.0"
