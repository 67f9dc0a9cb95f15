"""`sparsesteer export` checked by the peers' own loaders: each export is loaded with SAELens'
`SAE.load_from_disk` and sparsify's `SparseCoder.load_from_disk` (in a separate venv), and both
sides encode the same rows.

The SAEs are trained here with `sparsesteer train` on a small planted-dictionary `.npy` (so they
record no hook, the case that needs `export --hook`), one per architecture (JumpReLU, which
sparsesteer does not train: the ReLU SAE with random thresholds in [0, 1)), then exported with
`sparsesteer export`. Cases: TopK, BatchTopK, ReLU and JumpReLU to SAELens with --hook; TopK to
sparsify; that sparsify export read back and exported to SAELens (converted, no hook: --hook); a
TopK SAE whose provenance names its hook (no --hook); a hookless one without --hook (refused). Then
hand-made breakages of good exports (`BROKEN`: a null hook_name, as export wrote before issue 20;
a training-only architecture; a missing field or tensor; a transposed matrix), which the peer's
loader must refuse and so must our check (`formats/peers.py`): the two agree on every row.

Printed: a Markdown table with, per case, whether the peer's loader took it, whether our
requirements check (`check_peer_layout`) passed it, the peer's mean number of active latents per
row, the largest |code difference| and the share of rows whose active latent set is the same on
both sides.

The peers' venv is made when missing (`--venv`): torch==2.13.0 first (this machine's CPU wheel, so
no CUDA torch is pulled), then sae-lens and eai-sparsify with torch pinned by a constraint. Run
from the repository root with the project's venv:

    python benchmarks/export_peers.py [--venv /tmp/sparsesteer-export-peers] [--rows 512]

Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sparsesteer.cli import main as cli
from sparsesteer.sae import SparseAutoencoder, build
from sparsesteer.sae.formats.peers import PEERS as PEER_LAYOUTS
from sparsesteer.sae.formats.peers import check_peer_layout
from sparsesteer.utils.errors import SparsesteerError

TORCH = "torch==2.13.0"
PEERS = ["sae-lens", "eai-sparsify"]
HOOK = "blocks.9.resid_post"

CHILD = r"""
import json, sys, traceback
from importlib.metadata import version
import numpy as np, torch

jobs, x = json.loads(open(sys.argv[1]).read()), torch.from_numpy(np.load(sys.argv[2]))
out = {"versions": {p: version(p) for p in ("sae-lens", "eai-sparsify", "torch")}, "cases": {}}
for job in jobs:
    try:
        if job["loader"] == "saelens":
            from sae_lens import SAE
            sae = SAE.load_from_disk(job["dir"], device="cpu")
            with torch.no_grad():
                codes = sae.encode(x)
            kind = f"{type(sae).__name__} ({sae.cfg.architecture()}, hook_name={sae.cfg.metadata.hook_name})"
        else:
            from sparsify import SparseCoder
            sae = SparseCoder.load_from_disk(job["dir"], device="cpu")
            with torch.no_grad():
                enc = sae.encode(x)
            codes = torch.zeros(x.shape[0], sae.num_latents).scatter(-1, enc.top_indices, enc.top_acts.float())
            kind = f"{type(sae).__name__} (k={sae.cfg.k})"
        np.save(job["codes"], codes.float().numpy())
        out["cases"][job["name"]] = {"ok": True, "kind": kind}
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{last.filename.split('site-packages/')[-1]}:{last.lineno}"
        out["cases"][job["name"]] = {"ok": False, "error": f"{type(e).__name__}: {e} ({where})"}
