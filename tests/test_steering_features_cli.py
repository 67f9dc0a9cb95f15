"""`sparsesteer steer features|neurons` end to end on a tiny CLIP and a tiny folder dataset: the
before/after probabilities against an independent computation (full forwards, the zero-shot rule by
hand), the outputs, and bad input (one line, exit 2)."""

import json
import subprocess
import sys

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

CLASSES = ["cat", "dog", "bird"]
HOOK = "blocks.1.resid_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    tmp = tmp_path_factory.mktemp("steer-features")
    rng = np.random.default_rng(0)
    for ci, name in enumerate(CLASSES):
        (tmp / "data" / "test" / name).mkdir(parents=True)
        for i in range(2):
            img = rng.normal(80 + 50 * ci, 50, (32, 32, 3)).clip(0, 255).astype("uint8")
            Image.fromarray(img).save(tmp / "data" / "test" / name / f"{i}.png")
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6)).eval()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    sae.save(tmp / "sae", hook=HOOK, tokens="all")
    (tmp / "vocab.txt").write_text("cat\ndog\nred car\n# comment\ndog\ntree\n")
    return tmp, tiny_clip_dir, load_backbone(tiny_clip_dir), sae


def base(tmp, clip, *extra):
    return ["-q", "steer", *extra[:1], "--model", str(clip), "--dataset", f"folder:{tmp / 'data'}", "--workers", "0",
            "--text-cache", "none", *extra[1:]]  # fmt: skip


def images(bb, report):
    """The pixels of the images the command used, in its order, preprocessed here."""
    return torch.from_numpy(bb.preprocessor.batch([Image.open(r["source"]) for r in report["images"]]))


def zeroshot_probs(bb, emb, names, template="a photo of a {}."):
    w = torch.nn.functional.normalize(encode_text(bb, [template.format(n) for n in names]), dim=-1)
    return torch.softmax(100 * torch.nn.functional.normalize(emb, dim=-1) @ w.T, dim=-1)


def test_steer_features_against_full_forwards(setup, capsys):
    tmp, clip, bb, sae = setup
    out = tmp / "out-features"
    argv = base(tmp, clip, "features", "--sae", str(tmp / "sae"), "--latent", "3", "--latent", "17,3",
                "--strength", "12", "--mode", "set", "--limit", "4", "--show", "2", "--out", str(out))  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "steer_features.json").read_text())
    assert (out / "steer_features.md").read_text().strip() == printed.strip()
    assert report["n_images"] == 4 and report["subset"]["limit"] == 4 and len(report["images"]) == 4
    assert report["edit"]["latents"] == [3, 17] and report["edit"]["hook"] == HOOK and report["edit"]["keep_error"]
    px = images(bb, report)
    p0 = zeroshot_probs(bb, bb.embed_images(px), CLASSES)
    iv = Fe.feature_edit(HOOK, sae, [3, 17], 12.0, "set")
    p1 = zeroshot_probs(bb, bb.embed_images(px, interventions=[iv]), CLASSES)
    for c, name in enumerate(CLASSES):
        assert report["mean_before"][name] == pytest.approx(float(p0[:, c].mean()), abs=1e-5)
        assert report["mean_after"][name] == pytest.approx(float(p1[:, c].mean()), abs=1e-5)
    delta = (p1 - p0).double().mean(0)
    assert report["steerability"]["S"] == pytest.approx(float((delta**2).sum()), abs=1e-5)
    assert report["steerability"]["power"] == pytest.approx(float(delta.max()), abs=1e-5)
    for r, row in enumerate(report["images"]):
        assert row["before"] == CLASSES[int(p0[r].argmax())] and row["after"] == CLASSES[int(p1[r].argmax())]
    right = [CLASSES[int(p0[r].argmax())] == row["label_name"] for r, row in enumerate(report["images"])]
    assert report["top1_before"] == pytest.approx(100 * sum(right) / len(right))
    assert "per image (first 2 of 4" in printed and "classes with the largest mean increases" in printed


