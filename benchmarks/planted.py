"""Quality check: does a TopK SAE recover a known dictionary?

Synthetic activations x = sum_{j in S} a_j D_j + noise, with D a random dictionary of unit-norm
atoms, |S| atoms active per sample and non-negative magnitudes a_j. A TopK SAE with as many latents
as true atoms and k = |S| should find them: we report the mean over true atoms of the best cosine
similarity with a decoder row (MMCS), the FVU and the latents that never fired / did not fire in the
dead window (`dead_after`: where AuxK acts), as training proceeds. `--latents` trains a wider SAE
(more latents than atoms: some latents die), `--dead-after` sets the dead window (AuxK), `--zipf A`
draws atoms with frequency ~ rank^-A (many rare atoms, as in real activations).

Target (issues 2, 14): at d=64, 512 atoms, 8 active, 200k samples, k=8, 512 latents: MMCS >= 0.95
within 4M training samples, with the trainer's defaults (no --lr: the width rule `default_lr`;
precision: bf16 where the CPU has it, --bf16/--no-bf16 to force).

    python benchmarks/planted.py [--samples 4000000] [--seed 0] [--lr LR] [--no-bf16] [--latents N]
        [--dead-after SAMPLES] [--zipf A] [--json FILE]
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


def planted_data(
    n: int, d: int, atoms: int, active: int, noise: float, seed: int, zipf: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(atoms, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    if zipf:  # atom j drawn with weight (j + 1) ** -zipf (Efraimidis-Spirakis: top keys log(u) / w)
        w = torch.arange(1, atoms + 1, dtype=torch.float32) ** -zipf
        idx = (torch.rand(n, atoms, generator=g).log() / w).topk(active, dim=1).indices
    else:
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
    ap.add_argument(
        "--zipf", type=float, default=0.0, help="atom frequencies ~ rank^-ZIPF (0: uniform; 1: a few common, many rare)"
    )
    ap.add_argument("--latents", type=int, default=None, help="SAE width (default: as many as atoms)")
    ap.add_argument("--dead-after", type=int, default=None, help="dead window in samples (default: the trainer's)")
    ap.add_argument("--json", default=None, help="also write the final figures to this JSON file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    x, D = planted_data(args.n, args.d, args.atoms, args.active, args.noise, args.seed, args.zipf)
    latents = args.latents or args.atoms
    window = {} if args.dead_after is None else {"dead_after": args.dead_after}
    sae_cfg = SAEConfig(arch="topk", k=args.active, n_latents=latents, **window)
    dead_after = sae_cfg.resolved(args.d).dead_after
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
    lr = train_cfg.peak_lr(latents)
    bf16 = precision.resolve_bf16(args.bf16, torch.device("cpu"))
    print(
        f"# Planted dictionary: d={args.d}, {args.atoms} unit-norm atoms, {args.active} active per sample "
        f"({'uniform' if not args.zipf else f'atom frequency ~ rank^-{args.zipf:g}'}) "
        f"(magnitudes U[0.5, 1.5)), noise std {args.noise}, {args.n:,} samples; TopK SAE k={args.active}, "
        f"{latents} latents, lr {lr:.3g} ({'given' if args.lr else 'default rule'}), "
        f"{precision.describe(bf16, torch.device('cpu'))}, batch {args.batch}, AuxK dead after {dead_after:,} samples "
        f"({'given' if args.dead_after else 'default'}); seed {args.seed}\n"
    )
    print("| training samples | MMCS | FVU (train batch) | never fired | dead (window) |")
    print("|---:|---:|---:|---:|---:|")
    rows: list[tuple[int, float]] = []
    last: dict = {}
    t0 = time.time()

    def report(step: int, saes) -> None:
        with open(out / "metrics.jsonl") as f:
            line = json.loads(f.readlines()[-1])[trainer.names[0]]
        m = mmcs(D, saes[0].W_dec.detach())
        rows.append((step * args.batch, m))
        last.update(line)
        print(
            f"| {step * args.batch:,} | {m:.4f} | {line['fvu']:.4f} | {100 * line['never_fired_frac']:.1f}% | "
            f"{100 * line['dead_frac']:.1f}% ({line['dead_window']:,}) |",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trainer = Trainer(TensorSource(x), sae_cfg, train_cfg, out)
        result = trainer.fit(on_log=report)
        final = evaluate(result.saes[0], TensorSource(x))
    reached = next((s for s, m in rows if m >= 0.95), None)
    when = f"first at {reached:,} samples" if reached else "never reached"
    final_mmcs = mmcs(D, result.saes[0].W_dec)
    seconds = time.time() - t0
    print(
        f"\nfinal: MMCS {final_mmcs:.4f}, FVU {final.fvu:.4f} on all {args.n:,} samples, "
        f"L0 {final.l0_mean:.1f}; MMCS >= 0.95 {when} (target: within 4,000,000); never fired "
        f"{100 * last['never_fired_frac']:.1f}%, dead over the last {last['dead_window']:,} samples "
        f"{100 * last['dead_frac']:.1f}%, dead on all {args.n:,} samples {100 * final.dead_frac:.1f}%; {seconds:.0f} s"
    )
    if args.json:
        figures = {
            "latents": latents,
            "zipf": args.zipf,
            "dead_after": dead_after,
            "samples": steps * args.batch,
            "seed": args.seed,
            "mmcs": final_mmcs,
            "first_095": reached,
            "fvu": final.fvu,
            "never_fired_frac": last["never_fired_frac"],
            "dead_frac": last["dead_frac"],
            "dead_on_data_frac": final.dead_frac,
            "seconds": round(seconds, 1),
        }
        Path(args.json).write_text(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
