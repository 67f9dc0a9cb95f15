"""Unwritable or invalid output paths: one line, exit 2, before any work (even before the model loads)."""

import os

import pytest

from sparsesteer.cli import main

# Each command with a model/data that does not exist: if the output check did not come first, the
# error would name the model or the dataset instead.
COMMANDS = {
    "cache": [
        "cache",
        "--model",
        "nope/nope",
        "--dataset",
        "folder:/nonexistent",
        "--split",
        "test",
        "--hook",
        "blocks.0.resid_post",
        "--tokens",
        "cls",
        "--out",
        "{out}",
    ],
    "zeroshot": [
        "zeroshot",
        "--model",
        "nope/nope",
        "--dataset",
        "folder:/nonexistent",
        "--split",
        "test",
        "--out",
        "{out}",
    ],
    "train": ["train", "--activations", "/nonexistent", "--out", "{out}"],
    "reproduce": ["reproduce", "vs2", "--model", "nope/nope", "--dataset", "folder:/nonexistent", "--out", "{out}"],
    "download": ["download", "cifar10", "--data-root", "{out}"],
    "steer features": ["steer", "features", "--model", "nope/nope", "--sae", "/nonexistent", "--latent", "0",
                       "--strength", "1", "--dataset", "folder:/nonexistent", "--out", "{out}"],
    "reproduce steerability": ["reproduce", "steerability", "--model", "nope/nope", "--sae", "/nonexistent",
                               "--dataset", "folder:/nonexistent", "--out", "{out}"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_file_where_a_directory_is_expected(command, tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me")
    for out, why in (
        (afile, f"{afile} is a file, not a directory"),
        (afile / "sub", f"{afile / 'sub'}: {afile} is a file"),
    ):
        argv = [a.format(out=out) for a in COMMANDS[command]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert why in err and str(out) in err and len(err.strip().splitlines()) == 1, err
    assert afile.read_text() == "keep me"


def test_read_only_directory(tmp_path, capsys, monkeypatch):
    """A directory that refuses new files. Root may write anywhere, so as root the refusal is injected
    at the probe write; as another user the directory is made read-only for real."""
    base = tmp_path / "ro"
    base.mkdir()
    out = base / "run"
    if os.geteuid() == 0:
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        os.chmod(base, 0o555)
    try:
        assert main([a.format(out=out) for a in COMMANDS["cache"]]) == 2
    finally:
        os.chmod(base, 0o755)
    err = capsys.readouterr().err
    assert f"--out {out}: {base} is not writable (permission denied)" in err and not out.exists()