def test_steer_neurons_with_a_vocabulary_and_a_patch_mask(setup, capsys):
    tmp, clip, bb, _ = setup
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True  # the 4 centre patches
    np.save(tmp / "centre.npy", mask)
    out = tmp / "out-neurons"
    argv = base(tmp, clip, "neurons", "--hook", "blocks.0.resid_post", "--neuron", "5", "--strength=-30", "--mode",
                "add", "--tokens", f"mask:{tmp / 'centre.npy'}", "--vocab", str(tmp / "vocab.txt"), "--temperature",
                "50", "--out", str(out))  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "steer_neurons.json").read_text())
    concepts = ["cat", "dog", "red car", "tree"]
    assert report["readout"]["kind"] == "vocab" and list(report["mean_change"]) == concepts
    assert report["readout"]["n_duplicates"] == 1 and report["edit"]["token_indices"] == [6, 7, 10, 11]
    px = images(bb, report)
    hs = bb.vision(pixel_values=px, output_hidden_states=True).hidden_states
    h = hs[1].clone()
    h[:, [6, 7, 10, 11], 5] -= 30.0  # the edit written on transformers' hidden_states[1] = output of block 0
    for layer in bb.vision.encoder.layers[1:]:
        o = layer(h, None)
        h = o[0] if isinstance(o, tuple) else o
    e1 = bb.model.visual_projection(bb.vision.post_layernorm(h[:, 0]))
    V = torch.nn.functional.normalize(encode_text(bb, concepts), dim=-1)

    def probs(e):
        return torch.softmax(50 * torch.nn.functional.normalize(e, dim=-1) @ V.T, dim=-1)

    delta = (probs(e1) - probs(bb.embed_images(px))).double().mean(0)
    for c, name in enumerate(concepts):
        assert report["mean_change"][name] == pytest.approx(float(delta[c]), abs=1e-5)


