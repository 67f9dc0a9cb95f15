"""Every sparse fast path against an independent dense float64 reference: values and gradients."""

import pytest
import torch

from sparsesteer.sae import SAEConfig, build, kernels

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def make(arch="topk", d=12, n=48, k=5, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    sae = build(SAEConfig(arch=arch, d_in=d, n_latents=n, k=k, **kw), dtype=dtype)
    with torch.no_grad():  # non-trivial biases so that every term is exercised
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)
    return sae


def dense_params(sae):
    return {name: getattr(sae, name).detach().double().clone().requires_grad_() for name in PARAMS}


def ref_pre(p, x):
    return (x.double() - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]


def ref_fvu(x, recon):
    x = x.double()
    return (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def ref_topk_codes(pre, k, by_abs=False):
    idx = (pre.abs() if by_abs else pre).topk(k, dim=1).indices
    mask = torch.zeros_like(pre).scatter(1, idx, 1.0)
    return (pre if by_abs else pre.relu()) * mask


def grads_of(sae):
    return {name: getattr(sae, name).grad.double() for name in PARAMS}


def assert_close_grads(sae, p, rtol, atol):
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad.double(), p[name].grad, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("by_abs", [False, True])
def test_topk_forward_and_grads_match_dense_reference(dtype, tol, by_abs):
    sae = make(dtype=dtype, select="abs" if by_abs else "relu")
    x = torch.randn(40, 12, dtype=dtype) * 2 + 0.3
    out = sae(x)
    out.loss.backward()

    p = dense_params(sae)
    codes = ref_topk_codes(ref_pre(p, x), 5, by_abs)
    recon = codes @ p["W_dec"] + p["b_dec"]
    loss = ref_fvu(x, recon)
    loss.backward()

    torch.testing.assert_close(out.recon.double(), recon.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(out.codes.to_dense(48).double(), codes.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(out.loss.double(), loss.detach(), rtol=tol, atol=tol)
    assert_close_grads(sae, p, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_topk_auxk_matches_dense_reference(path, monkeypatch):
    monkeypatch.setattr(kernels, "_DENSE_AUX_RATIO", 0 if path == "sparse" else 10**6)
    sae = make(aux_k=6)
    x = torch.randn(30, 12, dtype=torch.float64)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True  # 16 dead latents
    out = sae(x, dead_mask=dead)
    out.loss.backward()

    p = dense_params(sae)
    pre = ref_pre(p, x)
    codes = ref_topk_codes(pre, 5)
    recon = codes @ p["W_dec"] + p["b_dec"]
    tv = (x - x.mean(0)).pow(2).sum()
    fvu = (recon - x).pow(2).sum() / tv
    masked = pre.masked_fill(~dead, float("-inf"))
    aux_codes = ref_topk_codes(masked.nan_to_num(neginf=-1e30), 6).clamp_min(0)
    e_hat = aux_codes @ p["W_dec"]
    scale = min(16 / 6, 1.0)
    aux = scale * (e_hat - (x - recon).detach()).pow(2).sum() / tv
    loss = fvu + sae.cfg.aux_coeff * aux
    loss.backward()

    torch.testing.assert_close(out.aux_loss, aux.detach())
    torch.testing.assert_close(out.loss, loss.detach())
    assert_close_grads(sae, p, rtol=1e-9, atol=1e-9)
    # dead latents received encoder gradient only through AuxK: check some did
    assert sae.W_enc.grad[dead].abs().sum() > 0


def test_matryoshka_prefix_losses_match_dense_reference():
    sae = make(matryoshka=(8, 24))
    x = torch.randn(30, 12, dtype=torch.float64)
    out = sae(x)
    out.loss.backward()

    p = dense_params(sae)
    codes = ref_topk_codes(ref_pre(p, x), 5)
    fvus = []
    for m in (8, 24, 48):
        c = codes.clone()
        c[:, m:] = 0
        fvus.append(ref_fvu(x, c @ p["W_dec"] + p["b_dec"]))
    loss = torch.stack(fvus).mean()
    loss.backward()
    torch.testing.assert_close(out.matryoshka_fvu, loss.detach())
    torch.testing.assert_close(out.fvu, fvus[-1].detach())
    assert_close_grads(sae, p, rtol=1e-9, atol=1e-9)


def ref_batchtopk_codes(pre, k):
    act = pre.relu()
    flat = act.flatten()
    idx = flat.topk(k * pre.shape[0]).indices
    mask = torch.zeros_like(flat)
    mask[idx] = 1
    return (act.flatten() * mask).view_as(pre)


@pytest.mark.parametrize("skew", [False, True])
def test_batchtopk_training_selection_matches_dense_reference(skew):
    """skew=True makes one row hold more than 4k of the batch's top entries, which forces the
    exact fallback path."""
    sae = make("batchtopk", k=3)
    x = torch.randn(20, 12, dtype=torch.float64)
    if skew:
        x[0] *= 50
    out = sae(x)
    out.loss.backward()
    p = dense_params(sae)
    codes = ref_batchtopk_codes(ref_pre(p, x), 3)
    if skew:
        assert (codes[0] > 0).sum() > 12  # more than k_cand = 4k latents in row 0
    recon = codes @ p["W_dec"] + p["b_dec"]
    loss = ref_fvu(x, recon)
    loss.backward()
    torch.testing.assert_close(out.codes.to_dense(48), codes.detach())
    torch.testing.assert_close(out.recon, recon.detach())
    assert_close_grads(sae, p, rtol=1e-9, atol=1e-9)
    # threshold initialised to the smallest selected activation
    assert float(sae.threshold) == pytest.approx(float(codes.detach()[codes.detach() > 0].min()))


def test_batchtopk_threshold_is_an_ema_and_drives_inference():
    sae = make("batchtopk", k=3, threshold_ema=0.5)
    x1, x2 = torch.randn(20, 12, dtype=torch.float64), torch.randn(20, 12, dtype=torch.float64)
    p = dense_params(sae)
    m1 = ref_batchtopk_codes(ref_pre(p, x1), 3).detach()
    m2 = ref_batchtopk_codes(ref_pre(p, x2), 3).detach()
    with torch.no_grad():
        sae(x1)
        sae(x2)
    expected = 0.5 * float(m1[m1 > 0].min()) + 0.5 * float(m2[m2 > 0].min())
    assert float(sae.threshold) == pytest.approx(expected)
    codes = sae.encode(x1)
    pre = ref_pre(p, x1)
    ref = pre.relu() * (pre > expected)
    torch.testing.assert_close(codes.to_dense(48), ref.detach())


def test_jumprelu_per_latent_threshold():
    sae = make("jumprelu")
    with torch.no_grad():
        sae.threshold.uniform_(0, 1)
    x = torch.randn(25, 12, dtype=torch.float64, requires_grad=True)
    codes = sae.encode(x)
    p = dense_params(sae)
    pre = ref_pre(p, x)
    ref = pre.relu() * (pre > sae.threshold.double())
    torch.testing.assert_close(codes.to_dense(48), ref)
    # gradient w.r.t. the input flows through the sparse path too
    (codes.to_dense(48) * torch.arange(48.0, dtype=torch.float64)).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    pre = ref_pre({k: v.detach() for k, v in p.items()}, x_ref)
    ((pre.relu() * (pre > sae.threshold.double())) * torch.arange(48.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("weighted", [False, True])
def test_relu_loss_matches_dense_reference(weighted):
    sae = make("relu", l1_coeff=0.01, l1_weight_by_decoder_norm=weighted, normalize_decoder=not weighted)
    x = torch.randn(30, 12, dtype=torch.float64)
    out = sae(x)
    out.loss.backward()
    p = dense_params(sae)
    f = ref_pre(p, x).relu()
    recon = f @ p["W_dec"] + p["b_dec"]
    norms = p["W_dec"].norm(dim=1) if weighted else torch.ones(48, dtype=torch.float64)
    loss = ref_fvu(x, recon) + 0.01 * (f * norms).sum(1).mean()
    loss.backward()
    torch.testing.assert_close(out.loss, loss.detach())
    assert_close_grads(sae, p, rtol=1e-9, atol=1e-9)
    assert float(out.l0) == pytest.approx(float((f > 0).sum(1).double().mean()))


def test_gather_linear_input_gradient_and_latent_sum_kernel():
    torch.manual_seed(1)
    B, d, n, k = 9, 7, 20, 4
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    W = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(B)])
    pre = (x @ W.T + b).detach()
    vals = kernels.gather_linear(pre.gather(1, idx), x, W, b, idx)
    g = torch.randn(B, k, dtype=torch.float64)
    (vals * g).sum().backward()
    x2, W2, b2 = (t.detach().clone().requires_grad_() for t in (x, W, b))
    ((x2 @ W2.T + b2).gather(1, idx) * g).sum().backward()
    for a, r in ((x, x2), (W, W2), (b, b2)):
        torch.testing.assert_close(a.grad, r.grad)
    # the transposed kernel on its own
    out = kernels.latent_rows_weighted_sum(idx.reshape(-1), g.reshape(-1), x.detach(), k, n)
    dense = torch.zeros(B, n, dtype=torch.float64).scatter(1, idx, g)
    torch.testing.assert_close(out, dense.T @ x.detach())


def test_chunked_encoder_matches_unchunked(monkeypatch):
    """Force a tiny buffer so the row-chunk loop runs many times."""
    sae = make(n=64)
    x = torch.randn(50, 12, dtype=torch.float64)
    full = sae.encode(x).to_dense(64)
    monkeypatch.setattr(kernels, "_CPU_BUFFER_ELEMENTS", 64 * 7)
    kernels.release_workspace()
    chunked = sae.encode(x).to_dense(64)
    kernels.release_workspace()
    torch.testing.assert_close(chunked, full)


def test_leading_dimensions_are_kept():
    sae = make()
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    codes = sae.encode(x)
    assert codes.values.shape == (3, 4, 5)
    assert sae.decode(codes).shape == (3, 4, 12)
    torch.testing.assert_close(sae.reconstruct(x)[1, 2], sae.reconstruct(x[1, 2:3])[0])
    dense = sae.encode_dense(x)
    torch.testing.assert_close(sae.decode(dense), sae.decode(codes))


def test_decoder_constraint_helpers():
    sae = make()
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_gradient_parallel_to_decoder_directions()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-12
    with torch.no_grad():
        sae.W_dec.mul_(3)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48, dtype=torch.float64))


def test_fold_input_scale_makes_the_sae_take_raw_inputs():
    sae = make()
    x = torch.randn(20, 12, dtype=torch.float64)
    s = 2.5
    trained_view = sae.reconstruct(x * s) / s  # what the SAE does on scaled inputs, in raw units
    codes_scaled = sae.encode(x * s).to_dense(48)
    sae.fold_input_scale(s)
    torch.testing.assert_close(sae.reconstruct(x), trained_view)
    torch.testing.assert_close(sae.encode(x).to_dense(48), codes_scaled)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_topk_auxk_float32_matches_dense_float64_reference(path, monkeypatch):
    """The training path in float32 against the float64 dense reference, AuxK loss and every
    gradient, for both AuxK kernels: sparse gathers (latent orders shared by the encoder and decoder
    backward) and dense matmuls over the dead latents (used while few latents are dead)."""
    monkeypatch.setattr(kernels, "_DENSE_AUX_RATIO", 0 if path == "sparse" else 10**6)
    sae = make(aux_k=7, n=64, dtype=torch.float32, seed=3)
    x = torch.randn(50, 12) * 1.5
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:32]] = True
    out = sae(x, dead_mask=dead)
    out.loss.backward()

    p = dense_params(sae)
    loss, aux = reference_auxk_loss(sae, p, x, dead, 7)  # scale min(32/7, 1) = 1
    loss.backward()
    torch.testing.assert_close(out.aux_loss.double(), aux.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), loss.detach(), rtol=1e-5, atol=1e-6)
    assert_close_grads(sae, p, rtol=1e-4, atol=1e-5)


