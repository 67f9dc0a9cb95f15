"""docs/errors.md, row by row: every documented message is what the user really sees.

The page's table is the single list of messages: each row's id names a command line in
`error_cases.COMMANDS` (run through `main`, exit 2, one error line, no traceback) or a library
call in `error_cases.API` (raises SparsesteerError); `disk-full` is provoked here. A row without a
case, or a case without a row, fails the first test, so the page and the tests cannot drift.
"""

from __future__ import annotations

import errno
import re
import shutil

import pytest
from error_cases import API, COMMANDS, build_error_workspace

from sparsesteer.cli import main
from sparsesteer.utils.errors import SparsesteerError

DOC = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ROW = re.compile(r"^\| ([a-z0-9-]+) \| .+ \| (`+) ?(.+?) ?\2 \|$")
SPECIAL = {"disk-full"}


def documented() -> dict[str, str]:
    """id -> message, from the table of docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"docs/errors.md lists {m.group(1)} twice"
            rows[m.group(1)] = m.group(3)
    return rows


DOCUMENTED = documented()


def pattern(message: str) -> re.Pattern:
    """The documented message as a regex: `…` matches any text on the line."""
    return re.compile(".*?".join(re.escape(part) for part in message.split("…")))


def test_every_documented_message_has_a_case_and_every_case_a_row():
    cases = set(COMMANDS) | set(API) | SPECIAL
    assert len(DOCUMENTED) >= 40
    assert set(DOCUMENTED) - cases == set(), "rows of docs/errors.md without a case in tests/error_cases.py"
    assert cases - set(DOCUMENTED) == set(), "cases in tests/error_cases.py without a row in docs/errors.md"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_clip_dir):
    return build_error_workspace(tmp_path_factory.mktemp("errors") / "ws", tiny_clip_dir)


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_command_prints_the_documented_message(case, ws, capsys):
    shutil.rmtree(ws / "new", ignore_errors=True)
    argv = ["-q", *(a.replace("{ws}", str(ws)) for a in COMMANDS[case])]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (unknown command, invalid choice)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if re.match(r"^sparsesteer[ a-z]*: error: ", line)]
    assert len(errors) == 1, err
    assert pattern(DOCUMENTED[case]).search(errors[0]), f"\ndocumented: {DOCUMENTED[case]}\nprinted:    {errors[0]}"
    assert not (ws / "new").exists() or not any((ws / "new").rglob("*.json")), "work was done before the error"


@pytest.mark.parametrize("case", sorted(API))
def test_library_raises_the_documented_message(case, ws):
    shutil.rmtree(ws / "new", ignore_errors=True)
    with pytest.raises(SparsesteerError) as info:
        API[case](ws)
    assert pattern(DOCUMENTED[case]).search(str(info.value)), f"\n{DOCUMENTED[case]}\n{info.value}"


def test_disk_full(ws, capsys, monkeypatch):
    """A full disk while a shard is written: exit 1, the documented line naming the file."""
    import numpy as np

    import sparsesteer.utils.io as io_mod

    real, calls = np.save, []

    def full(f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # shard 3, its activations (each shard: activations, index)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, *args, **kwargs)

    monkeypatch.setattr(io_mod.np, "save", full)
    argv = ["-q", "cache", "--model", str(ws / "clip"), "--dataset", f"folder:{ws / 'data'}", "--split", "train",
            "--hook", "blocks.1.resid_post", "--tokens", "cls", "--shard-images", "1", "--workers", "0",
            "--out", str(ws / "new" / "full")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and pattern(DOCUMENTED["disk-full"]).search(err), err
