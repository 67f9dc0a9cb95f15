"""What a new user hits with `sparsesteer train` / `evaluate`: run directories that would lose work,
resumes of nothing, sweeps of identical SAEs, NaN/Inf, bad values, unwritable outputs, and runs too
short to train an SAE. Each class of defect is a clean exit 2 naming the problem, before any work."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import make_activation_cache
from safetensors.torch import load_file, save_file

from sparsesteer.activations.loader import TensorSource
from sparsesteer.cli import main
from sparsesteer.sae import SAEConfig, SparseAutoencoder
from sparsesteer.sae.config import FEW_STEPS
from sparsesteer.sae.metrics import evaluate
from sparsesteer.sae.train import TrainConfig, train
from sparsesteer.utils.errors import SparsesteerError

QUICK = ["--k", "2", "--expansion", "2", "--batch-size", "64", "--steps", "6", "--log-every", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_activation_cache(tmp_path_factory.mktemp("acts") / "cache")


def run_train(cache, out, *extra):
    return main(["train", "--activations", str(cache), *QUICK, "--out", str(out), *extra])


def one_line_error(capsys, *needles):
    """The error is one line (the short-run warning that tiny test runs log, and the precision line
    of a run, are not part of it)."""
    lines = [
        x
        for x in capsys.readouterr().err.strip().splitlines()
        if "runs under 300 steps get this warning" not in x and ": training in " not in x
    ]
    err = "\n".join(lines)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def snapshot(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ non-empty --out
def test_train_refuses_a_non_empty_out_that_is_not_its_run_unless_overwrite(cache, tmp_path, capsys):
    # an SAELens directory
    lens = tmp_path / "lens"
    lens.mkdir()
    save_file({"W_enc": torch.zeros(16, 32)}, str(lens / "sae_weights.safetensors"))
    (lens / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 32}))
    before = snapshot(lens)
    assert run_train(cache, lens) == 2
    one_line_error(capsys, f"{lens} is not empty", "cfg.json, sae_weights.safetensors", "--overwrite")
    assert snapshot(lens) == before
    # a saved SAE that is not a training run (no train_config.json), and a folder of other files
    assert run_train(cache, tmp_path / "sae") == 0
    capsys.readouterr()
    (tmp_path / "sae" / "train_config.json").unlink()
    assert run_train(cache, tmp_path / "sae") == 2
    one_line_error(capsys, "is not empty", "holds no training run to resume")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert run_train(cache, tmp_path / "notes") == 2
    one_line_error(capsys, "todo.txt")
    # checked before any data is read: a missing cache is not even looked at
    assert main(["train", "--activations", str(tmp_path / "none"), "--out", str(tmp_path / "notes")]) == 2
    one_line_error(capsys, "is not empty")
    # --overwrite replaces the contents cleanly
    assert run_train(cache, lens, "--overwrite") == 0
    assert sorted(p.name for p in lens.iterdir()) == [
        "cfg.json",
        "metrics.jsonl",
        "sae.safetensors",
        "train_config.json",
    ]
    assert SparseAutoencoder.load(lens).metadata["hook"] == "blocks.2.resid_post"
    # a finished run is not replaced without --overwrite
    assert run_train(cache, lens) == 2
    one_line_error(capsys, "already holds a finished training run", "--overwrite")
    assert run_train(cache, lens, "--overwrite", "--resume") == 2
    one_line_error(capsys, "give only one")


def test_overwrite_never_clears_the_current_directory(cache, tmp_path, monkeypatch, capsys):
    (tmp_path / "x.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert run_train(cache, ".", "--overwrite") == 2
    one_line_error(capsys, "--overwrite would delete everything")
    assert (tmp_path / "x.txt").read_text() == "mine"


# ------------------------------------------------------------------ --resume
def test_resume_needs_a_run_and_a_finished_run_keeps_its_outputs(cache, tmp_path, capsys):
    assert run_train(cache, tmp_path / "typo", "--resume") == 2
    one_line_error(capsys, "holds no training run to resume", "check --out")
    assert not (tmp_path / "typo").exists()
    out = tmp_path / "run"
    assert run_train(cache, out) == 0
    capsys.readouterr()
    assert main(["evaluate", "--sae", str(out), "--activations", str(cache)]) == 0
    capsys.readouterr()
    before = snapshot(out)
    final = json.loads((out / "cfg.json").read_text())["training"]["final_metrics"]
    assert final["fvu"] > 0
    assert run_train(cache, out, "--resume") == 0
    assert f"{out}: fvu=" in capsys.readouterr().out
    assert snapshot(out) == before  # metrics.jsonl, cfg.json (final metrics), eval.json untouched
    res = train(
        str(cache), SAEConfig(k=2, expansion=2), TrainConfig(batch_size=64, steps=6, log_every=3), out, resume=True
    )
    assert res.steps == 6 and res.metrics[0] == final


def test_a_finished_run_holds_the_sae_not_the_optimiser_state(cache, tmp_path, capsys):
    """Issue 23: the checkpoint (weights + Adam's two moments, about 3x the SAE) is deleted once the SAE
    is saved and read back; --keep-state keeps it, and an unfinished run keeps it to resume."""
    out = tmp_path / "run"
    assert main(["train", "--activations", str(cache), *QUICK[:2], "--n-latents", "256", *QUICK[4:],
                 "--out", str(out)]) == 0  # fmt: skip
    sae_bytes = (out / "sae.safetensors").stat().st_size + (out / "cfg.json").stat().st_size
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert not (out / "state").exists(), sorted(p.name for p in out.rglob("*"))
    assert total < 1.25 * sae_bytes, (total, sae_bytes)  # the rest: train_config.json and metrics.jsonl
    # --resume of the finished run reads it back, and changed settings are still named
    capsys.readouterr()
    assert main(["train", "--activations", str(cache), *QUICK[:2], "--n-latents", "256", *QUICK[4:],
                 "--out", str(out), "--resume"]) == 0  # fmt: skip
    assert f"{out}: fvu=" in capsys.readouterr().out and not (out / "state").exists()
    assert main(["train", "--activations", str(cache), "--k", "3", "--n-latents", "256", *QUICK[4:],
                 "--out", str(out), "--resume"]) == 2  # fmt: skip
    one_line_error(capsys, f"cannot resume {out}: its saes settings differ", "k: 2 vs 3")
    # --keep-state: the last checkpoint stays, with the optimiser moments
    kept = tmp_path / "kept"
    assert run_train(cache, kept, "--keep-state") == 0
    (state,) = (kept / "state").iterdir()
    assert any(".opt." in k for k in load_file(state / "state.safetensors"))
    # a finished run that still has its checkpoint (killed before deleting it): --resume deletes it
    assert run_train(cache, kept, "--resume") == 0
    assert not (kept / "state").exists() and (kept / "sae.safetensors").is_file()
    # an unfinished run (--stop-at) keeps its checkpoint and resumes to the same SAE
    part = tmp_path / "part"
    assert run_train(cache, part, "--stop-at", "3") == 0
    assert [p.name for p in (part / "state").iterdir()] == ["000000003"]
    assert run_train(cache, part, "--resume") == 0
    assert not (part / "state").exists()
    assert load_file(part / "sae.safetensors").keys() == load_file(kept / "sae.safetensors").keys()
    for key, value in load_file(kept / "sae.safetensors").items():
        assert torch.equal(load_file(part / "sae.safetensors")[key], value), key


# ------------------------------------------------------------------ sweeps
@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--arch", "relu", "--k", "8,16"], ["--k sweeps 8,16 but arch relu does not use k"]),
        (
            ["--arch", "topk", "--l1-coeff", "1e-3,1e-2"],
            ["--l1-coeff sweeps 1e-3,1e-2 but arch topk does not use l1_coeff"],
        ),
        (["--arch", "topk,relu", "--k", "2,4"], ["arch relu does not use k", "topk, batchtopk"]),
        (["--k", "4,4.0"], ["the sweep lists the same SAE twice (topk-k4-n2x)"]),
    ],
)
def test_sweep_axes_the_architecture_ignores_are_refused(cache, tmp_path, capsys, flags, needles):
    argv = ["train", "--activations", str(cache), "--expansion", "2", *flags, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    one_line_error(capsys, *needles)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ NaN / Inf
def test_non_finite_training_loss_names_the_step_and_the_source_row(tmp_path, capsys):
    arr = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    arr[1234] = 1e25  # finite, but its square overflows float32
    np.save(tmp_path / "a.npy", arr)
    argv = ["train", "--activations", str(tmp_path / "a.npy"), "--k", "2", "--n-latents", "32"]
    argv += ["--batch-size", "250", "--steps", "20", "--b-dec-init", "zeros", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = one_line_error(capsys, "training stopped at step ", f"source row 1234 of {tmp_path / 'a.npy'}", "too large")
    assert "loss is nan" in err or "loss is inf" in err
    assert not (tmp_path / "o" / "cfg.json").exists()
    # finite inputs, diverging weights
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(batch_size=64, steps=30, lr=1e30, grad_clip=0, b_dec_init="zeros")
    with pytest.raises(SparsesteerError, match=r"training stopped at step \d+: \w+ is (nan|inf).*the SAE diverged"):
        train(x, SAEConfig(k=2, n_latents=32), cfg, tmp_path / "d")


def test_nan_in_a_cache_view_names_its_image_and_token(tmp_path, capsys):
    # image 123, token 2 (cache row 123 * 4 + 2); the patch view keeps tokens 1..3: view row 123 * 3 + 1
    cache = make_activation_cache(tmp_path / "cache", nan_rows=(123 * 4 + 2,))
    argv = ["train", "--activations", str(cache), "--tokens", "patch", *QUICK, "--b-dec-init", "zeros"]
    assert main([*argv, "--init-samples", "1", "--steps", "40", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "NaN or Inf in batch", "(source row 370: image 123, token 2 of")
    sae = tmp_path / "sae"
    train(torch.randn(100, 16), SAEConfig(k=2, n_latents=32), TrainConfig(batch_size=50, steps=2), sae)
    assert main(["evaluate", "--sae", str(sae), "--activations", str(cache), "--tokens", "patch"]) == 2
    one_line_error(capsys, "NaN or Inf in the activations at source row 370: image 123, token 2 of")


def test_evaluate_refuses_nan_outputs_and_undefined_metrics(tmp_path):
    sae = SparseAutoencoder.load(
        train(
            torch.randn(100, 8), SAEConfig(k=2, n_latents=16), TrainConfig(batch_size=50, steps=2), tmp_path / "s"
        ).paths[0]
    )
    x = torch.randn(40, 8)
    with pytest.raises(SparsesteerError, match="no variance"):
        evaluate(sae, TensorSource(torch.ones(10, 8)))
    with torch.no_grad():
        sae.W_dec[:] = float("nan")
    with pytest.raises(SparsesteerError, match=r"reconstruction of source row 0 is NaN or Inf"):
        evaluate(sae, TensorSource(x))
    with pytest.raises(SparsesteerError, match="max_rows must be >= 1"):
        evaluate(sae, TensorSource(x), max_rows=0)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--epochs", "-1"], "epochs must be positive"),
        (["--min-steps", "0"], "min_steps must be >= 1"),
        (["--lr", "0"], "lr must be a positive number"),
        (["--warmup-steps", "-5"], "warmup_steps must be non-negative"),
        (["--adam-betas", "0.9,1.0"], "adam_betas must be two numbers in [0, 1)"),
        (["--adam-betas", "0.9"], "adam_betas must be two numbers in [0, 1)"),
        (["--min-lr-ratio", "1.5"], "min_lr_ratio must be in [0, 1]"),
        (["--grad-clip", "-1"], "grad_clip must be non-negative"),
        (["--log-every", "0"], "log_every must be >= 1"),
        (["--seed", "-1"], "seed must be non-negative"),
        (["--expansion", "0"], "expansion must be >= 1, got 0"),
        (["--n-latents", "-8"], "n_latents must be non-negative"),
        (["--k", "0"], "k must be >= 1"),
        (["--dead-after", "0"], "dead_after must be >= 1"),
        (["--aux-k", "-1"], "aux_k must be non-negative"),
        (["--aux-coeff", "-0.5"], "aux_coeff must be a non-negative number"),
        (["--arch", "relu", "--pass-weight"], "pass_weight (PASS) needs sparse codes"),
        (["--arch", "jumprelu"], "jumprelu SAEs are inference-only here; train topk, batchtopk, relu instead"),
    ],
)
def test_bad_values_are_refused_before_any_work(cache, tmp_path, capsys, flags, needle):
    assert main(["train", "--activations", str(cache), *flags, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "o").exists()


def test_bad_evaluate_values(cache, tmp_path, capsys):
    sae = tmp_path / "s"
    train(torch.randn(100, 16), SAEConfig(k=2, n_latents=32), TrainConfig(batch_size=50, steps=2), sae)
    for flags, needle in ((["--batch-size", "0"], "--batch-size must be >= 1"), (["--max-rows", "0"], "--max-rows")):
        assert main(["evaluate", "--sae", str(sae), "--activations", str(cache), *flags]) == 2
        one_line_error(capsys, needle)


# ------------------------------------------------------------------ unwritable --out
def test_unwritable_or_invalid_out_is_one_line_before_any_work(cache, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert run_train(cache, tmp_path / "file") == 2
    one_line_error(capsys, f"--out {tmp_path / 'file'} is a file, not a directory")
    assert run_train(cache, tmp_path / "file" / "sub") == 2
    one_line_error(capsys, f"{tmp_path / 'file'} is a file, not a directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    import os

    real_access = os.access
    if real_access(ro, os.W_OK):  # root writes anywhere: stand in for a read-only directory
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real_access(p, mode))
    assert run_train(cache, ro / "run") == 2
    one_line_error(capsys, f"{ro} is not writable")
    # evaluate's output
    sae = tmp_path / "s"
    train(torch.randn(100, 16), SAEConfig(k=2, n_latents=32), TrainConfig(batch_size=50, steps=2), sae)
    capsys.readouterr()
    for out, needle in ((tmp_path / "file" / "e.json", "is a file"), (ro / "e.json", "is not writable")):
        assert main(["evaluate", "--sae", str(sae), "--activations", str(cache), "--out", str(out)]) == 2
        one_line_error(capsys, needle)
    assert not (sae / "eval.json").exists()
    ro.chmod(0o700)


# ------------------------------------------------------------------ run length
def test_default_run_length_and_the_short_run_warning(tmp_path, caplog):
    default = TrainConfig()
    assert (default.batch_size, default.epochs, default.steps, default.min_steps) == (1024, None, None, 5000)
    assert default.total_steps(50_000) == 5000  # a CIFAR-100 CLS cache: about 100 passes, not a dozen steps
    assert default.total_steps(20_000_000) == math.ceil(20_000_000 / 1024)  # large caches: one pass
    assert TrainConfig(epochs=1).total_steps(50_000) == 49 and TrainConfig(steps=7).total_steps(50_000) == 7
    assert TrainConfig(batch_size=1024, epochs=100).total_steps(45_000) == 4395  # `reproduce vs2` sets its own
    x = torch.randn(200, 8)
    with caplog.at_level("WARNING", logger="sparsesteer"):
        train(x, SAEConfig(k=2, n_latents=16), TrainConfig(batch_size=50, steps=10), tmp_path / "a")
    assert "only 10 optimiser steps" in caplog.text and f"under {FEW_STEPS} steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sparsesteer"):
        train(
            x, SAEConfig(k=2, n_latents=16), TrainConfig(batch_size=8, steps=FEW_STEPS, log_every=100), tmp_path / "b"
        )
    assert "optimiser steps" not in caplog.text