def test_sparse_decode_gradients_with_a_shared_latent_order():
    torch.manual_seed(2)
    B, d, n, k = 11, 6, 25, 5
    W = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, k, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(B)])
    g = torch.randn(B, d, dtype=torch.float64)
    for lo in (kernels.latent_order(idx, n), None):  # given, or made in the backward
        W.grad = v.grad = None
        (kernels.sparse_decode(v, idx, W, lo) * g).sum().backward()
        W2, v2 = W.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
        dense = torch.zeros(B, n, dtype=torch.float64).scatter(1, idx, v2)
        ((dense @ W2) * g).sum().backward()
        torch.testing.assert_close(W.grad, W2.grad)
        torch.testing.assert_close(v.grad, v2.grad)


def test_selected_preacts_are_the_exact_dot_products():
    torch.manual_seed(4)
    B, d, n, k = 13, 9, 30, 6
    x, W, b = torch.randn(B, d), torch.randn(n, d), torch.randn(n)
    idx = torch.randint(0, n, (B, k))
    ref = (x.double() @ W.double().T + b.double()).gather(1, idx)
    torch.testing.assert_close(kernels.selected_preacts(x, W, b, idx).double(), ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_selection_has_float32_values():
    """Under CPU bf16 autocast the matmul picks the latents; their values are the float32 dot
    products (not bf16-rounded), and nearly all picks agree with float32's."""
    torch.manual_seed(5)
    x, W, b = torch.randn(256, 64), torch.randn(512, 64) / 8, torch.randn(512) * 0.1
    exact = kernels.encode_select(x, W, b, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sel = kernels.encode_select(x, W, b, 8)
    assert sel.values.dtype == torch.float32
    ref = (x.double() @ W.double().T + b.double()).gather(1, sel.indices)
    torch.testing.assert_close(sel.values.double(), ref, rtol=1e-5, atol=1e-5)
    same = kernels.to_dense(torch.ones_like(sel.values), sel.indices, 512).bool()
    same &= kernels.to_dense(torch.ones_like(exact.values), exact.indices, 512).bool()
    assert int(same.sum()) >= 0.97 * 256 * 8


def reference_auxk_loss(sae, p, x, dead, k_aux, codes=None):
    """The TopK (or `codes(pre)`) + AuxK objective in float64 by dense ops, on the parameters `p`."""
    pre = ref_pre(p, x)
    if codes is None:
        codes = lambda pre: ref_topk_codes(pre, sae.cfg.k, sae.cfg.select == "abs")  # noqa: E731
    recon = codes(pre) @ p["W_dec"] + p["b_dec"]
    xd = x.double()
    tv = (xd - xd.mean(0)).pow(2).sum()
    aux_codes = ref_topk_codes(pre.masked_fill(~dead, -1e30), k_aux).clamp_min(0)
    scale = min(int(dead.sum()) / sae.k_aux, 1.0)
    aux = scale * (aux_codes @ p["W_dec"] - (xd - recon).detach()).pow(2).sum() / tv
    return (recon - xd).pow(2).sum() / tv + sae.cfg.aux_coeff * aux, aux


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize(
    "k,aux_k,n_dead,select",
    [
        (5, 9, 20, "relu"),  # k <= k_aux: the main top-k merges the live top-k with the dead top-k_aux
        (6, 3, 20, "relu"),  # k > k_aux: a full-width main top-k
        (5, 9, 45, "relu"),  # fewer live latents (3) than k
        (5, 9, 20, "abs"),  # |pre| selection with AuxK
    ],
)
def test_auxk_selection_cases_match_dense_float64_reference(path, k, aux_k, n_dead, select, monkeypatch):
    monkeypatch.setattr(kernels, "_DENSE_AUX_RATIO", 0 if path == "sparse" else 10**6)
    sae = make(n=48, k=k, aux_k=aux_k, select=select, seed=7)
    x = torch.randn(40, 12, dtype=torch.float64) * 1.3
    dead = torch.zeros(48, dtype=torch.bool)
    dead[torch.randperm(48)[:n_dead]] = True
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    p = dense_params(sae)
    loss, aux = reference_auxk_loss(sae, p, x, dead, min(aux_k, n_dead))
    loss.backward()
    torch.testing.assert_close(out.aux_loss, aux.detach())
    torch.testing.assert_close(out.loss, loss.detach())
    assert_close_grads(sae, p, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("x_grad", [False, True])
def test_gather_linear_with_a_center_matches_dense_autograd(x_grad):
    """values of (x - c): the center's gradient comes as -(grad bias) @ W, the input's (only when
    x needs one) by the per-row bag; both against plain autograd in float64."""
    torch.manual_seed(8)
    B, d, n, k = 10, 7, 30, 4
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=x_grad)
    c, W, b = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((d,), (n, d), (n,)))
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(B)])
    g = torch.randn(B, k, dtype=torch.float64)
    vals = ((x - c) @ W.T + b).detach().gather(1, idx)
    (kernels.gather_linear(vals, x, W, b, idx, center=c) * g).sum().backward()
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in (x, c, W, b)]
    xr, cr, Wr, br = ref
    (((xr - cr) @ Wr.T + br).gather(1, idx) * g).sum().backward()
    for a, r in zip((x, c, W, b), ref):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, r.grad)
    if not x_grad:
        assert x.grad is None


