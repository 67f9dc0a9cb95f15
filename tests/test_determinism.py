"""Same seed, same bytes on CPU: `cache`, `train`, `interpret` and `reproduce sparsity` (SAEs,
statistics, tables, plots) run twice into the same directory give identical outputs, apart from
wall-clock fields (see docs/errors.md, "Determinism"). Each second run happens after the first in
the same process, so a global random state that a command forgets to seed shows up too."""

from __future__ import annotations

import shutil

import pytest
from faults import _class_folders, differences, snapshot

from sparsesteer.cli import main

HOOK = "blocks.2.resid_post"


def twice(argv: list[str], out) -> list[str]:
    """Run `argv` into `out`, keep its snapshot, clear `out`, run again; the differing files."""
    assert main(["-q", *argv]) == 0
    first = snapshot(out)
    assert first, f"{out} is empty"
    shutil.rmtree(out)
    assert main(["-q", *argv]) == 0
    return differences(first, snapshot(out))


@pytest.mark.slow
def test_cache_train_interpret_and_a_table_are_deterministic(tmp_path, tiny_clip_dir):
    data = _class_folders(tmp_path / "data", {"train": 6, "test": 3}, classes=["cat", "dog", "bird"])
    cache = ["cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train", "--hook",
             HOOK, "--tokens", "all", "--shard-images", "4", "--workers", "0", "--out", str(tmp_path / "cache")]  # fmt: skip
    assert twice(cache, tmp_path / "cache") == []
    train = ["train", "--activations", str(tmp_path / "cache"), "--k", "4", "--expansion", "2", "--batch-size", "32",
             "--steps", "40", "--checkpoint-every", "20", "--log-every", "10", "--seed", "3",
             "--out", str(tmp_path / "sae")]  # fmt: skip
    assert twice(train, tmp_path / "sae") == []
    stats = ["interpret", "--sae", str(tmp_path / "sae"), "--activations", str(tmp_path / "cache"), "--top-n", "3",
             "--neighbours", "3", "--device", "cpu", "--montages", "2", "--out", str(tmp_path / "stats")]  # fmt: skip
    assert twice(stats, tmp_path / "stats") == []
    table = ["reproduce", "sparsity", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--blocks", "2",
             "--k", "4", "--expansion", "2", "--sae-steps", "10", "--sae-batch-size", "64", "--workers", "0",
             "--batch-size", "8", "--out", str(tmp_path / "table")]  # fmt: skip
    assert twice(table, tmp_path / "table") == []
    assert (tmp_path / "table" / "results.md").is_file()


def test_a_different_seed_gives_a_different_sae(tmp_path):
    """The comparison above can fail: another --seed changes the weights."""
    from helpers import make_activation_cache

    make_activation_cache(tmp_path / "acts", n_images=100, positions=(0, 1), d=16, hooks=(HOOK,))
    base = ["-q", "train", "--activations", str(tmp_path / "acts"), "--k", "4", "--n-latents", "32", "--steps", "5"]
    assert main([*base, "--seed", "0", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--seed", "1", "--out", str(tmp_path / "b")]) == 0
    diffs = differences(snapshot(tmp_path / "a"), snapshot(tmp_path / "b"))
    assert "differs: sae.safetensors" in diffs
