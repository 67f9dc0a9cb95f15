"""Settings of `sparsesteer reproduce steerability` (no torch import: the CLI builds --help from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ....steering.settings import SteerabilitySettings
from ....utils.errors import SparsesteerError
from ....utils.options import RunOptions, positive_int

PAPER_MODEL = "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
"""The model of the authors' code (its hub repository also holds transformers-format weights)."""


@dataclass(frozen=True, kw_only=True)
class SteerabilityConfig(SteerabilitySettings, RunOptions):
    """Settings of one `reproduce steerability` run (the measurement's own fields come from
    `steering.settings.SteerabilitySettings`)."""

    model: str = PAPER_MODEL
    """CLIP model (hub id or save_pretrained directory) the SAEs were trained on."""
    sae: tuple[str, ...]
    """SAE directories (each steered at its own hook); repeat --sae for several."""
    dataset: str
    """Images: a built-in name, folder:PATH or hf:REPO_ID (the paper: ImageNet val)."""
    split: str = "test"
    """Split of the images."""
    data_root: str | None = None
    """Where built-in datasets live (downloaded there when missing); None = SPARSESTEER_DATA or ~/.cache."""
    n_images: int | None = 192
    """Images the means run over: a class-stratified sample drawn with image_seed (the paper: 192); None = all."""
    image_seed: int = 0
    """Seed of the image sample."""
    vocab: str = "imagenet1k"
    """Concept vocabulary: a text file (one concept per line) or imagenet1k / cifar100 (the paper: the first
    5,000 lines of CLIP-Dissect's 20k.txt, see docs/steering.md)."""
    vocab_limit: int | None = None
    """Keep the first N concept lines of the vocabulary (5000 with CLIP-Dissect's 20k.txt)."""
    vocab_template: str = "{}"
    """Text embedded for each concept ('{}' = the bare word)."""
    latent_fraction: float = 0.05
    """Fraction of each SAE's latents measured: a seeded random sample (the paper: 1/20)."""
    seed: int = 0
    """Seed of the latent (and neuron) samples."""
    neurons: bool = True
    """Also measure residual neurons at each SAE's hook (the baseline)."""
    neuron_fraction: float = 1.0
    """Fraction of the residual dimensions measured (1 = all neurons)."""
    control: bool = True
    """Also measure the same latents and neurons on a randomly initialised copy of the model (chance level)."""
    control_seed: int = 1
    """Seed of the random re-initialisation."""
    allow_mismatch: bool = False
    """Run even when an SAE's model, revision or tokens disagree with the model and the edit (the outputs say so)."""

    def __post_init__(self) -> None:
        if not self.sae:
            raise SparsesteerError("give at least one --sae DIR")
        if not str(self.dataset).strip():
            raise SparsesteerError("--dataset is empty")
        if self.n_images is not None:
            positive_int(self.n_images, "--n-images")
        if self.vocab_limit is not None:
            positive_int(self.vocab_limit, "--vocab-limit")
        if self.vocab_template.count("{}") != 1:
            raise SparsesteerError(f"--vocab-template must contain one '{{}}', got {self.vocab_template!r}")
        for name in ("latent_fraction", "neuron_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise SparsesteerError(f"--{name.replace('_', '-')} must be in (0, 1], got {value!r}")
        super().__post_init__()
