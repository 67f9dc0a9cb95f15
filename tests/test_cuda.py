"""The CUDA paths against the CPU ones (skipped without a GPU; benchmarks/gpu_check.sh runs them):
sparse kernels vs dense references, the training step and the trainer (pinned, non-blocking,
one-batch-ahead copies) vs CPU, bf16 autocast, the model forward feeding `train --model`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesteer.sae import SAEConfig, build, kernels
from sparsesteer.sae.config import TrainConfig
from sparsesteer.sae.train import Member, Trainer, train_step

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_matmuls():
    """TF32 off unless a test turns it on: CPU and GPU then compute the same float32 products."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_sparse_kernels_match_dense_references_on_cuda():
    g = torch.Generator().manual_seed(0)
    B, d, n, k = 256, 64, 2048, 16
    x = torch.randn(B, d, generator=g).to(CUDA)
    W_enc = (torch.randn(n, d, generator=g) / d**0.5).to(CUDA).requires_grad_()
    b_enc = torch.zeros(n, device=CUDA, requires_grad=True)
    W_dec = (torch.randn(n, d, generator=g) / d**0.5).to(CUDA).requires_grad_()
    sel = kernels.encode_select(x, W_enc.detach(), b_enc.detach(), k)
    pre = x @ W_enc.T + b_enc
    ref_vals, ref_idx = pre.topk(k, dim=1)
    torch.testing.assert_close(sel.values.sort(1).values, ref_vals.detach().sort(1).values, rtol=1e-5, atol=1e-5)
    vals = kernels.gather_linear(sel.values, x, W_enc, b_enc, sel.indices).relu()
    recon = kernels.sparse_decode(vals, sel.indices, W_dec)
    dense_codes = torch.zeros(B, n, device=CUDA).scatter(1, ref_idx, ref_vals.relu())
    ref_recon = dense_codes @ W_dec
    torch.testing.assert_close(recon, ref_recon, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad((recon - x).pow(2).sum(), [W_enc, b_enc, W_dec])
    ref_grads = torch.autograd.grad((ref_recon - x).pow(2).sum(), [W_enc, b_enc, W_dec])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def _member(device: torch.device, cfg: SAEConfig, train: TrainConfig) -> Member:
    torch.manual_seed(0)
    return Member(cfg, device, train, 1)


def test_training_steps_on_cuda_match_cpu_and_bf16_stays_close():
    cfg = SAEConfig(k=16, n_latents=1024, d_in=64)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(512, 64, generator=g) for _ in range(5)]
    train = TrainConfig(device="cpu")
    cpu, gpu = _member(torch.device("cpu"), cfg, train), _member(CUDA, cfg, train)
    for x in batches:
        train_step(cpu, x, None, 1e-3, train, torch.device("cpu"))
        train_step(gpu, x.to(CUDA), None, 1e-3, train, CUDA)
    for key, value in cpu.sae.state_dict().items():
        torch.testing.assert_close(gpu.sae.state_dict()[key].cpu(), value, rtol=1e-3, atol=1e-4)
    bf16 = TrainConfig(device="cuda", bf16=True)
    half = _member(CUDA, cfg, bf16)
    for x in batches:
        train_step(half, x.to(CUDA), None, 1e-3, bf16, CUDA)
    assert half.sums["fvu"] == pytest.approx(cpu.sums["fvu"], rel=0.05)


def test_trainer_on_cuda_matches_cpu(tmp_path):
    rng = np.random.default_rng(0)
    acts = torch.from_numpy((rng.standard_normal((4096, 32)) * rng.uniform(0.5, 2, 32)).astype(np.float32))
    results = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(device=device, steps=20, batch_size=256, tf32=False, init_samples=1024, log_every=5)
        results[device] = Trainer(acts, SAEConfig(k=8, n_latents=256), cfg, tmp_path / device).fit()
    cpu, gpu = (results[d].saes[0].state_dict() for d in ("cpu", "cuda"))
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], rtol=1e-3, atol=1e-4)


def test_model_rows_on_cuda_match_cpu(tiny_clip_dir, tmp_path):
    from helpers import make_folder_dataset

    from sparsesteer.activations.stream import ModelRows
    from sparsesteer.data import open_dataset
    from sparsesteer.models import load_backbone

    ds = open_dataset(f"folder:{make_folder_dataset(tmp_path / 'imgs', (3, 3))}", "train")
    hooks = ["blocks.0.resid_post", "blocks.2.resid_post"]
    rows = {
        dev: ModelRows(load_backbone(tiny_clip_dir, device=dev), ds, hooks, "all").read(0, 6 * 17)
        for dev in ("cpu", "cuda")
    }
    torch.testing.assert_close(rows["cuda"], rows["cpu"], rtol=1e-4, atol=1e-4)
    bf16 = ModelRows(load_backbone(tiny_clip_dir, device="cuda"), ds, hooks, "all", bf16=True).read(0, 6 * 17)
    torch.testing.assert_close(bf16, rows["cpu"], rtol=0.05, atol=0.05)


def test_a_built_sae_runs_under_bf16_autocast():
    sae = build(SAEConfig(k=8, n_latents=512, d_in=64), device=CUDA)
    x = torch.randn(128, 64, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = sae(x)
    assert torch.isfinite(out.loss).item() and out.codes.values.shape == (128, 8)
