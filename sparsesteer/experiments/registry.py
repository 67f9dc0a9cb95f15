"""The experiments `sparsesteer reproduce` knows, by name: one subpackage per paper.

A paper's subpackage (`experiments/vs2/`, `experiments/clipsteer/sparsity/`, `experiments/clipsteer/steerability/`, ...) exposes `EXPERIMENT`, an
`Experiment` that names its settings dataclass, its stage table and its entry point. Importing it
must not import torch: the CLI builds `--help` from it. Add a paper by adding its subpackage here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import unknown
from .stages import Stage

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PACKAGES = {
    "vs2": "sparsesteer.experiments.vs2",
    "sparsity": "sparsesteer.experiments.clipsteer.sparsity",
    "steerability": "sparsesteer.experiments.clipsteer.steerability",
    "disentangle": "sparsesteer.experiments.clipsteer.disentangle",
    "typographic": "sparsesteer.experiments.clipsteer.typographic",
    "testbed": "sparsesteer.experiments.testbed",
}
"""Experiment name -> the subpackage that holds it (in `reproduce --help` order)."""


@dataclass(frozen=True)
class Experiment:
    """What `sparsesteer reproduce NAME` needs from a paper's subpackage."""

    name: str
    """The command-line name (`reproduce NAME`)."""
    summary: str
    """One line: which tables of which paper."""
    examples: str
    """Example command lines for `--help`."""
    config: type[DataclassInstance]
    """The settings dataclass (torch-free; its fields become the flags)."""
    stages: Sequence[Stage[Any]]
    """The stage table, in run order (`--stage NAME` takes one of their names)."""
    run: Callable[[Any, Path, str | None], Path]
    """run(settings, out, only_stage) -> the results.md it wrote."""


def names() -> list[str]:
    return list(PACKAGES)


def get(name: str) -> Experiment:
    """The experiment called `name` (an unknown name is an error with a suggestion)."""
    if name not in PACKAGES:
        raise unknown("experiment", name, PACKAGES)
    return importlib.import_module(PACKAGES[name]).EXPERIMENT
