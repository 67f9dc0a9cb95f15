"""Hook points, capture and interventions, checked against transformers' own outputs."""

from __future__ import annotations

import pytest
import torch

from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.hooks import BLOCK_KINDS, HookPoint, Intervention
from sparsesteer.models.tiny import make_tiny_clip, make_tiny_dinov2, make_tiny_siglip
from sparsesteer.utils.errors import SparsesteerError

MAKERS = {
    "clip": lambda d: make_tiny_clip(d),
    "siglip": lambda d: make_tiny_siglip(d),
    "dinov2": lambda d: make_tiny_dinov2(d),
    "dinov2_reg": lambda d: make_tiny_dinov2(d, registers=2),
}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks")
    return {name: load_backbone(make(root / name)) for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def clip(backbones):
    return backbones["clip"]


def pixels(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


def all_hooks(bb):
    return [f"blocks.{i}.{k}" for i in range(bb.n_blocks) for k in BLOCK_KINDS]


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---- hook names ---------------------------------------------------------------------------------


def test_hookpoint_parse_and_roundtrip():
    for name in ["blocks.0.resid_pre", "blocks.11.resid_post", "blocks.3.attn_out", "blocks.7.mlp_out", "head"]:
        hp = HookPoint.parse(name, 12)
        assert str(hp) == name
        assert HookPoint.parse(hp, 12) == hp
    assert HookPoint.parse("blocks.2.mlp_out", 12) == HookPoint("mlp_out", 2)
    order = sorted(
        [HookPoint.parse(n, 4) for n in ["head", "blocks.1.resid_pre", "blocks.0.resid_post", "blocks.1.mlp_out"]],
        key=lambda h: h.depth,
    )
    assert [str(h) for h in order] == ["blocks.0.resid_post", "blocks.1.resid_pre", "blocks.1.mlp_out", "head"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("blocks.12.resid_post", "valid indices 0..11"),
        ("blocks.-1.resid_post", "valid indices 0..11"),
        ("blocks.3.resid_mid", "did you mean 'blocks.3.resid_pre'"),
        ("block.3.resid_post", "did you mean 'blocks.3.resid_post'"),
        ("heads", "did you mean 'head'"),
    ],
)
def test_hookpoint_errors(name, message):
    with pytest.raises(SparsesteerError, match=message.replace(".", r"\.").replace("(", r"\(")):
        HookPoint.parse(name, 12)


# ---- capture matches transformers ---------------------------------------------------------------


@pytest.mark.parametrize("arch", list(MAKERS))
def test_capture_matches_hidden_states(backbones, arch):
    bb = backbones[arch]
    px = pixels(bb)
    with torch.no_grad():
        ref = bb.vision(pixel_values=px, output_hidden_states=True)
    assert len(ref.hidden_states) == bb.n_blocks + 1
    out = bb.run(px, all_hooks(bb) + ["head"])
    for i in range(bb.n_blocks):
        pre, post = out[f"blocks.{i}.resid_pre"], out[f"blocks.{i}.resid_post"]
        assert pre.shape == (2, bb.n_tokens, bb.d_model)
        torch.testing.assert_close(pre, ref.hidden_states[i], rtol=0, atol=0)
        torch.testing.assert_close(post, ref.hidden_states[i + 1], rtol=0, atol=0)
        # the two branches are exactly what the block adds to its input
        torch.testing.assert_close(pre + out[f"blocks.{i}.attn_out"] + out[f"blocks.{i}.mlp_out"], post)
        assert not torch.allclose(out[f"blocks.{i}.attn_out"], torch.zeros_like(pre))
    with torch.no_grad():
        head_ref = bb.model.get_image_features(pixel_values=px).pooler_output if arch == "clip" else ref.pooler_output
    assert out["head"].shape == (2, bb.d_embed)
    torch.testing.assert_close(out["head"], head_ref, rtol=0, atol=0)
    torch.testing.assert_close(bb.embed_images(px), head_ref, rtol=0, atol=0)


def test_dinov2_branches_include_layer_scale(backbones):
    bb = backbones["dinov2"]
    block = bb.blocks[1]
    seen = {}
    h = block.attention.register_forward_hook(lambda m, a, o: seen.update(raw=o[0]))
    try:
        out = bb.run(pixels(bb), ["blocks.1.attn_out"])
    finally:
        h.remove()
    torch.testing.assert_close(out["blocks.1.attn_out"], seen["raw"] * block.layer_scale1.lambda1)


def test_geometry(backbones):
    clip, siglip, dino, reg = (backbones[k] for k in ("clip", "siglip", "dinov2", "dinov2_reg"))
    assert (clip.has_cls, clip.n_prefix, clip.n_tokens) == (True, 1, 17)
    assert (siglip.has_cls, siglip.n_prefix, siglip.n_tokens) == (False, 0, 16)
    assert (dino.has_cls, dino.n_prefix, dino.n_tokens) == (True, 1, 17)
    assert (reg.n_registers, reg.n_prefix, reg.n_tokens) == (2, 3, 19)
    # DINOv2's position embeddings are for a larger image; the processor's crop decides the input
    assert dino.vision.config.image_size == 48 and dino.image_size == 32


# ---- token selection ----------------------------------------------------------------------------


def test_token_selection(backbones):
    bb = backbones["dinov2_reg"]
    px = pixels(bb)
    full = bb.run(px, ["blocks.1.resid_post"])["blocks.1.resid_post"]
    sel = lambda tokens: bb.run(px, ["blocks.1.resid_post"], tokens=tokens)["blocks.1.resid_post"]  # noqa: E731
    torch.testing.assert_close(sel("cls"), full[:, 0])
    assert sel("cls").shape == (2, bb.d_model)
    torch.testing.assert_close(sel("patch"), full[:, 3:])  # after CLS and 2 registers
    assert sel("patch").shape == (2, 16, bb.d_model)
    torch.testing.assert_close(sel([0, 5, 18]), full[:, [0, 5, 18]])
    torch.testing.assert_close(sel("all"), full)
    # head is one vector per image whatever the selection
    assert bb.run(px, ["head"], tokens="patch")["head"].shape == (2, bb.d_embed)


def test_token_selection_errors(backbones):
    with pytest.raises(SparsesteerError, match="no CLS token"):
        backbones["siglip"].run(pixels(backbones["siglip"]), ["blocks.0.resid_post"], tokens="cls")
    siglip_patch = backbones["siglip"].run(pixels(backbones["siglip"]), ["blocks.0.resid_post"], tokens="patch")
    assert siglip_patch["blocks.0.resid_post"].shape[1] == 16  # no CLS: every token is a patch
    clip = backbones["clip"]
    with pytest.raises(SparsesteerError, match=r"out of range 0\.\.16"):
        clip.run(pixels(clip), ["blocks.0.resid_post"], tokens=[0, 17])
    with pytest.raises(SparsesteerError, match="did you mean 'patch'"):
        clip.run(pixels(clip), ["blocks.0.resid_post"], tokens="patches")
    with pytest.raises(SparsesteerError, match="expects 32x32"):
        clip.run(torch.randn(1, 3, 24, 24), ["head"])


# ---- early stop ---------------------------------------------------------------------------------


def count_calls(modules):
    calls = {name: 0 for name in modules}
    handles = []
    for name, m in modules.items():

        def hook(mod, args, out, name=name):
            calls[name] += 1

        handles.append(m.register_forward_hook(hook))
    return calls, handles


B0 = {"block0", "attn0", "mlp0"}


@pytest.mark.parametrize(
    "hook, ran",
    [
        ("blocks.1.resid_post", B0 | {"block1", "attn1", "mlp1"}),
        ("blocks.1.attn_out", B0 | {"attn1"}),  # block 1 never returns, so its own hook is not called
        ("blocks.1.resid_pre", B0),
        ("blocks.0.mlp_out", {"attn0", "mlp0"}),
    ],
)
def test_forward_stops_after_deepest_hook(clip, hook, ran):
    mods = {f"block{i}": b for i, b in enumerate(clip.blocks)}
    mods |= {f"attn{i}": b.self_attn for i, b in enumerate(clip.blocks)}
    mods |= {f"mlp{i}": b.mlp for i, b in enumerate(clip.blocks)}
    mods["post_layernorm"] = clip.vision.post_layernorm
    calls, handles = count_calls(mods)
    try:
        out = clip.run(pixels(clip), [hook, "blocks.0.resid_pre"])
    finally:
        for h in handles:
            h.remove()
    assert set(out) == {hook, "blocks.0.resid_pre"}
    assert {name for name, n in calls.items() if n} == ran


def test_head_runs_whole_model(clip):
    calls, handles = count_calls({"post": clip.vision.post_layernorm, "last": clip.blocks[-1]})
    try:
        clip.run(pixels(clip), ["blocks.0.resid_post", "head"])
    finally:
        for h in handles:
            h.remove()
    assert calls == {"post": 1, "last": 1}


# ---- interventions ------------------------------------------------------------------------------


def manual_clip_forward(bb, px, edit_after_block=None, edit=None):
    """Run CLIP's vision tower block by block (no hooks), optionally editing the residual stream."""
    v = bb.vision
    with torch.no_grad():
        h = v.pre_layrnorm(v.embeddings(px))
        for i, block in enumerate(bb.blocks):
            h = block(h, None)
            if i == edit_after_block:
                h = edit(h)
        return h, bb.model.visual_projection(v.post_layernorm(h[:, 0]))


def test_intervention_matches_manual_recomputation(clip):
    px = pixels(clip)
    vec = torch.randn(clip.d_model, generator=torch.Generator().manual_seed(1))

    def add_cls(h):
        h = h.clone()
        h[:, 0] += vec
        return h

    last = f"blocks.{clip.n_blocks - 1}.resid_post"
    out = clip.run(
        px,
        ["blocks.1.resid_post", last, "head"],
        interventions=[Intervention("blocks.1.resid_post", lambda a, p: a + vec, tokens="cls")],
    )
    plain = clip.run(px, ["blocks.1.resid_post", "head"])
    h_ref, head_ref = manual_clip_forward(clip, px, edit_after_block=1, edit=add_cls)
    torch.testing.assert_close(out[last], h_ref)
    torch.testing.assert_close(out["head"], head_ref)
    assert not torch.allclose(out["head"], plain["head"])
    # the capture at the intervened hook records the edited stream; patches untouched there
    torch.testing.assert_close(out["blocks.1.resid_post"][:, 0], plain["blocks.1.resid_post"][:, 0] + vec)
    torch.testing.assert_close(out["blocks.1.resid_post"][:, 1:], plain["blocks.1.resid_post"][:, 1:])


@pytest.mark.parametrize("arch", list(MAKERS))
def test_identity_intervention_changes_nothing(backbones, arch):
    bb = backbones[arch]
    px = pixels(bb)
    names = all_hooks(bb) + ["head"]
    ivs = [
        Intervention(n, lambda a, p: a, tokens=t) for n in names for t in (["all"] if n == "head" else ["all", "patch"])
    ]
    torch.testing.assert_close(bb.run(px, names, interventions=ivs), bb.run(px, names), rtol=0, atol=0)


def test_interventions_at_every_kind_reach_the_output(clip):
    px = pixels(clip)
    base = clip.embed_images(px)
    for name in ["blocks.1.resid_pre", "blocks.1.attn_out", "blocks.1.mlp_out", "blocks.1.resid_post"]:
        got = clip.run(px, ["head"], interventions=[Intervention(name, lambda a, p: 0 * a, tokens="patch")])["head"]
        assert not torch.allclose(got, base), name


def test_attn_out_intervention_equals_editing_the_branch(clip):
    """Zeroing attn_out of block 1 = block 1 computing only its MLP branch."""
    px = pixels(clip)
    block = clip.blocks[1]

    def edit(h_pre):  # recompute block 1 by hand without attention
        return h_pre + block.mlp(block.layer_norm2(h_pre))

    out = clip.run(px, ["blocks.1.resid_post"], interventions=[Intervention("blocks.1.attn_out", lambda a, p: 0 * a)])
    pre = clip.run(px, ["blocks.1.resid_pre"])["blocks.1.resid_pre"]
    with torch.no_grad():
        torch.testing.assert_close(out["blocks.1.resid_post"], edit(pre))


def test_positions_passed_to_fn(backbones):
    bb = backbones["dinov2_reg"]
    seen = []
    fn = lambda a, p: (seen.append((tuple(a.shape), p.tolist())), a)[1]  # noqa: E731
    bb.run(
        pixels(bb),
        ["blocks.2.resid_post"],
        interventions=[
            Intervention("blocks.0.resid_post", fn, tokens="patch"),
            Intervention("blocks.0.resid_post", fn, tokens=[2, 7]),
            Intervention("blocks.1.resid_pre", fn, tokens="cls"),
            Intervention("blocks.1.mlp_out", fn, tokens="all"),
        ],
    )
    d = bb.d_model
    assert seen == [
        ((2, 16, d), list(range(3, 19))),
        ((2, 2, d), [2, 7]),
        ((2, 1, d), [0]),
        ((2, 19, d), list(range(19))),
    ]


def test_composition_order(clip):
    px = pixels(clip)
    hook = "blocks.1.resid_post"
    base = clip.run(px, [hook])[hook]
    double = Intervention(hook, lambda a, p: 2 * a)
    plus1 = Intervention(hook, lambda a, p: a + 1)
    torch.testing.assert_close(clip.run(px, [hook], interventions=[double, plus1])[hook], 2 * base + 1)
    torch.testing.assert_close(clip.run(px, [hook], interventions=[plus1, double])[hook], 2 * (base + 1))
    # an enclosing intervene() applies before the call's own interventions
    with clip.intervene(plus1):
        torch.testing.assert_close(clip.run(px, [hook], interventions=[double])[hook], 2 * (base + 1))
    # different hooks compose through the network: the later one sees the earlier one's effect
    pre = clip.run(px, ["blocks.2.resid_pre"], interventions=[plus1])["blocks.2.resid_pre"]
    torch.testing.assert_close(pre, base + 1)


def test_intervene_context_applies_to_any_forward(clip):
    px = pixels(clip)
    vec = torch.randn(clip.d_embed)
    base = clip.embed_images(px)
    before = n_hooks(clip.model)
    with clip.intervene(Intervention("head", lambda a, p: a + vec)):
        torch.testing.assert_close(clip.embed_images(px), base + vec)
        with torch.no_grad():  # also a plain transformers call sees it
            torch.testing.assert_close(clip.model.get_image_features(pixel_values=px).pooler_output, base + vec)
    assert n_hooks(clip.model) == before
    torch.testing.assert_close(clip.embed_images(px), base)


def test_head_intervention_dinov2_only_touches_cls(backbones):
    bb = backbones["dinov2"]
    px = pixels(bb)
    vec = torch.randn(bb.d_model)
    with torch.no_grad():
        base = bb.vision(pixel_values=px)
    with bb.intervene(Intervention("head", lambda a, p: a + vec)), torch.no_grad():
        got = bb.vision(pixel_values=px)
    torch.testing.assert_close(got.pooler_output, base.pooler_output + vec)
    torch.testing.assert_close(got.last_hidden_state[:, 1:], base.last_hidden_state[:, 1:])


def test_hooks_removed_after_exceptions(clip):
    px = pixels(clip)
    before = n_hooks(clip.model)

    def boom(a, p):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        clip.run(px, ["head"], interventions=[Intervention("blocks.0.resid_pre", boom), Intervention("head", boom)])
    assert n_hooks(clip.model) == before
    with pytest.raises(KeyError):
        with clip.intervene(Intervention("blocks.1.mlp_out", lambda a, p: a), Intervention("blocks.2.resid_pre", boom)):
            assert n_hooks(clip.model) == before + 2
            raise KeyError("inside")
    assert n_hooks(clip.model) == before
    # a bad return value is a clear error, and also cleans up
    with pytest.raises(
        SparsesteerError,
        match=r"blocks\.0\.resid_post returned \(2, 16, 32\); expected a tensor of shape \(2, 17, 32\)",
    ):
        clip.run(px, ["head"], interventions=[Intervention("blocks.0.resid_post", lambda a, p: a[:, 1:])])
    assert n_hooks(clip.model) == before
    # an invalid hook name fails before anything is installed
    with pytest.raises(SparsesteerError, match="valid indices 0..2"):
        with clip.intervene(
            Intervention("blocks.0.resid_post", lambda a, p: a), Intervention("blocks.3.resid_post", boom)
        ):
            pass
    assert n_hooks(clip.model) == before
    # and the model still works normally afterwards
    torch.testing.assert_close(clip.embed_images(px), clip.run(px, ["head"])["head"])


def test_grad_option(clip):
    px = pixels(clip).requires_grad_(True)
    out = clip.run(px, ["blocks.1.resid_post"])["blocks.1.resid_post"]
    assert not out.requires_grad
    out = clip.run(px, ["blocks.1.resid_post"], grad=True)["blocks.1.resid_post"]
    out.sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0


def test_dtype_and_float64(tmp_path):
    bb = load_backbone(make_tiny_clip(tmp_path / "c"), dtype=torch.float64)
    assert bb.dtype == torch.float64
    out = bb.run(pixels(bb).float(), ["blocks.0.resid_post", "head"])
    assert all(v.dtype == torch.float64 for v in out.values())


def test_token_indices_and_numpy_pixels(backbones):
    bb = backbones["dinov2_reg"]
    assert bb.token_indices("all").tolist() == list(range(19))
    assert bb.token_indices("cls").tolist() == [0]
    assert bb.token_indices("patch").tolist() == list(range(3, 19))
    assert bb.token_indices([4, 2]).tolist() == [4, 2]
    px = pixels(bb)
    torch.testing.assert_close(bb.embed_images(px.numpy()), bb.embed_images(px))
    vec = torch.randn(bb.d_embed)
    torch.testing.assert_close(
        bb.embed_images(px, interventions=[Intervention("head", lambda a, p: a + vec)]), bb.embed_images(px) + vec
    )
    with pytest.raises(SparsesteerError, match=r"\[B, 3, H, W\]"):
        bb.run(px[0], ["head"])
