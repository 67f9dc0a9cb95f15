"""SAE edits (steering/edits.py) against hand computations from the SAE's weights: on tensors with a
tiny SAE, then through the interventions of a tiny CLIP (compared with hand-written interventions)."""

import pytest
import torch

from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.hook_names import hook_name
from sparsesteer.models.hooks import Intervention
from sparsesteer.models.tiny import make_tiny_clip
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import edits, inforward
from sparsesteer.steering import vs2 as V
from sparsesteer.utils.errors import SparsesteerError

HOOK = hook_name(1)


def make_sae(d=16, n=64, k=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    s = build(SAEConfig(arch="topk", d_in=d, n_latents=n, k=k), dtype=dtype)
    with torch.no_grad():
        s.b_dec.normal_(0, 0.5)  # a decoder bias that must cancel when the error term is kept
        s.b_enc.normal_(0, 0.2)
    return s.eval()


@pytest.fixture(scope="module")
def sae():
    return make_sae()


def dense_codes(sae, x_nd):
    """TopK codes by hand: ReLU of the k largest pre-activations of W_enc (x - b_dec) + b_enc."""
    pre = (x_nd - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    idx = pre.topk(sae.cfg.k, dim=-1).indices
    return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())


def apply(iv: Intervention, acts_btd):
    """Run an intervention's function the way the backbone does, on all tokens."""
    return iv.fn(acts_btd, torch.arange(acts_btd.shape[1]))


@torch.no_grad()
def test_edits_against_the_decoder_rows(sae):
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    f = dense_codes(sae, x)  # [1, 5, 64]
    W = sae.W_dec
    j = int(f[0, 0].argmax())  # active in token 0
    # zero: x - f_j W_dec[j]
    out = apply(edits.zero_latents(HOOK, sae, j), x)
    torch.testing.assert_close(out, x - f[..., j : j + 1] * W[j], rtol=0, atol=1e-12)
    # add: x + s W_dec[j], whether j is active or not
    for latent in (j, int((f[0, 0] == 0).nonzero()[0])):
        torch.testing.assert_close(apply(edits.add_latents(HOOK, sae, latent, 2.5), x), x + 2.5 * W[latent])
    # scale: x + (factor - 1) f_j W_dec[j]
    out = apply(edits.scale_latents(HOOK, sae, [j], 3.0), x)
    torch.testing.assert_close(out, x + 2.0 * f[..., j : j + 1] * W[j])
    # set: x + (s - f_j) W_dec[j], on several latents at once
    inactive = int((f[0, 0] == 0).nonzero()[-1])
    out = apply(edits.set_latents(HOOK, sae, [j, inactive], 1.25), x)
    ref = x + (1.25 - f[..., j : j + 1]) * W[j] + (1.25 - f[..., inactive : inactive + 1]) * W[inactive]
    torch.testing.assert_close(out, ref)


@torch.no_grad()
def test_no_op_edits_return_x_exactly(sae):
    x = torch.randn(1, 1, 16, dtype=torch.float64)
    f = sae.encode_dense(x)[0, 0]  # the SAE's own code, to the last bit
    j = int(f.argmax())
    # set to the current value: nothing changes, not even by rounding
    assert torch.equal(apply(edits.set_latents(HOOK, sae, j, float(f[j])), x), x)
    assert torch.equal(apply(edits.scale_latents(HOOK, sae, None, 1.0), x), x)
    assert torch.equal(apply(edits.sae_edit(HOOK, sae, lambda c: c), x), x)
    assert torch.equal(apply(edits.sae_edit(HOOK, sae, None), x), x)
    # an inactive latent zeroed: nothing to remove
    off = int((f == 0).nonzero()[0])
    assert torch.equal(apply(edits.zero_latents(HOOK, sae, off), x), x)
    # float32 activations through a float64 SAE come back float32, unchanged by a no-op
    x32 = torch.randn(2, 3, 16)
    same = apply(edits.set_latents(HOOK, sae, off, 0.0), x32)
    assert same.dtype == torch.float32 and torch.equal(same, x32)


@torch.no_grad()
def test_dropping_the_error_term_is_the_spliced_sae(sae):
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    f = dense_codes(sae, x)
    # plain reconstruction: decode(encode(x)), the same numbers as the SAE's own reconstruct
    rec = apply(edits.reconstruct(HOOK, sae), x)
    assert torch.equal(rec, sae.reconstruct(x))
    torch.testing.assert_close(rec, f @ sae.W_dec + sae.b_dec)
    assert torch.equal(apply(edits.sae_edit(HOOK, sae, None, keep_error=False), x), rec)
    # an edit without the error term: decode(f') with the bias
    j = int(f[0, 0].argmax())
    g = f.clone()
    g[..., j] = 0.0
    out = apply(edits.zero_latents(HOOK, sae, j, keep_error=False), x)
    torch.testing.assert_close(out, g @ sae.W_dec + sae.b_dec)
    # the difference between keeping and dropping the error term is exactly the error term
    kept = apply(edits.zero_latents(HOOK, sae, j), x)
    torch.testing.assert_close(kept - out, x - rec)


@torch.no_grad()
def test_general_edit_and_rescale(sae):
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    f = dense_codes(sae, x)

    def swap(c):  # a general edit, modifying its (private) copy in place
        c[:, [3, 7]] = c[:, [7, 3]]
        return c

    out = apply(edits.sae_edit(HOOK, sae, swap), x)
    delta = torch.zeros_like(f)
    delta[..., 3], delta[..., 7] = f[..., 7] - f[..., 3], f[..., 3] - f[..., 7]
    torch.testing.assert_close(out, x + delta @ sae.W_dec)
    # rescale: the edited vector, brought back to the norm of x
    z = x + 1.5 * f @ sae.W_dec  # every code scaled by 2.5
    out = apply(edits.sae_edit(HOOK, sae, lambda c: 2.5 * c, rescale=True), x)
    torch.testing.assert_close(out, z * x.norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True))


