"""Damaged files are caught, with a message naming the file: a flipped byte in a cache shard, a
truncated safetensors file, an edited manifest, a cfg.json whose shapes disagree with the weights,
edited statistics (stats.json / stats.safetensors), and a pickle where safetensors is expected.

Each case runs the command a user would run (in this process, through `main`) and checks the exit
status 2, the one-line message and the file it names; no traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_activation_cache

from sparsesteer.cli import main

HOOK = "blocks.2.resid_post"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small cache (3 shards), an SAE trained on it by the CLI, and its statistics."""
    tmp = tmp_path_factory.mktemp("corrupt")
    make_activation_cache(tmp / "acts", n_images=300, positions=(0, 1), d=16, hooks=(HOOK,))
    train = ["-q", "train", "--activations", str(tmp / "acts"), "--k", "4", "--n-latents", "32", "--batch-size", "64",
             "--steps", "20", "--checkpoint-every", "10", "--out", str(tmp / "sae")]  # fmt: skip
    assert main(train) == 0
    stats = ["-q", "interpret", "--sae", str(tmp / "sae"), "--activations", str(tmp / "acts"), "--top-n", "2",
             "--neighbours", "3", "--device", "cpu", "--out", str(tmp / "stats")]  # fmt: skip
    assert main(stats) == 0
    return tmp


@pytest.fixture
def tmp(base, tmp_path):
    """A private copy of the fixture's files, free to damage."""
    for name in ("acts", "sae", "stats"):
        shutil.copytree(base / name, tmp_path / name, symlinks=True)
    return tmp_path


def fails(argv: list[str], capsys, *needles: str) -> str:
    """Run the command; it must exit 2 with one error line on stderr holding every needle."""
    rc = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("sparsesteer ") and ": error: " in line]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err  # warnings may come before; one error line
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def shard_path(cache: Path, i: int = 1) -> Path:
    manifest = json.loads((cache / "manifest.json").read_text())
    return cache / manifest["shards"][i]["files"][f"acts:{HOOK}"]["name"]


def train_argv(tmp: Path, out: str = "sae2", *extra: str) -> list[str]:
    return ["train", "--activations", str(tmp / "acts"), "--k", "4", "--n-latents", "32", "--batch-size", "64",
            "--steps", "20", "--checkpoint-every", "10", "--out", str(tmp / out), *extra]  # fmt: skip


def interpret_argv(tmp: Path, out: str = "stats2") -> list[str]:
    return ["interpret", "--sae", str(tmp / "sae"), "--activations", str(tmp / "acts"), "--top-n", "2",
            "--device", "cpu", "--out", str(tmp / out)]  # fmt: skip


# ------------------------------------------------------------------------------------ cache
def test_flipped_byte_in_a_shard_is_named_by_verify_train_and_interpret(tmp, capsys):
    shard = shard_path(tmp / "acts")
    flip_byte(shard, shard.stat().st_size - 7)  # in the data, past the .npy header: only the checksum sees it
    fails(["verify", str(tmp / "acts")], capsys, shard, "sha256")
    fails(train_argv(tmp), capsys, shard)
    fails(interpret_argv(tmp), capsys, shard)
    assert not (tmp / "stats2" / "stats.json").exists() and not (tmp / "sae2" / "sae.safetensors").exists()


def test_flipped_byte_in_a_shard_header_is_named(tmp, capsys):
    shard = shard_path(tmp / "acts", 0)
    flip_byte(shard, 20)  # inside the .npy header's dict
    fails(["verify", str(tmp / "acts")], capsys, shard)
    fails(train_argv(tmp), capsys, shard)


def test_truncated_shard_is_named_before_any_work(tmp, capsys):
    shard = shard_path(tmp / "acts", 2)
    shard.write_bytes(shard.read_bytes()[:-100])
    fails(train_argv(tmp), capsys, shard)
    assert not (tmp / "sae2").exists() or not any((tmp / "sae2").iterdir())


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda m: m["settings"].update(split="test"), "settings_sha256"),  # settings no longer match their hash
        (lambda m: m["shards"][1].update(rows=m["shards"][1]["rows"] - 2), "manifest.json"),
        (lambda m: m["shards"][1]["files"][f"acts:{HOOK}"].update(sha256="0" * 64), "shards/"),
        (lambda m: m["shards"][1]["files"][f"acts:{HOOK}"].update(bytes=12), "shards/"),
        (lambda m: m.pop("shards"), "manifest.json"),
        (lambda m: m.update(format="something-else"), "manifest.json"),
    ],
    ids=["settings", "rows", "sha256", "bytes", "no-shards", "format"],
)
def test_edited_manifest_is_refused_naming_the_file(tmp, capsys, edit, needle):
    path = tmp / "acts" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    line = fails(["verify", str(tmp / "acts")], capsys, needle)
    assert str(tmp / "acts") in line
    fails(train_argv(tmp), capsys, str(tmp / "acts"))


def test_manifest_that_is_not_json(tmp, capsys):
    path = tmp / "acts" / "manifest.json"
    path.write_text(path.read_text()[:-30])
    fails(["verify", str(tmp / "acts")], capsys, path, "not valid JSON")


