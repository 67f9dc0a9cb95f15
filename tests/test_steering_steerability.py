"""The steerability metric against hand-worked cases, and the runner against the naive loop (a full
forward per unit and strength); the random-init control; the vocabulary's cached text embeddings."""

import math

import pytest
import torch

from sparsesteer.models.backbone import load_backbone, random_init_copy
from sparsesteer.models.hook_names import hook_name
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import features as Fe
from sparsesteer.steering import steerability as St
from sparsesteer.steering.settings import SteerabilitySettings, parse_tokens
from sparsesteer.utils.errors import SparsesteerError

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def bb(tiny_clip_dir):
    return load_backbone(tiny_clip_dir)


# ----------------------------------------------------------------------------- hand-worked metric
def test_metric_on_three_words_by_hand():
    """Vocabulary e1, e2, e3 (unit axes), temperature ln 2, so exp(T cos) is 2 on the matching word
    and 1 elsewhere: an image at e1 has p = (2, 1, 1) / 4."""
    V = torch.eye(3)
    e0 = torch.tensor([[3.0, 0, 0], [0, 0, 1.0]])  # unnormalised on purpose: the metric normalises
    e = torch.tensor([[0, 0.5, 0], [0, 0, 2.0]])
    torch.testing.assert_close(St.concept_probs(e0, V, LN2), torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))
    # image 1 moves (.5,.25,.25) -> (.25,.5,.25); image 2 does not move: Delta = (-.125, .125, 0)
    delta = St.mean_prob_change(e0, e, V, LN2)
    torch.testing.assert_close(delta, torch.tensor([-0.125, 0.125, 0.0], dtype=torch.float64))
    m = St.steerability(delta, top=2)
    assert m.score.item() == pytest.approx(2 * 0.125**2)  # 0.03125
    assert m.power.item() == pytest.approx(0.125) and m.top.tolist() == [1, 2]
    assert not St.is_steerable(m.score, 0.10)
    # image 1 alone: Delta = (-.25, .25, 0), S = 0.125 > 0.10: steerable
    alone = St.steerability(St.mean_prob_change(e0[:1], e[:1], V, LN2))
    assert alone.score.item() == pytest.approx(0.125) and alone.power.item() == pytest.approx(0.25)
    assert St.is_steerable(alone.score, 0.10) and not St.is_steerable(alone.score, 0.125)
    # several units at once: [K, B, e] steered embeddings -> [K] scores
    both = St.steerability(St.mean_prob_change(e0, torch.stack([e, e0]), V, LN2))
    assert both.score.tolist() == pytest.approx([0.03125, 0.0])
    # temperature 100 (the default): p0 is one-hot, the moved image swaps all its mass: Delta = (-.5, .5, 0)
    hot = St.steerability(St.mean_prob_change(e0, e, V))
    assert hot.score.item() == pytest.approx(0.5, abs=1e-12) and hot.power.item() == pytest.approx(0.5, abs=1e-12)


def test_coverage_summary_and_sample_by_hand():
    # 4 units x 2 strengths; at s = 150 (column 1): S = .3, .05, .2, .11; top-1 concepts 0, 2, 0, 1
    score = torch.tensor([[0.0, 0.3], [0.0, 0.05], [0.0, 0.2], [0.0, 0.11]], dtype=torch.float64)
    power = torch.tensor([[0.0, 0.4], [0.0, 0.1], [0.0, 0.3], [0.0, 0.2]], dtype=torch.float64)
    top = torch.tensor([[[1], [0]], [[1], [2]], [[1], [0]], [[1], [1]]])
    curves = St.SteerabilityCurves(torch.tensor([3, 8, 9, 40]), (0.0, 150.0), score, power, top, n_images=5)
    assert St.coverage(top[:, 1, 0], St.is_steerable(score[:, 1])) == 2  # concepts {0, 1}; unit 8 not steerable
    s = St.summarize(curves, at_strength=150, threshold=0.10)
    assert (s.n_units, s.n_steerable, s.steerable_fraction, s.coverage) == (4, 3, 0.75, 2)
    assert s.top1_concepts == [0, 1]  # concept 0 twice, then 1
    assert s.score_quantiles["max"] == 0.3 and s.power_max == 0.4 and s.power_median == pytest.approx(0.25)
    assert St.summarize(curves, at_strength=150, threshold=0.25).n_steerable == 1
    with pytest.raises(SparsesteerError, match=r"strength 20 was not measured"):
        St.summarize(curves, at_strength=20)
    a, b = St.sample_units(49152, 1 / 20, seed=0), St.sample_units(49152, 1 / 20, seed=0)
    assert torch.equal(a, b) and len(a) == 2458 and len(a.unique()) == 2458 and a.max() < 49152
    assert not torch.equal(a, St.sample_units(49152, 1 / 20, seed=1))
    assert torch.equal(St.sample_units(7, 1.0), torch.arange(7)) and len(St.sample_units(7, 0.01)) == 1


