"""Full-size rehearsal (issue 23): the real commands, as a user types them, at ViT-B/32 shapes on real images.

Each command runs as a subprocess of the installed `sparsesteer` CLI on a random CLIP with the
vision-tower shapes of ViT-B/32 (`make_random_clip`, 224 px: the real preprocessing of the 32 px
CIFAR-10 JPEGs to 224) over N images of ../shared/data/cifar10-jpeg (a class-stratified `--limit N`
sample of `train-all`, 50,000 images; the test-side sets of `reproduce` take N/5 of `test`):

    model        make_random_clip (written once, not timed in the table)
    cache-cls    cache --hook head --tokens cls                       (the final CLS, projected)
    cache-all    cache --hook blocks.M.resid_post --tokens all        (all 50 tokens, middle block M)
    ref-forward-cls / ref-forward-all   a bare batched forward of the same model over the same images
                 (decode + preprocess in the loop, forward stopped at the hook; first --reference-images)
    train-all    train on cache-all, --n-latents L --k K --epochs 1
    train-cls    train on cache-cls, the same SAE settings
    ref-sae-all / ref-sae-cls   a bare loop of the trainer's step (`train_step`) over the same rows
                 (all rows in memory, no shuffle buffer, checkpoints or logs; first --reference-steps)
    train-model  train --model (streaming, no cache) on the same images and hook, --epochs 1
    evaluate     evaluate --suite default (train-all's SAE on cache-all)
    interpret    interpret (train-all's SAE on cache-all; defaults: top 10, 10 neighbours)
    browse       browse (the static site of interpret's statistics)
    steer        steer features (latent 0 set to 10 at the SAE's hook, on the N images)
    vs2          reproduce vs2 (all stages; --retriever clip: no DINOv2 offline)
    typographic  reproduce typographic, one sweep: block M, --epochs 1 of its SAE
    cache-all-bf16 / ref-forward-all-bf16   cache-all with the forward under bf16 autocast (`--bf16`,
                 stored as bfloat16), and the bare forward under the same autocast

`--kill-test NAMES` (comma list or all, after the commands finished) reruns each named command
into WORK/kill/, SIGKILLs it and its children at a random moment of its recorded wall time
(`--kill-seed`), reruns it as a user would (the same command, plus --resume for train; if that is
refused, as its message says, without --resume, then with --overwrite) and compares the sha256 of
its result files (JSON without timing keys and dates, paths normalised; logs, metrics streams and
checkpoints left out) with the uninterrupted run's. The outcome joins rehearsal.json ("kill") and the table.

Per command it records wall time, throughput (images/s; rows/s for training), the peak RSS of the
child and its descendants (`os.wait4`'s ru_maxrss), the bytes its output holds when it ends, and
the reference it is compared with. Everything lands in WORK/rehearsal.json, rewritten after each
command: a rerun with the same settings skips the commands recorded there as finished, and restarts
an unfinished one from an empty output (so every recorded time is one uninterrupted run).
WORK/rehearsal.md is the table. `--compare A.json B.json ...` prints the growth factors between
sizes (time, throughput, memory, bytes) for docs/scaling.md.

    python benchmarks/rehearsal.py --images 2500                     # WORK = runs/rehearsal/vit-b-32-2500
    python benchmarks/rehearsal.py --images 64 --preset tiny --latents 256 --k 8 --work /tmp/r   # smoke (CI)
    python benchmarks/rehearsal.py --compare runs/rehearsal/*/rehearsal.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
SPLIT, TEST_SPLIT = "train-all", "test"
PRESETS = ("ViT-B/32", "tiny")  # tiny: make_tiny_clip's defaults (3 blocks, d 32, 32 px) for the CI smoke run
FORMAT = 1


class RehearsalError(Exception):
    """Bad input of the rehearsal itself: one line on stderr, exit status 2."""


@dataclass
class Step:
    """One command of the rehearsal."""

    name: str
    argv: list[str]
    """Arguments after the program (`sparsesteer -q` or this script's --reference)."""
    out: Path
    """What the command writes (removed before an unfinished command is rerun; its bytes are counted)."""
    images: int
    rows: int = 0
    """Training rows per epoch (rows/s is the throughput of the train steps; 0: images/s)."""
    needs: tuple[str, ...] = ()
    reference: str | None = None
    """The step whose rate this command is compared with."""
    reference_of: bool = False
    """A reference itself: runs this script, reports its own rate (model load excluded)."""
    note: str = ""
    resume: tuple[str, ...] = ()
    """What a user adds to the same command to continue after it was killed (train: --resume)."""
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- settings
def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a recorded rehearsal must share with a rerun that continues it."""
    layers = 12 if args.preset == "ViT-B/32" else 3
    return {
        "format": FORMAT,
        "preset": args.preset,
        "images": args.images,
        "test_images": max(10, min(10_000, args.images // 5)),
        "latents": args.latents,
        "k": args.k,
        "middle_block": layers // 2 - 1,
        "data": str(Path(args.data).resolve()),
        "reference_images": min(args.images, args.reference_images),
        "reference_steps": args.reference_steps,
        "batch_size": 1024,
    }


def work_dir(args: argparse.Namespace) -> Path:
    if args.work:
        return Path(args.work)
    slug = args.preset.lower().replace("/", "-")
    return ROOT / "runs" / "rehearsal" / f"{slug}-{args.images}"


def plan(s: dict[str, Any], w: Path) -> list[Step]:
    """The commands in the order they run (each after what it reads)."""
    n, t, L, k = s["images"], s["test_images"], str(s["latents"]), str(s["k"])
    model, data = str(w / "model"), f"folder:{s['data']}"
    hook = f"blocks.{s['middle_block']}.resid_post"
    tokens = 50 if s["preset"] == "ViT-B/32" else 17
    images = ["--dataset", data, "--split", SPLIT, "--limit", str(n)]
    sae = ["--n-latents", L, "--k", k, "--epochs", "1", "--batch-size", str(s["batch_size"])]
    ref = ["--work", str(w)]
    # fmt: off
    return [
        Step("cache-all", ["cache", "--model", model, *images, "--hook", hook, "--tokens", "all",
                           "--out", str(w / "cache-all")], w / "cache-all", n, reference="ref-forward-all"),
        Step("ref-forward-all", ["--reference", "forward", "--hook", hook, *ref], w / "ref-forward-all",
             s["reference_images"], reference_of=True),
        Step("cache-cls", ["cache", "--model", model, *images, "--hook", "head", "--tokens", "cls",
                           "--out", str(w / "cache-cls")], w / "cache-cls", n, reference="ref-forward-cls"),
        Step("ref-forward-cls", ["--reference", "forward", "--hook", "head", *ref], w / "ref-forward-cls",
             s["reference_images"], reference_of=True),
        Step("train-cls", ["train", "--activations", str(w / "cache-cls"), *sae, "--out", str(w / "sae-cls")],
             w / "sae-cls", n, rows=n, needs=("cache-cls",), reference="ref-sae-cls", resume=("--resume",)),
        Step("ref-sae-cls", ["--reference", "sae", "--cache", "cache-cls", *ref], w / "ref-sae-cls", n, rows=n,
             needs=("cache-cls",), reference_of=True),
        Step("train-all", ["train", "--activations", str(w / "cache-all"), *sae, "--out", str(w / "sae-all")],
             w / "sae-all", n, rows=n * tokens, needs=("cache-all",), reference="ref-sae-all", resume=("--resume",)),
        Step("ref-sae-all", ["--reference", "sae", "--cache", "cache-all", *ref], w / "ref-sae-all", n,
             rows=n * tokens, needs=("cache-all",), reference_of=True),
        Step("train-model", ["train", "--model", model, *images, "--hook", hook, "--tokens", "all", *sae,
                             "--out", str(w / "sae-stream")], w / "sae-stream", n, rows=n * tokens,
             note="compare: cache-all + train-all", resume=("--resume",)),
        Step("evaluate", ["evaluate", "--sae", str(w / "sae-all"), "--activations", str(w / "cache-all"),
                          "--suite", "default", "--out", str(w / "eval")], w / "eval", n, rows=n * tokens,
             needs=("train-all",)),
        Step("interpret", ["interpret", "--sae", str(w / "sae-all"), "--activations", str(w / "cache-all"),
                           "--out", str(w / "stats")], w / "stats", n, rows=n * tokens, needs=("train-all",)),
        Step("browse", ["browse", "--stats", str(w / "stats"), "--out", str(w / "site")], w / "site", n,
             needs=("interpret",)),
        Step("steer", ["steer", "features", "--model", model, "--sae", str(w / "sae-all"), *images,
                       "--latent", "0", "--mode", "set", "--strength", "10", "--out", str(w / "steer")],
             w / "steer", n, needs=("train-all",)),
        Step("vs2", ["reproduce", "vs2", "--model", model, "--dataset", data, "--train-split", SPLIT,
                     "--test-split", TEST_SPLIT, "--limit-train", str(n), "--limit-test", str(t),
                     "--retriever", "clip", "--out", str(w / "vs2")], w / "vs2", n + t,
             note=f"{n} train + {t} test images"),
        Step("typographic", ["reproduce", "typographic", "--model", model, "--dataset", f"typo:{data}",
                             "--sae-split", SPLIT, "--select-split", SPLIT, "--test-split", TEST_SPLIT,
                             "--limit-sae", str(n), "--n-select", str(t), "--n-test", str(t),
                             "--blocks", str(s["middle_block"]), "--k", k,
                             "--expansion", str(s["latents"] // (768 if s["preset"] == "ViT-B/32" else 32)),
                             "--sae-epochs", "1", "--out", str(w / "typo")], w / "typo", n + 2 * t,
             note=f"{n} SAE + {t} select + {t} test images"),
        Step("cache-all-bf16", ["cache", "--model", model, *images, "--hook", hook, "--tokens", "all", "--bf16",
                                "--dtype", "bfloat16", "--out", str(w / "cache-all-bf16")], w / "cache-all-bf16", n,
             reference="ref-forward-all-bf16"),
        Step("ref-forward-all-bf16", ["--reference", "forward", "--hook", hook, "--bf16", *ref],
             w / "ref-forward-all-bf16", s["reference_images"], reference_of=True),
    ]
    # fmt: on


# ------------------------------------------------------------------------------------------ records
def load_record(w: Path, s: dict[str, Any]) -> dict[str, Any]:
    path = w / "rehearsal.json"
    if not path.exists():
        return {"settings": s, "commands": {}}
    rec = json.loads(path.read_text())
    if rec.get("settings") != s:
        diff = sorted(key for key in s if rec.get("settings", {}).get(key) != s[key])
        raise RehearsalError(
            f"{path} records a rehearsal with other settings ({', '.join(diff)}): give another --work, or remove it"
        )
    return rec


def save_record(w: Path, rec: dict[str, Any]) -> None:
    import resource

    # a child's ru_maxrss may count the forked copy of this process before its exec: this process's own
    # peak is that floor, recorded beside the commands' figures
    rec["parent_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    tmp = w / "rehearsal.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp, w / "rehearsal.json")
    (w / "rehearsal.md").write_text(markdown(rec))


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def child_env() -> dict[str, str]:
    env = {**os.environ, "SPARSESTEER_QUIET": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["HF_DATASETS_OFFLINE"] = "1"
    return env


def sparsesteer_exe() -> list[str]:
    """The installed console script beside this interpreter (what a user types), else `python -m sparsesteer`."""
    exe = Path(sys.executable).parent / "sparsesteer"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsesteer"]


def run_step(step: Step, w: Path) -> dict[str, Any]:
    """Run one step in a child process: wall time, peak RSS (the child and its waited-for descendants:
    wait4's ru_maxrss), bytes of its output, exit status and the last lines of its stderr."""
    if step.out.exists():
        shutil.rmtree(step.out) if step.out.is_dir() else step.out.unlink()
    argv = [sys.executable, __file__, *step.argv] if step.reference_of else [*sparsesteer_exe(), "-q", *step.argv]
    log = w / "logs" / f"{step.name}.log"
    log.parent.mkdir(exist_ok=True)
    started = time.time()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=w)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    lines = log.read_text(errors="replace").splitlines()
    rec: dict[str, Any] = {
        "argv": ["sparsesteer", *step.argv] if not step.reference_of else ["rehearsal.py", *step.argv],
        "started": started,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "bytes": dir_bytes(step.out) if step.out.exists() else 0,
        "images": step.images,
        "rows": step.rows,
        "rc": proc.returncode,
        "status": "finished" if proc.returncode == 0 else "failed",
        "reference": step.reference,
        "note": step.note,
    }
    rec["images_per_s"] = round(step.images / wall, 3)
    if step.rows:
        rec["rows_per_s"] = round(step.rows / wall, 2)
    if step.reference_of and proc.returncode == 0:
        own = json.loads(lines[-1])  # the reference's own rate: model load and data setup excluded
        rec.update(own)
    if proc.returncode != 0:
        rec["error"] = "\n".join(lines[-5:])
    return rec


def rehearse(args: argparse.Namespace) -> int:
    s = settings(args)
    if not (Path(s["data"]) / SPLIT).is_dir():
        raise RehearsalError(f"--data {args.data}: no {SPLIT}/ folder of class folders of JPEGs there")
    w = work_dir(args)
    w.mkdir(parents=True, exist_ok=True)
    rec = load_record(w, s)
    steps = plan(s, w)
    names = [st.name for st in steps]
    only = set(args.only.split(",")) if args.only else set(names)
    if only - set(names):
        raise RehearsalError(f"--only: unknown command(s) {sorted(only - set(names))}; known: {', '.join(names)}")
    save_record(w, rec)
    if not (w / "model" / "config.json").exists():  # in a child: this process stays small (see run_step)
        subprocess.run([sys.executable, __file__, "--make-model", "--work", str(w)], check=True, env=child_env())
    print(f"rehearsal of {s['images']} images ({s['preset']}, {s['latents']} latents, k {s['k']}) in {w}", flush=True)
    failed = 0
    for step in steps:
        done = rec["commands"].get(step.name, {})
        if step.name not in only:
            continue
        if done.get("status") == "finished":
            print(f"  {step.name}: finished earlier ({done['wall_s']:.1f} s), skipped", flush=True)
            continue
        blocked = [d for d in step.needs if rec["commands"].get(d, {}).get("status") != "finished"]
        if blocked:
            print(f"  {step.name}: not run, needs {', '.join(blocked)}", flush=True)
            failed += 1
            continue
        print(f"  {step.name}: running ...", flush=True)
        rec["commands"][step.name] = r = run_step(step, w)
        save_record(w, rec)
        if r["status"] == "finished":
            print(f"  {step.name}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
        else:
            failed += 1
            print(f"  {step.name}: FAILED (exit {r['rc']}), see {w / 'logs' / (step.name + '.log')}", flush=True)
    save_record(w, rec)
    print(markdown(rec))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------- kill test
IGNORED_KEYS = (
    "time",
    "timing",
    "seconds",
    "wall",
    "elapsed",
    "started",
    "finished_at",
    "date",
    "duration",
    "rss",
    "per_s",
    "created",
    "updated",
    "_s",
)
"""JSON keys (substrings, or the suffix _s) that record when or how long, not what: left out of the
comparison, as are string values that are ISO dates."""
ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def _normalised(path: Path, out: Path) -> bytes:
    """A file's bytes for the comparison: JSON without timing keys, every text with its own output
    directory written as OUT (the killed run's copy lives elsewhere)."""
    data = path.read_bytes()
    if path.suffix not in (".json", ".js", ".md", ".html", ".txt", ".csv"):
        return data
    text = data.decode(errors="replace").replace(str(out.resolve()), "OUT").replace(str(out), "OUT")
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except ValueError:
            return text.encode()

        def clean(o: Any) -> Any:
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items() if not any(x in k.lower() for x in IGNORED_KEYS[:-1])
                        and not k.endswith(IGNORED_KEYS[-1])}  # fmt: skip
            if isinstance(o, str) and ISO_DATE.match(o):
                return "DATE"
            return [clean(v) for v in o] if isinstance(o, list) else o

        return json.dumps(clean(obj), sort_keys=True).encode()
    return text.encode()


def fingerprint(out: Path) -> dict[str, str]:
    """sha256 of every result file under `out` (normalised, see `_normalised`); logs, metrics streams
    and training checkpoints (state/) are not results."""
    import hashlib

    if out.is_file():
        return {out.name: hashlib.sha256(_normalised(out, out)).hexdigest()}
    prints = {}
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out)
        if not f.is_file() or f.is_symlink() or "state" in rel.parts or f.suffix in (".log", ".jsonl", ".tmp"):
            continue
        prints[str(rel)] = hashlib.sha256(_normalised(f, out)).hexdigest()
    return prints


