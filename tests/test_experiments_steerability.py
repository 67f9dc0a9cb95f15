"""`sparsesteer reproduce steerability` end to end on a tiny random CLIP, a random SAE and a tiny folder
dataset: every file, the table against the raw measurements, one score against a full forward computed
here, the control, and stage skipping."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsesteer.cli import main
from sparsesteer.data import limit_dataset, open_dataset
from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.zeroshot import encode_text
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import features as Fe
from sparsesteer.steering import steerability as St

HOOK = "blocks.1.resid_post"
WORDS = ["cat", "dog", "bird", "red car", "tree"]


def args(tmp: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "reproduce", "steerability", "--model", str(tmp / "clip"), "--sae", str(tmp / "sae"), "--dataset",
            f"folder:{tmp / 'data'}", "--vocab", str(tmp / "words.txt"), "--latent-fraction", "0.125",
            "--neuron-fraction", "0.25", "--n-images", "6", "--batch-size", "4", "--workers", "0", "--out", str(out),
            *extra]  # fmt: skip


def stage_marks(out: Path) -> dict[str, str]:
    return {p.stem: json.loads(p.read_text())["finished"] for p in (out / "stages").glob("*.json")}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip_dir):
    tmp = tmp_path_factory.mktemp("steerability")
    (tmp / "clip").symlink_to(tiny_clip_dir)
    rng = np.random.default_rng(0)
    for ci, name in enumerate(["a", "b", "c"]):
        (tmp / "data" / "test" / name).mkdir(parents=True)
        for i in range(3):
            img = rng.normal(60 + 60 * ci, 50, (32, 32, 3)).clip(0, 255).astype("uint8")
            Image.fromarray(img).save(tmp / "data" / "test" / name / f"{i}.png")
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6)).eval()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    sae.save(tmp / "sae", hook=HOOK, tokens="all")
    (tmp / "words.txt").write_text("\n".join(WORDS) + "\n")
    out = tmp / "run"
    assert main(args(tmp, out)) == 0
    return tmp, out, sae


def test_files_and_table_against_the_measurements(run):
    tmp, out, _ = run
    for name in ("results.md", "results.json", "plots/hist_S.png", "plots/curves.png", "vocab.json", "config.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in res["rows"]]
    assert labels == [f"SAE sae @ {HOOK}", f"neurons @ {HOOK}", f"SAE sae @ {HOOK} (random init)",
                      f"neurons @ {HOOK} (random init)"]  # fmt: skip
    assert res["n_images"] == 6 and res["vocab"]["n_concepts"] == 5
    assert res["settings"]["strengths"] == [-20.0, -5.0, 0.0, 5.0, 10.0, 20.0, 50.0, 150.0]
    raw = [*json.loads((out / "measurements" / "features.json").read_text()),
           *json.loads((out / "measurements" / "neurons.json").read_text()),
           *json.loads((out / "measurements" / "control.json").read_text())]  # fmt: skip
    assert raw[0]["units"] == St.sample_units(64, 0.125, 0).tolist() and len(raw[0]["units"]) == 8
    assert raw[1]["units"] == St.sample_units(32, 0.25, 0).tolist() and raw[2]["units"] == raw[0]["units"]
    for row, r in zip(res["rows"], raw):
        s150 = np.array(r["score"])[:, r["strengths"].index(150.0)]
        steer = s150 > 0.10
        assert row["steerable_fraction"] == pytest.approx(steer.mean())
        assert row["n_steerable"] == steer.sum() and row["n_units"] == len(r["units"])
        top1 = np.array(r["top"])[:, r["strengths"].index(150.0), 0]
        assert row["coverage"] == len(set(top1[steer].tolist()))
        assert row["score_quantiles"]["max"] == pytest.approx(s150.max())
        assert row["estimated_steerable_units"] == pytest.approx(steer.mean() * r["n_units_total"])
    assert raw[0]["score"] != raw[2]["score"]  # the control is another model
    md = (out / "results.md").read_text()
    assert "steerable %" in md and "Steering curves" in md and "Reference only" in md


@torch.no_grad()
def test_one_score_against_a_full_forward(run):
    """The first sampled latent at s = 150: p over the vocabulary from full forwards, here."""
    tmp, out, sae = run
    raw = json.loads((out / "measurements" / "features.json").read_text())[0]
    bb = load_backbone(tmp / "clip")
    ds = limit_dataset(open_dataset(f"folder:{tmp / 'data'}", "test"), 6, 0)  # the run's class-stratified sample
    px = torch.from_numpy(bb.preprocessor.batch([ds[i].image for i in range(len(ds))]))
    assert len(px) == 6
    V = torch.nn.functional.normalize(encode_text(bb, WORDS), dim=-1)
    j = raw["units"][0]
    e0 = bb.embed_images(px)
    e = bb.embed_images(px, interventions=[Fe.feature_edit(HOOK, sae, j, 150.0, "set")])
    p0 = torch.softmax(100 * torch.nn.functional.normalize(e0, dim=-1) @ V.T, -1)
    p = torch.softmax(100 * torch.nn.functional.normalize(e, dim=-1) @ V.T, -1)
    delta = (p - p0).double().mean(0)
    col = raw["strengths"].index(150.0)
    assert raw["score"][0][col] == pytest.approx(float((delta**2).sum()), abs=1e-5)
    assert raw["power"][0][col] == pytest.approx(float(delta.max()), abs=1e-5)


def test_rerun_skips_and_stages_rerun_alone(run):
    tmp, out, _ = run
    before = stage_marks(out)
    assert set(before) == {"vocab", "features", "neurons", "control", "report"}
    assert main(args(tmp, out)) == 0
    assert stage_marks(out) == before
    assert main(args(tmp, out, "--stage", "report")) == 0
    after = stage_marks(out)
    assert {k for k in after if after[k] != before[k]} == {"report"}
    out2 = tmp / "run-threshold"
    shutil.copytree(out, out2)
    before2 = stage_marks(out2)
    assert main(args(tmp, out2, "--threshold", "0.5")) == 0  # a report setting: only the report reruns
    after2 = stage_marks(out2)
    assert {k for k in after2 if after2[k] != before2[k]} == {"report"}
    assert json.loads((out2 / "results.json").read_text())["settings"]["threshold"] == 0.5


def test_bad_input(run, capsys):
    tmp, out, _ = run
    (tmp / "one.txt").write_text("cat\ncat\n")
    cases = [
        (["--vocab", str(tmp / "one.txt")], "single distinct concept 'cat'"),
        (["--strengths=0,nan"], "--strengths must be a finite number"),
        (["--strengths=0,1e30"], "--strengths 1e+30 is out of range: steering values must lie within +-1e+06"),
        (["--at-strength=-2e6"], "--at-strength -2e+06 is out of range"),
        (["--mode", "scale", "--strength-unit", "p99"], "--mode scale takes factors: use --strength-unit absolute"),
        (["--latent-fraction", "0"], "--latent-fraction must be in (0, 1]"),
    ]
    for extra, message in cases:
        assert main(args(tmp, tmp / "bad", *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    cls_sae = build(SAEConfig(arch="topk", d_in=32, n_latents=16, k=2))
    cls_sae.save(tmp / "sae-cls", hook=HOOK, tokens="cls")
    argv = args(tmp, tmp / "bad2", "--no-control", "--no-neurons", "--tokens", "all")
    argv[argv.index(str(tmp / "sae"))] = str(tmp / "sae-cls")
    assert main(argv) == 2
    assert "trained on tokens 'cls' but the edit selects 'all'" in capsys.readouterr().err


def test_tokens_follow_each_sae_unless_given(run):
    """Item 11: without --tokens a CLS SAE is steered (and measured) on the CLS token, like its hook is
    followed; the neurons at its hook on the same tokens. The score equals a full forward steering CLS only."""
    tmp, _, _ = run
    torch.manual_seed(3)
    cls_sae = build(SAEConfig(arch="topk", d_in=32, n_latents=16, k=2)).eval()
    cls_sae.save(tmp / "sae-cls-only", hook=HOOK, tokens="cls")
    out = tmp / "run-cls"
    argv = args(tmp, out, "--no-control", "--latent-fraction", "0.125")
    argv[argv.index(str(tmp / "sae"))] = str(tmp / "sae-cls-only")
    assert main(argv) == 0
    features, neurons = (
        json.loads((out / "measurements" / f"{k}.json").read_text())[0] for k in ("features", "neurons")
    )
    assert features["tokens"] == neurons["tokens"] == "cls"
    assert "tokens each SAE's own (cls)" in (out / "results.md").read_text()
    bb = load_backbone(tmp / "clip")
    ds = limit_dataset(open_dataset(f"folder:{tmp / 'data'}", "test"), 6, 0)
    px = torch.from_numpy(bb.preprocessor.batch([ds[i].image for i in range(len(ds))]))
    V = torch.nn.functional.normalize(encode_text(bb, WORDS), dim=-1)
    j, col = features["units"][0], features["strengths"].index(150.0)
    with torch.no_grad():
        e0 = bb.embed_images(px)
        e = bb.embed_images(px, interventions=[Fe.feature_edit(HOOK, cls_sae, j, 150.0, "set", tokens="cls")])
    p0, p = (torch.softmax(100 * torch.nn.functional.normalize(x, dim=-1) @ V.T, -1) for x in (e0, e))
    assert features["score"][0][col] == pytest.approx(float(((p - p0).double().mean(0) ** 2).sum()), abs=1e-5)


def test_relative_strengths_and_the_units_scale(run):
    """Item 10: every row records each unit's own max / p99 on the steered tokens; with --strength-unit max
    the S at s equals the absolute run's S at s x max (the same unit, the same images)."""
    tmp, out, sae = run
    raw = json.loads((out / "measurements" / "features.json").read_text())[0]
    bb = load_backbone(tmp / "clip")
    ds = limit_dataset(open_dataset(f"folder:{tmp / 'data'}", "test"), 6, 0)
    px = torch.from_numpy(bb.preprocessor.batch([ds[i].image for i in range(len(ds))]))
    with torch.no_grad():
        f = sae.encode_dense(bb.run(px, [HOOK])[HOOK].reshape(-1, 32))[:, raw["units"]]
    assert raw["scale_max"] == pytest.approx(f.max(0).values.tolist(), abs=1e-5)
    active = [(f[:, k][f[:, k] > 0]) for k in range(f.shape[1])]
    p99 = [float(torch.quantile(a, 0.99)) if len(a) else 0.0 for a in active]
    assert raw["scale_p99"] == pytest.approx(p99, abs=1e-5)
    assert "unit scale: median max / p99" in (out / "results.md").read_text()
    fired = [k for k, m in enumerate(raw["scale_max"]) if m > 0]
    k = fired[0]
    rel = tmp / "run-rel"
    assert main(args(tmp, rel, "--no-control", "--no-neurons", "--strength-unit", "max", "--strengths=0.5",
                     "--at-strength", "2")) == 0  # fmt: skip
    row = json.loads((rel / "measurements" / "features.json").read_text())[0]
    assert row["strength_unit"] == "max" and row["units"] == raw["units"]
    V = torch.nn.functional.normalize(encode_text(bb, WORDS), dim=-1)
    j, s = raw["units"][k], 2.0 * raw["scale_max"][k]
    with torch.no_grad():
        e0 = bb.embed_images(px)
        e = bb.embed_images(px, interventions=[Fe.feature_edit(HOOK, sae, j, s, "set")])
    p0, p = (torch.softmax(100 * torch.nn.functional.normalize(x, dim=-1) @ V.T, -1) for x in (e0, e))
    expected = float(((p - p0).double().mean(0) ** 2).sum())
    assert row["score"][k][row["strengths"].index(2.0)] == pytest.approx(expected, abs=1e-5)
    md = (rel / "results.md").read_text()
    assert "multiples of each unit's max" in md


def test_sae_checks_come_before_the_model(run, monkeypatch, capsys):
    """Item 13: what needs only the SAEs is refused before the model is loaded."""
    tmp, _, _ = run

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before a check that needs only the flags or the SAE")

    monkeypatch.setattr("sparsesteer.models.backbone.load_backbone", no_model)
    bare = build(SAEConfig(arch="topk", d_in=32, n_latents=16, k=2))
    bare.save(tmp / "sae-nohook", tokens="all")
    argv = args(tmp, tmp / "bad3")
    argv[argv.index(str(tmp / "sae"))] = str(tmp / "sae-nohook")
    assert main(argv) == 2
    assert "records no hook point" in capsys.readouterr().err
    argv[argv.index(str(tmp / "sae-nohook"))] = str(tmp / "no-such-sae")
    assert main(argv) == 2
    assert "SAE directory not found" in capsys.readouterr().err
