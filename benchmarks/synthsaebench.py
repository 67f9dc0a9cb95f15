"""sparsesteer's trainers on SynthSAEBench (Chanin & Garriga-Alonso, arXiv 2602.14687), beside SAELens'
own training of the same architectures, scored by SAELens' own `eval_sae_on_synthetic_data` (issue 24).

The benchmark's synthetic model is built locally with `sae_lens.synthetic.SyntheticModel`:
`--features` true features in `--d` dimensions, Zipfian firing, a hierarchy whose children are
mutually exclusive and scaled by their parent, low-rank correlations, and a dictionary
orthogonalised by gradient descent. At the full size (16,384 x 768) the orthogonalisation costs about
16 s a step on a 2-core CPU (about 27 minutes at the published 100 steps). The model is therefore
built once, saved with the module's own `save` to `--model-dir`, and loaded on later runs. A saved
model whose settings differ from the ones asked for is refused. `--model-source REPO[:PATH]` (or a
directory) loads an existing model instead, e.g. the published
`decoderesearch/synth-sae-bench-16k-v2` with `SyntheticModel.load_from_source` (needs the Hub).

SETTINGS: `v2_config` at its defaults is the published SynthSAEBench-16k (v2) configuration, field
for field, as given in SAELens' `docs/synth_sae_bench.md` (github.com/decoderesearch/SAELens, commit
53c8beac958e0259cca46ca5c249810f8bdc88ac, read 2026-12-07): Zipf exponent 0.5 from 0.4 down to 5e-4;
128 roots, branching 4, depth 3, all children mutually exclusive from depth 0, probabilities
compensated, children scaled by their parent (v1 lacks this); 100 orthogonalisation steps at lr 3e-4;
rank-25 correlations of scale 0.1; mean magnitudes linear from 5 to 4, standard deviations folded
normal (0.5, 0.5); bias norm 0.5; seed 42. The same file gives the published tables (`PUBLISHED`).
Its true L0 is about 34 over all 16,384 features and about 25 over the 4,096 most frequent ones (the
recommended SAE width), which is why the published runs target L0 25 (and 20).

Each run (architecture x L0 x seed x library) sees the same data. Rows come in blocks of `BLOCK`
samples and block b is drawn with the torch seed (`--data-seed`, b). The blocks are written once to
`--out`/data-*.npy (memory-mapped, resumable; `--no-store` draws them in every run instead), because
drawing a full-size block costs several times more than training on it. sparsesteer's trainer reads
the rows as a row source (`SyntheticRows`) and shuffles within its buffer. SAELens' `SAETrainer`
reads the same blocks in order as batches. Both get the same budget (`--samples`, batch `--batch`)
and use their own defaults for everything else: learning rate and schedule, AuxK, initialisation,
decoder normalisation. Each trained SAE is then loaded through SAELens' own loader: sparsesteer's
through `sparsesteer export --format saelens`, SAELens' through its `save_inference_model`. Each is
scored by `eval_sae_on_synthetic_data` on the same `--eval-samples` rows (torch seed `--eval-seed`).
The scores are therefore the benchmark's code, not ours. Wall time is the training call alone,
reading the stored rows included.

Budget: 2M samples per run by default. Measured on this 2-core CPU under a load average of 13
(other jobs running), at full size: a sparsesteer TopK step (width 4,096, k 25, 1,024 rows) takes
0.7-1.0 s, and drawing 4,096 rows of the 16,384-feature model takes about 21 s. 2M samples are about
2,000 steps, so one run is 23-33 minutes at that load, and the 18 runs of an architecture (3 L0s x 3
seeds x 2 trainers) 7-10 hours. On an idle machine the step should be several times faster (an
estimate, not measured); the sweep has not been run end to end. Drawing the 2M rows once takes about
3 hours at that load (488 blocks x 21 s), less on an idle machine. The published budget (200M
samples, lr 3e-4, batch 1,024, width 4,096) is 100x that: run it for one architecture in the
background with `--samples 200000000 --archs matryoshka --libs sparsesteer --seeds 1` (about 600 GB
of float32 rows if stored, so add `--no-store` there).

Architectures: topk, batchtopk, matryoshka (BatchTopK with prefixes width/32, width/8, width/2;
SAELens' `matryoshka_batchtopk`) and jumprelu. sparsesteer does not train JumpReLU
(`sae/jumprelu.py` is inference-only), so jumprelu runs only SAELens' trainer, with its quadratic
L0 loss at the target L0. Target L0: `--l0 20,25,true`: the published two, and "true", the model's
own mean L0 over all its features, measured on `--eval-samples` rows (about 34 at full size). The
mean L0 over the `--width` most frequent features is printed beside it (about 25 at full size).

The published tables (SAELens' trainers, 200M samples, lr 3e-4, batch 1,024, width 4,096; L0 25 and
20) are printed after ours, labelled as theirs. They hold only for the published model: the default
settings or `--model-source decoderesearch/synth-sae-bench-16k-v2`.

Venv: sae-lens pulls in a large dependency tree, so it runs in its own venv (never a dependency of
the package). Install torch first, pinned to this machine's CPU wheel so that pip never pulls CUDA,
then sae-lens under the same pin. Run from the repository root with the project on PYTHONPATH:

    python3 -m venv /tmp/sparsesteer-synthsaebench
    /tmp/sparsesteer-synthsaebench/bin/pip install torch==2.13.0
    /tmp/sparsesteer-synthsaebench/bin/pip install -c <(echo torch==2.13.0) sae-lens
    PYTHONPATH=. /tmp/sparsesteer-synthsaebench/bin/python benchmarks/synthsaebench.py --smoke
    PYTHONPATH=. /tmp/sparsesteer-synthsaebench/bin/python benchmarks/synthsaebench.py [--archs topk] [--seeds 3]

`--smoke`: a small model (512 features in d = 64, width 128, L0 3 and true, one seed, 16,384
samples per run, every architecture and both trainers) that runs end to end in a few minutes: the
code paths, not the figures. Results are appended to `--out`/results.jsonl, one
line per run. A run already recorded there is skipped, so an interrupted sweep continues where it
stopped. sparsesteer's runs also checkpoint (`train --resume`). Not part of CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import sae_lens  # noqa: F401
    from sae_lens.synthetic import (
        FoldedNormalMagnitudeConfig,
        HierarchyConfig,
        LinearMagnitudeConfig,
        LowRankCorrelationConfig,
        OrthogonalizationConfig,
        SyntheticModel,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
        eval_sae_on_synthetic_data,
    )
except ImportError:
    sys.exit("synthsaebench: sae-lens is not importable here; run this in its own venv (see the module docstring)")

from sparsesteer.sae import SAEConfig
from sparsesteer.sae.config import TrainConfig
from sparsesteer.sae.export import export_sae
from sparsesteer.sae.train import train

BLOCK = 4096
"""Rows per generated block: the unit of the data stream, and sparsesteer's read chunk."""