def kill_test(step: Step, w: Path, done: dict[str, Any], rng: Any) -> dict[str, Any]:
    """Run `step` into WORK/kill/NAME, SIGKILL it (with any children) at a random moment of its
    recorded wall time, rerun it as a user would (the same command, plus `step.resume`; with
    --overwrite only if refused, see below), and compare its results with the uninterrupted run's."""
    import signal

    out = w / "kill" / step.out.name
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(out) if a == str(step.out) else a for a in step.argv]
    cmd = [*sparsesteer_exe(), "-q", *argv]
    log = w / "logs" / f"kill-{step.name}.log"
    at = float(rng.uniform(0.1, 0.9)) * done["wall_s"]
    with open(log, "w") as f:
        f.write(" ".join(cmd) + f"\n(SIGKILL after {at:.1f} s)\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=w, start_new_session=True)
        try:
            proc.wait(timeout=at)
            killed = False  # it finished first: a faster run than the recorded one
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    rec: dict[str, Any] = {"kill_after_s": round(at, 1), "killed": killed, "rerun": []}
    # a user reruns the command (train: with --resume); if that is refused (train killed before its first
    # checkpoint: nothing to resume), as the message says, without --resume, then with --overwrite
    tries = [list(step.resume)] + ([[]] if step.resume else []) + [["--overwrite"]]
    t0 = time.perf_counter()
    for extra in tries:
        rec["rerun"].append(" ".join(["sparsesteer", *argv, *extra]))
        again = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=child_env(), cwd=w)
        if again.returncode != 2:
            break
        rec.setdefault("refused", []).append((again.stderr.strip().splitlines() or [""])[-1][:300])
    rec["rerun_s"] = round(time.perf_counter() - t0, 1)
    rec["rc"] = again.returncode
    if again.returncode:
        rec["error"] = "\n".join(again.stderr.strip().splitlines()[-5:])
        rec["identical"] = False
        return rec
    a, b = fingerprint(step.out), fingerprint(out)
    rec["files"] = len(a)
    rec["differ"] = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    rec["identical"] = not rec["differ"]
    return rec


