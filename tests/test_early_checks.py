"""Issue 20, item 13: what needs only the flags, the SAE, the caches' manifests, the datasets' file
lists or the model's config.json is refused before the model loads (seconds to minutes), as
docs/errors.md promises. Each bad command line runs with the model loader replaced by one that fails
the test: a check that moves after the load fails here."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import make_class_images

from sparsesteer.cli import main
from sparsesteer.models.tiny import make_tiny_dinov2
from sparsesteer.sae import SAEConfig, build

HOOK = "blocks.2.resid_post"
CLIP = ["--model", "{ws}/clip"]
DATA = ["--dataset", "folder:{ws}/data"]


def _cache(*extra: str, out: str = "{ws}/new/c") -> list[str]:
    return ["cache", *CLIP, *DATA, "--split", "train", "--tokens", "cls", "--workers", "0", "--out", out, *extra]


def _train(*extra: str) -> list[str]:
    return ["train", *CLIP, *DATA, "--split", "train", "--tokens", "cls", "--steps", "2", "--out", "{ws}/new/t",
            *extra]  # fmt: skip


def _interpret(*extra: str, sae: str = "{ws}/sae") -> list[str]:
    return ["interpret", "--sae", sae, *CLIP, *DATA, "--device", "cpu", "--out", "{ws}/new/s", *extra]


def _spliced(*extra: str) -> list[str]:
    return ["evaluate", "--sae", "{ws}/sae", "--activations", "{ws}/acts", "--suite", "spliced",
            "--out", "{ws}/new/j.json", *extra]  # fmt: skip


def _vs2(*extra: str) -> list[str]:
    return ["reproduce", "vs2", *CLIP, *DATA, "--retriever", "clip", "--sae-expansion", "2", "--sae-k", "4",
            "--out", "{ws}/new/v", *extra]  # fmt: skip


def _sparsity(*extra: str) -> list[str]:
    return ["reproduce", "sparsity", *CLIP, *DATA, "--expansion", "2", "--k", "4", "--out", "{ws}/new/p", *extra]


def _typographic(*extra: str) -> list[str]:
    return ["reproduce", "typographic", *CLIP, "--dataset", "typo:folder:{ws}/data", "--expansion", "2",
            "--k", "4", "--out", "{ws}/new/y", *extra]  # fmt: skip


# id -> (argv after `sparsesteer`, a part of the one error line)
CASES: dict[str, tuple[list[str], str]] = {
    "cache-block-out-of-range": (_cache("--hook", "blocks.7.resid_post"), "block index 7 out of range"),
    "cache-hook-misspelt": (_cache("--hook", "blocks.1.resid_pots"), "unknown hook point 'blocks.1.resid_pots'"),
    "cache-head-all-tokens": (
        [*_cache("--hook", "head"), "--tokens", "all"],
        "hook 'head' gives one embedding per image",
    ),
    "cache-hook-twice": (_cache("--hook", HOOK, "--hook", HOOK), "is given more than once"),
    "cache-resume-shard-images": (
        _cache("--hook", HOOK, "--shard-images", "3", out="{ws}/acts-part"),
        "was started with 12 images per shard",
    ),
    "train-block-out-of-range": (
        _train("--hook", "blocks.7.resid_post", "--k", "4", "--n-latents", "32"),
        "block index 7 out of range",
    ),
    "train-k-above-latents": (
        _train("--hook", HOOK, "--k", "64", "--expansion", "2"),
        "k must be smaller than n_latents, got k=64 >= n_latents=64",
    ),
    "interpret-block-out-of-range": (_interpret("--hook", "blocks.7.resid_post"), "block index 7 out of range"),
    "interpret-sae-width": (_interpret(sae="{ws}/sae-d8"), "activation width 32 does not match the SAE's d_in=8"),
    "interpret-sae-hook": (
        _interpret("--hook", "blocks.0.resid_post"),
        "(hook: 'blocks.2.resid_post' vs 'blocks.0.resid_post')",
    ),
    "interpret-tokens": (_interpret("--tokens", "clss"), "unknown token selection (--tokens) 'clss'"),
    "interpret-labels-without-text": (
        [
            "interpret",
            "--sae",
            "{ws}/sae",
            "--model",
            "{ws}/dino",
            *DATA,
            "--labels",
            "cifar100",
            "--device",
            "cpu",
            "--out",
            "{ws}/new/s",
        ],  # fmt: skip
        "--labels: model '{ws}/dino' (dinov2) has no text tower",
    ),
    "interpret-labels-unknown-vocab": (_interpret("--labels", "cifar10"), "--labels 'cifar10': no such file"),
    "interpret-vocab-missing": (
        [
            "interpret",
            "--sae",
            "{ws}/sae",
            "--activations",
            "{ws}/acts",
            "--vocab",
            "{ws}/no-words.txt",
            "--device",
            "cpu",
            "--out",
            "{ws}/new/s",
        ],  # fmt: skip
        "vocabulary '{ws}/no-words.txt': no such file",
    ),
    "evaluate-suite-misspelt": (
        [*_spliced()[:5], "--suite", "spliced,reconstructon"],
        "unknown suite (--suite) 'reconstructon'",
    ),
    "evaluate-templates": (_spliced("--templates", "ensembel"), "'ensembel'"),
    "evaluate-dataset-missing": (_spliced("--dataset", "folder:{ws}/no-data"), "cannot be opened"),
    "evaluate-model-without-text": (_spliced("--model", "{ws}/dino"), "has no text tower"),
    "zeroshot-model-without-text": (
        ["zeroshot", "--model", "{ws}/dino", *DATA, "--split", "train", "--workers", "0", "--out", "{ws}/new/z"],
        "has no text tower",
    ),
    "vs2-val-fraction-zero": (_vs2("--val-fraction", "0"), "--val-fraction must be in (0, 1)"),
    "vs2-val-part-empty": (_vs2("--val-fraction", "0.01"), "validation split of 0.01 x 12 train items is empty"),
    "vs2-neighbours-above-fit": (
        _vs2(),  # 12 train images, 1 held out: the tune stage's kNN database has 11 rows, --neighbours is 50
        "--neighbours 50: VS2++ retrieves 50 neighbours per validation query from the 11 fit rows of split 'train' "
        "(12 images, minus 1 held out by --val-fraction 0.1); give --neighbours 11 or fewer",
    ),
    "vs2-multi-layer-deep": (_vs2("--multi-layer", "2,9"), "--multi-layer 9: steering the last 9 blocks"),
    "vs2-multi-layer-one": (_vs2("--multi-layer", "1"), "--multi-layer 1: Table 7 steers the last n >= 2"),
    "vs2-k-above-latents": (_vs2("--sae-k", "64"), "--sae-k 64: k must be smaller than the SAE's 64 latents"),
    "vs2-same-splits": (_vs2("--test-split", "train"), "--train-split and --test-split are both 'train'"),
    "sparsity-block-out-of-range": (_sparsity("--blocks", "0-9"), "--blocks '0-9': block 3 out of range"),
    "sparsity-k-above-latents": (_sparsity("--k", "64"), "--k 64: k must be smaller than the SAEs' 64 latents"),
    "sparsity-split-missing": (_sparsity("--test-split", "val"), "unknown split 'val'"),
    "sparsity-stage-misspelt": (_sparsity("--stage", "metrcs"), "unknown stage 'metrcs' (did you mean 'metrics'?)"),
    "typographic-block-out-of-range": (_typographic("--blocks", "5"), "--blocks '5': block 5 out of range"),
    "typographic-n-above-latents": (_typographic("--ns", "100"), "is larger than the 64 latents"),
}


@pytest.fixture(scope="module")
def ws(tiny_clip_dir, tmp_path_factory):
    """A tiny CLIP and DINOv2, a folder dataset (3 classes x 4 train, x 2 test), an unfinished CLS cache
    of its train split started with --shard-images 12, an all-token cache and SAE at blocks.2, an SAE of
    width 8."""
    tmp = tmp_path_factory.mktemp("early")
    (tmp / "clip").symlink_to(tiny_clip_dir)
    make_tiny_dinov2(tmp / "dino")
    make_class_images(tmp / "data", {"train": 4, "test": 2}, ["cat", "dog", "car"])
    for out, tokens in (("acts-part", "cls"), ("acts", "all")):
        argv = ["cache", *CLIP, *DATA, "--split", "train", "--hook", HOOK, "--tokens", tokens, "--workers", "0",
                "--shard-images", "12", "--out", f"{{ws}}/{out}"]  # fmt: skip
        assert main(["-q", *(a.replace("{ws}", str(tmp)) for a in argv)]) == 0
    manifest = tmp / "acts-part" / "manifest.json"  # as a run killed after its first shard leaves it
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "completed": False, "labels": None}))
    build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=4)).save(tmp / "sae", hook=HOOK, tokens="all")
    build(SAEConfig(arch="topk", d_in=8, n_latents=16, k=2)).save(tmp / "sae-d8", hook=HOOK, tokens="all")
    return tmp


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_the_model_loads(case, ws, capsys, monkeypatch):
    import sparsesteer.models.backbone as backbone

    def load_backbone(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr(backbone, "load_backbone", load_backbone)
    shutil.rmtree(ws / "new", ignore_errors=True)
    argv, message = CASES[case]
    assert main(["-q", *(a.replace("{ws}", str(ws)) for a in argv)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sparsesteer")]
    assert len(errors) == 1 and message.replace("{ws}", str(ws)) in errors[0], err
    assert not (ws / "new").exists() or not any((ws / "new").rglob("*.json")), "work was done before the error"
