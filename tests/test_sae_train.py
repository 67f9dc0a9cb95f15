"""Training: schedules, sweeps, caches, exact resume after SIGKILL, PASS, AuxK, folding, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import make_activation_cache
from safetensors.torch import load_file

from sparsesteer.activations.loader import TensorSource
from sparsesteer.cli import main
from sparsesteer.sae import SAEConfig, SparseAutoencoder
from sparsesteer.sae.config import default_lr
from sparsesteer.sae.metrics import evaluate
from sparsesteer.sae.train import TrainConfig, Trainer, train
from sparsesteer.utils import precision
from sparsesteer.utils.errors import SparsesteerError


def data(n=4000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2 + 1


def test_lr_schedule_warmup_then_decay():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, decay="linear", min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[59] == pytest.approx(1 - 0.9 * 0.5)
    cos = TrainConfig(lr=1.0, warmup_steps=0, decay="cosine")
    assert cos.lr_at(49, 100) == pytest.approx(0.5)
    assert TrainConfig(lr=5e-4, warmup_steps=None).lr_at(0, 100) == pytest.approx(5e-4 / 5)  # 5% warm-up


def test_default_lr_follows_the_width_rule():
    # documented rule: 1e-3 * sqrt(16384 / n_latents), i.e. 5x sparsify's 2e-4 * sqrt(2**14 / n)
    assert default_lr(16384) == pytest.approx(1e-3)
    assert default_lr(512) == pytest.approx(1e-3 * math.sqrt(32))
    assert default_lr(49152) == pytest.approx(1e-3 / math.sqrt(3))
    assert default_lr(4 * 3072) == pytest.approx(default_lr(3072) / 2)  # 4x wider -> half the step
    cfg = TrainConfig(warmup_steps=0, decay="constant")
    assert cfg.lr_at(7, 100, 512) == pytest.approx(default_lr(512))
    assert TrainConfig(lr=3e-4).peak_lr(512) == 3e-4  # an explicit --lr wins
    with pytest.raises(SparsesteerError, match="number of latents"):
        cfg.lr_at(0, 100)


def test_sweep_members_get_their_own_default_lr(tmp_path):
    x = data()
    cfg = TrainConfig(batch_size=256, steps=3, log_every=1, checkpoint_every=0)
    trainer = Trainer(x, [SAEConfig(k=2, n_latents=32), SAEConfig(k=2, n_latents=128)], cfg, tmp_path / "r")
    result = trainer.fit()
    lrs = [sae.metadata["training"]["lr"] for sae in result.saes]
    assert lrs == pytest.approx([default_lr(32), default_lr(128)])
    settings = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert settings["precision"] in ("fp32", precision.describe(True, torch.device("cpu")))
    assert settings["lr"] == dict(zip(trainer.names, lrs))
    first = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(lrs[0])  # logged: the first SAE's (warm-up is 1 step here)


def test_sweep_members_see_the_same_batches_as_solo_runs(tmp_path):
    x = data()
    a, b = SAEConfig(k=2, n_latents=32), SAEConfig(k=4, n_latents=32)
    cfg = TrainConfig(batch_size=256, steps=15, log_every=5)
    sweep = train(x, [a, b], cfg, tmp_path / "sweep")
    solo = train(x, a, cfg, tmp_path / "solo")
    assert [p.name for p in sweep.paths] == ["topk-k2-n32", "topk-k4-n32"]
    for k, v in solo.saes[0].state_dict().items():
        assert torch.equal(sweep.saes[0].state_dict()[k], v), k
    lines = [json.loads(l) for l in (tmp_path / "sweep" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [5, 10, 15]
    assert set(lines[-1]["topk-k4-n32"]) >= {"loss", "fvu", "l0", "dead_frac", "dense_frac"}
    assert lines[-1]["topk-k4-n32"]["l0"] == pytest.approx(4.0)


def test_training_reduces_fvu_and_saves_provenance(tmp_path):
    x = data()
    before = evaluate(
        SparseAutoencoder.load(
            train(x, SAEConfig(k=4, n_latents=64), TrainConfig(batch_size=256, steps=1), tmp_path / "a").paths[0]
        ),
        TensorSource(x),
    )
    res = train(
        x,
        SAEConfig(k=4, n_latents=64),
        TrainConfig(batch_size=256, epochs=4, lr=2e-3),
        tmp_path / "b",
        metadata={"hook": "blocks.1.resid_post"},
    )
    after = evaluate(res.saes[0], TensorSource(x))
    assert after.fvu < 0.8 * before.fvu
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    assert cfg["hook"] == "blocks.1.resid_post" and cfg["training"]["steps"] == res.steps
    assert cfg["training"]["final_metrics"]["fvu"] > 0


def _run_cli(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "sparsesteer", "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def test_resume_after_sigkill_gives_bit_identical_weights(tmp_path):
    np.save(tmp_path / "acts.npy", data(20000, 16).numpy())
    common = [
        "train",
        "--activations",
        str(tmp_path / "acts.npy"),
        "--k",
        "4",
        "--n-latents",
        "64",
        "--batch-size",
        "128",
        "--steps",
        "600",
        "--checkpoint-every",
        "10",
        "--log-every",
        "10",
        "--dead-after",
        "2000",
    ]
    ref = _run_cli([*common, "--out", str(tmp_path / "ref")])
    killed = _run_cli([*common, "--out", str(tmp_path / "run")])
    state = tmp_path / "run" / "state"
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(p.name) for p in state.glob("[0-9]*")] if state.exists() else []
        if steps and max(steps) >= 30:
            break
        assert killed.poll() is None, killed.stderr.read().decode()
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (tmp_path / "run" / "sae.safetensors").exists()
    assert max(int(p.name) for p in state.glob("[0-9]*")) < 600
    resumed = _run_cli([*common, "--out", str(tmp_path / "run"), "--resume"])
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert ref.wait() == 0, ref.stderr.read().decode()
    a = load_file(str(tmp_path / "ref" / "sae.safetensors"))
    b = load_file(str(tmp_path / "run" / "sae.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log has each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 601, 10))


def test_rerun_without_resume_is_refused_and_changed_settings_cannot_resume(tmp_path):
    x = data()
    train(x, SAEConfig(k=4, n_latents=32), TrainConfig(batch_size=256, steps=4), tmp_path / "r")
    with pytest.raises(SparsesteerError, match="already holds a finished training run.*--overwrite"):
        train(x, SAEConfig(k=4, n_latents=32), TrainConfig(batch_size=256, steps=4), tmp_path / "r")
    with pytest.raises(SparsesteerError, match=r"saes settings differ.*k: 4 vs 8"):
        train(x, SAEConfig(k=8, n_latents=32), TrainConfig(batch_size=256, steps=4), tmp_path / "r", resume=True)


def test_the_checkpoint_is_deleted_only_after_the_saved_sae_reads_back_as_trained(tmp_path, monkeypatch):
    real = SparseAutoencoder.load

    def load_damaged(path, *args, **kwargs):  # a disk that returns other bytes than were written
        sae = real(path, *args, **kwargs)
        with torch.no_grad():
            sae.W_dec[0, 0] += 1.0
        return sae

    monkeypatch.setattr(SparseAutoencoder, "load", load_damaged)
    with pytest.raises(SparsesteerError, match=r"does not read back as trained \(W_dec\): its checkpoint stays"):
        train(data(), SAEConfig(k=4, n_latents=32), TrainConfig(batch_size=256, steps=3), tmp_path / "r")
    assert [p.name for p in (tmp_path / "r" / "state").iterdir()] == ["000000003"]
    monkeypatch.setattr(SparseAutoencoder, "load", real)
    train(data(), SAEConfig(k=4, n_latents=32), TrainConfig(batch_size=256, steps=3), tmp_path / "r", resume=True)
    assert not (tmp_path / "r" / "state").exists()


def test_nan_in_a_batch_names_batch_and_source_row(tmp_path):
    arr = data().numpy()
    arr[1234, 3] = np.nan
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(
        SparsesteerError, match=r"NaN or Inf in (batch \d+|initialisation sample), row \d+( \(source row 1234\))?"
    ):
        train(
            str(tmp_path / "a.npy"),
            SAEConfig(k=2, n_latents=16),
            TrainConfig(batch_size=256, steps=20, b_dec_init="zeros", init_samples=10),
            tmp_path / "o",
        )
    arr2 = data().numpy()
    arr2[3000, 0] = np.inf
    t = Trainer(
        TensorSource(torch.from_numpy(arr2)),
        SAEConfig(k=2, n_latents=16),
        TrainConfig(batch_size=256, steps=40, init_samples=100, seed=0),
        tmp_path / "p",
    )
    with pytest.raises(SparsesteerError, match=r"NaN or Inf in batch \d+, row \d+ \(source row 3000\)"):
        t.fit()
    assert not (tmp_path / "p" / "cfg.json").exists()  # nothing half-written


def test_input_normalisation_is_folded_into_saved_weights(tmp_path):
    x = data() * 37.0
    train(x, SAEConfig(k=4, n_latents=32), TrainConfig(batch_size=256, steps=10, normalize_input=True), tmp_path / "n")
    cfg = json.loads((tmp_path / "n" / "cfg.json").read_text())
    scale = cfg["input_normalisation"]["scale"]
    assert cfg["input_normalisation"]["folded"] and scale == pytest.approx(
        16**0.5 / float(x.norm(dim=1).mean()), rel=1e-3
    )
    folded = SparseAutoencoder.load(tmp_path / "n")
    # unfold by hand: the saved SAE on raw x equals the training-space SAE on scaled x, rescaled
    unfolded = SparseAutoencoder.load(tmp_path / "n")
    unfolded.fold_input_scale(1 / scale)
    torch.testing.assert_close(
        folded.reconstruct(x[:50]), unfolded.reconstruct(x[:50] * scale) / scale, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(unfolded.W_dec.norm(dim=1), torch.ones(32), rtol=1e-5, atol=1e-5)


def test_auxk_trains_dead_latents_only_when_enabled(tmp_path):
    x = data()
    moved = {}
    for coeff in (0.0, 1 / 32):
        # 64 samples x k=1 cannot fire most of 256 latents: after one batch they count as dead
        cfg = SAEConfig(k=1, n_latents=256, aux_coeff=coeff, dead_after=64)
        t = Trainer(
            TensorSource(x),
            cfg,
            TrainConfig(batch_size=64, steps=12, log_every=12, lr=1e-2, grad_clip=0),
            tmp_path / f"a{coeff}",
        )
        t.fit()
        lines = [json.loads(l) for l in (tmp_path / f"a{coeff}" / "metrics.jsonl").read_text().splitlines()]
        moved[coeff] = lines[-1][t.names[0]]["aux_loss"]
    assert moved[0.0] == 0.0 and moved[1 / 32] > 0.0


def test_firing_metrics_state_their_windows_hand_worked():
    from sparsesteer.sae.train import firing_metrics

    # samples since each latent last fired, after 30 samples; dead window 8
    m = firing_metrics(torch.tensor([0, 5, 10, 30]), 30, 8)
    assert m == {"never_fired_frac": 0.25, "dead_frac": 0.5, "dead_window": 8, "alive_frac": 0.5}
    # a run shorter than the window: the window is the run (not 0 by construction)
    m = firing_metrics(torch.tensor([0, 5, 6, 6]), 6, 10_000_000)
    assert m == {"never_fired_frac": 0.5, "dead_frac": 0.5, "dead_window": 6, "alive_frac": 0.5}


def test_short_run_reports_the_latents_that_never_fired(tmp_path, capsys):
    # one pass over 256 rows with a 10M-sample dead window: the old summary said dead_frac=0 by construction.
    # At lr 1e-9 the SAE stays at its initialisation, so what fired during the run is what its final
    # weights fire on over the same rows (evaluate), an independent count.
    x = data(256)
    np.save(tmp_path / "x.npy", x.numpy())
    argv = ["train", "--activations", str(tmp_path / "x.npy"), "--k", "1", "--n-latents", "1024", "--batch-size",
            "64", "--epochs", "1", "--lr", "1e-9", "--no-bf16", "--dead-after", "10000000", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    sae = SparseAutoencoder.load(tmp_path / "s")
    final = sae.metadata["training"]["final_metrics"]
    never_on_rows = evaluate(sae, TensorSource(x)).dead_frac
    assert 0.75 <= never_on_rows < 1  # k=1 over 256 rows leaves at least 768 of the 1,024 latents silent
    assert final["never_fired_frac"] == pytest.approx(never_on_rows)
    assert final["dead_frac"] == pytest.approx(never_on_rows) and final["dead_window"] == 256  # the whole run
    assert final["alive_frac"] == pytest.approx(1 - never_on_rows)
    out = capsys.readouterr().out
    assert f"never_fired_frac={final['never_fired_frac']:.4g} (over the whole run)" in out
    assert f"dead_frac={final['dead_frac']:.4g} (no firing in the last 256 samples)" in out


def test_default_dead_window_is_1000_average_firings_and_lets_auxk_act_in_a_short_run(tmp_path):
    from sparsesteer.sae.config import DEAD_FIRINGS

    assert DEAD_FIRINGS == 1000
    assert SAEConfig(k=32, expansion=4).resolved(768).dead_after == 96_000  # 1000 x 3,072 / 32
    assert SAEConfig(arch="relu", n_latents=64).resolved(16).dead_after == 2_000  # relu: 32 stands in for k
    assert SAEConfig(k=8, n_latents=512, dead_after=7).resolved(64).dead_after == 7  # an explicit window wins
    # rank-2 data in 16 dimensions: most of 32 latents never win the top-1; 40,960 samples, far below the
    # old 10M-sample default, but past the default window of 1000 x 32 / 1 = 32,000: AuxK acts
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g) @ torch.randn(2, 16, generator=g) + 0.01 * torch.randn(4000, 16, generator=g)
    t = Trainer(x, SAEConfig(k=1, n_latents=32), TrainConfig(batch_size=512, steps=80, log_every=10), tmp_path / "r")
    res = t.fit()
    lines = [json.loads(l)[t.names[0]] for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert res.saes[0].cfg.dead_after == 32_000
    assert all(l["aux_loss"] == 0 for l in lines[:6])  # 30,720 samples: no latent silent for the window yet
    assert lines[-1]["aux_loss"] > 0 and lines[-1]["dead_window"] == 32_000 and lines[-1]["dead_frac"] > 0.3


def test_pass_prototypes_are_the_ema_of_class_mean_codes(tmp_path):
    from sparsesteer.sae.train import Member, train_step

    torch.manual_seed(0)
    x = data(512)
    labels = torch.arange(512) % 3
    labels[::7] = -1  # unlabeled rows are ignored
    cfg = SAEConfig(k=3, n_latents=24, pass_weight=0.8, pass_ema=0.5)
    m = Member(cfg.resolved(16), torch.device("cpu"), TrainConfig(), n_classes=3)
    expected = torch.zeros(3, 24)
    seen = torch.zeros(3, dtype=torch.bool)
    for step in range(3):
        xb, lb = x[step * 128 : (step + 1) * 128], labels[step * 128 : (step + 1) * 128]
        with torch.no_grad():
            dense = m.sae.encode(xb).to_dense(24)  # codes before this step's update
        for c in range(3):
            mean = dense[lb == c].mean(0)
            expected[c] = mean if not seen[c] else 0.5 * expected[c] + 0.5 * mean
            seen[c] = True
        train_step(m, xb, lb, 1e-3, TrainConfig(bf16=False), torch.device("cpu"))  # as encode() above
        torch.testing.assert_close(m.objectives[0].prototypes, expected, rtol=1e-5, atol=1e-6)
    assert m.sums["pass_loss"] > 0


def test_pass_without_labels_says_which_flag_needs_them(tmp_path):
    np.save(tmp_path / "a.npy", data().numpy())
    with pytest.raises(SparsesteerError, match=r"PASS \(--pass-weight\) needs class labels"):
        train(
            str(tmp_path / "a.npy"), SAEConfig(k=2, n_latents=16, pass_weight=0.8), TrainConfig(steps=1), tmp_path / "o"
        )


def test_batchtopk_learns_an_inference_threshold(tmp_path):
    res = train(
        data(), SAEConfig(arch="batchtopk", k=4, n_latents=32), TrainConfig(batch_size=256, steps=10), tmp_path / "b"
    )
    sae = SparseAutoencoder.load(tmp_path / "b")
    assert float(sae.threshold) > 0
    l0 = sae.encode(data(1000, seed=1)).l0().float().mean()
    assert 1 < float(l0) < 16  # per-sample inference with about k active on average
    assert res.metrics[0]["l0"] == pytest.approx(4.0, abs=0.5)


def test_cli_train_and_evaluate_on_a_cache_with_token_filter(tmp_path, capsys):
    cache = make_activation_cache(tmp_path / "cache")
    assert (
        main(
            [
                "train",
                "--activations",
                str(cache),
                "--tokens",
                "cls",
                "--k",
                "2",
                "--expansion",
                "2",
                "--batch-size",
                "64",
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "sae"),
            ]
        )
        == 0
    )
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["hook"] == "blocks.2.resid_post" and cfg["tokens"] == "cls" and cfg["model"]["id"] == "tiny-clip"
    assert cfg["training"]["source"]["n_rows"] == 300  # one CLS row per image
    assert main(["evaluate", "--sae", str(tmp_path / "sae"), "--activations", str(cache), "--tokens", "cls"]) == 0
    ev = json.loads((tmp_path / "sae" / "eval.json").read_text())
    assert ev["metrics"]["n_rows"] == 300 and ev["hook"] == "blocks.2.resid_post"
    assert ev["metrics"]["l0_mean"] <= 2
    assert "| FVU |" in capsys.readouterr().out


def test_cli_bad_input_errors(tmp_path, capsys):
    cache = make_activation_cache(tmp_path / "cache")
    out = str(tmp_path / "o")
    assert main(["train", "--activations", str(cache), "--arch", "topkk", "--out", out]) == 2
    assert "did you mean 'topk'" in capsys.readouterr().err
    assert main(["train", "--activations", str(cache), "--k", "64", "--n-latents", "64", "--out", out]) == 2
    assert "k must be smaller than n_latents" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text("[train]\nlrr = 0.1\n")
    assert main(["train", "--activations", str(cache), "--config", str(tmp_path / "c.toml"), "--out", out]) == 2
    assert "unknown config key 'lrr' (did you mean 'lr'?)" in capsys.readouterr().err
    assert main(["train", "--activations", str(tmp_path / "nothing"), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    # a corrupted shard is named, and nothing is written
    shard = next((cache / "shards").rglob("00001.npy"))
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x55
    shard.write_bytes(bytes(raw))
    assert main(["train", "--activations", str(cache), "--k", "2", "--batch-size", "64", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "00001.npy" in err and "corrupt" in err
    assert not (tmp_path / "o" / "cfg.json").exists()
    # an SAE evaluated on activations of another width
    np.save(tmp_path / "w.npy", np.zeros((10, 8), np.float32))
    make_activation_cache(tmp_path / "cache2")
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "cache2"),
                "--k",
                "2",
                "--batch-size",
                "64",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--sae", str(tmp_path / "s"), "--activations", str(tmp_path / "w.npy")]) == 2
    assert "width 8 does not match the SAE's d_in=16" in capsys.readouterr().err


def test_wandb_sink_gets_flattened_metrics_and_is_finished(tmp_path, monkeypatch):
    """The W&B integration, with a stand-in module (wandb itself is an optional extra)."""
    import types

    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(
        data(),
        SAEConfig(k=2, n_latents=16),
        TrainConfig(batch_size=256, steps=4, log_every=2, log_to=("wandb",), wandb_project="p"),
        tmp_path / "w",
    )
    assert calls["init"][0]["project"] == "p" and calls["finish"] == 1
    assert [s for s, _ in calls["log"]] == [2, 4]
    step, record = calls["log"][-1]
    assert record["step"] == 4 and "topk-k2-n16/fvu" in record and "topk-k2-n16/l0" in record


def test_missing_logging_backend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(SparsesteerError, match="pip install wandb"):
        train(data(), SAEConfig(k=2, n_latents=16), TrainConfig(steps=1, log_to=("wandb",)), tmp_path / "w")