# ------------------------------------------------------------------------------------ SAE
def test_truncated_sae_weights_are_named(tmp, capsys):
    weights = tmp / "sae" / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    fails(interpret_argv(tmp), capsys, weights)
    fails(["evaluate", "--sae", str(tmp / "sae"), "--activations", str(tmp / "acts")], capsys, weights)


def test_truncated_sae_weights_without_a_checksum_are_named(tmp, capsys):
    """With no weights_sha256 in cfg.json the safetensors reader itself must catch the damage."""
    cfg_path = tmp / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("weights_sha256", None)
    cfg_path.write_text(json.dumps(cfg))
    weights = tmp / "sae" / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    fails(interpret_argv(tmp), capsys, weights)


@pytest.mark.parametrize("field, value", [("n_latents", 40), ("d_in", 8)])
def test_cfg_json_that_disagrees_with_the_weights_shapes(tmp, capsys, field, value):
    cfg_path = tmp / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    where = cfg["sae"] if "sae" in cfg and field in cfg["sae"] else cfg
    assert field in where, f"cfg.json has no {field}: {sorted(cfg)}"
    where[field] = value
    cfg_path.write_text(json.dumps(cfg))
    line = fails(interpret_argv(tmp), capsys, tmp / "sae")
    assert "shape" in line or field in line, line


def test_truncated_training_checkpoint_is_named_on_resume(tmp, capsys):
    assert main(["-q", *train_argv(tmp, "run", "--stop-at", "10")]) == 0  # an unfinished run keeps its checkpoint
    state = sorted((tmp / "run" / "state").glob("[0-9]*"), key=lambda p: int(p.name))[-1]
    damaged = sorted(state.glob("*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-64])
    fails(train_argv(tmp, "run", "--resume"), capsys, damaged)


def test_a_pickle_where_safetensors_is_expected_is_refused_by_name(tmp, capsys):
    weights = tmp / "sae" / "sae.safetensors"
    tensors = {"W_enc": torch.zeros(32, 16)}
    torch.save(tensors, weights)  # a zip-pickle: loading it with pickle would run code
    cfg_path = tmp / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("weights_sha256", None)
    cfg_path.write_text(json.dumps(cfg))
    line = fails(interpret_argv(tmp), capsys, weights)
    assert "pickle" in line or "safetensors" in line, line


# ------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(n_images=m["n_images"] + 1),
        lambda m: m.update(token_positions=[1, 0]),
        lambda m: m["sae"].update(arch="relu"),
        lambda m: m.update(rankings=m["rankings"][:1]),
        lambda m: m.update(tensors_sha256="0" * 64),
    ],
    ids=["n_images", "token_positions", "sae.arch", "rankings", "tensors_sha256"],
)
def test_edited_stats_json_is_detected(tmp, edit):
    from sparsesteer.interpret.store import load_stats
    from sparsesteer.utils.errors import SparsesteerError

    path = tmp / "stats" / "stats.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))
    with pytest.raises(SparsesteerError, match="stats.json"):
        load_stats(tmp / "stats")


def test_edited_stats_tensors_are_detected(tmp):
    from safetensors.numpy import load_file, save_file

    from sparsesteer.interpret.store import load_stats
    from sparsesteer.utils.errors import SparsesteerError

    path = tmp / "stats" / "stats.safetensors"
    t = load_file(str(path))
    t["fire_count"] = t["fire_count"] + 1
    save_file(t, str(path), metadata={"format": "sparsesteer-latent-stats"})
    with pytest.raises(SparsesteerError, match=r"stats\.safetensors.*checksum"):
        load_stats(tmp / "stats")


def test_truncated_stats_tensors_are_named(tmp):
    from sparsesteer.interpret.store import load_stats
    from sparsesteer.utils.errors import SparsesteerError

    path = tmp / "stats" / "stats.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SparsesteerError, match=r"stats\.safetensors"):
        load_stats(tmp / "stats")


def test_stats_files_whose_shapes_disagree_with_stats_json_are_named(tmp):
    """Both files edited consistently (the checksum recomputed): the shapes still have to agree."""
    from safetensors.numpy import load_file, save_file

    from sparsesteer.interpret.store import load_stats
    from sparsesteer.utils import io
    from sparsesteer.utils.errors import SparsesteerError

    path = tmp / "stats" / "stats.safetensors"
    t = load_file(str(path))
    t["act_max"] = t["act_max"][:-1]
    save_file(t, str(path), metadata={"format": "sparsesteer-latent-stats"})
    meta_path = tmp / "stats" / "stats.json"
    meta = json.loads(meta_path.read_text())
    meta["tensors_sha256"] = io.sha256_file(path)
    meta.pop("meta_sha256", None)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SparsesteerError, match=r"act_max"):
        load_stats(tmp / "stats")


def test_stats_of_untouched_files_still_load(tmp):
    from sparsesteer.interpret.store import load_stats

    s = load_stats(tmp / "stats", tmp / "sae", activations=tmp / "acts")
    assert s.n_latents == 32 and np.all(s.fire_count >= 0)