@torch.no_grad()
def test_in_forward_vs2_is_vs2(sae):
    """VS2 as an edit (f' = (1 + lam (gamma - 1)) f, rescaled) equals VS2 on the vectors."""
    x = torch.randn(4, 1, 16, dtype=torch.float64)
    for rescale in (True, False):
        out = apply(inforward.vs2_cls(1, sae, 2.1, 1.5, rescale=rescale), x)
        torch.testing.assert_close(out[:, 0], V.vs2(sae, x[:, 0], 2.1, 1.5, rescale=rescale))
    assert torch.equal(apply(inforward.reconstruct_cls(1, sae), x), sae.reconstruct(x))


def test_invalid_edits_are_refused(sae):
    with pytest.raises(SparsesteerError, match=r"latent indices \[64\] out of range: the SAE has n_latents=64"):
        edits.zero_latents(HOOK, sae, [3, 64])
    with pytest.raises(SparsesteerError, match="n_latents=64"):
        edits.add_latents(HOOK, sae, -1, 1.0)
    with pytest.raises(SparsesteerError, match="integer indices"):
        edits.set_latents(HOOK, sae, [1.5], 1.0)
    with pytest.raises(SparsesteerError, match="integer indices"):
        edits.set_latents(HOOK, sae, [True], 1.0)
    with pytest.raises(SparsesteerError, match="no latent"):
        edits.zero_latents(HOOK, sae, [])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(SparsesteerError, match="strength must be a finite number"):
            edits.add_latents(HOOK, sae, 1, bad)
        with pytest.raises(SparsesteerError, match="value must be a finite number"):
            edits.set_latents(HOOK, sae, 1, bad)
        with pytest.raises(SparsesteerError, match="factor must be a finite number"):
            edits.scale_latents(HOOK, sae, 1, bad)
        with pytest.raises(SparsesteerError, match="lam must be a finite number"):
            inforward.vs2_cls(1, sae, bad, 1.5)
    with pytest.raises(SparsesteerError, match="unknown hook point"):
        edits.reconstruct("blocks.1.resid", sae)
    iv = edits.sae_edit(HOOK, sae, lambda c: c[:, :3])
    with pytest.raises(SparsesteerError, match=r"code edit returned \(2, 3\); expected dense codes of shape \(2, 64\)"):
        apply(iv, torch.randn(1, 2, 16, dtype=torch.float64))
    with pytest.raises(SparsesteerError, match="does not match the SAE's d_in=16"):
        apply(edits.reconstruct(HOOK, sae), torch.randn(1, 2, 8))
    trained = make_sae()
    trained.metadata = {"hook": hook_name(2), "tokens": "cls"}
    with pytest.raises(
        SparsesteerError, match="trained on blocks.2.resid_post, but the edit is at blocks.1.resid_post"
    ):
        edits.reconstruct(HOOK, trained)


