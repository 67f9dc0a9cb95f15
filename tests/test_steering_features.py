"""Feature and neuron steering in the forward pass (steering/features.py) against hand computations:
SAE codes computed by hand from the weights, residual edits written directly on transformers'
`hidden_states`, and the full forward for the resumed one."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.hook_names import hook_name
from sparsesteer.models.hooks import Intervention
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import edits
from sparsesteer.steering import features as Fe
from sparsesteer.utils.errors import SparsesteerError

HOOK = hook_name(1)  # blocks.1.resid_post of the 3-block tiny CLIP


@pytest.fixture(scope="module")
def bb(tiny_clip_dir):
    return load_backbone(tiny_clip_dir)


def make_sae(d=32, n=64, k=6, hook=HOOK, tokens="all", seed=0, dtype=torch.float32, unit=True):
    torch.manual_seed(seed)
    s = build(SAEConfig(arch="topk", d_in=d, n_latents=n, k=k), dtype=dtype).eval()
    with torch.no_grad():
        s.b_dec.normal_(0, 0.3)  # a decoder bias that must cancel when the error term is kept
        s.b_enc.normal_(0, 0.2)
        if not unit:
            s.W_dec.mul_(torch.linspace(0.5, 3.0, n, dtype=dtype)[:, None])
    s.metadata.update(hook=hook, tokens=tokens)
    return s


@pytest.fixture(scope="module")
def sae():
    return make_sae()


def dense_codes(sae, x):
    """TopK codes by hand: ReLU of the k largest pre-activations of W_enc (x - b_dec) + b_enc."""
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    idx = pre.topk(sae.cfg.k, dim=-1).indices
    return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())


def pixels(n=3, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def apply(iv, x):
    return iv.fn(x, torch.arange(x.shape[1]))


# ----------------------------------------------------------------------------- on tensors
@torch.no_grad()
def test_modes_against_the_decoder_rows():
    sae = make_sae(dtype=torch.float64, unit=False)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    f, W = dense_codes(sae, x), sae.W_dec
    j = int(f[0, 0].argmax())
    fj = f[..., j : j + 1]
    cases = {
        ("set", 4.0): x + (4.0 - fj) * W[j],
        ("add", -2.5): x - 2.5 * W[j],
        ("scale", 3.0): x + 2.0 * fj * W[j],
        ("zero", None): x - fj * W[j],
    }
    for (mode, s), ref in cases.items():
        torch.testing.assert_close(apply(Fe.feature_edit(HOOK, sae, j, s, mode), x), ref, rtol=0, atol=1e-12)
    # the same numbers as the edits.py helpers
    torch.testing.assert_close(
        apply(Fe.feature_edit(HOOK, sae, [j, 3], 4.0), x), apply(edits.set_latents(HOOK, sae, [j, 3], 4.0), x)
    )
    # unit directions: the value along u_j = W_j / |W_j| is f_j |W_j|
    n, u = W[j].norm(), W[j] / W[j].norm()
    ref_set = x + (4.0 - fj * n) * u
    ref_add = x - 2.5 * u
    torch.testing.assert_close(apply(Fe.feature_edit(HOOK, sae, j, 4.0, "set", unit_direction=True), x), ref_set)
    torch.testing.assert_close(apply(Fe.feature_edit(HOOK, sae, j, -2.5, "add", unit_direction=True), x), ref_add)
    torch.testing.assert_close(
        apply(Fe.feature_edit(HOOK, sae, j, 3.0, "scale", unit_direction=True), x), cases[("scale", 3.0)]
    )
    # without the error term: decode(f') with the bias
    g = f.clone()
    g[..., j] = 4.0
    torch.testing.assert_close(apply(Fe.feature_edit(HOOK, sae, j, 4.0, keep_error=False), x), g @ W + sae.b_dec)


@torch.no_grad()
def test_set_to_the_current_code_is_exactly_a_no_op():
    sae = make_sae(dtype=torch.float64)
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    f = sae.encode_dense(x)[0, 0]
    j = int(f.argmax())
    assert torch.equal(apply(Fe.feature_edit(HOOK, sae, j, float(f[j]), "set"), x), x)
    assert torch.equal(apply(Fe.feature_edit(HOOK, sae, j, 0.0, "add"), x), x)
    assert torch.equal(apply(Fe.feature_edit(HOOK, sae, j, 1.0, "scale"), x), x)
    off = int((f == 0).nonzero()[0])
    assert torch.equal(apply(Fe.feature_edit(HOOK, sae, off, None, "zero"), x), x)


def test_neuron_modes_on_tensors():
    x = torch.randn(2, 4, 32)
    for mode, s, fn in (
        ("set", 7.0, lambda v: torch.full_like(v, 7.0)),
        ("add", -3.0, lambda v: v - 3.0),
        ("scale", 0.5, lambda v: 0.5 * v),
        ("zero", None, torch.zeros_like),
    ):
        ref = x.clone()
        ref[..., [2, 9]] = fn(x[..., [2, 9]])
        assert torch.equal(apply(Fe.neuron_edit(HOOK, 32, [9, 2, 2], s, mode), x), ref)


# ----------------------------------------------------------------------------- in the model
@torch.no_grad()
def test_set_to_the_current_code_leaves_every_output_exactly_unchanged(bb, sae):
    px = pixels(1)
    hooks = [HOOK, hook_name(2, "mlp_out"), hook_name(2), "head"]
    ref = bb.run(px, hooks)
    x_cls = ref[HOOK][:, 0]
    f = sae.encode_dense(x_cls)[0]
    j = int(f.argmax())
    unchanged = [
        Fe.feature_edit(HOOK, sae, j, float(f[j]), "set", tokens="cls"),  # s = the CLS token's own code
        Fe.steer_features(bb, sae, [j, 5], 1.0, mode="scale"),
        Fe.steer_features(bb, sae, 3, 0.0, mode="add", tokens="patch"),
        Fe.steer_neurons(bb, HOOK, [0, 31], 1.0, mode="scale"),
    ]
    for iv in unchanged:
        out = bb.run(px, hooks, interventions=[iv])
        for h in hooks:
            torch.testing.assert_close(out[h], ref[h], rtol=0, atol=1e-6)
    exact = bb.run(px, hooks, interventions=unchanged[:1])
    assert all(torch.equal(exact[h], ref[h]) for h in hooks)


@torch.no_grad()
def test_zeroing_a_latent_subtracts_its_code_times_the_decoder_row(bb, sae):
    px = pixels(2, seed=1)
    x = bb.run(px, [HOOK])[HOOK]
    f = dense_codes(sae, x)
    j = int(f.sum((0, 1)).argmax())  # a latent active somewhere
    manual = x - f[..., j : j + 1] * sae.W_dec[j]
    iv = Fe.steer_features(bb, sae, j, None, mode="zero")
    got = bb.run(px, [HOOK, "head"], interventions=[iv])
    torch.testing.assert_close(got[HOOK], manual, rtol=0, atol=1e-5)
    by_hand = bb.embed_images(px, interventions=[Intervention(HOOK, lambda a, pos: manual)])
    torch.testing.assert_close(got["head"], by_hand, rtol=0, atol=1e-5)


def _finish_by_hand(bb, h, first_block):
    """Blocks first_block.. on hidden states h, then CLIP's post-layernorm(CLS) and projection, written
    against the transformers modules (no sparsesteer hooks)."""
    for layer in bb.vision.encoder.layers[first_block:]:
        out = layer(h, None)
        h = out[0] if isinstance(out, tuple) else out
    return bb.model.visual_projection(bb.vision.post_layernorm(h[:, 0]))


@torch.no_grad()
def test_neuron_steering_equals_a_manual_edit_of_hidden_states(bb):
    px = pixels(2, seed=2)
    hs = bb.vision(pixel_values=px, output_hidden_states=True).hidden_states
    for block, tokens, sel in ((1, "cls", [0]), (0, [2, 5], [1 + 2, 1 + 5]), (1, "all", list(range(17)))):
        h = hs[block + 1].clone()  # transformers' hidden_states[i + 1] = output of block i
        h[:, sel, 7] = 3.5
        h[:, sel, 20] += -4.0
        manual = _finish_by_hand(bb, h, block + 1)
        ivs = [
            Fe.steer_neurons(bb, hook_name(block), 7, 3.5, mode="set", tokens=tokens),
            Fe.steer_neurons(bb, hook_name(block), 20, -4.0, mode="add", tokens=tokens),
        ]
        torch.testing.assert_close(bb.embed_images(px, interventions=ivs), manual, rtol=0, atol=1e-5)
        emb = Fe.embed_steered(bb, px, ivs)  # the resumed forward: same numbers
        torch.testing.assert_close(emb.steered, manual, rtol=0, atol=1e-5)
        assert torch.equal(emb.unsteered, bb.embed_images(px))


@torch.no_grad()
def test_edits_compose_at_one_and_several_hooks(bb, sae):
    px = pixels(2, seed=3)
    j = 11
    # at one hook, in order: set 5 then add 2 (error term kept) is set 7
    two = [Fe.feature_edit(HOOK, sae, j, 5.0, "set"), Fe.feature_edit(HOOK, sae, j, 2.0, "add")]
    torch.testing.assert_close(
        bb.embed_images(px, interventions=two),
        bb.embed_images(px, interventions=[Fe.feature_edit(HOOK, sae, j, 7.0, "set")]),
        rtol=0,
        atol=1e-5,
    )
    # at two blocks: the same as hand-written interventions doing each edit's arithmetic
    sae0 = make_sae(hook=hook_name(0), seed=1)
    ivs = [
        Fe.steer_features(bb, sae0, 4, 6.0, mode="set", tokens="cls"),
        Fe.steer_neurons(bb, hook_name(2, "mlp_out"), 3, 2.0, mode="scale", tokens=[0, 1]),
    ]

    def first(a, pos):
        return a + (6.0 - dense_codes(sae0, a)[..., 4:5]) * sae0.W_dec[4]

    def second(a, pos):
        a = a.clone()
        a[..., 3] *= 2.0
        return a

    by_hand = [Intervention(hook_name(0), first, "cls"), Intervention(hook_name(2, "mlp_out"), second, [1, 2])]
    ref = bb.embed_images(px, interventions=by_hand)
    torch.testing.assert_close(bb.embed_images(px, interventions=ivs), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(Fe.embed_steered(bb, px, ivs[::-1]).steered, ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_embed_steered_equals_the_full_forward(bb, sae):
    px = pixels(3, seed=4)
    for ivs in (
        [Fe.feature_edit(hook_name(2), make_sae(hook=hook_name(2)), 1, 9.0)],  # last block: rerun it
        [Fe.neuron_edit(hook_name(1, "resid_pre"), 32, 0, 5.0), Fe.neuron_edit(hook_name(0), 32, 1, -5.0, "add")],
        [Fe.neuron_edit(hook_name(0), 32, 4, 2.0), Fe.neuron_edit(hook_name(1, "resid_pre"), 32, 4, 3.0, "scale")],
        [Fe.neuron_edit(hook_name(1, "attn_out"), 32, 2, 1.0, tokens="cls")],
    ):
        emb = Fe.embed_steered(bb, px, ivs)
        torch.testing.assert_close(emb.steered, bb.embed_images(px, interventions=ivs), rtol=0, atol=1e-5)
    # same tensor, two names: resid_post 0 then resid_pre 1 (set 2 then scale by 3: 6), whatever the list order
    ivs = [Fe.neuron_edit(hook_name(1, "resid_pre"), 32, 4, 3.0, "scale"), Fe.neuron_edit(hook_name(0), 32, 4, 2.0)]
    six = bb.embed_images(px, interventions=[Fe.neuron_edit(hook_name(0), 32, 4, 6.0)])
    torch.testing.assert_close(Fe.embed_steered(bb, px, ivs).steered, six, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- token selections
def test_token_selections(bb):
    assert Fe.patch_grid(bb) == (4, 4) and Fe.n_patches(bb) == 16
    for named in ("cls", "patch", "all"):
        assert Fe.steer_positions(bb, named) == named
    assert Fe.steer_positions(bb, [5, 0, 5]) == (1, 6)  # patch indices -> token indices after the CLS
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 2] = mask[3, 0] = True  # patches 6 and 12, row-major
    assert Fe.steer_positions(bb, mask) == (7, 13)
    assert Fe.steer_positions(bb, torch.from_numpy(mask)) == (7, 13)
    with pytest.raises(
        SparsesteerError, match=r"patch mask of shape \(2, 8\) does not match the model's patch grid \(4, 4\)"
    ):
        Fe.steer_positions(bb, np.ones((2, 8), dtype=bool))
    with pytest.raises(SparsesteerError, match=r"patch mask of shape \(16,\)"):
        Fe.steer_positions(bb, np.ones(16, dtype=bool))
    with pytest.raises(SparsesteerError, match="selects no patch"):
        Fe.steer_positions(bb, np.zeros((4, 4), dtype=bool))
    with pytest.raises(SparsesteerError, match=r"patch indices \[16\] out of range: the model has 16 patches"):
        Fe.steer_positions(bb, [3, 16])
    with pytest.raises(SparsesteerError, match="unknown token selection 'patches'"):
        Fe.steer_positions(bb, "patches")
    with pytest.raises(SparsesteerError, match="no tokens to select"):
        Fe.steer_positions(bb, "cls", "head")


def test_patch_selections_on_a_model_without_patch_tokens():
    stub = SimpleNamespace(
        model_id="stub", arch="clip", n_prefix=1, n_tokens=1, image_size=8, patch_size=16, has_cls=True
    )
    with pytest.raises(SparsesteerError, match="--tokens patch: 'stub' has no patch tokens"):
        Fe.steer_positions(stub, "patch")
    with pytest.raises(SparsesteerError, match="patch selection: 'stub' has no patch tokens"):
        Fe.steer_positions(stub, [0])
    siglip = SimpleNamespace(
        model_id="sig", arch="siglip", n_prefix=0, n_tokens=16, image_size=32, patch_size=8, has_cls=False
    )
    with pytest.raises(SparsesteerError, match="--tokens cls: 'sig' \\(siglip\\) has no CLS token"):
        Fe.steer_positions(siglip, "cls")
    assert Fe.steer_positions(siglip, [0, 15]) == (0, 15)


# ----------------------------------------------------------------------------- bad input
def test_bad_latents_strengths_and_neurons(bb, sae):
    with pytest.raises(SparsesteerError, match=r"latent indices \[64\] out of range: the SAE has n_latents=64"):
        Fe.steer_features(bb, sae, [3, 64], 1.0)
    for s in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(SparsesteerError, match="strength must be a finite number"):
            Fe.steer_features(bb, sae, 3, s)
        with pytest.raises(SparsesteerError, match="strength must be a finite number"):
            Fe.steer_neurons(bb, HOOK, 3, s)
    with pytest.raises(SparsesteerError, match="mode 'set' needs a strength"):
        Fe.feature_edit(HOOK, sae, 3, None, "set")
    with pytest.raises(SparsesteerError, match="mode 'zero' takes no strength"):
        Fe.feature_edit(HOOK, sae, 3, 2.0, "zero")
    with pytest.raises(SparsesteerError, match=r"unknown steering mode 'sett' \(did you mean 'set'\?\)"):
        Fe.feature_edit(HOOK, sae, 3, 2.0, "sett")
    with pytest.raises(
        SparsesteerError, match=r"neuron indices \[32\] out of range: the residual stream has d_model=32"
    ):
        Fe.steer_neurons(bb, HOOK, [32], 1.0)
    with pytest.raises(SparsesteerError, match="give a block hook, not 'head'"):
        Fe.steer_neurons(bb, "head", [1], 1.0)


def test_sae_that_does_not_match_the_model_hook_width_or_tokens(bb):
    with pytest.raises(SparsesteerError, match=r"width d_in=16, but blocks.1.resid_post of .* has width 32"):
        Fe.steer_features(bb, make_sae(d=16), 0, 1.0)
    sae = make_sae()  # trained on blocks.1.resid_post, all tokens
    with pytest.raises(
        SparsesteerError, match=r"hook: 'blocks.1.resid_post' vs 'blocks.2.resid_post'.*--allow-mismatch"
    ):
        Fe.steer_features(bb, sae, 0, 1.0, hook=hook_name(2))
    notes = Fe.check_sae(bb, sae, hook_name(2), "all", allow_mismatch=True)
    assert len(notes) == 1 and "hook" in notes[0]
    Fe.steer_features(bb, sae, 0, 1.0, hook=hook_name(2), allow_mismatch=True)  # runs
    cls_sae = make_sae(tokens="cls")
    with pytest.raises(SparsesteerError, match=r"trained on tokens 'cls' but the edit selects 'patch'"):
        Fe.steer_features(bb, cls_sae, 0, 1.0, tokens="patch")
    with pytest.raises(SparsesteerError, match=r"trained on tokens 'cls' but the edit selects token indices \[3\]"):
        Fe.steer_features(bb, cls_sae, 0, 1.0, tokens=[2])
    Fe.steer_features(bb, cls_sae, 0, 1.0, tokens="cls")  # fine
    patch_sae = make_sae(tokens="patch")
    Fe.steer_features(bb, patch_sae, 0, 1.0, tokens=[0, 15])
    with pytest.raises(SparsesteerError, match="trained on tokens 'patch' but the edit selects 'all'"):
        Fe.steer_features(bb, patch_sae, 0, 1.0, tokens="all")
    other = make_sae()
    other.metadata["model"] = {"id": "other/model", "revision": "abc"}
    with pytest.raises(SparsesteerError, match=r"model: 'other/model' vs .*model revision: 'abc' vs"):
        Fe.steer_features(bb, other, 0, 1.0)
    bare = make_sae()
    bare.metadata.pop("hook")
    with pytest.raises(SparsesteerError, match="records no hook point"):
        Fe.steer_features(bb, bare, 0, 1.0)
