"""Provenance: built from a cache view, stored in an SAE's cfg.json, and checked when combined."""

import pytest
from test_activations_cache import make_data, settings, write_cache

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.sae.provenance import Provenance, check_agree, mismatches
from sparsesteer.utils.errors import SparsesteerError


def test_from_a_cache_view(tmp_path):
    write_cache(tmp_path / "c", settings(classes=("a", "b"), dataset={"name": "folder:/x", "len": 7}), make_data())
    view = ActivationCache.open(tmp_path / "c").rows("blocks.0.resid_post", "cls")
    p = Provenance.from_rows(view.describe())
    assert (p.model_id, p.model_revision, p.hook, p.tokens, p.d) == ("tiny", None, "blocks.0.resid_post", "cls", 8)
    assert (p.dataset, p.split, p.classes) == ("folder:/x", "test", ("a", "b"))
    assert p.activations == str(tmp_path / "c")


def test_metadata_round_trip_and_old_checkpoints():
    p = Provenance("m", "rev1", "blocks.3.resid_post", "patch", 16, "cifar100", "train", ("x", "y"))
    back = Provenance.from_metadata(p.to_metadata(), d=16)
    assert back == p
    # what earlier versions and the SAELens reader wrote
    old = Provenance.from_metadata({"hook": "blocks.1.resid_post", "model": {"id": "m"}, "dataset": {"name": "c10"}})
    assert (old.model_id, old.model_revision, old.dataset, old.tokens) == ("m", None, "c10", None)
    assert Provenance.from_metadata({"model": "plain-id"}).model_id == "plain-id"


def test_mismatch_names_both_sides_unknown_is_not_checked():
    sae = Provenance("openai/clip", "aaa", "blocks.11.resid_post", "cls", 768)
    cache = Provenance("openai/clip", "bbb", "blocks.10.resid_post", "cls", 768)
    assert mismatches(sae, cache) == [
        "model revision: 'aaa' vs 'bbb'",
        "hook: 'blocks.11.resid_post' vs 'blocks.10.resid_post'",
    ]
    with pytest.raises(SparsesteerError) as e:
        check_agree("the SAE (runs/sae)", sae, "the activations (runs/c)", cache)
    msg = str(e.value)
    assert "the SAE (runs/sae) has model openai/clip, model revision aaa, hook blocks.11.resid_post" in msg
    assert "the activations (runs/c) has model openai/clip, model revision bbb, hook blocks.10.resid_post" in msg
    assert "--allow-mismatch" in msg
    notes = check_agree("the SAE", sae, "the activations", cache, allow=True)
    assert notes == [
        "the SAE and the activations disagree (model revision: 'aaa' vs 'bbb'; hook: "
        "'blocks.11.resid_post' vs 'blocks.10.resid_post')"
    ]
    renamed = sae.replace(model_id="/models/clip")  # the same revision under another name: the same model
    assert check_agree("a", sae, "b", renamed) == []
    assert mismatches(sae.replace(model_revision=None), renamed) == ["model: 'openai/clip' vs '/models/clip'"]
    unknown = Provenance(hook="blocks.11.resid_post")  # an array without a manifest: nothing else known
    assert check_agree("a", sae, "b", unknown) == []
    assert check_agree("a", sae, "b", sae.replace(split="test"), fields=("split",)) == []
    with pytest.raises(SparsesteerError, match="split: 'train' vs 'test'"):
        check_agree("a", sae.replace(split="train"), "b", sae.replace(split="test"), fields=("split",))
    with pytest.raises(SparsesteerError, match="class names differ"):
        check_agree("a", sae.replace(classes=("x",)), "b", sae.replace(classes=("y",)), fields=("classes_sha256",))


def _train_cli(cache, out, *extra):
    from sparsesteer.cli import main

    return main(
        [
            "-q",
            "train",
            "--activations",
            str(cache),
            "--k",
            "2",
            "--n-latents",
            "16",
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_train_records_the_cache_provenance_and_evaluate_checks_it(tmp_path, capsys):
    import json

    from sparsesteer.cli import main
    from sparsesteer.sae import SparseAutoencoder

    data = make_data()
    write_cache(tmp_path / "c", settings(classes=tuple("abcdefghij")), data)
    assert _train_cli(tmp_path / "c", tmp_path / "sae", "--hook", "blocks.0.resid_post", "--tokens", "cls") == 0
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["hook"] == "blocks.0.resid_post" and cfg["tokens"] == "cls" and cfg["split"] == "test"
    assert cfg["model"] == {"id": "tiny", "revision": None} and cfg["dataset"] == "unit"
    assert cfg["classes"] == list("abcdefghij") and cfg["activations"] == str(tmp_path / "c")
    prov = SparseAutoencoder.load(tmp_path / "sae").provenance
    assert (prov.hook, prov.tokens, prov.d, prov.classes) == ("blocks.0.resid_post", "cls", 8, tuple("abcdefghij"))

    # evaluate finds the SAE's hook and CLS rows in the two-hook, all-token cache by itself
    assert main(["-q", "evaluate", "--sae", str(tmp_path / "sae"), "--activations", str(tmp_path / "c")]) == 0
    ev = json.loads((tmp_path / "sae" / "eval.json").read_text())
    assert ev["hook"] == "blocks.0.resid_post" and ev["tokens"] == "cls"
    assert ev["metrics"]["n_rows"] == 7  # one CLS row per image

    # the same rows from another model's cache: refused, naming both sides; allowed, and said
    other = settings(classes=tuple("abcdefghij"), model={"id": "tiny", "revision": "r2", "arch": "clip"})
    write_cache(tmp_path / "c2", other, data)
    sae_r1 = tmp_path / "sae-r1"
    first = settings(classes=tuple("abcdefghij"), model={"id": "tiny", "revision": "r1", "arch": "clip"})
    write_cache(tmp_path / "c1", first, data)
    assert _train_cli(tmp_path / "c1", sae_r1, "--hook", "blocks.0.resid_post", "--tokens", "cls") == 0
    capsys.readouterr()
    argv = ["-q", "evaluate", "--sae", str(sae_r1), "--activations", str(tmp_path / "c2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model revision: 'r1' vs 'r2'" in err and f"the SAE ({sae_r1})" in err and "c2" in err
    assert main([*argv, "--allow-mismatch", "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert "model revision: 'r1' vs 'r2'" in ev["provenance_overridden"][0]
    # an explicit --hook that is not the SAE's: here another width, which no flag overrides
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--sae",
                str(sae_r1),
                "--activations",
                str(tmp_path / "c1"),
                "--hook",
                "blocks.2.mlp_out",
            ]
        )
        == 2
    )
    assert "activation width 5 does not match the SAE's d_in=8" in capsys.readouterr().err