def test_mismatched_sae_is_refused_and_allow_mismatch_says_so(setup, capsys):
    tmp, clip, _, _ = setup
    argv = base(tmp, clip, "features", "--sae", str(tmp / "sae"), "--latent", "1", "--strength", "5",
                "--hook", "blocks.2.resid_post")  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "hook: 'blocks.1.resid_post' vs 'blocks.2.resid_post'" in err and "--allow-mismatch" in err
    assert main([*argv, "--allow-mismatch", "--out", str(tmp / "mm")]) == 0
    report = json.loads((tmp / "mm" / "steer_features.json").read_text())
    assert "hook" in report["provenance_overridden"][0]
    assert "Provenance checks overridden" in (tmp / "mm" / "steer_features.md").read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--latent", "64", "--strength", "1"], r"latent indices [64] out of range: the SAE has n_latents=64"),
        (["--latent", "1", "--strength", "nan"], "--strength must be a finite number, got nan"),
        (["--latent", "1", "--strength", "inf"], "--strength must be a finite number, got inf"),
        (["--latent", "1", "--strength", "1e30"], "--strength 1e+30 is out of range: steering values must lie within"),
        (["--latent", "1", "--strength=-2e6", "--mode", "add"], "--strength -2e+06 is out of range"),
        (["--latent", "1", "--strength", "2", "--mode", "scale", "--strength-unit", "max"], "takes a factor"),
        (["--latent", "1"], "--mode set needs --strength S"),
        (["--latent", "1", "--mode", "zero", "--strength", "2"], "--mode zero takes no --strength"),
        (["--latent", "1", "--strength", "1", "--tokens", "patch:3,99"], "patch indices [99] out of range"),
        (["--latent", "1", "--strength", "1", "--tokens", "rows"], "--tokens 'rows': expected cls, patch, all"),
        (["--latent", "1", "--strength", "1", "--tokens", "mask:MASK"], "patch mask of shape (3, 3) does not match"),
        (["--latent", "1", "--strength", "1", "--vocab", "EMPTY"], "is empty"),
        (["--latent", "1", "--strength", "1", "--vocab", "DUPS"], "single distinct concept 'cat'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(setup, capsys, extra, message):
    tmp, clip, _, _ = setup
    np.savetxt(tmp / "mask3.txt", np.ones((3, 3)), fmt="%d")
    (tmp / "empty.txt").write_text("# nothing\n\n")
    (tmp / "dups.txt").write_text("cat\ncat\n")
    subst = {"mask:MASK": f"mask:{tmp / 'mask3.txt'}", "EMPTY": str(tmp / "empty.txt"), "DUPS": str(tmp / "dups.txt")}
    extra = [subst.get(a, a) for a in extra]
    assert main(base(tmp, clip, "features", "--sae", str(tmp / "sae"), *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("sparsesteer steer: error:")


def test_neurons_bad_input(setup, capsys):
    tmp, clip, _, _ = setup
    assert main(base(tmp, clip, "neurons", "--neuron", "1", "--strength", "1")) == 2
    assert "steer neurons needs --hook" in capsys.readouterr().err
    assert main(base(tmp, clip, "neurons", "--hook", HOOK, "--neuron", "32", "--strength", "1")) == 2
    assert "neuron indices [32] out of range: the residual stream has d_model=32" in capsys.readouterr().err


def test_help_builds_without_torch():
    code = "import sys, sparsesteer.cli as c; c.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def huge_decoder_sae(tmp, name="sae-huge"):
    """An SAE whose decoder row 0 is 1e35 long (as after folding a tiny input scale): within the strength
    bound, setting latent 0 overflows float32."""
    torch.manual_seed(1)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6)).eval()
    with torch.no_grad():
        sae.W_dec[0] *= 1e35
    sae.save(tmp / name, hook=HOOK, tokens="all")
    return tmp / name


def test_an_edit_that_overflows_is_refused_not_reported(setup, capsys):
    """Item 7: finite strengths within the bound can still overflow (here a huge decoder row); the
    result is checked and the command refuses, naming the strength, instead of printing NaN with exit 0."""
    tmp, clip, _, _ = setup
    out = tmp / "out-overflow"
    argv = base(tmp, clip, "features", "--sae", str(huge_decoder_sae(tmp)), "--latent", "0", "--strength", "1e4",
                "--out", str(out))  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--mode set --strength 10000 made the results non-finite (an overflow in float32)" in err, err
    assert len(err.splitlines()) == 1 and not (out / "steer_features.json").exists()


def test_each_strength_is_printed_beside_the_units_own_scale_and_can_be_relative(setup, capsys):
    """Item 10: the report gives each latent's max and p99 (of its non-zero values) on the steered tokens of
    these images; --strength-unit max sets the latent to a multiple of its own max (checked by a full forward)."""
    tmp, clip, bb, sae = setup
    ds = limit_dataset(open_dataset(f"folder:{tmp / 'data'}", "test"), 4, 0)  # the command's --limit 4 sample
    px = torch.from_numpy(bb.preprocessor.batch([ds[i].image for i in range(len(ds))]))
    with torch.no_grad():
        f = sae.encode_dense(bb.run(px, [HOOK])[HOOK].reshape(-1, 32))
    fired = (f > 0).any(0).nonzero().flatten().tolist()
    latents, silent = fired[:2], int((f > 0).any(0).logical_not().nonzero()[0, 0])
    out = tmp / "out-relative"
    argv = base(tmp, clip, "features", "--sae", str(tmp / "sae"), "--latent", f"{latents[0]},{latents[1]}",
                "--strength", "2", "--strength-unit", "max", "--limit", "4", "--out", str(out))  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "steer_features.json").read_text())
    assert torch.equal(images(bb, report), px)
    units = report["edit"]["units"]
    assert [u["index"] for u in units] == latents and report["edit"]["strength_unit"] == "max"
    for u in units:
        v = f[:, u["index"]]
        assert u["max"] == pytest.approx(float(v.max()), abs=1e-5)
        assert u["p99"] == pytest.approx(float(torch.quantile(v[v > 0], 0.99)), abs=1e-5)
        assert u["active"] == pytest.approx(float((v > 0).double().mean()))
        assert u["strength"] == pytest.approx(2 * u["max"], rel=1e-6)
    iv = Fe.feature_edit(HOOK, sae, latents, [u["strength"] for u in units], "set")
    with torch.no_grad():
        p1 = zeroshot_probs(bb, bb.embed_images(px, interventions=[iv]), CLASSES)
    for c, name in enumerate(CLASSES):
        assert report["mean_after"][name] == pytest.approx(float(p1[:, c].mean()), abs=1e-5)
    u = units[0]
    assert f"| {u['index']} | {u['strength']:.4g} (= 2 x max) | {u['max']:.4g} | {u['p99']:.4g} |" in printed
    assert main([*argv[:-1], str(tmp / "out-silent"), "--latent", str(silent)]) == 2
    err = capsys.readouterr().err
    assert f"--strength-unit max: latent {silent} is never active on the steered tokens of these images" in err


