"""The run context of `reproduce steerability`: what every stage reads.

One run directory, OUT/{arrays, measurements, text, plots, stages}, with the settings, the lazily
loaded model and its random re-initialisation (the control), the image sample as preprocessed pixel
batches, the vocabulary and the SAEs. Heavy imports happen on first use, so importing this module does
not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ....utils import io
from ....utils.errors import SparsesteerError
from ...context import RunContext
from .config import SteerabilityConfig

if TYPE_CHECKING:
    import torch

    from ....data.datasets import ImageDataset
    from ....data.vocab import Vocabulary
    from ....models.backbone import Backbone
    from ....sae import SparseAutoencoder


class SteerabilityRun(RunContext):
    """One `reproduce steerability` run: settings, run directory and the resources the stages share."""

    def __init__(self, cfg: SteerabilityConfig, out: str | Path):
        super().__init__(cfg, out)
        self._control: Backbone | None = None
        self._ds: ImageDataset | None = None
        self._pixels: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ paths and files

    def save_array(self, name: str, array: Any) -> None:
        if hasattr(array, "cpu"):
            array = array.cpu()
        io.write_npy(self.path("arrays", f"{name}.npy"), np.asarray(array))

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.path("arrays", f"{name}.npy"), allow_pickle=False)

    def save_rows(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """The measurements of one stage (a list of rows, see `pipeline.measure`)."""
        io.write_json(self.path("measurements", f"{stage}.json"), rows)

    def load_rows(self, stage: str) -> list[dict[str, Any]]:
        path = self.path("measurements", f"{stage}.json")
        return io.read_json(path) if path.is_file() else []

    # ------------------------------------------------------------------ models, data, vocabulary
    def check_backbone(self, backbone: Backbone) -> None:
        if not backbone.has_text:
            raise SparsesteerError(
                f"steerability reads image embeddings out against text embeddings: {self.cfg.model!r} "
                f"({backbone.arch}) has no text tower"
            )

    @property
    def control_backbone(self) -> Backbone:
        """The same architecture, randomly initialised with `control_seed` (the chance-level control)."""
        if self._control is None:
            from ....models.backbone import random_init_copy

            self._control = random_init_copy(self.backbone, self.cfg.control_seed)
        return self._control

    def model(self, which: str) -> Backbone:
        return self.backbone if which == "trained" else self.control_backbone

    @property
    def dataset(self) -> ImageDataset:
        if self._ds is None:
            from ....data import ensure_dataset, limit_dataset

            c = self.cfg
            self._ds = limit_dataset(
                ensure_dataset(c.dataset, c.split, data_root=c.data_root), c.n_images, c.image_seed
            )
        return self._ds

    def pixel_batches(self) -> list[torch.Tensor]:
        """The image sample, preprocessed, in batches of batch_size (kept for every measurement)."""
        if self._pixels is None:
            from ....data.batches import image_batches

            c = self.cfg
            batches = image_batches(
                self.dataset, self.backbone.preprocessor, batch_size=c.batch_size, workers=c.workers,
                on_bad_image=c.on_bad_image, pin_memory=False,
            )  # fmt: skip
            self._pixels = [b.pixels for b in batches if len(b.indices)]
            if not self._pixels:
                raise SparsesteerError(f"no readable images in {c.dataset} [{c.split}]")
        return self._pixels

    def vocabulary(self) -> Vocabulary:
        from ....data.vocab import load_vocab

        return load_vocab(self.cfg.vocab, limit=self.cfg.vocab_limit)

    def vocab_embeddings(self, which: str) -> torch.Tensor:
        """V [C, e] of the trained model or of the control (saved by the vocab stage)."""
        import torch

        return torch.from_numpy(self.load_array(f"vocab_{which}"))

    # ------------------------------------------------------------------ SAEs
    def load_sae(self, i: int, device: Any = None) -> SparseAutoencoder:
        """SAE i, on the model's device (loading the model) unless `device` is given."""
        from ....sae import SparseAutoencoder

        return SparseAutoencoder.load(self.cfg.sae[i], device=self.backbone.device if device is None else device)

    def check_saes(self) -> None:
        """What needs only the SAEs, before the model is loaded: each loads and records its hook."""
        for i in range(len(self.cfg.sae)):
            self._recorded_hook(self.load_sae(i, device="cpu"), i)

    def _recorded_hook(self, sae: SparseAutoencoder, i: int) -> str:
        hook = sae.metadata.get("hook")
        if not hook:
            raise SparsesteerError(
                f"the SAE {self.cfg.sae[i]} records no hook point: steerability steers each SAE at its own hook"
            )
        return str(hook)

    def sae_hook(self, sae: SparseAutoencoder, i: int) -> str:
        """The hook SAE i records (cfg.json), as the model names it."""
        return str(self.backbone.hook_point(self._recorded_hook(sae, i)))

    def sae_hooks(self) -> list[str]:
        """The hook of each SAE, in --sae order."""
        return [self.sae_hook(self.load_sae(i), i) for i in range(len(self.cfg.sae))]

    def sae_at(self, hook: str) -> SparseAutoencoder:
        """The first SAE (in --sae order) steered at `hook`."""
        for i in range(len(self.cfg.sae)):
            sae = self.load_sae(i)
            if self.sae_hook(sae, i) == hook:
                return sae
        raise SparsesteerError(f"no SAE is steered at {hook}")

    @staticmethod
    def sae_label(path: str) -> str:
        return Path(path).resolve().name or str(path)
