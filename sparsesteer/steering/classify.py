"""Zero-shot classification of (possibly steered) final-layer CLS vectors, without the network.

VS2-style methods change only the final-layer CLS; everything after it is the head (post-layernorm
+ projection) and a cosine with the class text embeddings. Running that on cached vectors makes a
full (lam, gamma) grid over a test set cost matrix products instead of model forwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..models.head import clip_head

if TYPE_CHECKING:
    from ..models.backbone import Backbone
    from ..models.zeroshot import ZeroShotClassifier


class CLSClassifier:
    """logits(cls) = classifier(head(cls)), batched, no gradients."""

    def __init__(self, backbone: Backbone, classifier: ZeroShotClassifier, *, batch_size: int = 8192):
        self.backbone = backbone
        self.classifier = classifier
        self.batch_size = batch_size

    @property
    def n_classes(self) -> int:
        return int(self.classifier.weights.shape[0])

    @torch.no_grad()
    def embed(self, cls_bd: Tensor) -> Tensor:
        """Unnormalised image embeddings [N, d_embed] (float32, CPU)."""
        out = [
            clip_head(self.backbone, cls_bd[s : s + self.batch_size]).float().cpu()
            for s in range(0, cls_bd.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.classifier.weights.shape[1])

    @torch.no_grad()
    def logits(self, cls_bd: Tensor) -> Tensor:
        """[N, C] zero-shot logits (float32, CPU)."""
        return self.logits_of_embeddings(self.embed(cls_bd))

    @torch.no_grad()
    def logits_of_embeddings(self, embeds_be: Tensor) -> Tensor:
        return self.classifier.logits(embeds_be.to(self.classifier.weights.device)).float().cpu()

    def predict(self, cls_bd: Tensor) -> Tensor:
        return self.logits(cls_bd).argmax(-1)

    def accuracy(self, cls_bd: Tensor, labels_b: Tensor) -> float:
        """Top-1 accuracy in [0, 1]."""
        return float((self.predict(cls_bd) == labels_b.cpu()).double().mean()) if len(labels_b) else float("nan")
