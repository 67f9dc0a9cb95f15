"""One output policy (utils/outputs.py): every command that writes an --out refuses a folder holding
something else, before any work, leaving it byte for byte as it was; --overwrite replaces it; a
command's own run there is continued (cache, reproduce, an interrupted interpret) or refused with
how to resume it (train)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import make_activation_cache, make_folder_dataset

from sparsesteer.cli import main
from sparsesteer.utils.errors import SparsesteerError

MISSING = "/nonexistent-input"

# Each command's inputs do not exist (a hub id that is not cached, paths that are not there): had the
# output check not come first, the error would name the model, the SAE or the data instead.
COMMANDS = {
    "cache": ["cache", "--model", "nope/nope", "--dataset", "folder:{data}", "--split", "train",
              "--hook", "blocks.0.resid_post", "--tokens", "cls"],
    "train": ["train", "--activations", MISSING],
    "export": ["export", "--sae", MISSING, "--format", "saelens"],
    "zeroshot": ["zeroshot", "--model", "nope/nope", "--dataset", "folder:{data}", "--split", "train"],
    "steer features": ["steer", "features", "--model", "nope/nope", "--sae", MISSING, "--latent", "0",
                       "--strength", "1", "--dataset", "folder:{data}", "--split", "train"],
    "steer neurons": ["steer", "neurons", "--model", "nope/nope", "--hook", "blocks.0.resid_post", "--neuron", "0",
                      "--strength", "1", "--dataset", "folder:{data}", "--split", "train"],
    "steer vs2": ["steer", "vs2", "--model", "nope/nope", "--sae", MISSING, "--activations", MISSING,
                  "--lam", "1", "--gamma", "2"],
    "steer vs2pp": ["steer", "vs2pp", "--model", "nope/nope", "--sae", MISSING, "--activations", MISSING,
                    "--database", MISSING],
    "interpret": ["interpret", "--sae", MISSING, "--activations", MISSING],
    "browse": ["browse", "--stats", "{stats}"],
    "reproduce vs2": ["reproduce", "vs2", "--model", "nope/nope", "--dataset", "folder:{data}"],
    "reproduce sparsity": ["reproduce", "sparsity", "--model", "nope/nope", "--dataset", "folder:{data}"],
    "reproduce steerability": ["reproduce", "steerability", "--model", "nope/nope", "--sae", MISSING,
                               "--dataset", "folder:{data}"],
    "reproduce disentangle": ["reproduce", "disentangle", "--model", "nope/nope", "--task", "celeba",
                              "--data-root", MISSING],
    "reproduce typographic": ["reproduce", "typographic", "--model", "nope/nope", "--dataset", "typo:folder:{data}"],
}  # fmt: skip

# what each command continues (the "holds no ..." of its refusal); the others own nothing there
OWN = {
    "cache": "activation cache",
    "train": "training run to resume",
    "interpret": "interrupted interpret run",
    **{
        f"reproduce {e}": f"reproduce {e} run"
        for e in ("vs2", "sparsity", "steerability", "disentangle", "typographic")
    },
}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` (hidden ones too): files by their bytes, folders as None."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def foreign(path: Path) -> Path:
    """A folder of someone's results: a file, a hidden file and a subfolder."""
    (path / "mine").mkdir(parents=True)
    (path / "notes.txt").write_text("keep me")
    (path / ".hidden").write_text("me too")
    (path / "mine" / "table.csv").write_text("a,b\n1,2\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, browser_run):
    root = tmp_path_factory.mktemp("inputs")
    return {"data": str(make_folder_dataset(root / "data", (2, 2), split="train")), "stats": str(browser_run[3])}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_foreign_folder_is_refused_and_left_untouched(command, inputs, tmp_path, capsys):
    out = foreign(tmp_path / "results")
    before = snapshot(out)
    argv = [a.format(**inputs) for a in COMMANDS[command]] + ["--out", str(out)]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--out {out} is not empty (it holds .hidden, mine, notes.txt)" in err, err
    assert "--overwrite" in err
    assert (f" and holds no {OWN[command]}:" if command in OWN else "): choose another --out") in err, err
    assert snapshot(out) == before
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("command", ["cache", "interpret", "steer features"])
def test_overwrite_replaces_a_foreign_folder(command, inputs, tmp_path, capsys):
    """--overwrite empties the folder before the work: the inputs that do not exist are the next error."""
    out = foreign(tmp_path / "results")
    argv = [a.format(**inputs) for a in COMMANDS[command]] + ["--out", str(out), "--overwrite"]
    assert main(["-q", *argv]) == 2
    assert "is not empty" not in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_overwrite_never_deletes_an_input(tmp_path, capsys):
    out = tmp_path / "run"
    sae = out / "sae"
    sae.mkdir(parents=True)
    (sae / "cfg.json").write_text("{}")
    argv = ["-q", "interpret", "--sae", str(sae), "--activations", MISSING, "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--overwrite would delete {sae}, which this command reads and which lies in --out {out}" in err
    assert (sae / "cfg.json").read_text() == "{}"


def test_cache_resumes_its_own_cache_and_a_refused_folder_gets_no_lock(tmp_path, tiny_clip_dir, capsys):
    data = make_folder_dataset(tmp_path / "data", (2, 2), split="train")
    args = ["-q", "cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train",
            "--hook", "blocks.1.resid_post", "--tokens", "cls", "--workers", "0", "--out"]  # fmt: skip
    cache = tmp_path / "cache"
    assert main([*args, str(cache)]) == 0
    manifest = (cache / "manifest.json").read_bytes()
    assert main([*args, str(cache)]) == 0  # its own cache: resumed (complete: nothing to do)
    assert (cache / "manifest.json").read_bytes() == manifest
    capsys.readouterr()
    other = foreign(tmp_path / "other")
    assert main([*args, str(other)]) == 2  # a real model this time: refused before it loads
    assert "holds no activation cache" in capsys.readouterr().err
    assert not (other / ".lock").exists()


def test_cache_writer_refusing_a_folder_leaves_no_lock_file(tmp_path):
    """The library path: CacheWriter.open checks before it takes the lock, and a cache of other
    settings (copied without its lock) is refused without gaining one."""
    from sparsesteer.activations.cache import CacheSettings, CacheWriter

    settings = CacheSettings(
        hooks=("blocks.0.resid_post",), d={"blocks.0.resid_post": 4}, tokens="cls", token_positions=(0,),
        cls_position=0, n_images=2, dtype="float32", model={"id": "m", "revision": "r", "arch": "clip"},
        dataset={"name": "unit"}, split="train",
    )  # fmt: skip
    other = foreign(tmp_path / "other")
    with pytest.raises(SparsesteerError, match="holds no activation cache"):
        CacheWriter.open(other, settings)
    assert not (other / ".lock").exists()
    copy = tmp_path / "copy"
    shutil.copytree(make_activation_cache(tmp_path / "acts", n_images=100, d=4), copy)
    (copy / ".lock").unlink()
    with pytest.raises(SparsesteerError, match="cache of different settings"):
        CacheWriter.open(copy, settings)
    assert not (copy / ".lock").exists()


def test_interpret_refuses_finished_statistics_and_continues_an_interrupted_run(browser_run, tmp_path, capsys):
    """The lost concept lens: rerunning interpret into a folder of finished statistics replaced them.
    A run killed before stats.json (written last) is continued: the SAE is the next check."""
    stats = tmp_path / "stats"
    shutil.copytree(browser_run[3], stats)
    before = snapshot(stats)
    argv = ["-q", "interpret", "--sae", MISSING, "--activations", MISSING, "--out", str(stats)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stats.json" in err and "--overwrite" in err and snapshot(stats) == before
    (stats / "stats.json").unlink()  # killed after stats.safetensors and the plots
    assert main(argv) == 2
    assert "SAE directory not found" in capsys.readouterr().err


def test_interpret_writes_stats_json_last(browser_run, tmp_path, monkeypatch):
    """stats.json marks a finished run, so nothing may be written after it (plots, montages)."""
    from sparsesteer.interpret import store

    tmp, data, sae_dir, stats_dir, clip = browser_run
    cache = tmp / "cache"
    written = []
    real = store.save_stats

    def record(stats, out):
        written.append(sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.png")))
        return real(stats, out)

    monkeypatch.setattr(store, "save_stats", record)
    argv = ["-q", "interpret", "--sae", str(sae_dir), "--activations", str(cache), "--top-n", "2", "--montages", "2",
            "--device", "cpu", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    assert written and "plots/frequency.png" in written[0] and any(p.startswith("montages/") for p in written[0])


def test_train_stopped_before_its_first_checkpoint_is_resumable(tmp_path, capsys):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32))
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")  # what a run killed before its first checkpoint leaves
    (out / "metrics.jsonl").write_text("")
    argv = ["-q", "train", "--activations", str(rows), "--k", "2", "--n-latents", "16", "--steps", "4",
            "--batch-size", "32", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint: pass --resume to run it again from step 0" in err
    assert main([*argv, "--resume"]) == 0
    assert (out / "cfg.json").is_file() and json.loads((out / "train_config.json").read_text())
    assert main(argv) == 2
    assert "already holds a finished training run (its SAE is saved; nothing to resume)" in capsys.readouterr().err


def test_reproduce_continues_its_own_run_and_refuses_another_experiments(tmp_path, inputs, capsys):
    from sparsesteer.experiments.vs2.config import VS2Config

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({f: None for f in VS2Config.__dataclass_fields__}))
    argv = ["reproduce", "sparsity", "--model", "nope/nope", "--dataset", f"folder:{inputs['data']}", "--out", str(out)]
    assert main(["-q", *argv]) == 2
    assert "holds no reproduce sparsity run" in capsys.readouterr().err
    argv[1] = "vs2"
    assert main(["-q", *argv]) == 2  # its own run: continued, so the missing model is the error
    assert "is not empty" not in capsys.readouterr().err


def test_evaluate_refuses_to_replace_an_earlier_evaluation(tmp_path, capsys):
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "eval.json").write_text("{}")
    argv = ["-q", "evaluate", "--sae", str(sae), "--activations", MISSING]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {sae / 'eval.json'}: {sae} already holds eval.json (earlier results)" in err
    assert "--overwrite" in err and (sae / "eval.json").read_text() == "{}"
    assert main([*argv, "--suite", "default", "--out", str(sae / "eval.json")]) == 2  # judge.json is new
    assert "earlier results" not in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 2  # replaced as written: the next error is the SAE's
    assert "earlier results" not in capsys.readouterr().err


def test_claim_unit(tmp_path, monkeypatch):
    from sparsesteer.utils import outputs

    assert outputs.claim(tmp_path / "new") == "new" and not (tmp_path / "new").exists()
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".stats.json.abcd1234.tmp").write_text("half")  # a killed write's temporary file counts as empty
    assert outputs.claim(killed) == "new"
    own = outputs.OwnRun("a run of mine", lambda p: (p / "mine.json").is_file())
    d = foreign(tmp_path / "d")
    (d / "mine.json").write_text("{}")
    assert outputs.claim(d, own=own) == "own"
    refusing = outputs.OwnRun("a run of mine", own.holds, refusal=lambda p: f"{p}: say how to resume")
    with pytest.raises(SparsesteerError, match="say how to resume"):
        outputs.claim(d, own=refusing)
    assert outputs.claim(d, overwrite=True, clear=False) == "replace" and (d / "mine.json").exists()
    assert outputs.claim(d, overwrite=True) == "replace" and list(d.iterdir()) == []
    foreign(d)
    (d / "cwd").mkdir()
    monkeypatch.chdir(d / "cwd")
    with pytest.raises(SparsesteerError, match="--overwrite would delete everything in"):
        outputs.claim(d, overwrite=True)  # it holds the current directory
