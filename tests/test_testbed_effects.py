"""`reproduce testbed`: its scores against hand-worked cases, its choices made on the selection
split only, and a tiny end-to-end run (a tiny untrained testbed-shaped CLIP) with its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_class_images

from sparsesteer.cli import main
from sparsesteer.experiments.testbed.build import CIFAR10_CLASSES
from sparsesteer.experiments.testbed.effects_config import EffectsConfig, parse_seeds
from sparsesteer.experiments.testbed.effects_report import _choose, figures, suppression_table
from sparsesteer.models import testbed as tb_model
from sparsesteer.utils.errors import SparsesteerError


def _truth():
    # 8 images: 0-1 attacked (word, no frame), 2-3 neither, 4-7 no word with groups 2*vehicle + frame
    return {
        "labels": np.array([0, 1, 2, 3, 0, 2, 1, 3]),
        "word": np.array([1, 1, 0, 0, 0, 0, 0, 0]),
        "cue": np.array([0, 0, 0, 0, 1, 1, 0, 0]),
        "group": np.array([2, 2, 0, 0, 3, 1, 2, 0]),
    }


def test_figures_hand_worked():
    t = _truth()
    y = t["labels"]
    oracle = y.copy()  # the unplanted twins are all right
    none = y.copy()
    none[[0, 1]] = 9  # the attack takes both attacked images
    none[5] = 9  # a framed animal (group 1) is wrong
    edited = none.copy()
    edited[0] = y[0]  # suppression wins one attacked image back
    edited[5] = y[5]  # and the framed animal
    edited[2] = 9  # at the cost of one image without any shortcut
    f = figures(edited, oracle, none, t)
    assert f["word_recovery"] == pytest.approx(0.5)  # 1 of the 2 images the attack took
    assert f["attacked_gain"] == pytest.approx(0.5)
    assert f["clean_cost"] == pytest.approx(0.25)  # 1 of the 4 images with neither shortcut (2, 3, 6, 7)
    # no-word images 2..7: groups 0 {2,3,7}, 1 {5}, 2 {6}, 3 {4}; unedited worst group 1 at 0.0
    assert f["worst_group"] == pytest.approx(2 / 3)  # group 0 now: image 2 wrong
    assert f["worst_group_gain"] == pytest.approx(2 / 3)
    assert f["average_drop"] == pytest.approx(0.0)  # 5 of 6 right before and after
    assert f["group_gap_change"] == pytest.approx((5 / 6 - 2 / 3) - (5 / 6 - 0.0))


def test_the_setting_is_chosen_within_the_collateral_limit():
    rows = {
        "sae/b1/n1": {"word_recovery": 0.9, "clean_cost": 0.05, "average_drop": 0.0, "worst_group_gain": 0.0},
        "sae/b1/n4": {"word_recovery": 0.6, "clean_cost": 0.01, "average_drop": 0.05, "worst_group_gain": 0.3},
        "sae/b3/n1": {"word_recovery": 0.2, "clean_cost": 0.00, "average_drop": 0.01, "worst_group_gain": 0.1},
        "random/b1/n1": {"word_recovery": 1.0, "clean_cost": 0.0, "average_drop": 0.0, "worst_group_gain": 1.0},
    }
    assert _choose(rows, "word") == "sae/b1/n4"  # b1/n1 recovers more but costs 5 points
    assert _choose(rows, "cue") == "sae/b3/n1"  # b1/n4 gains more but drops the average 5 points


def test_the_table_reads_the_setting_chosen_on_the_selection_split():
    """A setting best on the test split but not on the selection split is not the one reported."""
    t = {r: {k: v.tolist() for k, v in _truth().items()} for r in ("select", "test")}
    y = np.array(t["test"]["labels"])
    bad = y.copy()
    bad[[0, 1]] = 9
    sup = {
        "truth": t,
        "oracle": {"select": y.tolist(), "test": y.tolist()},
        "none": {"select": bad.tolist(), "test": bad.tolist()},
        "edited": {
            f"{a}/seed0": {
                "select": {"sae/b1/n1": y.tolist(), "sae/b2/n1": bad.tolist()},
                "test": {"sae/b1/n1": bad.tolist(), "sae/b2/n1": y.tolist()},
            }
            for a in ("word", "cue")
        },
    }
    tab = suppression_table(sup)
    assert tab["word"][0]["chosen"] == "sae/b1/n1"
    assert tab["word"][0]["test"]["sae"]["word_recovery"] == 0.0  # what the chosen setting does on test


def test_class_association_is_cohens_d():
    from sparsesteer.experiments.testbed.effects_compute import class_association

    a = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    y = np.array([1, 1, 0, 0])
    # class 1: mean 2, var 2; rest: mean 1, var 2; pooled sd sqrt(2): d = 1 / sqrt(2); a constant latent: 0
    np.testing.assert_allclose(class_association(a, y, 1), [1 / np.sqrt(2), 0.0])


def test_seeds_parse_and_bad_settings_are_refused():
    assert parse_seeds("2, 0,2") == (2, 0)
    with pytest.raises(SparsesteerError, match="--seeds"):
        parse_seeds("a")
    with pytest.raises(SparsesteerError, match="both 'test'"):
        EffectsConfig(select_split="test", test_split="test")


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tbfx")
    data = make_class_images(root / "data", {"train": 6, "test": 4}, CIFAR10_CLASSES)
    shape = tb_model.TestbedShape(
        hidden=16, layers=2, heads=2, text_hidden=16, text_layers=1, text_heads=2, projection_dim=8
    )
    model = tb_model.make_testbed_clip(root / "model", shape, tb_model.caption_words(CIFAR10_CLASSES))
    return data, model


def _args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["reproduce", "testbed", "--model", str(model), "--dataset", f"folder:{data}", "--blocks", "0,1",
            "--seeds", "0,1", "--n-sae", "60", "--sae-steps", "3", "--sae-batch-size", "64", "--expansion", "2",
            "--k", "4", "--ns", "1,2", "--workers", "0", "--device", "cpu", "--no-paper-runs", "--out", str(out),
            *extra]  # fmt: skip


@pytest.mark.slow
def test_reproduce_testbed_end_to_end_on_a_tiny_model(tiny_testbed, tmp_path, capsys):
    data, model = tiny_testbed
    out = tmp_path / "run"
    assert main(_args(data, model, out, "--control", str(model))) == 0
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert f"folder:{data}" in md and "**train** split" in md and "**test** split" in md
    assert "Negative control" in md
    effects = [r["effect"] for r in res["rows"]]
    assert any(e.startswith("detection (word present)") for e in effects)
    assert any(e.startswith("frame suppression: worst-group gain") for e in effects)
    assert all(r["n"] == 2 for r in res["rows"] if r["effect"].startswith("word suppression: share"))
    # the detection units and blocks are the ones with the best AUROC on the selection split
    for attr in ("word", "cue"):
        det = res["detection"][attr]
        for i, lat in enumerate(det["latent"]):
            best = max(det["per_block"][b]["latent_select_auroc"][i] for b in ("0", "1"))
            assert lat["select_auroc"] == pytest.approx(best)
    # every chosen setting is an SAE setting of a swept block and n
    for attr in ("word", "cue"):
        for s in res["suppression"][attr]:
            method, block, n = s["chosen"].split("/")
            assert method == "sae" and block in ("b0", "b1") and n in ("n1", "n2")
    # steering: per seed, a swept block chosen on the selection split, every class with its latent
    for s in res["steering"]["seeds"]:
        assert s["block"] in (0, 1) and len(s["classes"]) == 10
        assert max(s["select_mean_dp"], key=s["select_mean_dp"].get) == str(s["block"])
    assert any(e.startswith("steerability: steerable fraction of SAE features") for e in effects)
    # --no-paper-runs: no VS2 or sparsity rows, sections or directories
    assert not any(e.startswith(("VS2", "sparsity:")) for e in effects) and "## VS2" not in md
    assert not (out / "vs2").exists() and not (out / "sparsity").exists() and res["paper_runs"] is None
    # a rerun finds every stage current and changes nothing
    before = (out / "results.json").read_bytes()
    assert main(_args(data, model, out, "--control", str(model))) == 0
    assert (out / "results.json").read_bytes() == before


def test_reproduce_testbed_refuses_other_classes(tmp_path, tiny_testbed, capsys):
    _, model = tiny_testbed
    other = make_class_images(tmp_path / "d", {"train": 2, "test": 2}, ("a", "b"))
    assert main(_args(other, model, tmp_path / "o")) == 2
    assert "CIFAR-10's 10 classes" in capsys.readouterr().err


def test_mean_sd_of_no_values_is_nan_without_a_warning():
    """A row whose stage recorded no values (no heads rows) prints n/a, with no numpy warning."""
    import warnings

    from sparsesteer.experiments.testbed.effects_report import _ms

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, sd = _ms([])
        assert np.isnan(mean) and sd == 0.0
        assert _ms([0.25, 0.75]) == (0.5, pytest.approx(np.std([0.25, 0.75], ddof=1)))


def test_spearman_against_hand_worked_ranks():
    from sparsesteer.experiments.testbed.effects_report import spearman

    assert spearman([0, 1, 2], [1, 3, 2]) == pytest.approx(0.5)  # ranks (1,2,3) vs (1,3,2)
    # ties share their rank: y ranks (1.5, 1.5, 3); cov 1.5 / sqrt(2 * 1.5)
    assert spearman([1, 2, 3], [5, 5, 6]) == pytest.approx(1.5 / np.sqrt(3.0))
    assert spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2, 3], [4, 4, 4])) and np.isnan(spearman([1], [2]))


def test_paper_rows_repeat_vs2_and_sparsity_without_targets():
    """The VS2 rows carry `reproduce vs2`'s change against zero-shot (points -> fraction); the sparsity
    rows read the all-token SAEs only, in block order."""
    from sparsesteer.experiments.testbed.effects_report import paper_rows, render

    vs2 = {"rows": [{"key": "zeroshot", "delta_vs_zeroshot": 0.0}, {"key": "vs2", "delta_vs_zeroshot": 4.5},
                    {"key": "vs2_pass", "delta_vs_zeroshot": -1.25}]}  # fmt: skip
    sp = {"rows": [{"block": 2, "tokens": "all", "l0_cls": 30.0, "l0_patch": 90.0},
                   {"block": 0, "tokens": "all", "l0_cls": 10.0, "l0_patch": 40.0},
                   {"block": 1, "tokens": "all", "l0_cls": 20.0, "l0_patch": 40.0},
                   {"block": 0, "tokens": "cls", "l0_cls": 99.0, "l0_patch": None}]}  # fmt: skip
    rows = {r["effect"]: r for r in paper_rows(vs2, sp)}
    assert rows["VS2: top-1 change vs zero-shot (clean test, final CLS)"]["mean"] == pytest.approx(0.045)
    assert rows["VS2 + PASS: top-1 change vs zero-shot (clean test, final CLS)"]["mean"] == pytest.approx(-0.0125)
    assert not any(e.startswith("VS2++") for e in rows)  # absent from the run: no row
    rho = rows["sparsity: CLS L0 rises with depth (Spearman rho over blocks, all-token SAEs)"]["mean"]
    assert rho == pytest.approx(1.0)
    assert rows["sparsity: patch L0 / CLS L0 (median over blocks, all-token SAEs)"]["mean"] == pytest.approx(3.0)
    assert all(r["target"] is None and r["pass"] is None for r in rows.values())
    text = render(list(rows.values()))
    assert "| 4.5 |" in text and "| -1.2 |" in text and "FAIL" not in text and "(reported)" in text
    assert paper_rows(None, None) == []


def test_vs2_section_prints_reproduce_vs2s_rows_and_settings():
    from sparsesteer.experiments.testbed.effects_report import vs2_section

    vs2 = {"test_split": "test", "n_test": 10, "validation": {"split": "validation part of train", "n": 4},
           "sae": {"block": 5, "expansion": 4, "k": 64, "fvu": {"test": 0.0891}},
           "rows": [{"method": "VS2++ (oracle)", "top1": 49.731, "delta_vs_zeroshot": 0.031,
                     "settings": {"lam": 1.0, "fallbacks": {"fallback": "group", "empty_positive": 58},
                                  "tuned_on": "x"}}]}  # fmt: skip
    text = vs2_section(vs2)
    assert "| VS2++ (oracle) | 49.73 | +0.03 | lam=1.0, fallbacks=fallback:group empty_positive:58 |" in text
    assert "test FVU 0.089" in text and "block 5" in text and "(4 images)" in text
