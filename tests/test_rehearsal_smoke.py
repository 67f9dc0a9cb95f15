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
    "cache-all-bf16", "ref-forward-all-bf16",
}  # fmt: skip


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rehearsal_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_kill_test_fingerprint_ignores_timings_and_paths_but_not_results(tmp_path):
    """The kill test's comparison: two runs' outputs differing only in timing keys, their own output
    path, logs and checkpoints compare equal; a changed result value or byte, or a missing file, does not."""
    fingerprint = _script().fingerprint
    a, b = tmp_path / "a" / "out", tmp_path / "b" / "out"
    for d, t, rss in ((a, 1.5, 900), (b, 7.25, 950)):
        (d / "state").mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"top1": 0.5, "wall_s": t, "timing": {"x": t}, "peak_rss_mib": rss,
                                                    "out": str(d), "nested": [{"seconds": t, "n": 3}], "written": f"2026-12-07T23:4{int(t)}:00+00:00"}))  # fmt: skip
        (d / "w.safetensors").write_bytes(b"\x00\x01")
        (d / "state" / "ckpt.safetensors").write_bytes(str(t).encode())
        (d / "train.log").write_text(f"took {t}")
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "t": t}))
    assert fingerprint(a) == fingerprint(b) and set(fingerprint(a)) == {"results.json", "w.safetensors"}
    (b / "results.json").write_text((b / "results.json").read_text().replace('"top1": 0.5', '"top1": 0.51'))
    assert fingerprint(a)["results.json"] != fingerprint(b)["results.json"]
    (b / "w.safetensors").write_bytes(b"\x00\x02")
    assert fingerprint(a)["w.safetensors"] != fingerprint(b)["w.safetensors"]
    (b / "w.safetensors").unlink()
    assert "w.safetensors" not in fingerprint(b)


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )  # fmt: skip


@pytest.mark.slow  # ~3 minutes: 18 subprocesses, each importing torch
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
    for ref in ("ref-forward-all", "ref-forward-cls", "ref-sae-all", "ref-sae-cls", "ref-forward-all-bf16"):
        assert cmds[ref]["rate"] > 0
    manifest = json.loads((work / "cache-all-bf16" / "manifest.json").read_text())
    assert "bf16_check" in manifest["checks"]  # the bf16 cache did run its forward under autocast
    table = (work / "rehearsal.md").read_text()
    assert all(f"| {name} | finished |" in table for name in COMMANDS)
    assert next(x for x in table.splitlines() if x.startswith("| train-model |")).endswith(
        "x time |"
    )  # vs cache + train

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

    # SIGKILL at a random moment, rerun as a user would, same results (a cache resumes, train takes --resume)
    killed = _run("--images", "64", *small, "--kill-test", "cache-all,train-all,interpret")
    assert killed.returncode == 0, killed.stdout[-3000:] + killed.stderr[-3000:]
    kill = json.loads((work / "rehearsal.json").read_text())["kill"]
    assert set(kill) == {"cache-all", "train-all", "interpret"} and all(
        k["identical"] and k["files"] > 0 for k in kill.values()
    )
    assert kill["train-all"]["rerun"][0].endswith("--resume")  # then without it if killed before a checkpoint
    assert "| train-all |" in (work / "rehearsal.md").read_text().split("--kill-test")[1]

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
