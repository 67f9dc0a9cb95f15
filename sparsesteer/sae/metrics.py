"""Reconstruction and sparsity metrics of an SAE over a whole activation source (one pass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..activations.loader import RowSource, describe_row
from ..utils import io
from ..utils.errors import SparsesteerError
from ..utils.progress import progress
from ..utils.report import md_table, write_result
from .base import SparseAutoencoder

L0_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


@dataclass
class EvalResult:
    """Metrics of one SAE on one set of activations."""

    n_rows: int
    """Activation rows evaluated."""
    fvu: float
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (global mean)."""
    explained_variance: float
    """1 - fvu."""
    mse: float
    """Mean squared error per element."""
    cosine: float
    """Mean cosine similarity between x and x_hat."""
    l0_mean: float
    """Mean number of active latents per row."""
    l0_std: float
    """Standard deviation of the active-latent count."""
    l0_quantiles: dict[str, float]
    """Quantiles of the active-latent count (keys '0', '0.01', ... '1')."""
    l0_histogram: dict[str, list[float]]
    """Histogram of the active-latent count: bin edges and counts."""
    dead_frac: float
    """Fraction of latents that never fire on these rows."""
    dense_frac: float
    """Fraction of latents firing on more than `dense_threshold` of the rows."""
    dense_threshold: float
    """Firing frequency above which a latent counts as dense."""
    firing_frequency: np.ndarray = field(repr=False)
    """[n_latents] fraction of rows on which each latent fires (not in the JSON; see save)."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("firing_frequency")
        return d

    def to_markdown(self, title: str = "SAE evaluation") -> str:
        rows = [
            ("rows", f"{self.n_rows:,}"),
            ("FVU", f"{self.fvu:.4f}"),
            ("explained variance", f"{100 * self.explained_variance:.2f}%"),
            ("MSE", f"{self.mse:.4g}"),
            ("cosine(x, x_hat)", f"{self.cosine:.4f}"),
            ("L0 mean (std)", f"{self.l0_mean:.2f} ({self.l0_std:.2f})"),
            (
                "L0 median [p1, p99]",
                f"{self.l0_quantiles['0.5']:.0f} [{self.l0_quantiles['0.01']:.0f}, {self.l0_quantiles['0.99']:.0f}]",
            ),
            ("dead latents", f"{100 * self.dead_frac:.2f}%"),
            (f"dense latents (> {self.dense_threshold:g})", f"{100 * self.dense_frac:.2f}%"),
        ]
        return f"## {title}\n\n" + md_table(["metric", "value"], rows) + "\n"


@torch.no_grad()
def evaluate(
    sae: SparseAutoencoder,
    source: RowSource,
    *,
    batch_size: int = 4096,
    max_rows: int | None = None,
    dense_threshold: float | None = None,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Stream the source in order through the SAE and accumulate metrics in float64.

    A NaN or Inf in the activations or in the SAE's output, or a metric that is not a number (no
    variance to explain), is an error naming the source row at fault."""
    if batch_size < 1:
        raise SparsesteerError(f"batch_size must be >= 1, got {batch_size}")
    if max_rows is not None and max_rows < 1:
        raise SparsesteerError(f"max_rows must be >= 1, got {max_rows}")
    device = torch.device(device) if device is not None else sae.device
    sae = sae.to(device).eval()
    n = source.n_rows if max_rows is None else min(max_rows, source.n_rows)
    d = source.d
    sum_x = torch.zeros(d, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    sum_err = torch.zeros((), dtype=torch.float64, device=device)
    sum_cos = torch.zeros((), dtype=torch.float64, device=device)
    fire = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
    l0s: list[torch.Tensor] = []
    for s in progress(range(0, n, batch_size), desc="evaluate", unit="batch"):
        x = source.read(s, min(n, s + batch_size)).to(device=device, dtype=torch.float32)
        _check_rows(x, s, source, "NaN or Inf in the activations at {row}: clean the activations")
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
        _check_rows(
            x_hat,
            s,
            source,
            "the SAE's reconstruction of {row} is NaN or Inf although the input is finite: the SAE's weights are "
            "broken, or the activations are too large for it (float32 overflow)",
        )
        active = codes.values != 0
        fire += torch.bincount(codes.indices[active], minlength=sae.n_latents)
        l0s.append(active.sum(-1).cpu())
        x64, e64 = x.double(), (x - x_hat).double()
        sum_x += x64.sum(0)
        sum_x2 += x64.pow(2).sum()
        sum_err += e64.pow(2).sum()
        sum_cos += torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=-1).sum()
    total_var = float(sum_x2 - sum_x.pow(2).sum() / n)
    if not total_var > 0:
        raise SparsesteerError(
            f"the FVU of these activations is undefined: their {n} rows have no variance (all equal); "
            "evaluate on more, or on varied, rows"
        )
    fvu = float(sum_err) / total_var
    l0 = torch.cat(l0s).double().numpy()
    freq = (fire.double() / n).cpu().numpy()
    thr = dense_threshold if dense_threshold is not None else sae.cfg.dense_threshold
    counts, edges = np.histogram(l0, bins=min(50, max(1, int(l0.max()) + 1)))
    return EvalResult(
        n_rows=n,
        fvu=fvu,
        explained_variance=1.0 - fvu,
        mse=float(sum_err) / (n * d),
        cosine=float(sum_cos) / n,
        l0_mean=float(l0.mean()),
        l0_std=float(l0.std()),
        l0_quantiles={f"{q:g}": float(np.quantile(l0, q)) for q in L0_QUANTILES},
        l0_histogram={"edges": edges.tolist(), "counts": counts.astype(float).tolist()},
        dead_frac=float((freq == 0).mean()),
        dense_frac=float((freq > thr).mean()),
        dense_threshold=thr,
        firing_frequency=freq,
    )


def eval_paths(out: str | Path) -> tuple[Path, Path]:
    """(JSON path, Markdown path) of an evaluation written to `out`: a .json file, or a directory
    (an existing directory always counts as one) that gets eval.json."""
    out = Path(out)
    json_path = out if out.suffix == ".json" and not out.is_dir() else out / "eval.json"
    return json_path, json_path.with_suffix(".md")


def save_eval(result: EvalResult, out: str | Path, *, context: dict[str, Any]) -> tuple[Path, Path]:
    """Write metrics JSON (with the context: SAE, activations, settings) and a Markdown table."""
    json_path, _ = eval_paths(out)
    header = "\n".join(f"- {k}: {v}" for k, v in context.items() if not isinstance(v, dict))
    paths = write_result(
        json_path.parent,
        json_path.stem,
        {**context, "metrics": result.to_json()},
        result.to_markdown() + "\n" + header + "\n",
    )
    io.write_npy(json_path.with_name(json_path.stem + "_firing_frequency.npy"), result.firing_frequency)
    return paths


def _check_rows(x_bd: torch.Tensor, start: int, source: RowSource, message: str) -> None:
    bad = ~torch.isfinite(x_bd).all(-1)
    if bool(bad.any()):
        row = start + int(bad.nonzero()[0, 0])
        raise SparsesteerError(message.format(row=describe_row(source, row)))
