"""sparsesteer's TopK training step beside the peer libraries' own steps, on the same batch.

Each library's own model and training step (forward, its loss, backward, its decoder-norm handling,
its Adam step) on the same [batch, d] input, in turn, repeated, medians:

- sparsesteer: `sae.train.train_step` (fp32, and bf16 autocast where the CPU has it fast);
- sparsify (eai-sparsify): `SparseCoder.forward` + the step of `sparsify.Trainer`;
- SAELens: `TopKTrainingSAE.training_forward_pass` + Adam;
- dictionary_learning: `TopKTrainer.update`;
- overcomplete: `TopKSAE` with `top_k_auxiliary_loss` (AuxK on) or MSE (off) + Adam.

AuxK on: half of the latents forced dead in each library's own counters (past its threshold), their
encoder rows shrunk so they never win the main top-k; overcomplete's auxiliary loss is its own
variant (no dead-latent tracking). A peer that is not importable is skipped with a message.

`--planted`: recovery of the planted dictionary (benchmarks/planted.py's data and MMCS) by
sparsesteer at its defaults (no --lr) beside sparsify's SparseCoder and trainer step at sparsify's
default learning-rate rule and schedule, same data and batches.

The peers pull in large dependency trees: install them in a separate virtual environment so that
none replaces the CPU torch (`pip install torch==<this torch>` first, then the peers with a
constraint pinning it), and run with the project on PYTHONPATH:

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0
    /tmp/peers/bin/pip install -c <(echo torch==2.13.0) eai-sparsify sae-lens dictionary-learning overcomplete
    PYTHONPATH=. /tmp/peers/bin/python benchmarks/peers.py [--sizes 3072,49152] [--repeats 3] [--planted]

Not part of CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from sparsesteer.sae import SAEConfig
from sparsesteer.sae.config import default_lr
from sparsesteer.sae.train import Member, TrainConfig, train_step
from sparsesteer.utils import precision

Step = Callable[[torch.Tensor, bool], None]
"""One training step on a batch, AuxK on (half of the latents forced dead) or off."""
BIG = 10**12  # a dead latent's counter


def _shrink(W: torch.Tensor, rows: torch.Tensor) -> None:
    with torch.no_grad():
        W[rows] *= 1e-3


def ours(n, d, k, bf16):
    cfg = TrainConfig(batch_size=1, lr=default_lr(n), bf16=bf16)
    m = Member(SAEConfig(arch="topk", d_in=d, n_latents=n, k=k, dead_after=10**9), torch.device("cpu"), cfg, 1)
    half = torch.arange(n) >= n // 2
    _shrink(m.sae.W_enc, half)

    def step(x, aux):
        m.since_fired.zero_()
        if aux:
            m.since_fired[half] = BIG
        train_step(m, x, None, cfg.lr, cfg, torch.device("cpu"))

    return step


def sparsify(n, d, k):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (n / 2**14) ** 0.5)  # sparsify's default rule
    half = torch.arange(n) >= n // 2
    _shrink(sae.encoder.weight, half)
    since = torch.zeros(n, dtype=torch.long)
    threshold = 10_000_000  # TrainConfig.dead_feature_threshold

    def step(x, aux):  # sparsify.Trainer.fit's hook + step, loss_fn="fvu", auxk_alpha 1/32
        since.zero_()
        if aux:
            since[half] = BIG
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=x, y=x, dead_mask=since > threshold, total_variance=(x - x.mean(0)).pow(2).sum())
        did_fire = torch.zeros(n, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + (1 / 32) * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since.add_(x.shape[0])
        since[did_fire] = 0

    return step


def saelens(n, d, k):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, device="cpu", dtype="float32"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)  # LanguageModelSAERunnerConfig's default lr
    half = torch.arange(n) >= n // 2
    _shrink(sae.W_enc.T, half)  # SAELens stores W_enc [d_in, d_sae]

    def step(x, aux):
        mask = half if aux else torch.zeros(n, dtype=torch.bool)
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=mask, n_training_steps=1, is_logging_step=False
            )
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def dictionary_learning(n, d, k):
    from dictionary_learning.trainers.top_k import TopKTrainer

    tr = TopKTrainer(steps=10**6, activation_dim=d, dict_size=n, k=k, layer=0, lm_name="bench", device="cpu")
    half = torch.arange(n) >= n // 2
    _shrink(tr.ae.encoder.weight, half)

    def step(x, aux):
        tr.num_tokens_since_fired.zero_()
        if aux:
            tr.num_tokens_since_fired[half] = BIG
        tr.update(1, x)  # step >= 1: no geometric-median initialisation

    return step


def _overcomplete_sae():
    """overcomplete.sae; its package __init__ also imports vision models (torchvision, timm), which
    the SAE code does not use: when those fail to import, load the package without its __init__."""
    try:
        import overcomplete.sae as sae_mod
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "overcomplete" or m.startswith("overcomplete.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("overcomplete")
        pkg = types.ModuleType("overcomplete")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["overcomplete"] = pkg
        import overcomplete.sae as sae_mod
    import overcomplete.sae.losses as losses

    return sae_mod.TopKSAE, losses.top_k_auxiliary_loss


def overcomplete(n, d, k):
    TopKSAE, top_k_auxiliary_loss = _overcomplete_sae()

    sae = TopKSAE(d, nb_concepts=n, top_k=k, device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=5e-4)

    def mse(x, x_hat, *_):
        return (x - x_hat).square().mean()

    def step(x, aux):
        opt.zero_grad()
        z_pre, z, x_hat = sae(x)
        (top_k_auxiliary_loss if aux else mse)(x, x_hat, z_pre, z, sae.get_dictionary()).backward()
        opt.step()

    return step


PEERS = {
    "sparsify": ("sparsify", sparsify),
    "SAELens": ("sae_lens", saelens),
    "dictionary_learning": ("dictionary_learning", dictionary_learning),
    "overcomplete": ("overcomplete", overcomplete),
}


def available() -> dict[str, Callable]:
    out = {}
    for name, (module, make) in PEERS.items():
        if importlib.util.find_spec(module) is None:
            print(f"# skipped {name}: `import {module}` fails here (pip install it; see the docstring)")
            continue
        out[name] = make
    return out


def bench_steps(n, d, k, batch, repeats, peers, with_bf16):
    """Median seconds per step of each (library, AuxK) pair, the same batch for all, in turn."""
    torch.manual_seed(0)
    xs = [torch.randn(batch, d) for _ in range(2)]
    models: dict[str, Step] = {"sparsesteer fp32": ours(n, d, k, False)}
    if with_bf16:
        models["sparsesteer bf16"] = ours(n, d, k, True)
    for name, make in peers.items():
        try:
            models[name] = make(n, d, k)
        except Exception as e:  # a peer's API changed: say so, keep the others
            print(f"# skipped {name}: {type(e).__name__}: {e}")
    times: dict[tuple[str, bool], list[float]] = {}
    for name, fn in list(models.items()):  # warm-up
        try:
            fn(xs[0], False)
            fn(xs[0], True)
        except Exception as e:
            print(f"# skipped {name}: {type(e).__name__}: {e}")
            del models[name]
    for r in range(repeats):
        for name, fn in models.items():
            for aux in (False, True):
                t = time.perf_counter()
                fn(xs[r % 2], aux)
                times.setdefault((name, aux), []).append(time.perf_counter() - t)
    return {key: statistics.median(t) for key, t in times.items()}


def planted_recovery(samples: int, seeds: list[int]) -> None:
    """sparsesteer at its defaults vs sparsify's own SparseCoder + trainer step, same planted data."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from planted import mmcs, planted_data

    from sparsesteer.activations.loader import TensorSource
    from sparsesteer.sae.train import Trainer

    d, atoms, active, batch = 64, 512, 8, 1024
    steps = samples // batch
    print(
        f"\n# Planted dictionary (benchmarks/planted.py data: d {d}, {atoms} atoms, {active} active, 200,000 samples); "
        f"TopK k {active}, {atoms} latents, batch {batch}, {steps * batch:,} training samples\n"
    )
    print("| seed | sparsesteer defaults: MMCS | sparsify defaults: MMCS |")
    print("|---:|---:|---:|")
    for seed in seeds:
        x, D = planted_data(200_000, d, atoms, active, 0.01, seed)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(batch_size=batch, steps=steps, seed=seed, checkpoint_every=0, log_every=steps)
            ours_m = mmcs(
                D, Trainer(TensorSource(x), SAEConfig(k=active, n_latents=atoms), cfg, tmp).fit().saes[0].W_dec
            )
        theirs = _sparsify_planted(x, atoms, active, batch, steps, seed)
        print(f"| {seed} | {ours_m:.4f} | {mmcs(D, theirs):.4f} |", flush=True)