ARCHS = ("topk", "batchtopk", "matryoshka", "jumprelu")
LIBS = ("sparsesteer", "saelens")

# The published tables, theirs, not ours: SAELens docs/synth_sae_bench.md (commit 53c8beac), SynthSAEBench-16k,
# SAELens' trainers, 200M samples, lr 3e-4, batch 1,024, width 4,096. {L0: {SAE: (F1, MCC, uniqueness,
# explained variance)}}, each "mean ± sd".
PUBLISHED_SOURCE = "SAELens docs/synth_sae_bench.md @ 53c8beac958e0259cca46ca5c249810f8bdc88ac"
PUBLISHED: dict[int, dict[str, tuple[str, str, str, str]]] = {
    25: {
        "BatchTopK": ("0.7316 ± 0.0010", "0.7574 ± 0.0003", "0.9837 ± 0.0015", "0.7923 ± 0.0003"),
        "Matryoshka": ("0.8793 ± 0.0021", "0.7927 ± 0.0006", "0.9987 ± 0.0005", "0.7792 ± 0.0004"),
        "MatchPursuit": ("0.4464 ± 0.0044", "0.6930 ± 0.0030", "0.8281 ± 0.0069", "0.8351 ± 0.0003"),
        "Standard L1": ("0.5562 ± 0.0020", "0.6039 ± 0.0012", "0.8976 ± 0.0021", "0.7654 ± 0.0001"),
        "JumpReLU": ("0.7317 ± 0.0034", "0.7527 ± 0.0009", "0.9885 ± 0.0010", "0.7951 ± 0.0004"),
    },
    20: {
        "BatchTopK": ("0.8183 ± 0.0011", "0.7526 ± 0.0007", "0.9760 ± 0.0028", "0.7889 ± 0.0002"),
        "Matryoshka": ("0.8601 ± 0.0016", "0.7455 ± 0.0021", "0.9874 ± 0.0020", "0.7699 ± 0.0002"),
        "MatchPursuit": ("0.4439 ± 0.0024", "0.6748 ± 0.0028", "0.7552 ± 0.0026", "0.8267 ± 0.0003"),
        "Standard L1": ("0.5777 ± 0.0012", "0.5834 ± 0.0015", "0.8528 ± 0.0055", "0.7501 ± 0.0009"),
        "JumpReLU": ("0.8241 ± 0.0041", "0.7434 ± 0.0015", "0.9781 ± 0.0029", "0.7906 ± 0.0005"),
    },
}