# ------------------------------------------------------------------ through a tiny CLIP
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    bb = load_backbone(make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip"))
    sae = make_sae(d=bb.d_model, n=96, k=5, dtype=torch.float32, seed=1)
    pixels = torch.randn(3, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    return bb, sae, pixels


def by_hand(fn_nd):
    """A hand-written intervention function applying `fn_nd` to every selected token vector."""
    return lambda acts, pos: fn_nd(acts.reshape(-1, acts.shape[-1])).reshape(acts.shape)


@pytest.mark.parametrize("tokens", ["cls", "patch", "all"])
@torch.no_grad()
def test_interventions_match_hand_written_ones(clip, tokens):
    bb, sae, pixels = clip
    x = bb.run(pixels, [HOOK])[HOOK]  # [B, T, d] unedited
    W = sae.W_dec
    selected = {"cls": x[:, :1], "patch": x[:, 1:], "all": x}[tokens].reshape(-1, x.shape[-1])
    j = int((dense_codes(sae, selected) > 0).sum(0).argmax())  # the latent active on most selected tokens
    cases = {
        "zero": (edits.zero_latents(HOOK, sae, j, tokens=tokens), lambda v: v - dense_codes(sae, v)[:, j, None] * W[j]),
        "add": (edits.add_latents(HOOK, sae, [j, 5], 0.75, tokens=tokens), lambda v: v + 0.75 * (W[j] + W[5])),
        "set": (
            edits.set_latents(HOOK, sae, j, 4.0, tokens=tokens),
            lambda v: v + (4.0 - dense_codes(sae, v)[:, j, None]) * W[j],
        ),
        "reconstruct": (edits.reconstruct(HOOK, sae, tokens=tokens), lambda v: dense_codes(sae, v) @ W + sae.b_dec),
    }
    later = hook_name(2)
    for name, (iv, hand) in cases.items():
        assert iv.hook == HOOK and iv.tokens == tokens
        manual = Intervention(HOOK, by_hand(hand), tokens)
        got = bb.run(pixels, [HOOK, later], interventions=[iv])
        want = bb.run(pixels, [HOOK, later], interventions=[manual])
        torch.testing.assert_close(got[HOOK], want[HOOK], rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(got[later], want[later], rtol=1e-4, atol=1e-4, msg=name)
        # tokens outside the selection pass through untouched
        keep = {"cls": slice(1, None), "patch": slice(0, 1), "all": slice(0, 0)}[tokens]
        assert torch.equal(got[HOOK][:, keep], x[:, keep]), name
        assert not torch.equal(got[HOOK], x), name
        emb = bb.embed_images(pixels, interventions=[iv])
        torch.testing.assert_close(emb, bb.embed_images(pixels, interventions=[manual]), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_no_op_intervention_leaves_the_model_unchanged(clip):
    bb, sae, pixels = clip
    plain = bb.embed_images(pixels)
    one = pixels[:1]  # one image, so that the CLS below is the one the intervention sees, to the last bit
    f = sae.encode_dense(bb.run(one, [HOOK], tokens="cls")[HOOK])[0]
    j = int(f.argmax())
    same = edits.set_latents(HOOK, sae, j, float(f[j]), tokens="cls")
    assert torch.equal(bb.embed_images(one, interventions=[same]), bb.embed_images(one))
    assert torch.equal(bb.embed_images(pixels, interventions=[edits.sae_edit(HOOK, sae, lambda c: c)]), plain)
