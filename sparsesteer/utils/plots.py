"""Reusable matplotlib plots, written as PNG by the commands that produce their data.

One home for the figure boilerplate (headless backend, atomic save, close) and for the plots that
several reports share: values by layer, a grid heatmap, per-class deltas, FVU against L0 across a
sweep, and the latent frequency histogram. Each plot function takes plain numbers and a title that
names the model, data and split, and returns the path it wrote. The binning and ordering that a
plot does are in small pure functions (`frequency_bins`, `sweep_curves`) so that tests check them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path


@contextmanager
def figure(path: str | Path, *, figsize: tuple[float, float] = (6, 3.8), dpi: int = 120, **subplots: Any) -> Iterator:
    """`with figure(path) as (fig, ax): ...` draws, then saves the PNG atomically and closes it.

    Extra keywords go to `plt.subplots` (e.g. nrows/ncols/squeeze for a grid of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, **subplots)
    try:
        yield fig, ax
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


def by_layer(
    path: str | Path,
    series: Sequence[tuple[str, Sequence[tuple[int, float]]]],
    *,
    ylabel: str,
    title: str,
    xlabel: str = "block (0-based)",
) -> Path:
    """One line per series of (block, value) points, e.g. L0 by layer for each token type."""
    from matplotlib.ticker import MaxNLocator

    with figure(path) as (_, ax):
        for label, points in series:
            pts = [(b, v) for b, v in points if v is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=label)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
        if any(points for _, points in series):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return Path(path)


def grid_heatmap(
    path: str | Path,
    values: np.ndarray,
    *,
    rows: Sequence[float],
    cols: Sequence[float],
    row_label: str,
    col_label: str,
    title: str,
    value_label: str,
    mark: tuple[int, int] | None = None,
    mark_label: str = "",
) -> Path:
    """A [rows, cols] grid of values (e.g. accuracy over lambda x gamma), with one cell marked."""
    values = np.asarray(values, dtype=float)
    if values.shape != (len(rows), len(cols)):
        raise ValueError(f"grid of shape {values.shape} does not match {len(rows)} rows x {len(cols)} columns")
    with figure(path, figsize=(7.5, 6)) as (fig, ax):
        im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows], fontsize=7)
        ax.set_xlabel(col_label)
        ax.set_ylabel(row_label)
        if mark is not None:
            ax.scatter([mark[1]], [mark[0]], marker="*", s=180, c="red", label=mark_label)
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label=value_label)
    return Path(path)


def deltas_bar(path: str | Path, deltas: Sequence[float], *, xlabel: str, ylabel: str, title: str) -> Path:
    """Bars of signed changes in the given order (red below zero, green above), e.g. per class."""
    deltas = [float(d) for d in deltas]
    with figure(path, figsize=(max(6, 0.12 * len(deltas)), 4)) as (_, ax):
        ax.bar(range(len(deltas)), deltas, color=["tab:red" if d < 0 else "tab:green" for d in deltas])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    return Path(path)


def sweep_curves(points: Sequence[dict[str, Any]], *, group: str | None) -> dict[str, list[tuple[float, float, str]]]:
    """Group sweep members into curves of (L0, FVU, name), each sorted by L0.

    `points` have keys `l0`, `fvu`, `name` and the `group` key (e.g. `arch`); members without
    finite L0 or FVU are left out (a member that never trained has nothing to show)."""
    curves: dict[str, list[tuple[float, float, str]]] = {}
    for p in points:
        l0, fvu = p.get("l0"), p.get("fvu")
        if l0 is None or fvu is None or not (np.isfinite(l0) and np.isfinite(fvu)):
            continue
        key = str(p.get(group, "")) if group else ""
        curves.setdefault(key, []).append((float(l0), float(fvu), str(p.get("name", ""))))
    return {k: sorted(v) for k, v in curves.items()}


def fvu_vs_l0(path: str | Path, points: Sequence[dict[str, Any]], *, title: str, group: str | None = "arch") -> Path:
    """FVU against L0 across a sweep: the sparsity / reconstruction trade-off, one curve per group."""
    curves = sweep_curves(points, group=group)
    with figure(path, figsize=(5.5, 4)) as (_, ax):
        for key, pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key or None)
            for l0, fvu, name in pts:
                ax.annotate(name, (l0, fvu), fontsize=6, alpha=0.7)
        ax.set_xlabel("L0 (active latents per row)")
        ax.set_ylabel("FVU (fraction of variance unexplained)")
        ax.set_title(title, fontsize=8)
        if any(curves):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return Path(path)


def frequency_bins(frequency: np.ndarray, *, n_bins: int = 40) -> tuple[np.ndarray, np.ndarray, int]:
    """(log10 bin edges, counts, number of latents that never fire) of per-latent firing frequencies.

    Dead latents (frequency 0) have no logarithm: they are counted apart, not dropped silently."""
    f = np.asarray(frequency, dtype=np.float64)
    alive = f[f > 0]
    dead = int(f.size - alive.size)
    if alive.size == 0:
        return np.array([-1.0, 0.0]), np.zeros(1, dtype=np.int64), dead
    lo, hi = np.log10(alive.min()), np.log10(alive.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(np.log10(alive), bins=n_bins, range=(lo, hi))
    return edges, counts.astype(np.int64), dead


def frequency_histogram(
    path: str | Path, frequency: np.ndarray, *, title: str, dense_threshold: float | None = None, n_bins: int = 40
) -> Path:
    """Histogram of log10 latent firing frequency, with the dead count and an optional density line."""
    edges, counts, dead = frequency_bins(frequency, n_bins=n_bins)
    with figure(path, figsize=(6, 3.8)) as (_, ax):
        ax.stairs(counts, edges, fill=True, alpha=0.7)
        if dense_threshold:
            ax.axvline(np.log10(dense_threshold), color="tab:red", lw=1, label=f"dense > {dense_threshold:g}")
            ax.legend(fontsize=7)
        ax.set_xlabel("log10 firing frequency (fraction of rows)")
        ax.set_ylabel("latents")
        ax.set_title(f"{title}\n{len(np.asarray(frequency))} latents, {dead} never fire", fontsize=8)
    return Path(path)
