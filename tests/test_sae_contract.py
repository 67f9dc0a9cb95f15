"""One contract for every SAE variant (overcomplete style): shapes, persistence, input-scale
folding, one training step, and the architecture lists agreeing with each other."""

import typing

import pytest
import torch

from sparsesteer.sae import ARCHITECTURES, SAEConfig, SparseAutoencoder, build, variants
from sparsesteer.sae.config import Arch
from sparsesteer.sae.train import Member, TrainConfig, train_step
from sparsesteer.utils.errors import SparsesteerError

D, N, K = 12, 48, 4
TRAINABLE = [a for a, cls in variants().items() if cls.trainable]


def make(arch: str, seed: int = 0, **kw) -> SparseAutoencoder:
    """A variant with perturbed weights and biases (and a threshold where it has one), in eval mode."""
    torch.manual_seed(seed)
    sae = build(SAEConfig(arch=arch, d_in=D, n_latents=N, k=K, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.05) if sae.threshold.ndim == 0 else sae.threshold.uniform_(0, 0.2)
    return sae.eval()


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, D, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def test_the_architecture_lists_agree():
    assert ARCHITECTURES == tuple(variants()) == typing.get_args(Arch)
    for arch, cls in variants().items():
        assert issubclass(cls, SparseAutoencoder) and cls.arch == arch
    assert TRAINABLE == ["topk", "batchtopk", "relu"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_leading_dimensions_are_preserved(arch):
    sae = make(arch)
    x = inputs(2, 3)
    codes = sae.encode(x)
    assert codes.values.shape[:2] == (2, 3) and codes.indices.shape == codes.values.shape
    assert sae.decode(codes).shape == (2, 3, D)
    assert sae.reconstruct(x).shape == (2, 3, D)
    assert sae.encode_dense(x).shape == (2, 3, N)
    flat = sae.reconstruct(x.reshape(6, D)).reshape(2, 3, D)
    torch.testing.assert_close(sae.reconstruct(x), flat)
    torch.testing.assert_close(sae.decode(sae.encode_dense(x)), sae.reconstruct(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_load_give_the_same_outputs(arch, tmp_path):
    sae = make(arch)
    sae.save(tmp_path / "s", hook="blocks.1.resid_post")
    loaded = SparseAutoencoder.load(tmp_path / "s")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg and loaded.metadata["hook"] == "blocks.1.resid_post"
    x = inputs(9)
    a, b = sae.encode(x), loaded.encode(x)
    assert torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices)
    assert torch.equal(sae.reconstruct(x), loaded.reconstruct(x))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folding_an_input_scale_keeps_codes_and_scales_reconstructions(arch):
    """An SAE trained on s * x, folded, takes raw x: same codes, reconstruction divided by s."""
    s = 3.7
    sae = make(arch, 2)
    folded = make(arch, 2)
    folded.fold_input_scale(s)
    x = inputs(20, seed=3)
    ref = sae.encode(s * x).to_dense(N)
    torch.testing.assert_close(folded.encode(x).to_dense(N), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded.reconstruct(x), sae.reconstruct(s * x) / s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", TRAINABLE)
def test_one_training_step_gives_a_finite_loss_and_moves_every_parameter(arch):
    cfg = SAEConfig(arch=arch, d_in=D, n_latents=N, k=K, pass_weight=0.5 if arch != "relu" else 0.0)
    m = Member(cfg, torch.device("cpu"), TrainConfig(), n_classes=3)
    before = {k: v.clone() for k, v in m.sae.named_parameters()}
    x = inputs(64, seed=4)
    labels = torch.arange(64) % 3
    train_step(m, x, labels, 1e-2, TrainConfig(), torch.device("cpu"))
    assert m.sum_steps == 1 and all(torch.isfinite(torch.tensor(v)) for v in m.sums.values())
    assert m.sums["loss"] > 0 and m.sums["fvu"] > 0
    if cfg.pass_weight:
        assert m.sums["pass_loss"] > 0 and bool(m.objectives[0].seen.all())
    for name, p in m.sae.named_parameters():
        assert not torch.equal(p, before[name]), name


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in TRAINABLE])
def test_inference_only_variants_refuse_to_train(arch):
    with pytest.raises(SparsesteerError, match="inference-only"):
        make(arch)(inputs(4))


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 8)])
def test_a_batch_where_no_latent_fires_decodes_to_the_bias(shape):
    """ReLU codes can be empty for a whole batch (K = 0): decoding gives b_dec, not a reshape error."""
    sae = build(SAEConfig(arch="relu", n_latents=16).resolved(8))
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
        codes = sae.encode(torch.randn(*shape))
        assert codes.values.shape[-1] == 0
        out = sae.decode(codes)
    assert out.shape == shape and torch.equal(out, sae.b_dec.expand(shape))