def test_pair_dots_are_the_gathered_dot_products():
    torch.manual_seed(9)
    B, d, n, k = 17, 5, 40, 6
    W, G = torch.randn(n, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
    idx = torch.randint(0, n, (B, k))  # repeats within a row are allowed
    ref = (G @ W.T).gather(1, idx)
    torch.testing.assert_close(kernels.pair_dots(idx, W, G), ref)
    torch.testing.assert_close(kernels.pair_dots(idx, W, G, kernels.latent_order(idx, n)), ref)


@pytest.mark.parametrize("group", [2, 3, 4, 8])
@pytest.mark.parametrize("n,k", [(64, 5), (67, 4), (40, 10)])
def test_row_topk_by_groups_is_exact(n, k, group):
    """Same values as torch.topk, each index pointing at its value; with ties (small integers)
    and with columns left over when the group size does not divide n."""
    torch.manual_seed(n + k + group)
    for pre in (torch.randn(23, n), torch.randint(-3, 4, (23, n)).float(), torch.randn(23, n + 5)[:, 2 : n + 2]):
        if n // group < k:
            continue
        v, i = kernels.row_topk(pre, k, group=group)
        torch.testing.assert_close(v.sort(1, descending=True).values, pre.topk(k, 1).values)
        torch.testing.assert_close(pre.gather(1, i), v)
        assert all(len(set(row.tolist())) == k for row in i)  # k distinct columns per row


def test_group_size_rule():
    assert kernels._group_size(3072, 64) == 4
    assert kernels._group_size(49152, 64) == 32
    assert kernels._group_size(1536, 384) == 1  # too few columns per top entry: plain topk


@pytest.mark.parametrize("aux_k", [14, 6])  # 4k = 12 candidates per row: merged with the dead top-14, or not
def test_batchtopk_with_auxk_matches_dense_float64_reference(aux_k):
    sae = make("batchtopk", k=3, aux_k=aux_k, seed=11)
    x = torch.randn(24, 12, dtype=torch.float64) * 1.2
    dead = torch.zeros(48, dtype=torch.bool)
    dead[torch.randperm(48)[:20]] = True
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    p = dense_params(sae)
    loss, aux = reference_auxk_loss(sae, p, x, dead, aux_k, codes=lambda pre: ref_batchtopk_codes(pre, 3))
    loss.backward()
    torch.testing.assert_close(out.aux_loss, aux.detach())
    torch.testing.assert_close(out.loss, loss.detach())
    assert_close_grads(sae, p, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_auxk_under_bf16_autocast_stays_close_to_float32(path, monkeypatch):
    """The AuxK kernels under CPU bf16 autocast (the default where the CPU has native bf16):
    float32 gradients, loss and every gradient close to the float32 step's (bf16 rounding of the
    matmuls only)."""
    monkeypatch.setattr(kernels, "_DENSE_AUX_RATIO", 0 if path == "sparse" else 10**6)
    x = torch.randn(64, 32) * 1.5
    dead = torch.zeros(128, dtype=torch.bool)
    dead[torch.randperm(128)[:64]] = True
    results = []
    for bf16 in (False, True):
        sae = make(d=32, n=128, k=8, aux_k=16, dtype=torch.float32, seed=12)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = sae(x, dead_mask=dead)
        out.loss.backward()
        results.append((out, {name: getattr(sae, name).grad for name in PARAMS}))
    (o32, g32), (o16, g16) = results
    assert all(g.dtype == torch.float32 for g in g16.values())
    assert float(o16.aux_loss.detach()) == pytest.approx(float(o32.aux_loss.detach()), rel=0.03)
    assert float(o16.loss.detach()) == pytest.approx(float(o32.loss.detach()), rel=0.03)
    for name in PARAMS:
        cos = torch.nn.functional.cosine_similarity(g16[name].flatten(), g32[name].flatten(), dim=0)
        assert float(cos) > 0.98, name
