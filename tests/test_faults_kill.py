"""SIGKILL at a seeded point during each long-running command, then the same command again (train:
with --resume): the output directory ends identical to an uninterrupted run's (arrays, JSON without
wall-clock fields, Markdown tables, plots' pixels; no temporary file left behind).

Each command runs in a real subprocess, in the same directory as its reference run (so recorded
paths and settings hashes agree). The kill point is the k-th file-system entry the reference run
created (k drawn from the seed) plus 0-50 ms: it falls anywhere from the first shard to the last
report. One seed per command by default (about 4 minutes of CPU in all); more with
SPARSESTEER_FAULT_SEEDS=0,1,2,3 (see docs/errors.md, "Interrupted runs").
"""

from __future__ import annotations

import os
import shutil

import pytest
from faults import COMMANDS, build_workspace, count_entries, differences, kill_and_resume, run, snapshot

SEEDS = [int(s) for s in os.environ.get("SPARSESTEER_FAULT_SEEDS", "0").split(",") if s.strip()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip_dir):
    return build_workspace(tmp_path_factory.mktemp("faults") / "ws", tiny_clip_dir)


@pytest.fixture(scope="module")
def references(workspace, tmp_path_factory):
    """name -> (out directory, snapshot, entry count) of one uninterrupted subprocess run, made on
    first use; the directory is emptied again for the runs that get killed."""
    done: dict[str, tuple] = {}
    base = tmp_path_factory.mktemp("fault-runs")

    def get(name: str):
        if name not in done:
            out = base / name
            run(COMMANDS[name].argv(workspace, out))
            done[name] = (out, snapshot(out), count_entries(out))
            shutil.rmtree(out)
        return done[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigkill_then_rerun_gives_the_uninterrupted_outputs(name, seed, workspace, references):
    out, ref, n_entries = references(name)
    log = kill_and_resume(name, workspace, out, seed, n_entries)
    print(f"{name}, seed {seed}: {'; '.join(log)}")
    diffs = differences(ref, snapshot(out))
    shutil.rmtree(out)
    assert not diffs, f"{name}, seed {seed} ({'; '.join(log)}): {diffs}"