def v2_config(features: int = 16_384, d: int = 768, ortho_steps: int = 100, seed: int = 42) -> SyntheticModelConfig:
    """SynthSAEBench-16k v2: at the defaults, exactly the published configuration (see the module's SETTINGS).
    Only the hierarchy's root count scales with `features` (128 at 16,384), so that the small `--smoke`
    model keeps the same shape."""
    return SyntheticModelConfig(
        num_features=features,
        hidden_dim=d,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=HierarchyConfig(
            total_root_nodes=max(2, 128 * features // 16_384),
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0,
            compensate_probabilities=True,
            scale_children_by_parent=True,  # v2 (v1 lacks it)
        ),
        orthogonalization=OrthogonalizationConfig(num_steps=ortho_steps, lr=3e-4),
        correlation=LowRankCorrelationConfig(rank=25, correlation_scale=0.1),  # its seed is the model's seed + 4
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        seed=seed,
    )


def load_or_build(cfg: SyntheticModelConfig, model_dir: Path, source: str | None) -> SyntheticModel:
    """The synthetic model: `source` when given, else `model_dir` when it holds a model with these
    settings, else built (the slow orthogonalisation) and saved there."""
    if source:
        return SyntheticModel.load_from_source(source)
    saved = model_dir / "synthetic_model_config.json"
    if saved.is_file():
        have = json.loads(saved.read_text())
        if have != json.loads(json.dumps(cfg.to_dict())):
            sys.exit(f"synthsaebench: {model_dir} holds a model with other settings; use another --model-dir")
        print(f"# loading the synthetic model from {model_dir}", flush=True)
        return SyntheticModel.load_from_disk(model_dir)
    print(f"# building the synthetic model ({cfg.num_features} x {cfg.hidden_dim}), saved to {model_dir}", flush=True)
    t0 = time.perf_counter()
    model = SyntheticModel(cfg)
    model.save(model_dir)
    print(f"# built in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


# ------------------------------------------------------------------------------------------- the data
_RNG_LOCK = threading.Lock()  # block generation seeds torch's global generator (sparsesteer prefetches in a thread)


class SyntheticRows:
    """A sparsesteer row source of `n_rows` fresh samples of the synthetic model: block b (BLOCK rows)
    is a pure function of (seed, b), so any read, in any order and any thread, gives the same rows."""

    chunk_rows = BLOCK

    def __init__(self, model: SyntheticModel, n_rows: int, seed: int):
        self.model, self.n_rows, self.d, self.seed = model, n_rows, model.cfg.hidden_dim, seed
        self._last: tuple[int, torch.Tensor] | None = None
        self.stored: np.ndarray | None = None
        """The rows written once by `store` (memory-mapped), read instead of drawing them again."""

    def block(self, b: int) -> torch.Tensor:
        if self.stored is not None:
            return torch.from_numpy(np.array(self.stored[b * BLOCK : (b + 1) * BLOCK]))
        last = self._last
        if last is not None and last[0] == b:
            return last[1]
        with _RNG_LOCK, torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed * 1_000_003 + b)
            x = self.model.sample(BLOCK).float()  # dense features: the sparse path is slower here
        self._last = (b, x)
        return x

    def store(self, path: Path) -> None:
        """Write the rows to `path` (.npy) once, block by block, resumable: every run then reads the same
        rows from disk, and its wall time is its training alone (drawing a full-size block costs more
        than training on it)."""
        from numpy.lib.format import open_memmap

        n_blocks, progress = self.n_rows // BLOCK, path.with_suffix(".blocks")
        fresh = not path.is_file()
        arr = open_memmap(path, mode="w+" if fresh else "r+", dtype=np.float32, shape=(self.n_rows, self.d))
        if arr.shape != (self.n_rows, self.d):
            sys.exit(f"synthsaebench: {path} holds {arr.shape} rows, not {(self.n_rows, self.d)}; use another --out")
        first = 0 if fresh or not progress.is_file() else int(progress.read_text())
        if first < n_blocks:
            print(f"# drawing the data once: blocks {first}..{n_blocks - 1} of {BLOCK} rows -> {path}", flush=True)
        t0 = time.perf_counter()
        for b in range(first, n_blocks):
            arr[b * BLOCK : (b + 1) * BLOCK] = self.block(b).numpy()
            if b % 16 == 15 or b == n_blocks - 1:
                arr.flush()
                progress.write_text(str(b + 1))
        if first < n_blocks:
            print(f"# drawn in {time.perf_counter() - t0:.0f} s", flush=True)
        del arr
        self.stored = open_memmap(path, mode="r")

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.stored is not None:
            return torch.from_numpy(np.array(self.stored[start:stop]))
        first, last = start // BLOCK, (stop - 1) // BLOCK
        rows = torch.cat([self.block(b) for b in range(first, last + 1)])
        return rows[start - first * BLOCK : stop - first * BLOCK].clone()

    def labels(self, start: int, stop: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthsaebench", "n_rows": self.n_rows, "d": self.d, "seed": self.seed}

    def batches(self, batch: int) -> Iterator[torch.Tensor]:
        """The same rows in order, as training batches (SAELens' data provider); endless."""
        b = 0
        while True:
            x = self.block(b % (self.n_rows // BLOCK))
            for s in range(0, BLOCK - batch + 1, batch):
                yield x[s : s + batch]
            b += 1


# ------------------------------------------------------------------------------------------- the runs
@dataclasses.dataclass(frozen=True)
class Run:
    arch: str
    l0: int
    seed: int
    lib: str

    @property
    def name(self) -> str:
        return f"{self.lib}-{self.arch}-l0{self.l0}-seed{self.seed}"


def matryoshka_widths(width: int) -> list[int]:
    return [width // 32, width // 8, width // 2, width]


def train_sparsesteer(run: Run, rows: SyntheticRows, width: int, batch: int, out: Path) -> tuple[Path, float]:
    """Train with sparsesteer's defaults; return the SAELens export of the result and the training's wall time."""
    arch = "batchtopk" if run.arch == "matryoshka" else run.arch
    prefixes = tuple(matryoshka_widths(width)[:-1]) if run.arch == "matryoshka" else ()
    cfg = SAEConfig(arch=arch, n_latents=width, k=run.l0, matryoshka=prefixes)  # type: ignore[arg-type]
    tc = TrainConfig(steps=rows.n_rows // batch, batch_size=batch, seed=run.seed, log_every=100)
    run_dir = out / run.name
    t0 = time.perf_counter()
    result = train(rows, cfg, tc, run_dir, resume=(run_dir / "train_config.json").is_file(), overwrite=False)
    wall = time.perf_counter() - t0
    export = out / f"{run.name}-saelens"
    if not (export / "cfg.json").is_file():
        export_sae(result.saes[0], "saelens", export, hook="synthetic")
    return export, wall


def train_saelens(run: Run, rows: SyntheticRows, width: int, batch: int, out: Path) -> tuple[Path, float]:
    """Train with SAELens' own trainer and its synthetic runner's defaults; return its inference export and
    the training's wall time."""
    from sae_lens.config import LoggingConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.synthetic import SyntheticSAERunnerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d = rows.d
    arch = {"matryoshka": "matryoshka_batchtopk"}.get(run.arch, run.arch)
    sae_class, cfg_class = get_sae_training_class(arch)
    kw: dict[str, Any] = {"d_in": d, "d_sae": width}
    if run.arch in ("topk", "batchtopk", "matryoshka"):
        kw["k"] = run.l0
    if run.arch == "matryoshka":
        kw["matryoshka_widths"] = matryoshka_widths(width)
    if run.arch == "jumprelu":
        kw.update(jumprelu_sparsity_loss_mode="quadratic", target_l0=float(run.l0))
    torch.manual_seed(run.seed)
    sae = sae_class(cfg_class(**kw))
    runner = SyntheticSAERunnerConfig(
        synthetic_model="unused",
        sae=cfg_class(**kw),
        training_samples=rows.n_rows,
        batch_size=batch,
        checkpoint_path=None,
        output_path=None,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    t0 = time.perf_counter()
    trainer = SAETrainer(cfg=runner.to_sae_trainer_config(), sae=sae, data_provider=rows.batches(batch))
    trained = trainer.fit()
    wall = time.perf_counter() - t0
    export = out / f"{run.name}-saelens"
    trained.save_inference_model(str(export))
    return export, wall


def score(export: Path, model: SyntheticModel, eval_samples: int, eval_seed: int) -> dict[str, Any]:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(export))
    with _RNG_LOCK:  # a prefetch of the finished training may still be drawing
        torch.manual_seed(eval_seed)  # every SAE is scored on the same rows
        res = eval_sae_on_synthetic_data(
            sae, model.feature_dict, model.activation_generator, num_samples=eval_samples, batch_size=4096
        )
    return res.to_dict()


def true_l0(model: SyntheticModel, n: int, seed: int, width: int) -> tuple[float, float]:
    """The model's mean L0 over all its features, and over the `width` most frequent ones (on these rows): an
    SAE of that width can at best recover those, so the second is the L0 it should aim at (SynthSAEBench-16k:
    about 34 and 25)."""
    torch.manual_seed(seed)
    fired = model.activation_generator.sample(min(n, 16_384)) != 0
    top = fired.sum(0).topk(min(width, fired.shape[1])).indices
    return float(fired.sum(1).float().mean()), float(fired[:, top].sum(1).float().mean())


def published_table() -> str:
    lines = ["| L0 | SAE | F1 | MCC | uniqueness | explained variance |", "|" + "---|" * 6]
    for l0, rows in PUBLISHED.items():
        lines += [f"| {l0} | {sae} | " + " | ".join(figs) + " |" for sae, figs in rows.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the table
def table(results: list[dict[str, Any]]) -> str:
    def ms(values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{values[0]:{fmt}}" if len(values) == 1 else f"{statistics.mean(values):{fmt}} ± {spread:{fmt}}"

    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["l0"], r["lib"]), []).append(r)
    head = (
        "| architecture | L0 target | trainer | seeds | F1 | MCC | precision | recall | uniqueness | "
        "SAE L0 | dead | shrinkage | EV | wall s / run |"
    )
    lines = [head, "|" + "---|" * 14]
    for (arch, l0, lib), rs in sorted(groups.items()):

        def col(*keys: str) -> list[float]:
            out = []
            for r in rs:
                v: Any = r["scores"]
                for k in keys:
                    v = v[k]
                out.append(float(v))

            return out

        lines.append(
            f"| {arch} | {l0} | {lib} | {len(rs)} | {ms(col('classification', 'f1_score'), '.3f')} | "
            f"{ms(col('mcc'), '.3f')} | {ms(col('classification', 'precision'), '.3f')} | "
            f"{ms(col('classification', 'recall'), '.3f')} | {ms(col('uniqueness'), '.3f')} | "
            f"{ms(col('sae_l0'), '.1f')} | {ms(col('dead_latents'), '.0f')} | {ms(col('shrinkage'), '.3f')} | "
            f"{ms(col('explained_variance'), '.3f')} | {ms([r['wall_s'] for r in rs], '.0f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a small model through every code path in a few minutes")
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--ortho-steps", type=int, default=100)
    ap.add_argument("--model-seed", type=int, default=42)
    ap.add_argument("--model-dir", type=Path, default=None, help="default: OUT/model-F-D")
    ap.add_argument("--model-source", default=None, help="load this model instead (directory, or Hub REPO[:PATH])")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--l0", default="20,25,true", help="target L0s; 'true' = the model's own mean L0 (all features)")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--samples", type=int, default=2_000_000, help="training samples per run (the budget; whole blocks of 4096)"
    )
    ap.add_argument("--no-store", action="store_true", help="draw the rows in every run instead of once to disk")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--eval-samples", type=int, default=100_000)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=12345)
    ap.add_argument("--out", type=Path, default=Path("runs/synthsaebench"))
    args = ap.parse_args()
    args.samples = max(1, args.samples // BLOCK) * BLOCK
    if args.smoke:
        args.features, args.d, args.ortho_steps, args.width = 512, 64, 20, 128
        args.l0, args.seeds, args.samples, args.eval_samples = "3,true", 1, 4 * BLOCK, 2 * BLOCK
        if args.out == Path("runs/synthsaebench"):
            args.out = Path(tempfile.gettempdir()) / "synthsaebench-smoke"
    logging.getLogger("sparsesteer").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or args.out / f"model-{args.features}x{args.d}"
    cfg = v2_config(args.features, args.d, args.ortho_steps, args.model_seed)
    model = load_or_build(cfg, model_dir, args.model_source)
    t_l0, top_l0 = true_l0(model, args.eval_samples, args.eval_seed, args.width)
    l0s = sorted({round(t_l0) if v.strip() == "true" else int(v) for v in args.l0.split(",")})
    print(
        f"# model: {model.cfg.num_features} features in d = {model.cfg.hidden_dim}; true L0 {t_l0:.2f} over all "
        f"features, {top_l0:.2f} over the {min(args.width, model.cfg.num_features):,} most frequent"
    )
    print(f"# budget: {args.samples:,} samples per run, batch {args.batch}; width {args.width}; L0 {l0s}")
    archs, libs = args.archs.split(","), args.libs.split(",")
    for a in archs:
        if a not in ARCHS:
            sys.exit(f"synthsaebench: --archs {a!r}: choose from {', '.join(ARCHS)}")
    log_path = args.out / "results.jsonl"
    done = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    seen = {r["name"] for r in done}
    rows = SyntheticRows(model, args.samples, args.data_seed)
    if not args.no_store:
        rows.store(args.out / f"data-{model.cfg.num_features}x{rows.d}-seed{args.data_seed}-{args.samples}.npy")
    for arch in archs:
        for l0 in l0s:
            for seed in range(args.seeds):
                for lib in libs:
                    run = Run(arch, l0, seed, lib)
                    if run.name in seen:
                        continue
                    if lib == "sparsesteer" and arch == "jumprelu":
                        print(f"# {run.name}: skipped (sparsesteer trains no JumpReLU SAE)", flush=True)
                        continue
                    trainer = train_sparsesteer if lib == "sparsesteer" else train_saelens
                    export, wall = trainer(run, rows, args.width, args.batch, args.out)
                    scores = score(export, model, args.eval_samples, args.eval_seed)
                    rec = {**dataclasses.asdict(run), "name": run.name, "wall_s": wall, "samples": args.samples}
                    rec.update(
                        scores=scores, true_l0=t_l0, true_l0_top=top_l0, width=args.width, model=model.cfg.to_dict()
                    )
                    with log_path.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    done.append(rec)
                    c = scores["classification"]
                    print(
                        f"# {run.name}: F1 {c['f1_score']:.3f}  MCC {scores['mcc']:.3f}  L0 {scores['sae_l0']:.1f}  "
                        f"EV {scores['explained_variance']:.3f}  dead {scores['dead_latents']}  {wall:.1f} s",
                        flush=True,
                    )
    want = [r for r in done if r["arch"] in archs and r["l0"] in l0s and r["width"] == args.width]
    print(f"\n## SynthSAEBench: ours, {args.samples:,} samples per run, width {args.width}\n")
    print(table(want))
    print(
        "\n## Published (theirs, not ours: SynthSAEBench-16k, SAELens' trainers, 200M samples, lr 3e-4, "
        f"batch 1,024, width 4,096; mean ± sd; {PUBLISHED_SOURCE})\n"
    )
    print(published_table())


if __name__ == "__main__":
    main()
