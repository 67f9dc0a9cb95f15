"""Settings of `sparsesteer interpret` (torch-free: `--help` builds from here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.errors import SparsesteerError
from ..utils.options import DeviceOptions, positive_int


@dataclass(frozen=True, kw_only=True)
class InterpretConfig(DeviceOptions):
    """Settings of `sparsesteer interpret`."""

    sae: str
    """SAE directory (sparsesteer, sparsify or SAELens layout)."""
    out: str
    """Statistics directory to write (stats.json + stats.safetensors [+ montages/])."""
    activations: str | None = None
    """Activation cache directory (its manifest names the dataset the images come from); or give --model
    and --dataset to compute the activations while the pass runs (no cache)."""
    hook: str | None = None
    """Hook point of a multi-hook cache; None = the SAE's hook."""
    tokens: str | None = None
    """cls, patch or all rows of the cache; None = the SAE's token selection (or every cached row)."""
    dataset: str | None = None
    """Dataset spec of the images (montages, and what the statistics record); None = the cache's. It
    must hold the cache's images (same split, number, class names and labels). Without --activations:
    the images to run --model on."""
    split: str | None = None
    """Split of --dataset: with --activations checked against the cache's (None = the cache's); without,
    the split to run --model on (None = train)."""
    limit: int | None = None
    """Without --activations: a stratified sample of this many images (seed 0); None = all."""
    image_batch_size: int = 64
    """Without --activations: images per forward pass (does not change the results)."""
    data_root: str | None = None
    """Where built-in datasets live; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    top_n: int = 10
    """Top images kept per latent and ranking."""
    n_bins: int = 50
    """Bins of each latent's activation histogram (log10-spaced)."""
    hist_min: float = 1e-3
    """Lower edge of the histogram (smaller activations count in the first bin)."""
    hist_max: float = 1e3
    """Upper edge of the histogram (larger activations count in the last bin)."""
    batch_size: int = 4096
    """Rows per chunk (rounded down to whole images; does not change the results)."""
    max_images: int | None = None
    """Use only the first N images of the cache; None = all."""
    neighbours: int = 10
    """Nearest latents by decoder cosine kept per latent; 0 = none."""
    samples: int = 4
    """Beyond the top images: random images (seed 0) per activation interval (4 per latent) and among all
    the images where the latent fires; 0 = none."""
    vocab: str | None = None
    """Concept lens (SAEs on the final CLS of a CLIP model): imagenet1k, cifar100 or a text file of words;
    None = no lens."""
    lens_k: int = 10
    """Words kept per latent by the concept lens."""
    labels: str | None = None
    """CLIP-Dissect labels for every latent (any block and tokens; a model with a text tower): imagenet1k,
    cifar100, classes (the dataset's class names) or a text file of words; None = no labels. Costs one
    forward pass of the model over the images in the latents' top sets."""
    labels_k: int = 5
    """Best concepts kept per latent by --labels (the first is its label)."""
    labels_images: int = 100
    """Top images per latent that the --labels score reads (CLIP-Dissect's top-k)."""
    model: str | None = None
    """Model (hub id or directory) whose activations --dataset gives when there is no --activations; also
    the model of the concept lens and of --labels (None = the model the cache records)."""
    text_cache: str | None = None
    """Directory caching the text embeddings of --vocab and --labels; None = no cache."""
    montages: int = 0
    """Write montages/latent_J.png (top images with patch heatmaps) for the N most frequent latents; 0 = none."""
    allow_mismatch: bool = False
    """Run even when the SAE and the activations disagree on model, revision, hook or tokens, or when
    --dataset names the cache's images under another spec or split (the images moved); stats.json then
    lists the disagreements."""

    def __post_init__(self) -> None:
        if self.activations is None and not (self.model and self.dataset):
            raise SparsesteerError("give --activations CACHE, or --model M and --dataset D to compute them on the fly")
        if self.limit is not None:
            positive_int(self.limit, "--limit")
        for name in ("top_n", "n_bins", "batch_size", "lens_k", "labels_k", "labels_images", "image_batch_size"):
            positive_int(getattr(self, name), "--" + name.replace("_", "-"))
        if self.max_images is not None:
            positive_int(self.max_images, "--max-images")
        for name in ("neighbours", "montages", "samples"):
            if getattr(self, name) < 0:
                raise SparsesteerError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.hist_min < self.hist_max:
            raise SparsesteerError(f"need 0 < --hist-min < --hist-max, got {self.hist_min} and {self.hist_max}")
        super().__post_init__()