def kill_tests(args: argparse.Namespace) -> int:
    """--kill-test NAMES: `kill_test` each finished command, recorded in rehearsal.json ("kill")."""
    import numpy as np

    s = settings(args)
    w = work_dir(args)
    rec = load_record(w, s)
    steps = {st.name: st for st in plan(s, w) if not st.reference_of}
    names = list(steps) if args.kill_test == "all" else args.kill_test.split(",")
    if set(names) - set(steps):
        raise RehearsalError(
            f"--kill-test: unknown command(s) {sorted(set(names) - set(steps))}; known: {', '.join(steps)}"
        )
    rng = np.random.default_rng(args.kill_seed)
    bad = 0
    for name in names:
        done = rec["commands"].get(name, {})
        if done.get("status") != "finished":
            print(f"  kill {name}: not run, the command has no finished run to compare with", flush=True)
            bad += 1
            continue
        print(f"  kill {name}: running ...", flush=True)
        r = kill_test(steps[name], w, done, rng)
        rec.setdefault("kill", {})[name] = r
        save_record(w, rec)
        bad += not r["identical"]
        what = (
            "identical" if r["identical"] else f"DIFFERENT ({', '.join(r.get('differ', [])[:5]) or r.get('error', '')})"
        )
        how = "killed" if r["killed"] else "finished before the kill"
        print(f"  kill {name}: {how} at {r['kill_after_s']} s, rerun {r['rerun_s']} s: {what}"
              + (f"; refused first: {' / '.join(r['refused'])}" if "refused" in r else ""), flush=True)  # fmt: skip
    return 1 if bad else 0


