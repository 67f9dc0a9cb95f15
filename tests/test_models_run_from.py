"""A forward resumed at block b from its resid_pre equals the full forward, for every family and block;
interventions and captures after b behave as in a full forward; hooks before b are refused."""

import pytest
import torch

from sparsesteer.models import Intervention, load_backbone
from sparsesteer.models.hook_names import hook_name
from sparsesteer.models.tiny import make_tiny_clip, make_tiny_dinov2, make_tiny_siglip
from sparsesteer.utils.errors import SparsesteerError

MAKERS = {
    "clip": make_tiny_clip,
    "siglip": make_tiny_siglip,
    "dinov2": make_tiny_dinov2,
    "dinov2-registers": lambda out: make_tiny_dinov2(out, registers=2),
}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def bb(request, tmp_path_factory):
    return load_backbone(MAKERS[request.param](tmp_path_factory.mktemp(request.param) / "m"))


def pixels(bb, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


def test_embed_from_every_block_equals_the_full_forward(bb):
    px = pixels(bb)
    full = bb.embed_images(px)
    for b in range(bb.n_blocks):
        pre = hook_name(b, "resid_pre")
        hidden = bb.run(px, [pre])[pre]
        assert torch.equal(bb.embed_from(b, hidden), full), b


def test_captures_and_interventions_after_the_start(bb):
    px = pixels(bb, seed=1)
    last, mid = hook_name(bb.n_blocks - 1), hook_name(1, "mlp_out")
    iv = Intervention(hook_name(1), lambda a, pos: 0.5 * a + 1.0, tokens="patch")
    ref = bb.run(px, [mid, last, "head"], interventions=[iv])
    hidden = bb.run(px, [hook_name(1, "resid_pre")])[hook_name(1, "resid_pre")]
    got = bb.run_from(1, hidden, [mid, last, "head"], interventions=[iv])
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    assert not torch.equal(ref["head"], bb.embed_images(px))  # the intervention did something


def test_hooks_before_the_start_and_bad_hidden_states_are_refused(bb):
    px = pixels(bb, n=2)
    hidden = bb.run(px, [hook_name(2, "resid_pre")])[hook_name(2, "resid_pre")]
    with pytest.raises(SparsesteerError, match=r"come before block 2"):
        bb.run_from(2, hidden, [hook_name(1)])
    with pytest.raises(SparsesteerError, match=r"come before block 2"):
        bb.embed_from(2, hidden, interventions=[Intervention(hook_name(0), lambda a, p: a)])
    with pytest.raises(SparsesteerError, match=r"must be \[B, T, \d+\]"):
        bb.embed_from(2, hidden[..., :-1])
    with pytest.raises(SparsesteerError, match="start block 9 out of range"):
        bb.embed_from(9, hidden)