def _sparsify_planted(x, n, k, batch, steps, seed):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=n, k=k), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (n / 2**14) ** 0.5)
    warm = 1000  # sparsify TrainConfig.lr_warmup_steps; then linear decay to 0 (get_linear_schedule_with_warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm))
    )
    g = torch.Generator().manual_seed(seed)
    for s in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        if s == 0:
            sae.b_dec.data = xb.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=xb, y=xb)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
    return sae.W_dec.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="3072,49152")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--planted", action="store_true", help="also the planted-dictionary recovery")
    ap.add_argument("--planted-only", action="store_true")
    ap.add_argument("--samples", type=int, default=4_000_000)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    peers = available()
    if not args.planted_only:
        print(
            f"# TopK training step, Adam, d {args.d}, k {args.k}, batch {args.batch}, CPU, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; sparsesteer bf16 = {precision.describe(True, cpu)}; AuxK on: half of "
            f"the latents forced dead; median of {args.repeats}, all steps in turn\n"
        )
        print("| n_latents | library | AuxK off (s) | AuxK on (s) | on / off | sparsesteer fp32 speed-up (off / on) |")
        print("|---:|---|---:|---:|---:|---:|")
        for n in (int(s) for s in args.sizes.split(",")):
            t = bench_steps(n, args.d, args.k, args.batch, args.repeats, peers, args.bf16)
            base_off, base_on = (
                t.get(("sparsesteer fp32", False), math.nan),
                t.get(("sparsesteer fp32", True), math.nan),
            )
            for name in dict.fromkeys(key[0] for key in t):
                off, on = t.get((name, False), math.nan), t.get((name, True), math.nan)
                print(
                    f"| {n:,} | {name} | {off:.3f} | {on:.3f} | {on / off:.2f}x | {off / base_off:.2f}x / "
                    f"{on / base_on:.2f}x |",
                    flush=True,
                )
    if (args.planted or args.planted_only) and "sparsify" in peers:
        planted_recovery(args.samples, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    main()