def make_model(w: Path) -> None:
    import transformers

    from sparsesteer.models.tiny import make_random_clip, make_tiny_clip

    s, out = json.loads((w / "rehearsal.json").read_text())["settings"], w / "model"
    transformers.logging.set_verbosity_error()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if s["preset"] == "tiny":
        make_tiny_clip(tmp)
    else:
        make_random_clip(tmp, s["preset"])
    os.replace(tmp, out)


# --------------------------------------------------------------------------------------- references
def reference_forward(args: argparse.Namespace) -> dict[str, Any]:
    """A bare batched forward over the first reference_images images of the same --limit sample:
    decode and preprocess in the loop, the vision tower run up to the hook (head: the whole tower
    and the projection; `--bf16`: under bf16 autocast, as `cache --bf16`), no hooks, no writing.
    Timed after one warm-up batch."""
    import torch

    from sparsesteer.data import limit_dataset, open_dataset
    from sparsesteer.models import load_backbone

    w = Path(args.work)
    s = json.loads((w / "rehearsal.json").read_text())["settings"]
    ds = limit_dataset(open_dataset(f"folder:{s['data']}", SPLIT), s["images"], 0)
    n, batch = s["reference_images"], 64
    bb = load_backbone(w / "model")
    model = bb.model
    vision = model.vision_model
    if args.hook != "head":
        block = int(args.hook.split(".")[1])
        vision.encoder.layers = vision.encoder.layers[: block + 1]  # resid_post of the block = the last output

    def forward(pixels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
            if args.hook == "head":
                return model.get_image_features(pixel_values=pixels)
            return vision(pixel_values=pixels).last_hidden_state

    with torch.inference_mode():
        forward(torch.from_numpy(bb.preprocessor.batch([ds[i].image for i in range(min(batch, n))])))
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            pixels = torch.from_numpy(bb.preprocessor.batch([ds[i].image for i in range(start, min(start + batch, n))]))
            forward(pixels)
        dt = time.perf_counter() - t0
    return {"measured_images": n, "measured_s": round(dt, 3), "rate": round(n / dt, 3), "rate_unit": "images/s"}


def reference_sae(args: argparse.Namespace) -> dict[str, Any]:
    """A bare loop of the trainer's own step (`train_step`, same SAE and batch size) over the cache's
    rows held in memory in order: no shuffle buffer, checkpoints, logging or checks. Timed after
    one warm-up step, over at most reference_steps steps."""
    import torch

    from sparsesteer.activations.loader import open_source
    from sparsesteer.sae import SAEConfig
    from sparsesteer.sae.train import Member, TrainConfig, train_step

    w = Path(args.work)
    s = json.loads((w / "rehearsal.json").read_text())["settings"]
    src = open_source(w / args.cache)
    x = src.read(0, src.n_rows).to(torch.float32)
    device = torch.device("cpu")
    cfg = TrainConfig(batch_size=s["batch_size"], device="cpu")
    torch.manual_seed(0)
    m = Member(SAEConfig(arch="topk", d_in=x.shape[1], n_latents=s["latents"], k=s["k"]), device, cfg, n_classes=1)
    b = s["batch_size"]
    batches = [x[i : i + b] for i in range(0, x.shape[0], b)][: s["reference_steps"] + 1]
    lr = cfg.peak_lr(s["latents"])
    train_step(m, batches[0], None, lr, cfg, device)
    t0 = time.perf_counter()
    rows = 0
    for xb in batches[1:] or batches:
        train_step(m, xb, None, lr, cfg, device)
        rows += xb.shape[0]
    dt = time.perf_counter() - t0
    return {"measured_rows": rows, "measured_s": round(dt, 3), "rate": round(rows / dt, 2), "rate_unit": "rows/s"}


# ------------------------------------------------------------------------------------------- tables
def _rate(r: dict[str, Any]) -> tuple[float, str]:
    if r.get("rows"):
        return r["rows_per_s"], "rows/s"
    return r["images_per_s"], "images/s"


def markdown(rec: dict[str, Any]) -> str:
    s, cmds = rec["settings"], rec["commands"]
    lines = [
        f"Rehearsal: {s['images']} images ({s['preset']}, {s['latents']} latents, k {s['k']}, "
        f"block {s['middle_block']}, batch {s['batch_size']} rows). This script's own peak RSS: "
        f"{rec.get('parent_peak_rss_mib', '?')} MiB (a child's peak RSS may count the forked copy of it).",
        "",
        "| command | status | images | rows | wall (s) | throughput | peak RSS (MiB) | bytes written "
        "| reference | reference rate | command / reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in cmds.items():
        rate, unit = _rate(r)
        ref = cmds.get(r.get("reference") or "", {})
        ref_rate = ref.get("rate")
        ratio = f"{rate / ref_rate:.2f}x" if ref_rate and r["status"] == "finished" else ""
        parts = [cmds.get(n) for n in r.get("note", "").removeprefix("compare: ").split(" + ")]
        if (
            r.get("note", "").startswith("compare: ")
            and r["status"] == "finished"
            and all(c and c["status"] == "finished" for c in parts)
        ):  # a sum of commands' wall times (train --model against cache + train): a ratio of times
            ratio = f"{r['wall_s'] / sum(c['wall_s'] for c in parts if c):.2f}x time"
        lines.append(
            f"| {name} | {r['status']} | {r['images']:,} | {r['rows']:,} | {r['wall_s']:.1f} | {rate:,.2f} {unit} "
            f"| {r['peak_rss_mib']:,.0f} | {r['bytes']:,} | {r.get('reference') or r.get('note', '')} "
            f"| {f'{ref_rate:,.2f} ' + ref['rate_unit'] if ref_rate else ''} | {ratio} |"
        )
    if rec.get("kill"):
        lines += ["", "SIGKILL at a random moment, then the same command rerun (`--kill-test`):", "",
                  "| command | killed after (s) | rerun | rerun (s) | result files | identical to the uninterrupted run |",
                  "|---|---:|---|---:|---:|---|"]  # fmt: skip
        for name, k in rec["kill"].items():
            how = " then ".join(f"`{c}`" for c in k["rerun"]) + (
                f" (refused: {' / '.join(k['refused'])})" if "refused" in k else ""
            )
            same = "yes" if k["identical"] else "NO: " + (", ".join(k.get("differ", [])[:5]) or k.get("error", ""))
            when = f"{k['kill_after_s']}" if k["killed"] else f"{k['kill_after_s']} (finished first)"
            lines.append(f"| {name} | {when} | {how} | {k['rerun_s']} | {k.get('files', 0)} | {same} |")
    return "\n".join(lines) + "\n"


def compare(paths: list[str]) -> str:
    """Growth factors between consecutive sizes: time, throughput, peak RSS, bytes, against the image ratio."""
    recs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["settings"]["images"])
    if len(recs) < 2:
        raise RehearsalError("--compare needs the rehearsal.json of at least two sizes")
    sizes = [r["settings"]["images"] for r in recs]
    sizing = ("images", "test_images", "reference_images")
    for r in recs[1:]:
        other = sorted(k for k in r["settings"] if k not in sizing and r["settings"][k] != recs[0]["settings"].get(k))
        if other:
            raise RehearsalError(f"--compare: the rehearsals differ in more than their size ({', '.join(other)})")
    if len(set(sizes)) != len(sizes):
        raise RehearsalError(f"--compare: two files record the same size ({sizes})")
    names = list(dict.fromkeys(n for r in recs for n in r["commands"]))
    out = ["| command | " + " | ".join(f"wall s ({n:,})" for n in sizes) + " | "
           + " | ".join(f"growth {a:,}->{b:,} (images x{b / a:.2f}): time, RSS, bytes" for a, b in zip(sizes, sizes[1:]))
           + " |"]  # fmt: skip
    out.append("|---|" + "---:|" * len(sizes) + "---|" * (len(sizes) - 1))
    for name in names:
        row = [r["commands"].get(name) for r in recs]
        ok = [c if c and c["status"] == "finished" else None for c in row]
        cells = [f"{c['wall_s']:.1f}" if c else "not run" for c in ok]
        growth = []
        for a, b in zip(ok, ok[1:]):
            if a and b:
                growth.append(
                    f"{b['wall_s'] / a['wall_s']:.2f}x, {b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x, "
                    + (f"{b['bytes'] / a['bytes']:.2f}x" if a["bytes"] else "-")
                )
            else:
                growth.append("-")
        out.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(growth) + " |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, help="N: images of the train-all sample (at most 50,000)")
    p.add_argument("--preset", default="ViT-B/32", choices=PRESETS, help="model shapes (tiny: the CI smoke run)")
    p.add_argument("--latents", type=int, default=49_152, help="SAE latents")
    p.add_argument("--k", type=int, default=64, help="SAE k")
    p.add_argument("--data", default=str(DATA), help="CIFAR-10 JPEG folder (train-all/ and test/ of class folders)")
    p.add_argument("--work", help="work directory (default runs/rehearsal/PRESET-N); rerun to continue")
    p.add_argument("--only", help="comma list of commands to run (the others are left as recorded)")
    p.add_argument("--reference-images", type=int, default=256, help="images timed by the bare forward")
    p.add_argument("--reference-steps", type=int, default=20, help="steps timed by the bare SAE loop")
    p.add_argument("--compare", nargs="+", metavar="JSON", help="print growth factors between these rehearsals")
    p.add_argument(
        "--kill-test",
        metavar="NAMES",
        help="SIGKILL these finished commands (comma list, or all) at a "
        "random moment in a copy, rerun, and compare with the uninterrupted results",
    )
    p.add_argument("--kill-seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--make-model", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reference", choices=("forward", "sae"), help=argparse.SUPPRESS)
    p.add_argument("--hook", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.make_model:
            make_model(Path(args.work))
            return 0
        if args.reference:
            res = reference_forward(args) if args.reference == "forward" else reference_sae(args)
            print(json.dumps(res))
            return 0
        if args.compare:
            print(compare(args.compare), end="")
            return 0
        if args.images is None or not 1 <= args.images <= 50_000:
            raise RehearsalError(f"--images must be 1..50,000 (the {SPLIT} split), got {args.images}")
        if args.latents < 1 or not 1 <= args.k <= args.latents:
            raise RehearsalError(f"--k must be 1..--latents, got k {args.k}, latents {args.latents}")
        return kill_tests(args) if args.kill_test else rehearse(args)
    except RehearsalError as e:
        print(f"rehearsal: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