def test_tokens_follow_the_sae_unless_given(setup, capsys):
    """Item 11: like the hook, the token selection defaults to the SAE's: a CLS SAE steers the CLS token
    (checked by a full forward); --tokens all on it is refused as tokens it never saw."""
    tmp, clip, bb, _ = setup
    torch.manual_seed(2)
    cls_sae = build(SAEConfig(arch="topk", d_in=32, n_latents=16, k=2)).eval()
    cls_sae.save(tmp / "sae-cls", hook=HOOK, tokens="cls")
    out = tmp / "out-cls"
    argv = base(tmp, clip, "features", "--sae", str(tmp / "sae-cls"), "--latent", "5", "--strength", "30", "--out",
                str(out))  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "steer_features.json").read_text())
    assert report["edit"]["tokens"] == "cls" and report["edit"]["tokens_from_sae"]
    assert "tokens cls (the SAE's own)" in printed
    px = images(bb, report)
    with torch.no_grad():
        p1 = zeroshot_probs(bb, bb.embed_images(px, interventions=[Fe.feature_edit(HOOK, cls_sae, 5, 30.0, "set",
                                                                                   tokens="cls")]), CLASSES)  # fmt: skip
    for c, name in enumerate(CLASSES):
        assert report["mean_after"][name] == pytest.approx(float(p1[:, c].mean()), abs=1e-5)
    assert main([*argv[:-2], "--tokens", "all"]) == 2  # (no --out)
    assert "trained on tokens 'cls' but the edit selects 'all'" in capsys.readouterr().err


def test_checks_on_flags_and_the_sae_come_before_the_model(setup, monkeypatch, capsys):
    """Item 13: docs/errors.md promises that what can be seen from the flags and the SAE is refused before
    the model is loaded; a loader that fails the test proves the order."""
    tmp, clip, _, _ = setup

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before a check that needs only the flags or the SAE")

    monkeypatch.setattr("sparsesteer.models.backbone.load_backbone", no_model)
    bare = build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=6))
    bare.save(tmp / "sae-nohook", tokens="all")
    sae = ["--sae", str(tmp / "sae")]
    cases = [
        ([*sae, "--latent", "64", "--strength", "1"], "latent indices [64] out of range: the SAE has n_latents=64"),
        ([*sae, "--latent", "1", "--strength", "1", "--vocab", str(tmp / "no-words.txt")], "no such file"),
        (["--sae", str(tmp / "sae-nohook"), "--latent", "1", "--strength", "1"], "the SAE records no hook point"),
        ([*sae, "--latent", "1", "--strength", "1e7"], "--strength 1e+07 is out of range"),
    ]
    for extra, message in cases:
        assert main(base(tmp, clip, "features", *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(base(tmp, clip, "neurons", "--hook", HOOK, "--neuron", "1", "--strength", "1", "--vocab",
                     str(tmp / "no-words.txt"))) == 2  # fmt: skip
    assert "no such file" in capsys.readouterr().err
