"""Reconstruction and sparsity metrics of an SAE over a whole activation source (one pass).

`evaluate`: FVU, cosine, L0 distribution, dead/dense latents over every row. `token_metrics`: the
same pass over a cache view split by token type and position (L0 and alive latents of the CLS row
vs the patch rows, mean L0 per patch position as a grid), for per-layer, per-token-type reports.
Both need only the SAE and activations (an SAE never sees the model; spliced-model metrics such as
% CE recovered live in `experiments/`)."""

from __future__ import annotations

from collections.abc import Sequence
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
from .base import SparseAutoencoder, SparseCodes

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
        x_hat = sae.decode(codes, like=x)
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


def eval_files(out: str | Path) -> tuple[Path, Path, Path]:
    """Every file `save_eval` writes to `out`: the JSON, the Markdown and the firing frequencies (.npy)."""
    json_path, md_path = eval_paths(out)
    return json_path, md_path, json_path.with_name(json_path.stem + "_firing_frequency.npy")


def save_eval(result: EvalResult, out: str | Path, *, context: dict[str, Any]) -> tuple[Path, Path]:
    """Write metrics JSON (with the context: SAE, activations, settings) and a Markdown table."""
    json_path, _, freq_path = eval_files(out)
    header = "\n".join(f"- {k}: {v}" for k, v in context.items() if not isinstance(v, dict))
    paths = write_result(
        json_path.parent,
        json_path.stem,
        {**context, "metrics": result.to_json()},
        result.to_markdown() + "\n" + header + "\n",
    )
    io.write_npy(freq_path, result.firing_frequency)
    return paths


def _check_rows(x_bd: torch.Tensor, start: int, source: RowSource, message: str) -> None:
    bad = ~torch.isfinite(x_bd).all(-1)
    if bool(bad.any()):
        row = start + int(bad.nonzero()[0, 0])
        raise SparsesteerError(message.format(row=describe_row(source, row)))


# ---------------------------------------------------------------------------- per token type
def l0_by_token(codes: SparseCodes, tokens_r: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed L0 [n_tokens], rows [n_tokens]) per token index: for the rows of a batch, how many
    latents are active (non-zero) summed by the token index each row comes from, and how many rows
    each token index has. Mean L0 at token t = sums[t] / rows[t]."""
    l0_r = (codes.values != 0).sum(-1).reshape(-1).to(torch.float64)
    tokens_r = tokens_r.reshape(-1).to(device=l0_r.device, dtype=torch.long)
    if tokens_r.shape != l0_r.shape:
        raise SparsesteerError(f"l0_by_token: {l0_r.numel()} rows of codes but {tokens_r.numel()} token indices")
    sums = torch.zeros(n_tokens, dtype=torch.float64, device=l0_r.device).index_add_(0, tokens_r, l0_r)
    rows = torch.bincount(tokens_r, minlength=n_tokens)
    return sums, rows


@dataclass
class TokenMetrics:
    """Metrics of one SAE on the rows of a cache view, overall and split by token type (CLS vs patch)
    and by token position. Token types follow the positions given to `token_metrics`; a type the
    view has no rows of gets None."""

    n_rows: int
    """Activation rows evaluated."""
    fvu: float
    """Fraction of variance unexplained over all rows (global mean, as `evaluate`)."""
    explained_variance: float
    """1 - fvu."""
    cosine: float
    """Mean cosine similarity between x and x_hat over all rows."""
    l0_mean: float
    """Mean number of active latents per row, all rows."""
    alive_frac: float
    """Fraction of latents active on at least one row."""
    l0_cls: float | None
    """Mean L0 of the CLS rows."""
    l0_patch: float | None
    """Mean L0 of the patch rows."""
    alive_cls: float | None
    """Fraction of latents active on at least one CLS row."""
    alive_patch: float | None
    """Fraction of latents active on at least one patch row."""
    cls_position: int | None
    """Token index of the CLS token (None: the model has none)."""
    patch_positions: list[int]
    """Token indices of the patch tokens, in raster order (row-major from the top-left patch)."""
    positions: list[int]
    """Token indices the view has rows of, increasing."""
    l0_by_position: list[float]
    """Mean L0 at each of `positions`."""
    rows_by_position: list[int]
    """Rows at each of `positions`."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def patch_grid(self) -> np.ndarray | None:
        """Mean L0 per patch position as a [side, side] grid (row-major from the top-left patch; NaN
        where the view has no rows), or None when the view has no patch rows or the patches do not
        form a square."""
        side = int(round(len(self.patch_positions) ** 0.5))
        if self.l0_patch is None or side * side != len(self.patch_positions):
            return None
        at = dict(zip(self.positions, self.l0_by_position))
        return np.array([at.get(p, np.nan) for p in self.patch_positions], dtype=np.float64).reshape(side, side)


