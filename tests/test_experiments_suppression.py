"""Feature suppression (`reproduce disentangle`, `reproduce typographic`) on a tiny random CLIP:
head ablation against a manual computation, a planted latent's suppression against a manual edit,
the shared-forward sweep against full forwards, the commands end to end, and the inputs refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_celeba, make_folder_dataset, make_waterbirds

from sparsesteer.cli import main
from sparsesteer.data.subset import balanced_sample, replay
from sparsesteer.experiments.clipsteer.suppression.sweep import Setting, build_settings, predictions
from sparsesteer.models import load_backbone
from sparsesteer.models.heads import HeadAblation, ablate_heads, capture_head_inputs, head_outputs, n_heads
from sparsesteer.models.hooks import Intervention
from sparsesteer.models.zeroshot import ZeroShotClassifier
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering.edits import zero_latents

COMMON = ["--blocks", "1-2", "--ns", "1,2", "--k", "4", "--expansion", "2", "--sae-steps", "5",
          "--sae-batch-size", "64", "--workers", "0", "--batch-size", "8", "--device", "cpu"]  # fmt: skip


def test_head_ablation_zeroes_exactly_the_heads_cls_contribution(tiny_clip_dir):
    bb = load_backbone(tiny_clip_dir)
    pixels = torch.randn(2, 3, bb.image_size, bb.image_size)
    hook = "blocks.1.attn_out"
    with capture_head_inputs(bb, [1]) as z:
        clean = bb.run(pixels, [hook])[hook]
    # manual: the heads' CLS contributions from out_proj's weight slices, by hand
    proj = bb._attn_module(bb.blocks[1]).out_proj
    h = n_heads(bb)
    d_head = bb.d_model // h
    zc = z[1][0]
    manual = sum(zc[:, k * d_head : (k + 1) * d_head] @ proj.weight[:, k * d_head : (k + 1) * d_head].T for k in (0, 1))
    with ablate_heads(bb, HeadAblation(1, (0, 1))):
        ablated = bb.run(pixels, [hook])[hook]
    torch.testing.assert_close(ablated[:, 0], clean[:, 0] - manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ablated[:, 1:], clean[:, 1:])  # patch tokens untouched
    torch.testing.assert_close(head_outputs(bb, 1, zc).sum(1) + proj.bias, clean[:, 0], atol=1e-5, rtol=1e-5)
    after = bb.run(pixels, [hook])[hook]  # the hook is gone
    torch.testing.assert_close(after, clean)


def test_planted_latent_suppression_matches_a_manual_edit_and_full_forwards(tiny_clip_dir):
    torch.manual_seed(0)
    bb = load_backbone(tiny_clip_dir)
    sae = build(SAEConfig(arch="topk", k=4, d_in=bb.d_model, n_latents=64)).eval()
    with torch.no_grad():  # plant latent 3: a large decoder direction, so removing it moves the output
        sae.W_dec[3] = 50 * torch.nn.functional.normalize(torch.randn(bb.d_model), dim=0)
    hook = "blocks.1.resid_post"
    pixels = torch.randn(6, 3, bb.image_size, bb.image_size)
    clf = ZeroShotClassifier.build(bb, ["cat", "dog", "bird", "fish"], ["a photo of a {}."])

    def manual(acts, positions):  # x - f_3(x) W_dec[3], f from the SAE's own encoder
        flat = acts.reshape(-1, acts.shape[-1])
        codes = sae.encode(flat)
        f3 = (codes.values * (codes.indices == 3)).sum(-1)
        return (flat - f3[:, None] * sae.W_dec[3]).reshape(acts.shape)

    want = clf.logits(bb.embed_images(pixels, interventions=[Intervention(hook, manual, "patch")])).argmax(-1)
    got = clf.logits(bb.embed_images(pixels, interventions=[zero_latents(hook, sae, [3], tokens="patch")])).argmax(-1)
    assert torch.equal(want, got)
    units = {1: {"sae": [3], "random": [5], "neurons": [2], "heads": [0]}}
    settings = build_settings(bb, {1: hook}, {1: sae}, units, [1], "patch")
    assert [s.name for s in settings] == ["sae/b1/n1", "random/b1/n1", "neurons/b1/n1", "heads/b1/n1"]
    base, shared = predictions(bb, clf, [pixels[:4], pixels[4:]], settings)
    _, naive = predictions(bb, clf, [pixels[:4], pixels[4:]], settings, naive=True)
    assert np.array_equal(shared["sae/b1/n1"], want.numpy())
    assert all(np.array_equal(shared[k], naive[k]) for k in shared)
    assert np.array_equal(base, clf.logits(bb.embed_images(pixels)).argmax(-1).numpy())
    assert isinstance(settings[3], Setting) and settings[3].heads == HeadAblation(1, (0,))


def test_balanced_sample_takes_every_group_equally():
    groups = np.array([0] * 10 + [1] * 3 + [2] * 10 + [3] * 10)
    idx = balanced_sample(groups, 12, seed=1)
    assert np.bincount(groups[idx]).tolist() == [3, 3, 3, 3]
    idx = balanced_sample(groups, 20, seed=1)
    assert np.bincount(groups[idx]).tolist()[1] == 3 and len(idx) == 20
    assert len(balanced_sample(groups, None, 0)) == len(groups)


def _check_run(out: Path, kind: str) -> dict:
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert res["experiment"] == kind and (out / "plots" / "by_layer.png").is_file()
    assert set(res["best"]) == {"sae", "random", "neurons", "heads"}
    assert {r["block"] for r in res["rows"] if r["method"] == "sae"} == {1, 2}
    assert "selection split" in md and "test split" in md and "a reference, not a comparison" in md
    assert res["held_out"]["selection"]["split"] != res["held_out"]["test"]["split"]
    return res


def test_disentangle_celeba_end_to_end(tmp_path, tiny_clip_dir):
    root = make_celeba(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["-q", "reproduce", "disentangle", "--task", "celeba", "--model", str(tiny_clip_dir),
            "--data-root", str(root), "--n-test", "8", "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    res = _check_run(out, "disentangle")
    assert res["held_out"]["selection"]["split"] == "train" and res["held_out"]["test"]["split"] == "valid"
    # the table against an independent computation: worst-group accuracy of one setting
    preds = json.loads((out / "sweep" / "test-images.json").read_text())
    from sparsesteer.data import open_dataset

    ds = open_dataset("celeba", "valid", data_root=root)
    keep = balanced_sample(2 * ds.labels() + ds.attribute_array("Blond_Hair"), 8, 0)
    y, g = ds.labels()[keep], (2 * ds.labels() + ds.attribute_array("Blond_Hair"))[keep]
    p = np.asarray(preds["sae/b2/n2"])
    worst = min(float((p[g == k] == y[g == k]).mean()) for k in np.unique(g))
    row = next(r for r in res["rows"] if r["setting"] == "sae/b2/n2")
    assert row["test"]["worst_group"]["edited"] == pytest.approx(worst)
    # the test images' record names the rule that drew them, and replaying it gives the same images
    record = res["held_out"]["test"]["subset"]
    assert record["rule"] == "group-balanced" and record["by"] == ["label", "Blond_Hair"]
    assert np.array_equal(replay(ds, record), keep)
    marks = {p.name: p.read_text() for p in (out / "stages").glob("*.json")}
    assert main(argv) == 0  # rerun: every stage current
    assert marks == {p.name: p.read_text() for p in (out / "stages").glob("*.json")}
    # --sae-dir reuses the SAEs
    assert (
        main([*argv[: -len(COMMON) - 2], "--out", str(tmp_path / "reuse"), "--sae-dir", str(out / "sae"), *COMMON]) == 0
    )
    assert not (tmp_path / "reuse" / "sae").exists()


def test_disentangle_waterbirds_end_to_end(tmp_path, tiny_clip_dir):
    root = make_waterbirds(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["-q", "reproduce", "disentangle", "--task", "waterbirds", "--model", str(tiny_clip_dir),
            "--data-root", str(root), "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    res = _check_run(out, "disentangle")
    assert res["held_out"]["selection"]["split"] == "val" and res["spurious_attribute"] == "place"


def test_typographic_end_to_end(tmp_path, tiny_clip_dir):
    data = make_folder_dataset(tmp_path / "data", (6, 6, 6), split="train", size=32)
    make_folder_dataset(tmp_path / "data", (3, 3, 3), split="test", size=32, seed=1)
    out = tmp_path / "run"
    argv = ["-q", "reproduce", "typographic", "--model", str(tiny_clip_dir), "--dataset", f"typo:folder:{data}",
            "--out", str(out), *COMMON]  # fmt: skip
    assert main(argv) == 0
    res = _check_run(out, "typographic")
    row = next(r for r in res["rows"] if r["method"] == "none")
    assert set(row["test"]) == {"clean_accuracy", "attacked_accuracy", "attack_success_rate"}
    assert row["test"]["attacked_accuracy"]["delta"] == 0


def test_bad_inputs_are_refused_naming_the_cause(tmp_path, tiny_clip_dir, capsys):
    base = ["-q", "reproduce", "disentangle", "--task", "celeba", "--model", str(tiny_clip_dir), *COMMON]
    root = make_celeba(tmp_path / "noblond", header=["Male", "Young"])
    assert main([*base, "--data-root", str(root), "--out", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert "Blond_Hair" in err and "list_attr_celeba.txt" in err
    root = make_celeba(tmp_path / "ok")
    assert main([*base, "--data-root", str(root), "--ns", "500,600", "--out", str(tmp_path / "b")]) != 0
    assert "every n (500, 600) is larger than the 64 latents" in capsys.readouterr().err
    empty = make_celeba(tmp_path / "oneside", per_split=(("0", 16), ("1", 1), ("2", 8)))
    assert main([*base, "--data-root", str(empty), "--select-split", "valid", "--test-split", "test",
                 "--out", str(tmp_path / "c")]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "Blond_Hair" in err and "selection split" in err and "both groups" in err
    wb = make_waterbirds(tmp_path / "wb") / "waterbird_complete95_forest2water2" / "metadata.csv"
    wb.write_text("\n".join(",".join(line.split(",")[:4]) for line in wb.read_text().splitlines()) + "\n")
    from sparsesteer.data import open_dataset
    from sparsesteer.utils.errors import SparsesteerError

    with pytest.raises(SparsesteerError, match=r"metadata.csv: missing column\(s\) place"):
        open_dataset("waterbirds", "val", data_root=tmp_path / "wb")  # what the run shows for an installed copy


def test_help_lists_both_commands_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io; from sparsesteer.cli import main\n"
        "buf = io.StringIO()\n"
        "for a in (['reproduce', '--help'], ['reproduce', 'disentangle', '--help'], ['reproduce', 'typographic', '--help']):\n"
        "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit): main(a)\n"
        "v = buf.getvalue(); print('disentangle' in v, '--select-dataset' in v, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "False"]
