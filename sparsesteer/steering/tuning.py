"""Hyper-parameter selection on a validation split carved from TRAIN, never on the test split: the
default grids, the validation split, grid searches over (lam, gamma) and line searches over one value.

Torch-free, so that command-line settings can take their defaults from here without slowing `--help`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..utils.errors import SparsesteerError

# Default VS2 grid: 20 x 20 points including the identity (lam = 0 or gamma = 1) so that the
# tuner may pick "no steering" when steering does not help on validation. The paper's best
# CIFAR-100 point (lam 2.1, gamma 1.5) lies inside it.
DEFAULT_LAMS = tuple(round(0.25 * i, 2) for i in range(20))  # 0 .. 4.75
DEFAULT_GAMMAS = tuple(round(1.0 + 0.1 * i, 2) for i in range(20))  # 1.0 .. 2.9
# CLIP steering (x + lam * (mean_{S+} x - mean_{S-} x)): lam up to the reach of lam * (gamma - 1) above.
DEFAULT_CLIP_LAMS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
# Weighted RAG (E = alpha q + (1 - alpha) sum w r): from 1 (plain zero-shot) down, so ties keep zero-shot.
DEFAULT_ALPHAS = tuple(round(1.0 - 0.05 * i, 2) for i in range(21))

N_NEIGHBOURS = 50
"""VS2++ and its baselines: neighbours retrieved per query (the paper's N; ablation: 10/25/50/100)."""


def validation_split(n: int, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices) of a fixed random split of n train items."""
    if not 0 < fraction < 1:
        raise SparsesteerError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = int(round(n * fraction))
    if n_val == 0 or n_val == n:
        raise SparsesteerError(
            f"validation split of {fraction:g} x {n} train items is empty (or leaves nothing to fit): use more train data "
            "or a larger --val-fraction"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class GridSearch:
    """Accuracy over a (lam, gamma) grid and the chosen point."""

    lams: list[float]
    gammas: list[float]
    accuracy: list[list[float]]
    """accuracy[i][j] for lams[i], gammas[j] (fraction in [0, 1])."""
    best_lam: float
    best_gamma: float
    best_accuracy: float
    split: str
    """Where the grid was evaluated (a validation split of train)."""
    n: int
    """Number of samples it was evaluated on."""

    def to_json(self) -> dict:
        return asdict(self)

    def heatmap(self, path: str | Path, *, title: str) -> Path:
        """PNG heatmap of the grid with the chosen point marked."""
        from ..utils.plots import grid_heatmap

        return grid_heatmap(
            path,
            100 * np.asarray(self.accuracy),
            rows=self.lams,
            cols=self.gammas,
            row_label="lambda",
            col_label="gamma",
            title=f"{title}\ntop-1 % on {self.split} (n={self.n})",
            value_label="top-1 %",
            mark=(self.lams.index(self.best_lam), self.gammas.index(self.best_gamma)),
            mark_label=f"chosen: lam={self.best_lam:g}, gamma={self.best_gamma:g} ({100 * self.best_accuracy:.2f}%)",
        )


def grid_search(
    score: Callable[[float, float], float],
    lams: Sequence[float] = DEFAULT_LAMS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    *,
    split: str,
    n: int,
) -> GridSearch:
    """Evaluate `score(lam, gamma)` on the grid; the best point wins, ties going to the first in
    (lam, gamma) order, i.e. the weakest steering."""
    if not lams or not gammas:
        raise SparsesteerError("the tuning grid is empty")
    from ..utils.progress import progress

    with progress(total=len(lams) * len(gammas), desc=f"grid on {split[:40]}", unit="point") as bar:
        acc = []
        for l in lams:
            row = []
            for g in gammas:
                row.append(float(score(float(l), float(g))))
                bar.update(1)
            acc.append(row)
    flat = np.asarray(acc)
    i, j = np.unravel_index(int(np.argmax(flat)), flat.shape)
    return GridSearch(
        lams=[float(v) for v in lams],
        gammas=[float(v) for v in gammas],
        accuracy=acc,
        best_lam=float(lams[int(i)]),
        best_gamma=float(gammas[int(j)]),
        best_accuracy=float(flat[i, j]),
        split=split,
        n=n,
    )


@dataclass
class LineSearch:
    """Accuracy over one hyper-parameter and the chosen value (ties: the first, i.e. the weakest)."""

    param: str
    """Name of the hyper-parameter (e.g. 'lam', 'alpha')."""
    values: list[float]
    accuracy: list[float]
    """accuracy[i] for values[i] (fraction in [0, 1])."""
    best_value: float
    best_accuracy: float
    split: str
    """Where it was evaluated (a validation split of train)."""
    n: int
    """Number of samples it was evaluated on."""

    def to_json(self) -> dict:
        return asdict(self)


def line_search(
    score: Callable[[float], float], values: Sequence[float], *, param: str, split: str, n: int
) -> LineSearch:
    """Evaluate `score(value)` for each value; the first best wins."""
    if not values:
        raise SparsesteerError(f"the {param} grid is empty")
    acc = [float(score(float(v))) for v in values]
    i = int(np.argmax(acc))
    return LineSearch(
        param=param,
        values=[float(v) for v in values],
        accuracy=acc,
        best_value=float(values[i]),
        best_accuracy=acc[i],
        split=split,
        n=n,
    )
