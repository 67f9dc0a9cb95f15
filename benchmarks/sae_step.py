"""Seconds per TopK SAE training step: sparsesteer's trainer vs a dense reference, same run.

The project's step (`sparsesteer.sae.train.train_step`: sparse kernels, fused Adam, decoder-norm
constraint, gradient clipping, dead-latent counters) is timed against
- a dense reference written here: the same model and optimiser, but codes scattered into a dense
  [B, n] matrix, a dense decoder matmul and plain autograd (what a straightforward PyTorch SAE
  does), and
- the encoder's forward matmul alone, x @ W_enc.T + b_enc: the floor of any TopK SAE step.

Targets (issue 2): >= 2.5x faster than dense at 3,072 latents, >= 4x at 49,152, and at 49,152
latents a step within 1.5x of the encoder matmul. Timings alternate between the three so that
machine noise hits them alike; the table shows medians.

    python benchmarks/sae_step.py [--device cpu] [--repeats 5] [--sizes 3072,49152]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsesteer.sae import SAEConfig
from sparsesteer.sae.train import Member, TrainConfig, train_step


class DenseTopK(torch.nn.Module):
    """Reference TopK SAE: scatter to dense codes, dense decoder, autograd for everything."""

    def __init__(self, W_enc, b_enc, W_dec, b_dec, k):
        super().__init__()
        self.W_enc = torch.nn.Parameter(W_enc.clone())
        self.b_enc = torch.nn.Parameter(b_enc.clone())
        self.W_dec = torch.nn.Parameter(W_dec.clone())
        self.b_dec = torch.nn.Parameter(b_dec.clone())
        self.k = k

    def loss(self, x):
        pre = (x - self.b_dec) @ self.W_enc.T + self.b_enc
        vals, idx = pre.topk(self.k, dim=1, sorted=False)
        codes = torch.zeros_like(pre).scatter(1, idx, vals.relu())
        recon = codes @ self.W_dec + self.b_dec
        return (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def dense_step(model, opt, x, grad_clip):
    loss = model.loss(x)
    loss.backward()
    with torch.no_grad():
        g = model.W_dec.grad
        g -= (g * model.W_dec).sum(1, keepdim=True) * model.W_dec
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.W_dec /= model.W_dec.norm(dim=1, keepdim=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def bench(n, *, d, k, batch, repeats, device):
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=batch, lr=5e-4, device=str(device))
    member = Member(SAEConfig(arch="topk", d_in=d, n_latents=n, k=k), device, cfg, n_classes=1)
    sae = member.sae
    dense = DenseTopK(sae.W_enc.data, sae.b_enc.data, sae.W_dec.data, sae.b_dec.data, k).to(device)
    dense_opt = torch.optim.Adam(dense.parameters(), lr=5e-4, fused=True)
    xs = [torch.randn(batch, d, device=device) for _ in range(3)]
    W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
    runs = {
        "sparsesteer step": lambda x: train_step(member, x, None, 5e-4, cfg, device),
        "dense reference step": lambda x: dense_step(dense, dense_opt, x, cfg.grad_clip),
        "encoder matmul alone": lambda x: torch.addmm(b_enc, x, W_enc.T),
    }
    times = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up (allocator, fused kernels, page faults)
        fn(xs[0])
    for r in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(lambda: fn(xs[r % 3]), device))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="3072,49152", help="n_latents values")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"# TopK SAE training step, fp32, Adam; d={args.d}, k={args.k}, batch={args.batch}, device={device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}\n"
    )
    print(
        "| n_latents | sparsesteer step (s) | dense reference (s) | encoder matmul (s) | speed-up vs dense | step / matmul |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        t = bench(n, d=args.d, k=args.k, batch=args.batch, repeats=args.repeats, device=device)
        ours, dense, mm = t["sparsesteer step"], t["dense reference step"], t["encoder matmul alone"]
        print(f"| {n:,} | {ours:.3f} | {dense:.3f} | {mm:.3f} | {dense / ours:.2f}x | {ours / mm:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
