"""`sparsesteer reproduce sparsity` on a tiny random CLIP and a generated folder dataset: the % CE
recovered against hand-worked cases and naive forwards, every table and plot, stage skipping,
--sae-dir, and the inputs it refuses."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_class_images

from sparsesteer.cli import main
from sparsesteer.experiments.clipsteer.sparsity import reference
from sparsesteer.experiments.clipsteer.sparsity.config import parse_blocks
from sparsesteer.experiments.clipsteer.sparsity.splice import (
    MIN_CE_GAP,
    Splice,
    ce_gap_meaningful,
    ce_recovered,
    not_meaningful,
    spliced_ce,
)
from sparsesteer.models import load_backbone
from sparsesteer.models.hook_names import hook_name
from sparsesteer.models.hooks import Intervention
from sparsesteer.models.tiny import make_tiny_clip, make_tiny_siglip
from sparsesteer.models.zeroshot import ZeroShotClassifier
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import edits

CLASSES = ["cat", "dog", "bird"]
CONFIGS = [(b, t) for b in range(3) for t in ("all", "cls", "patch")]


def make_dataset(root: Path, classes=CLASSES) -> Path:
    return make_class_images(root, {"train": 8, "test": 4}, classes, level=120)


def args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "reproduce",
        "sparsity",
        "--model",
        str(model),
        "--dataset",
        f"folder:{data}",
        "--k",
        "4",
        "--expansion",
        "2",
        "--sae-steps",
        "30",
        "--sae-batch-size",
        "64",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--out",
        str(out),
        *extra,
    ]


def stage_marks(out: Path) -> dict[str, str]:
    marks = {}
    for p in (out / "stages").glob("*.json"):
        d = json.loads(p.read_text())
        marks[p.stem] = d["finished"] + d["settings_sha256"]
    return marks


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip_dir):
    tmp = tmp_path_factory.mktemp("sparsity")
    data = make_dataset(tmp / "data")
    out = tmp / "run"
    assert main(args(tiny_clip_dir, data, out)) == 0
    return tiny_clip_dir, data, out


# ---------------------------------------------------------------------- % CE recovered
def test_ce_recovered_formula_hand_worked():
    assert ce_recovered(1.0, 1.5, 3.0) == pytest.approx(75.0)  # (3 - 1.5) / (3 - 1)
    assert ce_recovered(1.0, 1.0, 3.0) == 100.0  # spliced = clean
    assert ce_recovered(1.0, 3.0, 3.0) == 0.0  # spliced = ablated
    assert ce_recovered(1.0, 4.0, 3.0) == pytest.approx(-50.0)  # worse than ablating
    assert ce_recovered(2.0, 1.0, 2.0) is None  # ablation changes nothing: undefined


def test_ce_recovered_below_the_gap_threshold_is_not_meaningful():
    # the documented threshold: |CE_zero - CE_clean| >= 0.01 nats, either sign
    assert MIN_CE_GAP == 0.01
    assert not ce_gap_meaningful(1.0, 1.0003) and not ce_gap_meaningful(1.0, 1.0)
    assert ce_gap_meaningful(1.0, 1.0101) and ce_gap_meaningful(1.0, 0.98)
    assert not ce_gap_meaningful(1.0, math.nan)
    assert ce_recovered(1.0, 1.0005, 1.0003) == pytest.approx(-66.67, abs=0.01)  # the raw ratio: noise
    assert not_meaningful(0.0003) == "n/m (gap 0.0003 nats)"


def test_report_shows_a_tiny_gap_as_not_meaningful_keeps_the_ratio_and_warns(run, tmp_path, capsys):
    model, data, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    ce = json.loads((copy / "ce.json").read_text())
    row = ce["saes"]["block01-patch"]  # ablation moves the CE by 0.0003 nats; splicing by 0.0008
    row["ce_zero_ablation"] = ce["ce_clean"] + 0.0003
    row["ce_spliced"] = ce["ce_clean"] + 0.0008
    row["ce_recovered"] = ce_recovered(ce["ce_clean"], row["ce_spliced"], row["ce_zero_ablation"])
    (copy / "ce.json").write_text(json.dumps(ce))
    capsys.readouterr()
    assert main(args(model, data, copy, "--stage", "report")) == 0
    err = capsys.readouterr().err
    assert "% CE recovered is not meaningful for 2 SAE(s)" in err  # and the last block's patches: gap 0
    assert "block01-patch (gap 0.0003), block02-patch (gap 0)" in err
    res = json.loads((copy / "results.json").read_text())
    r = next(r for r in res["rows"] if r["name"] == "block01-patch")
    assert r["ce_recovered_meaningful"] is False and r["ce_gap"] == pytest.approx(0.0003)
    assert r["ce_recovered_pct"] == pytest.approx(-166.7, abs=0.1)  # kept raw in JSON
    line = next(l for l in (copy / "results.md").read_text().splitlines() if l.startswith("| 1 | patch |"))
    assert "n/m (gap 0.0003 nats)" in line and "-166" not in line
    for other in res["rows"]:  # the others: flagged by their own gaps
        assert other["ce_recovered_meaningful"] == (abs(other["ce_gap"]) >= MIN_CE_GAP)


def _exact_sae(d: int, hook: str, tokens: str):
    """ReLU SAE with the dictionary [I; -I]: codes (relu(x), relu(-x)), decode relu(x) - relu(-x) = x exactly."""
    sae = build(SAEConfig(arch="relu", d_in=d, n_latents=2 * d)).eval()
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.metadata = {"hook": hook, "tokens": tokens}
    return sae


def _zero_sae(d: int, hook: str, tokens: str):
    """An SAE whose output is zero whatever its input."""
    sae = build(SAEConfig(arch="topk", k=2, d_in=d, n_latents=8)).eval()
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    sae.metadata = {"hook": hook, "tokens": tokens}
    return sae


def _random_sae(d: int, hook: str, tokens: str):
    torch.manual_seed(1)
    sae = build(SAEConfig(arch="topk", k=4, d_in=d, n_latents=64)).eval()
    sae.metadata = {"hook": hook, "tokens": tokens}
    return sae


def test_spliced_ce_is_100_for_an_exact_sae_0_for_a_zero_one_and_matches_naive_forwards(tiny_clip_dir):
    bb = load_backbone(tiny_clip_dir)
    clf = ZeroShotClassifier.build(bb, CLASSES, ["a photo of a {}."])
    torch.manual_seed(0)
    batches = [
        (torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])),
        (torch.randn(3, 3, 32, 32), torch.tensor([2, 2, 1])),
    ]
    splices = []
    for block, tokens in ((0, "all"), (1, "cls"), (1, "patch"), (2, "patch")):
        hook = hook_name(block)
        splices += [
            Splice(f"exact{block}{tokens}", hook, tokens, _exact_sae(bb.d_model, hook, tokens)),
            Splice(f"zero{block}{tokens}", hook, tokens, _zero_sae(bb.d_model, hook, tokens)),
            Splice(f"random{block}{tokens}", hook, tokens, _random_sae(bb.d_model, hook, tokens)),
        ]
    res = spliced_ce(bb, clf, batches, splices)

    # independent: three full forwards per splice, CE by hand
    def naive(interventions):
        ces, correct = [], 0
        for pixels, labels in batches:
            logits = clf.logits(bb.embed_images(pixels, interventions=interventions)).double()
            ces.append(-torch.log_softmax(logits, -1)[torch.arange(len(labels)), labels])
            correct += int((logits.argmax(-1) == labels).sum())
        return float(torch.cat(ces).mean()), 100 * correct / 8

    clean_ce, clean_acc = naive([])
    assert res.clean.n == 8
    assert res.clean.ce == pytest.approx(clean_ce, rel=1e-6) and res.clean.accuracy == clean_acc
    for s in splices:
        zero_ce, _ = naive([Intervention(s.hook, lambda a, p: a * 0, s.tokens)])
        spliced_ce_, spliced_acc = naive([edits.reconstruct(s.hook, s.sae, tokens=s.tokens)])
        assert res.zero[(s.hook, s.tokens)].ce == pytest.approx(zero_ce, rel=1e-6)
        assert res.spliced[s.name].ce == pytest.approx(spliced_ce_, rel=1e-6)
        assert res.spliced[s.name].accuracy == spliced_acc
        if (s.block, s.tokens) == (2, "patch"):  # the head reads only the CLS of the last block:
            assert zero_ce == clean_ce and res.recovered(s) is None  # nothing to recover, undefined
            continue
        assert abs(zero_ce - clean_ce) > 1e-3  # the ratio is defined on this case
        expect = 100 * (zero_ce - spliced_ce_) / (zero_ce - clean_ce)
        assert res.recovered(s) == pytest.approx(expect, rel=1e-5, abs=1e-6)
        if s.name.startswith("exact"):  # the resumed forward is bit-identical, the SAE exact
            assert res.spliced[s.name].ce == res.clean.ce and res.recovered(s) == 100.0
        if s.name.startswith("zero"):
            assert res.spliced[s.name].ce == res.zero[(s.hook, s.tokens)].ce and res.recovered(s) == 0.0


# ---------------------------------------------------------------------- end to end
def test_every_table_and_plot_is_produced(run):
    model, data, out = run
    res = json.loads((out / "results.json").read_text())
    assert [(r["block"], r["tokens"]) for r in res["rows"]] == CONFIGS
    assert res["n_test_images"] == 12 and res["model"]["patch_grid"] == 4 and res["sae"]["source"] == "trained"
    for r in res["rows"]:
        assert 0 < r["cosine"] <= 1 and r["explained_variance_pct"] < 100 and 0 < r["alive_pct"] <= 100
        assert r["ce_recovered_pct"] is None or math.isfinite(r["ce_recovered_pct"])
        assert 0 <= r["accuracy_spliced"] <= 100 and r["n_latents"] == 64
        has_cls, has_patch = r["tokens"] in ("all", "cls"), r["tokens"] in ("all", "patch")
        assert (r["l0_cls"] is not None) == has_cls and (r["alive_cls_pct"] is not None) == has_cls
        assert (r["l0_patch"] is not None) == has_patch and (r["l0_patch_grid"] is not None) == has_patch
        assert all(0 < v <= 4 for v in (r["l0_cls"], r["l0_patch"]) if v is not None)  # top-k 4
        if r["tokens"] == "all":  # 1 CLS row and 16 patch rows per image
            assert r["l0_mean"] == pytest.approx((r["l0_cls"] + 16 * r["l0_patch"]) / 17)
            assert r["n_rows"] == 12 * 17 and np.array(r["l0_patch_grid"]).shape == (4, 4)
            assert np.mean(r["l0_patch_grid"]) == pytest.approx(r["l0_patch"])
    ce = json.loads((out / "ce.json").read_text())
    for r in res["rows"]:
        c = ce["saes"][r["name"]]
        gap = c["ce_zero_ablation"] - ce["ce_clean"]
        if (r["block"], r["tokens"]) == (2, "patch"):  # the head reads only the last block's CLS
            assert gap == 0 and r["ce_recovered_pct"] is None and r["ce_recovered_meaningful"] is False
        else:
            assert r["ce_recovered_pct"] == pytest.approx(100 * (c["ce_zero_ablation"] - c["ce_spliced"]) / gap)
    for name in ("l0_by_layer", "alive_by_layer", "ev_by_layer", "ce_recovered_by_layer"):
        assert (out / "plots" / f"{name}.png").is_file(), name
    assert (out / "plots" / "l0_patch_positions_all.png").is_file()
    assert (out / "plots" / "l0_patch_positions_patch.png").is_file()
    md = (out / "results.md").read_text()
    for needle in (
        "## Ours",
        "% CE recovered",
        "avg patch L0",
        "avg CLS L0",
        "cos(x, x̂)",
        "% alive",
        "spliced acc %",
        "## Beside ours: the released CLIP-B/32 SAE suite",
        "Their SAEs and data, not ours",
        "1,293-1,405",
        "## L0 per patch position (4 x 4",
        str(model),
        "**test** split (12 images)",
    ):
        assert needle in md, needle
    assert len(res["reference"]["figures"]) == len(reference.FIGURES)
    # every SAE records what it was trained on
    for block, tokens in CONFIGS:
        cfg = json.loads((out / "sae" / f"block{block:02d}-{tokens}" / "cfg.json").read_text())
        assert (cfg["hook"], cfg["tokens"], cfg["k"], cfg["n_latents"]) == (hook_name(block), tokens, 4, 64)
        assert not (out / "sae" / f"block{block:02d}-{tokens}" / "state").exists()


def test_rerun_skips_current_stages(run):
    model, data, out = run
    before = stage_marks(out)
    assert set(before) == {"cache", "sae", "metrics", "ce", "report"}
    assert main(args(model, data, out)) == 0
    assert stage_marks(out) == before
    assert main(args(model, data, out, "--stage", "report")) == 0
    after = stage_marks(out)
    assert {k for k in after if after[k] != before[k]} == {"report"}


def test_sae_dir_loads_the_saes_instead_of_training(run, tmp_path):
    model, data, out = run
    out2 = tmp_path / "reuse"
    assert main(args(model, data, out2, "--sae-dir", str(out / "sae"), "--sae-steps", "1")) == 0
    assert not (out2 / "sae").exists() and not (out2 / "cache" / "train").exists()
    saes = json.loads((out2 / "saes.json").read_text())
    assert saes["block01-cls"]["path"] == str(out / "sae" / "block01-cls")
    res = json.loads((out2 / "results.json").read_text())
    assert res["sae"]["source"] == f"loaded from {out / 'sae'}" and res["train_split"] is None
    first = json.loads((out / "results.json").read_text())["rows"]
    for a, b in zip(first, res["rows"]):  # the same SAEs on the same test images: the same numbers
        for key in ("explained_variance_pct", "l0_cls", "l0_patch", "alive_pct", "ce_recovered_pct"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-6), (a["name"], key)


# ---------------------------------------------------------------------- bad input
def _swap_sae_dir(out: Path, tmp: Path, replace: dict[str, str]) -> Path:
    sae_dir = tmp / "saes"
    shutil.copytree(out / "sae", sae_dir)
    for target, source in replace.items():
        shutil.rmtree(sae_dir / target)
        shutil.copytree(out / "sae" / source, sae_dir / target)
    return sae_dir


@pytest.mark.parametrize(
    "replace, needles",
    [
        ({"block00-all": "block01-all"}, ["hook: 'blocks.1.resid_post' vs 'blocks.0.resid_post'"]),
        ({"block02-all": "block02-cls"}, ["tokens: 'cls' vs 'all'"]),
    ],
)
def test_sae_dir_with_the_wrong_hook_or_tokens_is_refused_naming_both(run, tmp_path, capsys, replace, needles):
    model, data, out = run
    sae_dir = _swap_sae_dir(out, tmp_path, replace)
    assert main(args(model, data, tmp_path / "o", "--sae-dir", str(sae_dir))) == 2
    err = capsys.readouterr().err
    name = next(iter(replace))
    assert f"the SAE {sae_dir / name}" in err and "this run (block" in err and "disagree" in err
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_sae_dir_with_the_wrong_width_or_model_is_refused_naming_both(run, tmp_path, capsys):
    model, data, out = run
    sae_dir = _swap_sae_dir(out, tmp_path, {})
    narrow = build(SAEConfig(k=2, d_in=16, n_latents=32))
    recorded = json.loads((out / "sae" / "block00-all" / "cfg.json").read_text())
    narrow.metadata = {k: recorded[k] for k in ("hook", "tokens", "model")}  # right hook, tokens, model; width 16
    shutil.rmtree(sae_dir / "block00-all")
    narrow.save(sae_dir / "block00-all")
    assert main(args(model, data, tmp_path / "o", "--sae-dir", str(sae_dir))) == 2
    err = capsys.readouterr().err
    assert "width: 16 vs 32" in err and "width 16" in err and "width 32" in err

    cfg_path = sae_dir / "block01-patch" / "cfg.json"
    shutil.rmtree(sae_dir / "block00-all")
    shutil.copytree(out / "sae" / "block00-all", sae_dir / "block00-all")
    cfg = json.loads(cfg_path.read_text())
    cfg["model"] = {"id": "openai/clip-vit-base-patch32", "revision": "abc123"}
    cfg_path.write_text(json.dumps(cfg))
    assert main(args(model, data, tmp_path / "o", "--sae-dir", str(sae_dir))) == 2
    err = capsys.readouterr().err
    assert "model: 'openai/clip-vit-base-patch32' vs" in err and str(model) in err and "block01-patch" in err


def test_missing_sae_in_sae_dir_is_named(run, tmp_path, capsys):
    model, data, out = run
    sae_dir = _swap_sae_dir(out, tmp_path, {})
    shutil.rmtree(sae_dir / "block02-patch")
    assert main(args(model, data, tmp_path / "o", "--sae-dir", str(sae_dir))) == 2
    assert "no SAE for block02-patch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "blocks, needle",
    [
        ("0-3", "block 3 out of range; the model has 3 blocks, valid indices 0..2"),
        ("7", "block 7 out of range"),
        ("2-1", "runs backwards"),
        ("one", "expected 'all' or block indices"),
        ("0-99999999999", "block 99999999999 is past any ViT"),
    ],
)
def test_block_list_out_of_range_or_malformed(run, tmp_path, capsys, blocks, needle):
    model, data, _ = run
    assert main(args(model, data, tmp_path / "o", "--blocks", blocks)) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_token_types_the_model_lacks_are_refused(run, tmp_path, capsys):
    _, data, _ = run
    siglip = make_tiny_siglip(tmp_path / "siglip")  # no CLS token
    assert main(args(siglip, data, tmp_path / "o", "--tokens", "all,cls")) == 2
    err = capsys.readouterr().err
    assert "--tokens cls" in err and "has no CLS token" in err
    no_patch = make_tiny_clip(tmp_path / "cls-only", image_size=4, patch_size=8)  # 1 token: CLS, no patch
    assert main(args(no_patch, data, tmp_path / "o", "--tokens", "patch")) == 2
    err = capsys.readouterr().err
    assert "--tokens patch" in err and "has no patch tokens" in err
    assert not (tmp_path / "o").exists()


def test_dataset_without_class_names_is_refused(run, tmp_path, capsys):
    model, _, _ = run
    data = make_dataset(tmp_path / "numbers", classes=["0", "1", "2"])
    assert main(args(model, data, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "has no class names" in err and "zero-shot" in err


def test_bad_settings_are_refused(run, tmp_path, capsys):
    model, data, _ = run
    assert main(args(model, data, tmp_path / "o", "--tokens", "all,patchs")) == 2
    assert "did you mean 'patch'" in capsys.readouterr().err
    assert main(args(model, data, tmp_path / "o", "--tokens", "cls,cls")) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(args(model, data, tmp_path / "o", "--test-split", "train")) == 2
    assert "use two splits" in capsys.readouterr().err


# ---------------------------------------------------------------------- pieces
def test_parse_blocks():
    assert parse_blocks("0-2,5", 12) == (0, 1, 2, 5)
    assert parse_blocks("all", 4) == (0, 1, 2, 3)
    assert parse_blocks("3, 1", 12) == (1, 3)


def test_reference_figures_are_the_spec_transcribed():
    f = {(x.quantity, x.tokens, x.where): x for x in reference.FIGURES}
    assert f[("patch_l0", "all", "layer 0")].value == "1,111" and f[("patch_l0", "all", "layer 0")].layers == (0,)
    assert f[("patch_l0", "all", "layers 3-5")].layers == (3, 4, 5)
    assert f[("patch_l0", "all", "layers 10-11")].value == "1,293-1,405"
    assert f[("cls_l0", "all", "layer 0")].value == "40" and f[("cls_l0", "all", "layer 11")].value == "1,189"
    assert f[("ev", "cls", "layer 11")].value == "65" and f[("ev", "cls", "early layers")].value == "82-96"
    topk = [x for x in reference.FIGURES if x.arch == "topk"]
    assert len(topk) == 1 and topk[0].value == "96 -> 84" and topk[0].tokens == "cls"
    assert "their SAEs" in reference.SUITE


def test_registry_and_help_stay_torch_free():
    from sparsesteer.experiments import registry

    e = registry.get("sparsity")
    assert [s.name for s in e.stages] == ["cache", "sae", "metrics", "ce", "report"]
    code = (
        "import sys, contextlib, io; from sparsesteer.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit): main(['reproduce', '--help'])\n"
        "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit): main(['reproduce', 'sparsity', '--help'])\n"
        "print('sparsity' in buf.getvalue(), '--sae-dir' in buf.getvalue(), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "False"]


def test_cross_entropy_helper_matches_torch():
    from sparsesteer.experiments.clipsteer.sparsity.splice import Score

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    s = Score()
    s.add(logits, torch.tensor([0, 1]))
    assert s.ce == pytest.approx(float(F.cross_entropy(logits, torch.tensor([0, 1]))))
    assert s.accuracy == 50.0


def test_a_huge_block_range_is_refused_before_it_is_built():
    """'0-99999999999' once built a list of 1e11 ints (the property test found it by running out of memory)."""
    from sparsesteer.experiments.clipsteer.sparsity.config import MAX_BLOCKS, parse_blocks
    from sparsesteer.utils.errors import SparsesteerError

    with pytest.raises(SparsesteerError, match="block 99999999999 is past any ViT's depth"):
        parse_blocks("0-99999999999")
    with pytest.raises(SparsesteerError, match="block 5 out of range; the model has 5 blocks"):
        parse_blocks("1,0-99999999999", 5)
    assert parse_blocks(f"0-{MAX_BLOCKS - 1}") == tuple(range(MAX_BLOCKS))
    assert parse_blocks("0,3,6-8", 12) == (0, 3, 6, 7, 8)
