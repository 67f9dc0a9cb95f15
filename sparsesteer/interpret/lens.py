"""Concept lens: the vocabulary words whose text embeddings align best with a latent's direction
after the CLIP head (for SAEs on the final-layer CLS).

    lens = concept_lens(sae, backbone, load_vocab("imagenet1k"), k=10)
    [lens.words[i] for i in lens.indices[j]]                 # latent j's 10 best-aligned words

The head is post-layernorm then the visual projection. A decoder direction w is mapped through
its linear part: centre (LayerNorm subtracts the mean), scale by the LayerNorm weight, project:
e_j = P (gamma * (w_j - mean(w_j))), L2-normalised (the LayerNorm's division by the std and its bias
do not change which way a small step along w_j moves the embedding, up to a positive factor and
an offset). Words are embedded by the text tower with `template` through the zero-shot classifier
(cached on disk like its weights) and compared by cosine; the top k per latent are kept, computed
in blocks of latents.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..data.vocab import Vocabulary
from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    import torch

    from ..models.backbone import Backbone
    from ..sae.base import SparseAutoencoder


class LensWords(NamedTuple):
    indices: np.ndarray
    """int64 [n_latents, k] indices into `words`, best aligned first."""
    cosine: np.ndarray
    """float32 [n_latents, k] cosine of the latent's head direction with each word's text embedding."""
    words: tuple[str, ...]
    """The vocabulary."""


def head_directions(W_dec: torch.Tensor, ln_weight: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """[n, e] unit directions of decoder rows W_dec [n, d] after the head's linear part
    (proj: the projection's weight [e, d])."""
    w = W_dec.float()
    w = (w - w.mean(1, keepdim=True)) * ln_weight.float()
    e = w @ proj.float().T
    return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


def lens_refusal(sae: SparseAutoencoder, backbone: Backbone) -> str | None:
    """Why the CLIP head cannot map this SAE's decoder directions into the text space (None: it can):
    the lens needs a CLIP model and an SAE on its final-layer CLS (or all tokens)."""
    from ..models.hook_names import final_resid

    if backbone.arch != "clip":
        return f"needs a CLIP model (text tower and head), got {backbone.arch}"
    if sae.d_in != backbone.d_model:
        return (
            f"the SAE's d_in={sae.d_in} is not the model's width {backbone.d_model}; "
            "the lens is for SAEs on the final-layer CLS"
        )
    prov = sae.provenance
    final = final_resid(backbone.n_blocks)
    if (prov.hook is not None and prov.hook != final) or prov.tokens == "patch":
        return (
            f"the SAE reads {prov.describe(('hook', 'tokens'))}; the lens maps directions through "
            f"the CLIP head, so it is for SAEs on the final-layer CLS ({final}, tokens cls)"
        )
    return None


def concept_lens(
    sae: SparseAutoencoder,
    backbone: Backbone,
    vocab: Vocabulary | Sequence[str],
    *,
    k: int = 10,
    template: str = "{}",
    cache_dir: str | os.PathLike | None = None,
    block: int = 4096,
) -> LensWords:
    """Top-k vocabulary words per latent (see the module docstring). Needs a CLIP model whose
    width is the SAE's d_in (an SAE on the final-layer CLS)."""
    import torch

    from ..models.zeroshot import ZeroShotClassifier

    why = lens_refusal(sae, backbone)
    if why is not None:
        raise SparsesteerError(f"concept lens: {why}")
    words = vocab.concepts if isinstance(vocab, Vocabulary) else tuple(vocab)
    if not 1 <= k <= len(words):
        raise SparsesteerError(f"concept lens: k must be in 1..{len(words)} (the vocabulary size), got {k}")
    with torch.no_grad():
        text = ZeroShotClassifier.build(backbone, words, (template,), cache_dir=cache_dir).weights.float().cpu()
        text = text / text.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ln = backbone.vision.get_parameter("post_layernorm.weight").detach().cpu()
        proj = backbone.model.get_parameter("visual_projection.weight").detach().cpu()
        W = sae.W_dec.detach().cpu()
        n = W.shape[0]
        idx = np.empty((n, k), np.int64)
        cos = np.empty((n, k), np.float32)
        for a in range(0, n, block):
            sims = head_directions(W[a : a + block], ln, proj) @ text.T
            v, i = torch.topk(sims, k, dim=1)
            idx[a : a + block] = i.numpy()
            cos[a : a + block] = v.numpy()
    return LensWords(idx, cos, words)
