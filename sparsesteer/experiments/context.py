"""What every paper's run context shares: its settings, its run directory and the model, loaded once.

A paper's `run.py` subclasses `RunContext` and adds what its stages read (arrays, datasets, SAEs);
`check_backbone` refuses a model the experiment cannot use, when it is first loaded. Importing this
module does not import torch (the CLI builds `--help` from the packages that import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..activations.cache import ActivationCache, DType
    from ..activations.produce import CacheConfig
    from ..data.datasets import ImageDataset
    from ..models.backbone import Backbone, ModelShape
    from ..models.hook_names import TokenSelection


class RunContext:
    """`cfg` (a settings dataclass with `model`, `device` and optionally `revision`) and `out`."""

    def __init__(self, cfg: Any, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)
        self._bb: Backbone | None = None
        self._shape: ModelShape | None = None

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.out.joinpath(*parts)

    @property
    def backbone(self) -> Backbone:
        """The model, loaded on first use (on `cfg.device`, at `cfg.revision` when the settings have one)."""
        if self._bb is None:
            from ..models import load_backbone
            from ..utils.device import resolve_device

            bb = load_backbone(
                self.cfg.model, device=resolve_device(self.cfg.device), revision=getattr(self.cfg, "revision", None)
            )
            self.check_backbone(bb)
            self._bb = bb
        return self._bb

    @property
    def shape(self) -> ModelShape:
        """The model's geometry from its config alone (`models.backbone.model_shape`): what the settings
        are checked against before the model loads (seconds to minutes)."""
        if self._shape is None:
            from ..models.backbone import model_shape

            self._shape = model_shape(self.cfg.model, getattr(self.cfg, "revision", None))
        return self._shape

    def write_cache(self, cfg: CacheConfig) -> None:
        """Cache `cfg` into `cfg.out` with the run's model, recording the settings that change its rows
        beside it (`OUT.settings.json`): a cache made with other settings is removed and redone, one
        with the same settings resumes."""
        import dataclasses
        import shutil

        from ..activations.produce import cache_activations
        from ..utils import io
        from ..utils.config import to_dict

        record = Path(f"{cfg.out}.settings.json")
        settings = to_dict(dataclasses.replace(cfg, batch_size=1, workers=0, device="auto"))  # what changes rows
        if record.exists() and io.read_json(record) != settings:
            shutil.rmtree(cfg.out, ignore_errors=True)
        io.write_json(record, settings)
        cache_activations(cfg, backbone=self.backbone)

    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse a model this experiment cannot use (a SparsesteerError naming it); any by default."""


class TrainTestRun(RunContext):
    """A run over a train and a test split of one dataset, each optionally a `--limit` sample
    (`cfg.dataset`, `train_split`, `test_split`, `limit_train`, `limit_test`, `seed`, `data_root` and
    the run options): the limited splits, opened (downloaded if missing) once, and the settings of
    the activation caches the stages write."""

    def __init__(self, cfg: Any, out: str | Path):
        super().__init__(cfg, out)
        self._ds: dict[str, ImageDataset] = {}
        self._paired: set[str] = set()

    def limit(self, split: str) -> int | None:
        c = self.cfg
        return c.limit_train if split == c.train_split else c.limit_test

    def dataset(self, split: str) -> ImageDataset:
        """The (limited) split, downloading a built-in dataset first when it is not under the data root."""
        if split not in self._ds:
            from ..data import ensure_dataset, limit_dataset

            c = self.cfg
            ds = limit_dataset(ensure_dataset(c.dataset, split, data_root=c.data_root), self.limit(split), c.seed)
            self.check_dataset(ds)
            self._ds[split] = ds
        return self._ds[split]

    def check_dataset(self, dataset: ImageDataset) -> None:
        """Refuse a dataset this experiment cannot use (a SparsesteerError naming it); any by default."""

    def open_cache(self, split: str, path: str | Path) -> ActivationCache:
        """The run's activation cache of `split` (no checksums: the run wrote it), checked once to hold
        the images `dataset(split)` opens now (`activations.pairing`): a stage that is current keeps
        its cache while --data-root or the files under it may have changed since."""
        from ..activations.cache import ActivationCache
        from ..activations.pairing import check_cache_dataset

        cache = ActivationCache.open(path, verify="none")
        if split not in self._paired:
            check_cache_dataset(cache, self.dataset(split), what=f"--dataset {self.cfg.dataset} [{split}]")
            self._paired.add(split)
        return cache

    def cache_config(
        self,
        split: str,
        hooks: Sequence[str],
        tokens: TokenSelection,
        out: str | Path,
        *,
        model: str | None = None,
        dtype: DType = "float32",
    ) -> CacheConfig:
        """The settings of an activation cache of `split` (the limited sample, the run's options)."""
        from ..activations.produce import CacheConfig

        c = self.cfg
        return CacheConfig(
            model=model or c.model,
            revision=None if model else getattr(c, "revision", None),
            dataset=c.dataset,
            split=split,
            hooks=tuple(hooks),
            tokens=tokens,
            out=str(out),
            dtype=dtype,
            batch_size=c.batch_size,
            limit=self.limit(split),
            limit_seed=c.seed,
            workers=c.workers,
            device=c.device,
            data_root=c.data_root,
            on_bad_image=c.on_bad_image,
        )