# ----------------------------------------------------------------------------- the runner
def make_sae(hook, seed=0, unit=True):
    torch.manual_seed(seed)
    s = build(SAEConfig(arch="topk", d_in=32, n_latents=48, k=6)).eval()
    with torch.no_grad():
        s.b_dec.normal_(0, 0.3)
        if not unit:
            s.W_dec.mul_(torch.linspace(0.5, 2.0, 48)[:, None])
    s.metadata.update(hook=hook, tokens="all")
    return s


def naive(bb, hook, px, V, make_iv, units, settings):
    """A full forward per unit and strength, the edit through features.py, the metric by definition."""
    e0 = bb.embed_images(px)
    score = torch.zeros(len(units), len(settings.all_strengths), dtype=torch.float64)
    power = torch.zeros_like(score)
    for k, j in enumerate(units):
        for si, s in enumerate(settings.all_strengths):
            e = bb.embed_images(px, interventions=[make_iv(j, s)])
            p0 = torch.softmax(settings.temperature * torch.nn.functional.normalize(e0, dim=-1) @ V.T, -1)
            p = torch.softmax(settings.temperature * torch.nn.functional.normalize(e, dim=-1) @ V.T, -1)
            delta = (p - p0).double().mean(0)
            score[k, si], power[k, si] = (delta**2).sum(), delta.max()
    return score, power


CASES = [
    (hook_name(1), {}),
    (hook_name(1), {"keep_error": False, "tokens": "patch:0,3,5"}),
    (hook_name(2), {"unit_direction": True, "mode": "add"}),  # the last block: it is rerun
    (hook_name(1, "mlp_out"), {"mode": "scale", "tokens": "cls"}),
    (hook_name(0, "resid_pre"), {"steer_batch": 5}),
]


@pytest.mark.parametrize("hook,kw", CASES)
def test_runner_equals_the_naive_loop(bb, hook, kw):
    px = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    V = torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    settings = SteerabilitySettings(**{"strengths": (-5.0, 0.0, 4.0), "at_strength": 20.0, "steer_batch": 4, **kw})
    sae = make_sae(hook, unit=not kw.get("unit_direction"))
    units = [1, 7, 30]
    tokens = Fe.steer_positions(bb, parse_tokens(settings.tokens or "all"))  # None: the SAE's ('all')
    cur = St.measure_steerability(bb, hook, [px[:2], px[2:]], V, sae=sae, units=units, settings=settings)
    assert cur.strengths == (-5.0, 0.0, 4.0, 20.0) and cur.units.tolist() == units and cur.n_images == 5

    def feature(j, s):
        return Fe.feature_edit(
            hook, sae, j, s, settings.mode, tokens=tokens, keep_error=settings.keep_error,
            unit_direction=settings.unit_direction,
        )  # fmt: skip

    score, power = naive(bb, hook, px, V, feature, units, settings)
    torch.testing.assert_close(cur.score, score, rtol=0, atol=2e-5)
    torch.testing.assert_close(cur.power, power, rtol=0, atol=2e-5)
    neurons = St.measure_steerability(bb, hook, [px], V, units=[0, 31], settings=settings)
    n_score, _ = naive(
        bb, hook, px, V, lambda j, s: Fe.neuron_edit(hook, 32, j, s, settings.mode, tokens=tokens), [0, 31], settings
    )
    torch.testing.assert_close(neurons.score, n_score, rtol=0, atol=2e-5)


def test_no_op_strengths_score_zero_and_top_concepts(bb):
    px = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    V = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    settings = SteerabilitySettings(mode="add", strengths=(0.0, 50.0), at_strength=50.0, top=3)
    cur = St.measure_steerability(bb, hook_name(1), [px], V, units=[2, 9], settings=settings)
    assert cur.score[:, 0].abs().max() < 1e-10  # adding 0 changes nothing
    # the recorded top concepts are those of the largest mean increase, checked on one unit by hand
    e0 = bb.embed_images(px)
    e = bb.embed_images(px, interventions=[Fe.neuron_edit(hook_name(1), 32, 9, 50.0, "add")])
    delta = St.mean_prob_change(e0, e, V, 100.0)
    assert cur.top[1, 1].tolist() == delta.topk(3).indices.tolist()


def test_runner_bad_input(bb):
    px = [torch.randn(2, 3, 32, 32)]
    V = torch.randn(3, 16)
    with pytest.raises(SparsesteerError, match="not 'head'"):
        St.measure_steerability(bb, "head", px, V)
    with pytest.raises(SparsesteerError, match=r"latent indices \[48\] out of range: the SAE has n_latents=48"):
        St.measure_steerability(bb, hook_name(1), px, V, sae=make_sae(hook_name(1)), units=[0, 48])
    with pytest.raises(SparsesteerError, match="no images"):
        St.measure_steerability(bb, hook_name(1), [], V, units=[0])
    with pytest.raises(SparsesteerError, match="--strengths must be a finite number"):
        SteerabilitySettings(strengths=(0.0, float("nan")))
    with pytest.raises(SparsesteerError, match="--at-strength must be a finite number"):
        SteerabilitySettings(at_strength=float("inf"))
    with pytest.raises(SparsesteerError, match="--mode must be one of set, add, scale"):
        SteerabilitySettings(mode="zero")
    with pytest.raises(SparsesteerError, match="sample fraction"):
        St.sample_units(10, 0.0)


