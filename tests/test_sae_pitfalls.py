"""Known pitfalls of SAE training code (issue 24; SAELens fixed each in 2026), each pinned by a
hand-worked case that gives a different number if the pitfall came back:

1. explained variance / FVU measured about the mean of the rows, not about zero;
2. the AuxK reconstruction of the live latents' residual does not add `b_dec` (the residual
   x - x_hat already has it taken out);
3. no gradient scaler under bf16 autocast (a scaler skips every step whose scaled gradients
   overflow; bf16 has float32's range and needs none): every step is an optimiser step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsesteer
from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter
from sparsesteer.activations.loader import TensorSource
from sparsesteer.sae import SAEConfig, build, kernels
from sparsesteer.sae.config import TrainConfig
from sparsesteer.sae.judge import JudgeSettings, judge
from sparsesteer.sae.metrics import evaluate, token_metrics
from sparsesteer.sae.train import Member, train_step

CPU = torch.device("cpu")

# ---------------------------------------------------------------- 1. FVU about the mean
# 8 rows of d = 2 around a far-off mean (10, 5): every row is mean + (+-1, +-1), so the total variance
# about the mean is 8 x 2 = 16 (about zero it would be 8 x 125 + 16 = 1016). An SAE whose output is
# the constant c = (11, 5) (W_dec = 0, b_dec = c) leaves sum ||x - c||^2 = 4 x 4 + 8 x 1 = 24: FVU 24/16
# = 1.5, explained variance -0.5 (worse than predicting the mean). About zero: FVU 24/1016 = 0.024.
OFFSETS = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
HAND_FVU = 24 / 16


def constant_output_sae(arch: str = "topk"):
    """An SAE whose reconstruction of every row is (11, 5)."""
    sae = build(SAEConfig(arch=arch, d_in=2, n_latents=4, k=1), dtype=torch.float32)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(torch.tensor([11.0, 5.0]))
    return sae.eval()


def offset_rows() -> np.ndarray:
    """[4 images, 2 tokens (CLS, one patch), 2]: each token type holds every offset once."""
    rows = np.zeros((4, 2, 2), dtype=np.float32)
    for i in range(4):
        rows[i, 0] = np.add((10, 5), OFFSETS[i])
        rows[i, 1] = np.add((10, 5), OFFSETS[(i + 1) % 4])
    return rows


def offset_cache(path: Path):
    rows = offset_rows()
    s = CacheSettings(
        hooks=("h",),
        d={"h": 2},
        tokens="all",
        token_positions=(0, 1),
        cls_position=0,
        n_images=4,
        dtype="float32",
        model={"id": "tiny-clip", "revision": "abc", "arch": "clip"},
        dataset={"name": "unit"},
        split="train",
    )
    with CacheWriter.open(path, s) as w:
        w.write_shard({"h": rows.reshape(-1, 2)}, np.repeat(np.arange(4), 2), np.tile(np.arange(2), 4))
        w.finish(None)
    return ActivationCache.open(path).rows("h")


def test_fvu_is_about_the_mean_in_evaluate():
    res = evaluate(constant_output_sae(), TensorSource(torch.from_numpy(offset_rows().reshape(-1, 2))), batch_size=3)
    assert res.fvu == pytest.approx(HAND_FVU, rel=1e-12)
    assert res.explained_variance == pytest.approx(1 - HAND_FVU, rel=1e-12)


def test_fvu_is_about_the_mean_in_token_metrics_and_judge(tmp_path):
    view = offset_cache(tmp_path / "c")
    tm = token_metrics(constant_output_sae(), view, cls_position=0, patch_positions=[1], batch_size=3)
    assert tm.fvu == pytest.approx(HAND_FVU, rel=1e-12)
    assert tm.explained_variance == pytest.approx(1 - HAND_FVU, rel=1e-12)
    res = judge(
        constant_output_sae(),
        view,
        suites=("reconstruction",),
        settings=JudgeSettings(batch_size=4),
        cls_position=0,
        patch_positions=[1],
    )
    fvus = {r.name: r.value for r in res if r.name.startswith("fvu")}
    # each token type on its own: 4 rows, variance 8 about their mean (10, 5), error 12
    assert fvus == pytest.approx({"fvu": HAND_FVU, "fvu_cls": HAND_FVU, "fvu_patch": HAND_FVU}, rel=1e-12)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_training_fvu_loss_and_its_log_are_about_the_mean(arch):
    """The training objective (`ForwardOutput.fvu`, the loss itself) and the FVU the trainer logs."""
    x = torch.from_numpy(offset_rows().reshape(-1, 2))
    cfg = SAEConfig(arch=arch, d_in=2, n_latents=4, k=1, aux_coeff=0)
    m = Member(cfg, CPU, TrainConfig(bf16=False), 1)
    with torch.no_grad():
        m.sae.W_dec.zero_()
        m.sae.b_dec.copy_(torch.tensor([11.0, 5.0]))
        m.sae.b_enc.fill_(-100.0)  # no latent fires: the loss is the FVU alone (relu: no L1 either)
    out = m.sae(x)
    assert float(out.fvu.detach()) == pytest.approx(HAND_FVU, rel=1e-6)
    assert float(out.loss.detach()) == pytest.approx(HAND_FVU, rel=1e-6)
    train_step(m, x, None, 1e-3, TrainConfig(bf16=False), CPU)
    assert m.sums["fvu"] == pytest.approx(HAND_FVU, rel=1e-6)


# ---------------------------------------------------------------- 2. AuxK without b_dec
# d = 2, two latents reading and writing one axis each, b_dec = (5, 5) far from zero. Rows are
# b_dec + (a, b) with a > b > 0: the live latent 0 wins the top-1 and reconstructs b_dec + (a, 0),
# leaving the residual (0, b); the dead latent 1 fires with value b and writes (0, b): the residual
# exactly, so the AuxK loss is 0. Adding b_dec to that reconstruction would make it (5, 5 + b): a
# loss of 4 rows x 50 / total variance, far from 0.
AUX_ROWS = torch.tensor([[3.0, 1.0], [4.0, 2.0], [5.0, 1.5], [6.0, 0.5]], dtype=torch.float64) + 5.0


def two_axis_sae(arch: str):
    sae = build(SAEConfig(arch=arch, d_in=2, n_latents=2, k=1, aux_k=1, aux_coeff=1.0), dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2, dtype=torch.float64))
        sae.W_dec.copy_(torch.eye(2, dtype=torch.float64))
        sae.b_enc.zero_()
        sae.b_dec.fill_(5.0)
    return sae


@pytest.mark.parametrize("arch,path", [("topk", "sparse"), ("topk", "dense"), ("batchtopk", "sparse")])
def test_auxk_reconstruction_of_the_residual_has_no_b_dec(arch, path, monkeypatch):
    monkeypatch.setattr(kernels, "_DENSE_AUX_RATIO", 0 if path == "sparse" else 10**6)
    sae = two_axis_sae(arch)
    dead = torch.tensor([False, True])
    out = sae(AUX_ROWS, dead_mask=dead)
    residual = AUX_ROWS - AUX_ROWS * torch.tensor([1.0, 0.0]) - torch.tensor([0.0, 5.0])  # (0, b)
    torch.testing.assert_close(AUX_ROWS - out.recon, residual)  # the live latent took a, not b
    assert float(out.aux_loss.detach()) == pytest.approx(0.0, abs=1e-12)
    tv = float((AUX_ROWS - AUX_ROWS.mean(0)).pow(2).sum())
    assert 4 * 50 / tv > 10  # what the pitfall would give instead
    # the main FVU is sum b^2 / tv, by hand
    assert float(out.fvu.detach()) == pytest.approx((1 + 4 + 2.25 + 0.25) / tv, rel=1e-12)


# ---------------------------------------------------------------- 3. no gradient scaler under bf16
def test_no_gradient_scaler_anywhere_in_the_package():
    """bf16 has float32's exponent range: loss scaling buys nothing and its overflow check skips steps
    silently. Training must call the optimiser directly."""
    root = Path(sparsesteer.__file__).parent
    hits = [
        f"{p.relative_to(root)}:{i}"
        for p in root.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"GradScaler|amp\.grad_scaler|\bscaler\.(step|scale|update)\b", line)
    ]
    assert hits == []


def test_every_bf16_autocast_step_is_an_adam_step():
    """Under bf16 autocast each `train_step` updates the weights by exactly the Adam step of that
    batch's clipped gradient (computed here independently, first step: lr * g / (|g| + eps)), and
    the optimiser has counted every call: no step was skipped."""
    torch.manual_seed(0)
    cfg = SAEConfig(arch="topk", d_in=16, n_latents=64, k=4, normalize_decoder=False)
    tc = TrainConfig(bf16=True, grad_clip=1.0)
    m = Member(cfg, CPU, tc, 1)
    x = torch.randn(32, 16) * 3 + 1
    lr = 1e-2

    ref = build(cfg.resolved(16), dtype=torch.float32)
    ref.load_state_dict(m.sae.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ref(x)
    out.loss.backward()
    params = dict(ref.named_parameters())
    torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
    eps = m.opt.param_groups[0]["eps"]
    expect = {n: (p - lr * p.grad / (p.grad.abs() + eps)).detach() for n, p in params.items()}

    train_step(m, x, None, lr, tc, CPU)
    for n, p in m.sae.named_parameters():
        torch.testing.assert_close(p.detach(), expect[n], rtol=1e-5, atol=1e-6, msg=n)
    before = {n: p.detach().clone() for n, p in m.sae.named_parameters()}
    for step in range(2, 5):
        train_step(m, torch.randn(32, 16) * 3 + 1, None, lr, tc, CPU)
        assert any(not torch.equal(p, before[n]) for n, p in m.sae.named_parameters()), f"step {step} skipped"
        before = {n: p.detach().clone() for n, p in m.sae.named_parameters()}
    for p in m.sae.parameters():
        assert int(m.opt.state[p]["step"]) == 4
