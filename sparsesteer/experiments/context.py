"""What every paper's run context shares: its settings, its run directory and the model, loaded once.

A paper's `run.py` subclasses `RunContext` and adds what its stages read (arrays, datasets, SAEs);
`check_backbone` refuses a model the experiment cannot use, when it is first loaded. Importing this
module does not import torch (the CLI builds `--help` from the packages that import it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models.backbone import Backbone


class RunContext:
    """`cfg` (a settings dataclass with `model`, `device` and optionally `revision`) and `out`."""

    def __init__(self, cfg: Any, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)
        self._bb: Backbone | None = None

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

    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse a model this experiment cannot use (a SparsesteerError naming it); any by default."""