print(json.dumps(out))
"""


def _null_hook(cfg, tensors):  # what export wrote for a hookless SAE before issue 20
    cfg["hook_name"] = cfg["metadata"]["hook_name"] = None


def _set(key, value):
    return lambda cfg, tensors: cfg.update({key: value})


def _drop(key):
    return lambda cfg, tensors: cfg.pop(key)


def _transpose(name):
    return lambda cfg, tensors: tensors.update({name: tensors[name].t().contiguous()})


def _drop_tensor(name):
    return lambda cfg, tensors: tensors.pop(name)


# name -> (the good export it starts from, format, the breakage)
BROKEN = {
    "saelens: hook_name null (as before the fix)": ("topk -> saelens --hook", "saelens", _null_hook),
    "saelens: architecture batchtopk": ("batchtopk -> saelens --hook", "saelens", _set("architecture", "batchtopk")),
    "saelens: no d_sae": ("relu -> saelens --hook", "saelens", _drop("d_sae")),
    "saelens: W_enc transposed": ("relu -> saelens --hook", "saelens", _transpose("W_enc")),
    "saelens: jumprelu without threshold": ("jumprelu -> saelens --hook", "saelens", _drop_tensor("threshold")),
    "sparsify: no d_in": ("topk -> sparsify", "sparsify", _drop("d_in")),
    "sparsify: no b_dec": ("topk -> sparsify", "sparsify", _drop_tensor("b_dec")),
}


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    print(f"# making the peers' venv {venv} (a few minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], check=True)
    pin = venv / "constraints.txt"
    pin.write_text(TORCH + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(pin), *PEERS], check=True)
    return python


def planted_rows(n: int, d: int, rng: np.random.Generator, dictionary: np.ndarray) -> np.ndarray:
    """Rows that are sparse non-negative mixtures of a fixed dictionary, plus a little noise."""
    codes = np.where(
        rng.random((n, dictionary.shape[0])) < 6 / dictionary.shape[0],
        rng.exponential(1.0, (n, dictionary.shape[0])),
        0,
    )
    return (codes @ dictionary + 0.05 * rng.normal(size=(n, d))).astype(np.float32)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli(["-q", *argv])
    return code, err.getvalue().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "sparsesteer-export-peers")
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    python = ensure_venv(args.venv)
    work = args.work or Path(tempfile.mkdtemp(prefix="export-peers-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    rng = np.random.default_rng(0)
    d, n = 64, 256
    dictionary = rng.normal(size=(n, d)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    np.save(work / "acts.npy", planted_rows(20_000, d, rng, dictionary))
    x = planted_rows(args.rows, d, rng, dictionary)
    np.save(work / "x.npy", x)
    code, err = run_cli(["train", "--activations", str(work / "acts.npy"), "--arch", "topk,batchtopk,relu",
                         "--k", "8", "--n-latents", str(n), "--steps", str(args.steps), "--batch-size", "256",
                         "--out", str(work / "train")])  # fmt: skip
    assert code == 0, err
    trained = {}
    for cfg in sorted((work / "train").glob("*/cfg.json")):
        trained[json.loads(cfg.read_text())["arch"]] = cfg.parent
    relu = SparseAutoencoder.load(trained["relu"])  # JumpReLU is inference-only here: the ReLU SAE + thresholds
    jump = build(dataclasses.replace(relu.cfg, arch="jumprelu"))
    with torch.no_grad():
        jump.load_state_dict(
            {**relu.state_dict(), "threshold": torch.rand(n, generator=torch.Generator().manual_seed(0))}
        )
    trained["jumprelu"] = jump.save(work / "train" / "jumprelu")

    # name -> (SAE dir to export, format, extra flags, the SAE whose codes are the reference)
    cases: dict[str, tuple[Path, str, list[str], Path]] = {}
    for arch in ("topk", "batchtopk", "relu", "jumprelu"):
        cases[f"{arch} -> saelens --hook"] = (trained[arch], "saelens", ["--hook", HOOK], trained[arch])
    cases["topk -> sparsify"] = (trained["topk"], "sparsify", [], trained["topk"])
    hooked = work / "topk-hooked"
    SparseAutoencoder.load(trained["topk"]).save(hooked, hook=HOOK)
    cases["topk with its hook -> saelens"] = (hooked, "saelens", [], trained["topk"])
    cases["topk, no hook, no --hook -> saelens"] = (trained["topk"], "saelens", [], trained["topk"])

    rows, jobs = {}, []
    for name, (src, fmt, flags, ref) in cases.items():
        out = work / "exports" / slug(name)
        code, err = run_cli(["export", "--sae", str(src), "--format", fmt, "--out", str(out), *flags])
        rows[name] = {
            "fmt": fmt,
            "ref": ref,
            "export": "ok" if code == 0 else f"refused: {err.split('error: ', 1)[-1]}",
        }
        if code == 0:
            jobs.append({"name": name, "dir": str(out), "loader": fmt, "codes": str(work / f"codes-{len(jobs)}.npy")})
            if name == "topk -> sparsify":  # converted from sparsify: our reader, then back out to SAELens
                conv = work / "exports" / "from-sparsify-saelens"
                code, err = run_cli(
                    ["export", "--sae", str(out), "--format", "saelens", "--out", str(conv), "--hook", HOOK]
                )
                conv_name = "sparsify export -> saelens --hook"
                rows[conv_name] = {"fmt": "saelens", "ref": trained["topk"], "export": "ok" if code == 0 else err}
                jobs.append(
                    {"name": conv_name, "dir": str(conv), "loader": "saelens", "codes": str(work / "codes-conv.npy")}
                )
    # hand-made breakages of good exports: the peer's loader and our check must both refuse each
    for name, (base, fmt, edit) in BROKEN.items():
        broken = work / "broken" / slug(name)
        shutil.copytree(work / "exports" / slug(base), broken)
        weights = broken / PEER_LAYOUTS[fmt][1]
        cfg, tensors = json.loads((broken / "cfg.json").read_text()), load_file(weights)
        edit(cfg, tensors)
        (broken / "cfg.json").write_text(json.dumps(cfg))
        save_file(tensors, str(weights))
        rows[name] = {"fmt": fmt, "ref": trained["topk"], "export": "(hand-made)"}
        jobs.append({"name": name, "dir": str(broken), "loader": fmt, "codes": str(work / f"codes-{len(jobs)}.npy")})

    (work / "jobs.json").write_text(json.dumps(jobs))
    (work / "child.py").write_text(CHILD)
    done = subprocess.run([str(python), str(work / "child.py"), str(work / "jobs.json"), str(work / "x.npy")],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"the peer child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"peers: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}; {args.rows} rows, d={d}, n={n}\n")
    print("| case | export | our check | peer loader | peer's SAE | peer L0 | max abs code diff | same active set |")
    print("|---|---|---|---|---|---:|---:|---:|")
    xt = torch.from_numpy(x)
    for job in jobs:
        name, row = job["name"], rows[job["name"]]
        try:
            check_peer_layout(job["dir"], row["fmt"])
            ours_check = "passes"
        except SparsesteerError as e:
            ours_check = f"refuses ({str(e).split(': ', 1)[-1][:80]})"
        peer = result["cases"][name]
        diff = same = l0 = "-"
        if peer["ok"]:
            with torch.no_grad():
                want = SparseAutoencoder.load(row["ref"]).encode_dense(xt).numpy()
            got = np.load(job["codes"])
            diff = f"{np.abs(got - want).max():.2e}"
            same = f"{100 * np.mean(np.all((got != 0) == (want != 0), axis=1)):.1f}%"
            l0 = f"{(got != 0).sum(1).mean():.1f}"
        loaded = "loads" if peer["ok"] else f"fails: {' '.join(peer['error'].split())[:110]}"
        print(
            f"| {name} | {row['export']} | {ours_check} | {loaded} | {peer.get('kind', '-')} | {l0} | {diff} | {same} |"
        )
    for name, row in rows.items():
        if not any(j["name"] == name for j in jobs):
            print(f"| {name} | {row['export'][:140]} | - | - | - | - | - | - |")


if __name__ == "__main__":
    main()
