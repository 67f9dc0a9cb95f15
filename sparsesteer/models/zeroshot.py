"""Zero-shot classification with a CLIP or SigLIP text tower.

Class weights follow CLIP's notebook (Prompt_Engineering_for_ImageNet): embed every
template x class prompt, L2-normalise each, average over templates, L2-normalise again.
Prompts are padded to the text tower's full length (as CLIP and SigLIP were trained; SigLIP pools
the last position, CLIP the first EOS) and only `input_ids` are passed, as in the original models.

Logits: CLIP `100 * cos(image, class)` (softmax); SigLIP `exp(logit_scale) * cos + logit_bias`
(sigmoid; its argmax is what classification uses). Weights are cached on disk as safetensors
keyed by a hash of (model id, revision, dtype, class names, templates).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import SparsesteerError
from ..utils.io import atomic_path
from ..utils.progress import progress
from .hooks import Intervention

if TYPE_CHECKING:
    from transformers import CLIPModel, SiglipModel

    from .backbone import Backbone, ModelShape

CACHE_FORMAT = 1


class Predictions(NamedTuple):
    """Top-k predictions for a batch of images."""

    indices: Tensor
    """[B, k] class indices, best first."""
    logits: Tensor
    """[B, k] their logits."""


def require_text_tower(model: Backbone | ModelShape) -> None:
    """Refuse a model without a text tower (a loaded one, or its `model_shape` before the load)."""
    if not model.has_text:
        raise SparsesteerError(
            f"model {model.model_id!r} ({model.arch}) has no text tower; zero-shot classification "
            "needs CLIP or SigLIP with both towers"
        )


def encode_text(backbone: Backbone, texts: Sequence[str], *, batch_size: int = 256) -> Tensor:
    """Text embeddings [N, d_embed] (unnormalised; CLIP: projected EOS state, SigLIP: head output)."""
    require_text_tower(backbone)
    tok = backbone.tokenizer
    max_len = int(backbone.model.config.text_config.max_position_embeddings)
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            ids = tok(batch, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
            # has_text: AutoModel built a two-tower CLIPModel or SiglipModel
            text_model = cast("CLIPModel | SiglipModel", backbone.model)
            feats = text_model.get_text_features(input_ids=ids["input_ids"].to(backbone.device))
            feats = feats if isinstance(feats, Tensor) else feats.pooler_output
            out.append(feats.float().cpu())
    return torch.cat(out)


def class_weights(text_embeds_ctd: Tensor) -> Tensor:
    """[C, n_templates, d] text embeddings -> [C, d] unit class weights (normalise, mean, renormalise)."""
    return F.normalize(F.normalize(text_embeds_ctd, dim=-1).mean(dim=1), dim=-1)


def cache_key(
    model_id: str, revision: str, dtype: torch.dtype, classnames: Sequence[str], templates: Sequence[str]
) -> str:
    """Hash naming the cache file of one classifier."""
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": model_id,
            "revision": revision,
            "dtype": str(dtype),
            "classnames": list(classnames),
            "templates": list(templates),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class ZeroShotClassifier:
    """Unit class weights plus the model's logit rule."""

    weights: Tensor
    """[n_classes, d_embed] float32, rows of unit norm."""
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    logit_scale: float = 100.0
    """Multiplies the cosine (CLIP: 100, as in CLIP's evaluation; SigLIP: exp(logit_scale))."""
    logit_bias: float = 0.0
    """Added after scaling (SigLIP's learned bias; 0 for CLIP)."""

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        classnames: Sequence[str],
        templates: Sequence[str],
        *,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
    ) -> ZeroShotClassifier:
        """Embed every template x class prompt (or load the weights from `cache_dir`)."""
        classnames, templates = tuple(classnames), tuple(templates)
        if not classnames:
            raise SparsesteerError("zero-shot classifier: no class names")
        bad = [t for t in templates if t.count("{}") != 1]
        if not templates or bad:
            raise SparsesteerError(f"zero-shot templates must each contain one '{{}}'; bad: {bad or 'none given'}")
        if not backbone.has_text:
            encode_text(backbone, [])  # raises the explanatory error
        scale, bias = 100.0, 0.0
        if backbone.arch == "siglip":
            scale = float(backbone.model.get_parameter("logit_scale").exp())
            bias = float(backbone.model.get_parameter("logit_bias"))

        path = None
        if cache_dir is not None:
            key = cache_key(backbone.model_id, backbone.revision, backbone.dtype, classnames, templates)
            path = Path(cache_dir) / f"zeroshot-{key}.safetensors"
            weights = _load_cached(path, classnames, templates)
            if weights is not None:
                return cls(weights, classnames, templates, scale, bias)

        prompts = [t.format(c) for c in classnames for t in templates]
        embeds = encode_text(backbone, prompts, batch_size=batch_size)
        weights = class_weights(embeds.view(len(classnames), len(templates), -1))
        if path is not None:
            _save_cached(path, weights, backbone, classnames, templates)
        return cls(weights, classnames, templates, scale, bias)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def logits(self, image_embeds_bd: Tensor) -> Tensor:
        """[B, n_classes] float32 logits; image embeddings are L2-normalised here."""
        img = F.normalize(image_embeds_bd.float(), dim=-1)
        return self.logit_scale * img @ self.weights.to(img.device).T + self.logit_bias

    def predict(self, image_embeds_bd: Tensor, topk: int = 5) -> Predictions:
        """Top-k classes per image (k clipped to the number of classes)."""
        values, indices = self.logits(image_embeds_bd).topk(min(topk, self.n_classes), dim=-1)
        return Predictions(indices, values)


def _load_cached(path: Path, classnames: tuple[str, ...], templates: tuple[str, ...]) -> Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("classnames", "null")) != list(classnames) or json.loads(
                meta.get("templates", "null")
            ) != list(templates):
                return None
            return f.get_tensor("weights")
    except Exception:  # unreadable cache file: recompute and overwrite
        return None


def _save_cached(path: Path, weights: Tensor, backbone: Backbone, classnames: tuple, templates: tuple) -> None:
    from safetensors.torch import save_file

    meta = {
        "format": str(CACHE_FORMAT),
        "model": backbone.model_id,
        "revision": backbone.revision,
        "dtype": str(backbone.dtype),
        "classnames": json.dumps(list(classnames)),
        "templates": json.dumps(list(templates)),
    }
    with atomic_path(path) as tmp:
        save_file({"weights": weights.contiguous()}, str(tmp), metadata=meta)


def classify(
    backbone: Backbone,
    classifier: ZeroShotClassifier,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    interventions: Sequence[Intervention] = (),
    total: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits [N, C] and labels [N] over an iterable of (pixel_values, labels) batches.

    The loop behind `sparsesteer zeroshot`; `interventions` steer the image tower on the way.
    """
    all_logits, all_labels = [], []
    for pixels, labels in progress(batches, total=total, desc="zero-shot", unit="batch"):
        emb = backbone.run(pixels, ["head"], interventions=interventions)["head"]
        all_logits.append(classifier.logits(emb).cpu())
        all_labels.append(torch.as_tensor(labels).cpu())
    if not all_logits:
        raise SparsesteerError("zero-shot: no images")
    return torch.cat(all_logits), torch.cat(all_labels).long()
