"""Resumable experiment stages, shared by every paper's pipeline: each stage records a hash of the
settings it used (its own fields plus its inputs' hashes), so that rerunning an experiment skips
stages whose results are current and redoes those whose settings changed, and any stage can be run
alone. A stage is a function of the paper's run context (`vs2.run.VS2Run`, ...): the context holds
what every stage reads, the stage table holds the order."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..utils import io
from ..utils.config import to_dict
from ..utils.errors import SparsesteerError, unknown
from ..utils.settings_hash import settings_sha256

Ctx = TypeVar("Ctx")
"""The run context a paper's stages read and write through."""


@dataclass(frozen=True)
class Stage(Generic[Ctx]):
    """One step of an experiment."""

    name: str
    fields: tuple[str, ...]
    """Config fields whose values change this stage's results."""
    needs: tuple[str, ...]
    """Stages whose results this one reads."""
    run: Callable[[Ctx], None]
    """Does the work, through the run context."""
    help: str
    """One line, logged when the stage starts."""


class Pipeline(Generic[Ctx]):
    """Run stages in order, skipping those whose recorded settings hash is current."""

    def __init__(self, out: Path, config: Any, stages: Sequence[Stage[Ctx]]):
        self.out = out
        self.config = to_dict(config)
        self.stages = list(stages)
        self.by_name = {s.name: s for s in stages}

    def digest(self, name: str) -> str:
        stage = self.by_name[name]
        payload = {
            "stage": name,
            "fields": {f: self.config[f] for f in stage.fields},
            "needs": {n: self.digest(n) for n in stage.needs},
        }
        return settings_sha256(payload)

    def _marker(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"

    def is_current(self, name: str) -> bool:
        marker = self._marker(name)
        return marker.is_file() and io.read_json(marker).get("settings_sha256") == self.digest(name)

    def run(self, context: Ctx, only: str | None = None, *, log: Callable[[str], None] = print) -> None:
        """Run every stage that is not current (or `only` that one, once its inputs are current)."""
        if only is not None and only not in self.by_name:
            raise unknown("stage", only, self.by_name)
        io.remove_stale_temps(self.out)  # half-written files of a run that was killed
        for stage in self.stages:
            if only is not None and stage.name != only:
                continue
            if only is not None:
                stale = [n for n in stage.needs if not self.is_current(n)]
                if stale:
                    raise SparsesteerError(
                        f"stage {stage.name!r} needs the results of {', '.join(stale)} (missing or made with other settings): "
                        "run the whole experiment, or those stages first"
                    )
            if self.is_current(stage.name) and only is None:
                log(f"[{stage.name}] up to date, skipped")
                continue
            log(f"[{stage.name}] {stage.help}")
            t0 = time.time()
            stage.run(context)
            io.write_json(
                self._marker(stage.name),
                {
                    "stage": stage.name,
                    "settings_sha256": self.digest(stage.name),
                    "seconds": round(time.time() - t0, 1),
                    "finished": datetime.now().isoformat(timespec="microseconds"),
                },
            )