@torch.no_grad()
def token_metrics(
    sae: SparseAutoencoder,
    source: RowSource,
    *,
    cls_position: int | None,
    patch_positions: Sequence[int],
    batch_size: int = 4096,
    device: torch.device | str | None = None,
) -> TokenMetrics:
    """Stream a cache view (anything with `read` and `row_index`, e.g. `RowView`) through the SAE once:
    explained variance, cosine, L0 and alive latents over all rows, and L0 and alive latents per token
    type (the CLS row at `cls_position`, patch rows at `patch_positions`) and per token position."""
    if batch_size < 1:
        raise SparsesteerError(f"batch_size must be >= 1, got {batch_size}")
    row_index = getattr(source, "row_index", None)
    if row_index is None:
        raise SparsesteerError("token_metrics needs a cache view (rows with their token index), e.g. cache.rows(hook)")
    device = torch.device(device) if device is not None else sae.device
    sae = sae.to(device).eval()
    n, d = source.n_rows, source.d
    if n == 0:
        raise SparsesteerError(f"token_metrics: {source.describe().get('path', 'the source')} has no rows")
    patch = [int(p) for p in patch_positions]
    n_tokens = max([*patch, -1 if cls_position is None else int(cls_position)]) + 1
    sum_x = torch.zeros(d, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    sum_err = torch.zeros((), dtype=torch.float64, device=device)
    sum_cos = torch.zeros((), dtype=torch.float64, device=device)
    fire_all = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    fire_cls = torch.zeros_like(fire_all)
    fire_patch = torch.zeros_like(fire_all)
    is_patch = torch.zeros(n_tokens, dtype=torch.bool, device=device)
    is_patch[patch] = True
    l0_sums = torch.zeros(n_tokens, dtype=torch.float64, device=device)
    rows = torch.zeros(n_tokens, dtype=torch.long, device=device)
    for s in progress(range(0, n, batch_size), desc="token metrics", unit="batch"):
        e = min(n, s + batch_size)
        x = source.read(s, e).to(device=device, dtype=torch.float32)
        tokens = torch.from_numpy(row_index(s, e)[:, 1]).to(device)
        if int(tokens.max()) >= n_tokens:  # tokens that are neither CLS nor patch (registers)
            grow = int(tokens.max()) + 1 - n_tokens
            n_tokens += grow
            is_patch, l0_sums, rows = (torch.cat([t, t.new_zeros(grow)]) for t in (is_patch, l0_sums, rows))
        _check_rows(x, s, source, "NaN or Inf in the activations at {row}: clean the activations")
        codes = sae.encode(x)
        x_hat = sae.decode(codes, like=x)
        _check_rows(x_hat, s, source, "the SAE's reconstruction of {row} is NaN or Inf although the input is finite")
        active = codes.values != 0
        fire_all[codes.indices[active]] = True
        if cls_position is not None:
            fire_cls[codes.indices[active & (tokens == cls_position)[:, None]]] = True
        fire_patch[codes.indices[active & is_patch[tokens][:, None]]] = True
        b_sums, b_rows = l0_by_token(codes, tokens, n_tokens)
        l0_sums += b_sums
        rows += b_rows
        x64, e64 = x.double(), (x - x_hat).double()
        sum_x += x64.sum(0)
        sum_x2 += x64.pow(2).sum()
        sum_err += e64.pow(2).sum()
        sum_cos += torch.nn.functional.cosine_similarity(x64, x_hat.double(), dim=-1).sum()
    total_var = float(sum_x2 - sum_x.pow(2).sum() / n)
    if not total_var > 0:
        raise SparsesteerError(f"the FVU of these activations is undefined: their {n} rows have no variance")
    fvu = float(sum_err) / total_var
    rows_np, sums_np = rows.cpu().numpy(), l0_sums.cpu().numpy()
    positions = [int(p) for p in np.flatnonzero(rows_np)]

    def mean_l0(where: list[int]) -> float | None:
        count = int(rows_np[where].sum())
        return float(sums_np[where].sum()) / count if count else None

    cls_rows = [] if cls_position is None else [int(cls_position)]
    l0_cls, l0_patch = mean_l0(cls_rows), mean_l0(patch)
    return TokenMetrics(
        n_rows=n,
        fvu=fvu,
        explained_variance=1.0 - fvu,
        cosine=float(sum_cos) / n,
        l0_mean=float(sums_np.sum()) / n,
        alive_frac=float(fire_all.double().mean()),
        l0_cls=l0_cls,
        l0_patch=l0_patch,
        alive_cls=None if l0_cls is None else float(fire_cls.double().mean()),
        alive_patch=None if l0_patch is None else float(fire_patch.double().mean()),
        cls_position=cls_position,
        patch_positions=patch,
        positions=positions,
        l0_by_position=[float(sums_np[p] / rows_np[p]) for p in positions],
        rows_by_position=[int(rows_np[p]) for p in positions],
    )
