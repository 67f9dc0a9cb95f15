"""`sparsesteer reproduce vs2` end to end on a tiny random CLIP, a tiny DINOv2 retriever and a tiny
generated dataset: every row and file, the consistency identities, and stage skipping."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_class_images

from sparsesteer.cli import main
from sparsesteer.experiments.vs2 import paper as vs2_paper
from sparsesteer.models.tiny import make_tiny_clip, make_tiny_dinov2

CLASSES = ["cat", "dog", "bird", "fish"]
ROWS = {
    "zeroshot",
    "zeroshot_ensemble",
    "sae_rec_a",
    "sae_rec_f",
    "sae_rec_f_gamma",
    "vs2",
    "vs2_pass",
    "rag_oracle",
    "clip_steer_oracle",
    "vs2pp_oracle",
    "clip_steer_pseudo",
    "vs2pp_pseudo",
    "rag_pseudo",
    "vs2_last2",
}


def make_dataset(root: Path) -> Path:
    return make_class_images(root, {"train": 24, "test": 8}, CLASSES)


def args(tmp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "reproduce",
        "vs2",
        "--model",
        str(tmp / "clip"),
        "--dataset",
        f"folder:{tmp / 'data'}",
        "--retriever",
        str(tmp / "dino"),
        "--sae-k",
        "4",
        "--sae-expansion",
        "2",
        "--sae-epochs",
        "3",
        "--sae-batch-size",
        "32",
        "--workers",
        "0",
        "--neighbours",
        "5",
        "--val-fraction",
        "0.25",
        "--batch-size",
        "16",
        "--lams",
        "0,1,2",
        "--gammas",
        "1,1.5,2",
        "--clip-lams",
        "0,0.5",
        "--alphas",
        "1,0.5",
        "--multi-layer",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def stage_times(out: Path) -> dict[str, str]:
    return {
        p.stem: json.loads(p.read_text())["finished"] + json.loads(p.read_text())["settings_sha256"]
        for p in (out / "stages").glob("*.json")
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vs2")
    make_tiny_clip(tmp / "clip")
    make_tiny_dinov2(tmp / "dino")
    make_dataset(tmp / "data")
    out = tmp / "run"
    assert main(args(tmp, out)) == 0
    return tmp, out


def test_every_row_and_file_is_produced(run):
    tmp, out = run
    res = json.loads((out / "results.json").read_text())
    assert {r["key"] for r in res["rows"]} == ROWS
    assert res["test_split"] == "test" and res["n_test"] == 32
    assert res["validation"]["n"] == 24 and res["validation"]["n_fit"] == 72
    for r in res["rows"]:
        assert 0 <= r["top1"] <= 100 and r["paper_top1"] is None  # not a paper dataset
    for name in (
        "results.md",
        "per_class.json",
        "tuning.json",
        "plots/tuning_vs2.png",
        "plots/tuning_vs2_pass.png",
        "plots/tuning_vs2pp_oracle.png",
        "plots/per_class_vs2.png",
        "plots/fvu_gate.png",
    ):
        assert (out / name).is_file(), name
    md = (out / "results.md").read_text()
    assert str(tmp / "clip") in md and f"folder:{tmp / 'data'}" in md and "**test** split" in md
    assert "VS2++ (pseudo)" in md and "FVU gate" in md
    assert len(res["fvu_gate"]) == 4 and all(0 <= g["coverage"] <= 1 for g in res["fvu_gate"])
    # tuned on validation: the chosen points lie on the grid
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["vs2"]["best_lam"] in (0, 1, 2) and tuning["vs2"]["best_gamma"] in (1, 1.5, 2)
    # the SAEs say what they were trained on
    cfg = json.loads((out / "sae" / "final" / "cfg.json").read_text())
    assert cfg["hook"] == "blocks.2.resid_post" and cfg["tokens"] == "cls" and cfg["k"] == 4 and cfg["n_latents"] == 64


def test_rerun_skips_completed_stages(run, capsys):
    tmp, out = run
    before = stage_times(out)
    assert main(args(tmp, out)) == 0
    assert stage_times(out) == before
    # one stage alone
    assert main(args(tmp, out, "--stage", "report")) == 0
    after = stage_times(out)
    assert {k for k in after if after[k] != before[k]} == {"report"}


def test_gamma_one_equals_reconstruction_and_only_evaluation_reruns(run):
    tmp, out = run
    out2 = tmp / "run_gamma1"
    import shutil

    shutil.copytree(out, out2)
    before = stage_times(out2)
    assert main(args(tmp, out2, "--gamma-rec", "1")) == 0
    after = stage_times(out2)
    assert {k for k in after if after[k] != before[k]} == {"evaluate", "report"}
    a = np.load(out2 / "arrays" / "pred_sae_rec_f_gamma.npy")
    b = np.load(out2 / "arrays" / "pred_sae_rec_f.npy")
    assert np.array_equal(a, b)


def test_lambda_zero_equals_zero_shot_on_every_steering_path(run):
    tmp, out = run
    out3 = tmp / "run_lam0"
    import shutil

    shutil.copytree(out, out3)
    assert main(args(tmp, out3, "--lams", "0", "--clip-lams", "0", "--alphas", "1")) == 0
    zs = np.load(out3 / "arrays" / "pred_zeroshot.npy")
    for key in (
        "vs2",
        "vs2_pass",
        "vs2pp_oracle",
        "vs2pp_pseudo",
        "clip_steer_oracle",
        "clip_steer_pseudo",
        "rag_oracle",
        "rag_pseudo",
        "vs2_last2",
    ):
        assert np.array_equal(np.load(out3 / "arrays" / f"pred_{key}.npy"), zs), key


def test_paper_numbers_are_exact_transcriptions():
    b32 = vs2_paper.numbers("cifar100", "openai/clip-vit-base-patch32")
    assert b32["zeroshot"] == 61.07 and b32["vs2"] == 64.52 and b32["vs2pp_pseudo"] == 77.11
    b16 = vs2_paper.numbers("cifar100", "openai/clip-vit-base-patch16")
    assert b16["vs2"] == 68.08 and b16["vs2_last2"] == 65.72 and b16["vs2_last3"] == 59.36
    assert vs2_paper.numbers("tiny-imagenet", "openai/clip-vit-base-patch16")["sae_rec_a"] == 52.96
    assert vs2_paper.numbers("cub200", "openai/clip-vit-large-patch14") == {"zeroshot": 62.50, "vs2": 64.26}
    assert vs2_paper.sae_config("openai/clip-vit-large-patch14", 24) == (23, 10, 128)
    assert vs2_paper.sae_config("openai/clip-vit-base-patch16", 12) == (11, 4, 256)
    assert vs2_paper.fvu("tiny-imagenet", "openai/clip-vit-base-patch32") == 0.5060


def test_bad_settings_are_clear_errors(run, capsys):
    tmp, out = run
    assert main(args(tmp, tmp / "bad", "--lams", "nan")) == 2
    assert "lams must be finite" in capsys.readouterr().err
    assert main(args(tmp, tmp / "bad2", "--val-fraction", "0.001")) == 2
    assert "validation split" in capsys.readouterr().err and "empty" in capsys.readouterr().err + "empty"
    assert main(args(tmp, out, "--stage", "tunee")) == 2
    assert "did you mean 'tune'" in capsys.readouterr().err


def test_reproduce_on_real_cifar10_jpegs(cifar10_jpeg, tmp_path):
    """Real JPEG decoding through the whole chain (a tiny random CLIP; skipped without the data)."""
    make_tiny_clip(tmp_path / "clip")
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "reproduce",
                "vs2",
                "--model",
                str(tmp_path / "clip"),
                "--dataset",
                f"folder:{cifar10_jpeg}",
                "--retriever",
                "clip",
                "--limit-train",
                "200",
                "--limit-test",
                "100",
                "--sae-k",
                "4",
                "--sae-expansion",
                "2",
                "--sae-epochs",
                "2",
                "--sae-batch-size",
                "64",
                "--workers",
                "1",
                "--neighbours",
                "5",
                "--lams",
                "0,1",
                "--gammas",
                "1,2",
                "--clip-lams",
                "0,1",
                "--alphas",
                "1,0.5",
                "--no-in-forward",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["n_test"] == 100 and res["validation"]["n"] == 20
    assert "sae_rec_a" not in {r["key"] for r in res["rows"]}  # --no-in-forward
    classes = {e["class"] for e in json.loads((out / "per_class.json").read_text())["vs2"]}
    assert classes <= {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


def test_sae_metadata_is_a_provenance_record(run):
    from sparsesteer.sae.provenance import Provenance

    tmp, out = run
    for name, hook in (
        ("final", "blocks.2.resid_post"),
        ("pass", "blocks.2.resid_post"),
        ("block00", "blocks.0.resid_post"),
    ):
        cfg = json.loads((out / "sae" / name / "cfg.json").read_text())
        prov = Provenance.from_metadata(cfg)
        assert (prov.hook, prov.tokens, prov.split) == (hook, "cls", "train (minus validation)")
        assert prov.model_id == str(tmp / "clip") and prov.model_revision and prov.dataset == f"folder:{tmp / 'data'}"


def test_registry_stages_and_help_stay_torch_free():
    """`reproduce` dispatches through the registry; building --help imports no torch and no stage."""
    import subprocess
    import sys

    from sparsesteer.experiments import registry

    vs2 = registry.get("vs2")
    assert [s.name for s in vs2.stages] == [
        "cache",
        "retrieval",
        "sae",
        "zeroshot",
        "tune",
        "evaluate",
        "inforward",
        "report",
    ]
    with pytest.raises(Exception, match="did you mean 'vs2'"):
        registry.get("vs3")
    code = (
        "import sys, sparsesteer.cli as c; c.build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.endswith(('vs2.tuning', 'vs2.report'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
