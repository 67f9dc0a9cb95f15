"""benchmarks/rehearsal.py cannot rot while no one runs it at full size: a smoke run of every command
on the tiny CLIP over 64 real CIFAR-10 JPEGs, its resume, its refusal of other settings, and --compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "rehearsal.py"
COMMANDS = {
    "cache-all", "ref-forward-all", "cache-cls", "ref-forward-cls", "train-cls", "ref-sae-cls", "train-all",
    "ref-sae-all", "train-model", "evaluate", "interpret", "browse", "steer", "vs2", "typographic",
}  # fmt: skip


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )  # fmt: skip


@pytest.mark.slow  # ~3 minutes: 16 subprocesses, each importing torch
def test_rehearsal_smoke_runs_every_command_and_resumes(cifar10_jpeg, tmp_path):
    work = tmp_path / "w"
    small = ["--preset", "tiny", "--latents", "64", "--k", "4", "--data", str(cifar10_jpeg), "--work", str(work)]
    done = _run("--images", "64", *small)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rec = json.loads((work / "rehearsal.json").read_text())
    cmds = rec["commands"]
    assert set(cmds) == COMMANDS and all(c["status"] == "finished" for c in cmds.values())
    assert all(c["wall_s"] > 0 and c["peak_rss_mib"] > 0 for c in cmds.values())
    # a child's ru_maxrss may count the forked copy of the parent before its exec: the parent's own peak is
    # recorded beside them, the floor a reader must allow for (it varies with the machine: not asserted)
    assert rec["parent_peak_rss_mib"] > 0
    for name in COMMANDS - {n for n in COMMANDS if n.startswith("ref-")}:
        assert cmds[name]["bytes"] > 0, name  # every command wrote its outputs
    assert cmds["train-all"]["rows"] == 64 * 17 and cmds["train-cls"]["rows"] == 64  # tiny CLIP: 17 tokens
    for ref in ("ref-forward-all", "ref-forward-cls", "ref-sae-all", "ref-sae-cls"):
        assert cmds[ref]["rate"] > 0
    table = (work / "rehearsal.md").read_text()
    assert all(f"| {name} | finished |" in table for name in COMMANDS)

    # an unfinished command (killed: no record) reruns from an empty output; finished ones are skipped
    del cmds["browse"]
    (work / "site" / "stale.txt").write_text("left by the killed run")
    (work / "rehearsal.json").write_text(json.dumps(rec))
    again = _run("--images", "64", *small)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("finished earlier") == len(COMMANDS) - 1
    rec2 = json.loads((work / "rehearsal.json").read_text())
    assert rec2["commands"]["browse"]["status"] == "finished" and not (work / "site" / "stale.txt").exists()
    assert {n: c["started"] for n, c in rec2["commands"].items() if n != "browse"} == {
        n: c["started"] for n, c in cmds.items()
    }

    # other settings in the same work directory: one line naming what differs, exit status 2
    other = _run("--images", "64", *small, "--k", "5")
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "(k)" in other.stderr

    # --compare: growth factors between two sizes (a second record made from the first: twice the images)
    rec2["settings"]["images"] = 128
    for c in rec2["commands"].values():
        c["wall_s"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(rec2))
    cmp = _run("--compare", str(work / "rehearsal.json"), str(tmp_path / "b.json"))
    assert cmp.returncode == 0, cmp.stderr
    assert "64->128 (images x2.00)" in cmp.stdout
    assert "| cache-all | " in cmp.stdout and "2.00x, 1.00x, 1.00x" in cmp.stdout
