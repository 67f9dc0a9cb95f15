"""GPU figures for docs/benchmarks.md, each against a reference measured in the same run.

1. matmul rate (FLOP/s) of the encoder-shaped product [B, d] x [d, n] in fp32, TF32 and bf16;
2. SAE training throughput (rows/s), TopK, d 768, k 64, 3,072 and 49,152 latents, fp32 / TF32 /
   bf16 autocast, with the full trainer step (`sae.train.train_step`), against the step's
   arithmetic floor on this GPU: its FLOPs (the dense encoder product 2·B·d·n plus the sparse
   terms, about 8·B·k·d) over the matmul rate of (1) in the same precision;
3. caching throughput (images/s) of a ViT-B/32-shaped random CLIP at 224 px: the forward pass
   stopped at the deepest hook and the copy of its activations to host memory (what `sparsesteer
   cache` does per batch, image decoding aside), fp32 and bf16 autocast;
4. the sparse TopK step vs the dense reference of benchmarks/sae_step.py on this device: same
   reconstruction (max |difference|) and the speed ratio.

Runs wherever torch runs; `--dry-run` uses tiny sizes and one repeat so that CI (CPU) exercises
every line. Writes FIGURES.json and FIGURES.md (the tables also go to stdout).

    python benchmarks/gpu_bench.py --out runs/gpu_check/figures [--dry-run] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/sae_step.py: the dense reference

from sparsesteer.sae import SAEConfig  # noqa: E402
from sparsesteer.sae.train import Member, TrainConfig, train_step  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, inner: int = 1) -> float:
    """Median seconds per call of `fn` over `repeats` rounds of `inner` calls (after one warm-up round)."""
    for _ in range(inner):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def set_precision(precision: str) -> None:
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def matmul_rates(device, B, d, n, repeats) -> dict[str, float]:
    """FLOP/s of addmm [B, d] x [d, n] per precision (bf16: bf16 inputs, as autocast feeds them)."""
    rates = {}
    for precision in PRECISIONS:
        set_precision(precision)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        x = torch.randn(B, d, device=device, dtype=dtype)
        w = torch.randn(d, n, device=device, dtype=dtype)
        b = torch.zeros(n, device=device, dtype=dtype)
        t = timed(lambda: torch.addmm(b, x, w), device, repeats, inner=3)
        rates[precision] = 2 * B * d * n / t
    set_precision("fp32")
    return rates


def sae_throughput(device, B, d, n_latents, k, rates, repeats, steps) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(B, d, generator=g).to(device) for _ in range(4)]
    for n in n_latents:
        for precision in PRECISIONS:
            set_precision(precision)
            cfg = TrainConfig(device=str(device), bf16=precision == "bf16", tf32=precision == "tf32")
            torch.manual_seed(0)
            member = Member(SAEConfig(k=k, n_latents=n, d_in=d), device, cfg, 1)
            i = iter(range(10**9))

            def step():
                train_step(member, batches[next(i) % len(batches)], None, 1e-4, cfg, device)

            t = timed(step, device, repeats, inner=steps)
            flops = 2 * B * d * n + 8 * B * k * d
            floor = rates[precision] * B / flops  # rows/s if the step ran at the matmul rate
            rows.append(
                {
                    "n_latents": n,
                    # on CPU the TF32 and bf16 settings leave the step in fp32: same step, another sample
                    "precision": precision
                    if device.type == "cuda" or precision == "fp32"
                    else f"{precision} (CPU: fp32)",
                    "rows_per_s": B / t,
                    "floor_rows_per_s": floor,
                    "fraction_of_floor": (B / t) / floor,
                    "step_ms": t * 1e3,
                }
            )
    set_precision("fp32")
    return rows


def caching_throughput(device, dry: bool, repeats: int, batch: int | None = None) -> list[dict]:
    from sparsesteer.models import load_backbone
    from sparsesteer.models.tiny import make_random_clip, make_tiny_clip

    with tempfile.TemporaryDirectory() as tmp:
        if dry:
            path = make_tiny_clip(Path(tmp) / "clip")
            batch, hook = batch or 8, "blocks.2.resid_post"
        else:
            path = make_random_clip(Path(tmp) / "clip", "ViT-B/32")
            batch, hook = batch or 256, "blocks.11.resid_post"
        bb = load_backbone(path, device=device)
        size = bb.image_size
        pixels = torch.randn(batch, 3, size, size, device=device)
        rows = []
        for precision in ("fp32", "bf16"):
            set_precision("fp32")
            enabled = precision == "bf16" and device.type == "cuda"

            def forward():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                    out = bb.run(pixels, [hook], tokens="all")
                out[hook].float().cpu()

            t = timed(forward, device, repeats, inner=2)
            rows.append(
                {
                    "model": f"random CLIP {'tiny' if dry else 'ViT-B/32'} at {size} px",
                    "hook": hook,
                    "tokens": "all",
                    "batch": batch,
                    "precision": precision if enabled or precision == "fp32" else "bf16 (CPU: fp32)",
                    "images_per_s": batch / t,
                }
            )
    return rows


def sparse_vs_dense(device, B, d, n, k, repeats) -> dict:
    from sae_step import DenseTopK, dense_step

    set_precision("fp32")
    cfg = TrainConfig(device=str(device))
    torch.manual_seed(0)
    member = Member(SAEConfig(k=k, n_latents=n, d_in=d), device, cfg, 1)
    sae = member.sae
    dense = DenseTopK(sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach(), k).to(device)
    x = torch.randn(B, d, device=device)
    with torch.no_grad():
        recon = sae(x).recon
        pre = (x - dense.b_dec) @ dense.W_enc.T + dense.b_enc
        vals, idx = pre.topk(k, dim=1)
        ref = torch.zeros_like(pre).scatter(1, idx, vals.relu()) @ dense.W_dec + dense.b_dec
        max_diff = float((recon - ref).abs().max())
    opt = torch.optim.Adam(dense.parameters(), lr=1e-4)
    t_sparse = timed(lambda: train_step(member, x, None, 1e-4, cfg, device), device, repeats, inner=3)
    t_dense = timed(lambda: dense_step(dense, opt, x, 1.0), device, repeats, inner=3)
    return {
        "n_latents": n,
        "k": k,
        "batch": B,
        "max_abs_recon_difference": max_diff,
        "sparse_step_ms": t_sparse * 1e3,
        "dense_step_ms": t_dense * 1e3,
        "dense_over_sparse": t_dense / t_sparse,
    }


def markdown(fig: dict) -> str:
    m = fig["machine"]
    lines = [
        f"GPU check, {fig['date']}, {m['device_name']} (torch {m['torch']}, {m['platform']})"
        + (" — DRY RUN (tiny sizes, not figures)" if fig["dry_run"] else ""),
        "",
        "| matmul [B, d] x [d, n] | TFLOP/s |",
        "|---|---|",
    ]
    s = fig["sizes"]
    for p, r in fig["matmul_flops"].items():
        lines.append(f"| {p}, B {s['batch']}, d {s['d']}, n {s['matmul_n']} | {r / 1e12:.2f} |")
    lines += [
        "",
        f"SAE training (TopK, d {s['d']}, k {s['k']}, batch {s['batch']}, random rows):",
        "",
        "| latents | precision | rows/s | floor rows/s | fraction of floor | ms/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in fig["sae_training"]:
        lines.append(
            f"| {r['n_latents']:,} | {r['precision']} | {r['rows_per_s']:,.0f} | {r['floor_rows_per_s']:,.0f} | "
            f"{r['fraction_of_floor']:.2f} | {r['step_ms']:.2f} |"
        )
    lines += ["", "| caching model | hook, tokens | batch | precision | images/s |", "|---|---|---|---|---|"]
    for r in fig["caching"]:
        lines.append(
            f"| {r['model']} | {r['hook']}, {r['tokens']} | {r['batch']} | {r['precision']} | {r['images_per_s']:,.1f} |"
        )
    sd = fig["sparse_vs_dense"]
    lines += [
        "",
        f"Sparse vs dense TopK step (n {sd['n_latents']:,}, k {sd['k']}, batch {sd['batch']}): same reconstruction "
        f"to {sd['max_abs_recon_difference']:.2e}; dense {sd['dense_step_ms']:.2f} ms vs sparse "
        f"{sd['sparse_step_ms']:.2f} ms = {sd['dense_over_sparse']:.2f}x",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output stem: writes OUT.json and OUT.md")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, one repeat (CI on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, help="rows per SAE step (default 4096; a CPU run may use less)")
    ap.add_argument("--steps", type=int, default=10, help="SAE steps per timed round")
    ap.add_argument("--caching-batch", type=int, help="images per forward (default 256)")
    args = ap.parse_args()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.dry_run:
        sizes = {"batch": 64, "d": 32, "k": 4, "latents": [96, 384], "matmul_n": 384}
        repeats, steps = 1, 2
    else:
        sizes = {"batch": 4096, "d": 768, "k": 64, "latents": [3072, 49152], "matmul_n": 49152}
        repeats, steps = args.repeats, args.steps
        sizes["batch"] = args.batch or sizes["batch"]
    B, d, k = sizes["batch"], sizes["d"], sizes["k"]
    fig: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "machine": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "platform": platform.platform(),
        },
        "sizes": sizes,
    }
    fig["matmul_flops"] = matmul_rates(device, B, d, sizes["matmul_n"], repeats)
    fig["sae_training"] = sae_throughput(device, B, d, sizes["latents"], k, fig["matmul_flops"], repeats, steps)
    fig["caching"] = caching_throughput(device, args.dry_run, repeats, args.caching_batch)
    fig["sparse_vs_dense"] = sparse_vs_dense(device, B, d, sizes["latents"][-1], k, repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(fig, indent=2) + "\n")
    text = markdown(fig)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
