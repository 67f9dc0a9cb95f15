"""Quality check: does a TopK SAE recover a known dictionary?

Synthetic activations x = sum_{j in S} a_j D_j + noise, with D a random dictionary of unit-norm
atoms, |S| atoms active per sample and non-negative magnitudes a_j. A TopK SAE with as many latents
as true atoms and k = |S| should find them: we report the mean over true atoms of the best cosine
similarity with a decoder row (MMCS) and the FVU, as training proceeds.

Target (issues 2, 14): at d=64, 512 atoms, 8 active, 200k samples, k=8, 512 latents: MMCS >= 0.95
within 4M training samples, with the trainer's defaults (no --lr: the width rule `default_lr`;
precision: bf16 where the CPU has it, --bf16/--no-bf16 to force).

    python benchmarks/planted.py [--samples 4000000] [--seed 0] [--lr LR] [--no-bf16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sparsesteer.activations.loader import TensorSource
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.metrics import evaluate
from sparsesteer.sae.train import TrainConfig, Trainer
from sparsesteer.utils import precision


def planted_data(n: int, d: int, atoms: int, active: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(atoms, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, atoms, generator=g).argsort(dim=1)[:, :active]  # distinct atoms per sample
    mag = torch.rand(n, active, generator=g) + 0.5  # magnitudes in [0.5, 1.5)
    x = torch.nn.functional.embedding_bag(idx, D, per_sample_weights=mag, mode="sum")
    x += noise * torch.randn(n, d, generator=g)
    return x, D


def mmcs(D_true: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Mean over true atoms of the max cosine similarity with any decoder row."""
    W_dec = W_dec.detach()
    W = W_dec / W_dec.norm(dim=1, keepdim=True)
    return float((D_true @ W.T).max(dim=1).values.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--atoms", type=int, default=512)
    ap.add_argument("--active", type=int, default=8)
    ap.add_argument("--n", type=int, default=200_000, help="distinct samples")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--samples", type=int, default=4_000_000, help="training samples (with repetition)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=None, help="default: the trainer's width rule")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: where fast")
    ap.add_argument("--dead-after", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    x, D = planted_data(args.n, args.d, args.atoms, args.active, args.noise, args.seed)
    sae_cfg = SAEConfig(arch="topk", k=args.active, n_latents=args.atoms, dead_after=args.dead_after)
    steps = args.samples // args.batch
    train_cfg = TrainConfig(
        batch_size=args.batch,
        lr=args.lr,
        bf16=args.bf16,
        steps=steps,
        log_every=max(1, steps // 8),
        seed=args.seed,
        checkpoint_every=0,
    )
    lr = train_cfg.peak_lr(args.atoms)
    bf16 = precision.resolve_bf16(args.bf16, torch.device("cpu"))
    print(
        f"# Planted dictionary: d={args.d}, {args.atoms} unit-norm atoms, {args.active} active per sample "
        f"(magnitudes U[0.5, 1.5)), noise std {args.noise}, {args.n:,} samples; TopK SAE k={args.active}, "
        f"{args.atoms} latents, lr {lr:.3g} ({'given' if args.lr else 'default rule'}), "
        f"{precision.describe(bf16, torch.device('cpu'))}, batch {args.batch}, AuxK dead after {args.dead_after:,} samples; seed {args.seed}\n"
    )
    print("| training samples | MMCS | FVU (train batch) | dead latents |")
    print("|---:|---:|---:|---:|")
    rows = []
    t0 = time.time()

    def report(step: int, saes) -> None:
        with open(out / "metrics.jsonl") as f:
            line = json.loads(f.readlines()[-1])[trainer.names[0]]
        m = mmcs(D, saes[0].W_dec.detach())
        rows.append((step * args.batch, m))
        print(f"| {step * args.batch:,} | {m:.4f} | {line['fvu']:.4f} | {100 * line['dead_frac']:.1f}% |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trainer = Trainer(TensorSource(x), sae_cfg, train_cfg, out)
        result = trainer.fit(on_log=report)
        final = evaluate(result.saes[0], TensorSource(x))
    reached = next((s for s, m in rows if m >= 0.95), None)
    when = f"first at {reached:,} samples" if reached else "never reached"
    print(
        f"\nfinal: MMCS {mmcs(D, result.saes[0].W_dec):.4f}, FVU {final.fvu:.4f} on all {args.n:,} samples, "
        f"L0 {final.l0_mean:.1f}; MMCS >= 0.95 {when} (target: within 4,000,000); {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