def test_steering_numbers_are_bounded_and_overflow_is_refused(bb):
    """Item 7: strengths beyond +-MAX_STEER are refused up front; a strength within it that still overflows
    (a 1e35-long decoder row) is refused naming the unit and the strength, instead of NaN scores."""
    with pytest.raises(SparsesteerError, match=r"--strengths 1e\+30 is out of range: .* within \+-1e\+06"):
        SteerabilitySettings(strengths=(0.0, 1e30))
    with pytest.raises(SparsesteerError, match=r"--at-strength -1e\+07 is out of range"):
        SteerabilitySettings(at_strength=-1e7)
    sae = make_sae(hook_name(1))
    with torch.no_grad():
        sae.W_dec[7] *= 1e35
    px = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))]
    settings = SteerabilitySettings(strengths=(0.0, 1e4), at_strength=1e4, mode="add")  # add 0: no change
    with pytest.raises(SparsesteerError, match=r"steering latent 7 at s = 10000 made the results non-finite"):
        St.measure_steerability(bb, hook_name(1), px, torch.randn(3, 16), sae=sae, units=[1, 7], settings=settings)


@pytest.mark.parametrize("unit", ["max", "p99"])
@torch.no_grad()
def test_relative_strengths_multiply_each_units_own_scale(bb, unit):
    """Item 10: with strength_unit max / p99 the runner steers unit k at s x its scale, the scale being
    measured on the steered tokens of the same images (here by hand: codes at the hook, non-zero p99)."""
    hook = hook_name(1)
    px = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    V = torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    settings = SteerabilitySettings(strengths=(0.5,), at_strength=3.0, strength_unit=unit, tokens="patch")
    sae = make_sae(hook)
    acts = bb.run(px, [hook])[hook][:, 1:].reshape(-1, 32)  # the patch tokens
    for values, kw, make in (
        (sae.encode_dense(acts), {"sae": sae}, lambda j, s: Fe.feature_edit(hook, sae, j, s, "set", tokens="patch")),
        (acts, {}, lambda j, s: Fe.neuron_edit(hook, 32, j, s, "set", tokens="patch")),
    ):
        fired = (values != 0).any(0).nonzero().flatten()[:3].tolist()
        cur = St.measure_steerability(bb, hook, [px[:3], px[3:]], V, units=fired, settings=settings, **kw)
        a = values[:, fired].abs()
        scale = a.max(0).values if unit == "max" else torch.stack([torch.quantile(c[c > 0], 0.99) for c in a.T])
        torch.testing.assert_close(cur.scale.unit(unit), scale, rtol=1e-6, atol=1e-6)
        for k, j in enumerate(fired):
            for si, s in enumerate(cur.strengths):
                e0, e = bb.embed_images(px), bb.embed_images(px, interventions=[make(j, s * float(scale[k]))])
                expected = (St.mean_prob_change(e0, e, V, 100.0) ** 2).sum()
                assert float(cur.score[k, si]) == pytest.approx(float(expected), abs=2e-5)


# ----------------------------------------------------------------------------- control and text
def test_random_init_copy(bb):
    a, b, c = random_init_copy(bb, 1), random_init_copy(bb, 1), random_init_copy(bb, 2)
    sd, sa, sb, sc = (m.model.state_dict() for m in (bb, a, b, c))
    assert sd.keys() == sa.keys() and all(sa[k].shape == sd[k].shape for k in sd)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # seeded
    assert any(not torch.equal(sa[k], sc[k]) for k in sa) and any(not torch.equal(sa[k], sd[k]) for k in sa)
    assert a.revision != bb.revision and a.revision.startswith("random-init-seed1-of-") and a.random_init_seed == 1
    assert (a.n_blocks, a.d_model, a.n_tokens, a.arch) == (bb.n_blocks, bb.d_model, bb.n_tokens, bb.arch)
    px = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a.embed_images(px), bb.embed_images(px))


def test_vocab_embeddings_are_unit_rows_and_cached(bb, tmp_path):
    from sparsesteer.models.zeroshot import encode_text

    V = St.vocab_embeddings(bb, ["cat", "dog", "red car"], cache_dir=tmp_path)
    ref = torch.nn.functional.normalize(encode_text(bb, ["cat", "dog", "red car"]), dim=-1)
    torch.testing.assert_close(V, ref)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    files[0].touch()
    assert torch.equal(St.vocab_embeddings(bb, ["cat", "dog", "red car"], cache_dir=tmp_path), V)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    ctrl = St.vocab_embeddings(random_init_copy(bb, 1), ["cat", "dog", "red car"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and not torch.allclose(ctrl, V)
