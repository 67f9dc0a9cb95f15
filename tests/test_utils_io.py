"""Atomic writes respect the umask (mkstemp alone would make every result 0600)."""

import os
import stat
import subprocess
import sys


def mode_written_under(umask: int, tmp_path) -> int:
    code = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); from sparsesteer.utils import io; "
        "io.write_text(sys.argv[1], 'x'); print(oct(os.stat(sys.argv[1]).st_mode & 0o777))"
    )
    path = tmp_path / f"f{umask:o}.json"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), f"{umask:o}"], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip(), 8) == stat.S_IMODE(os.stat(path).st_mode)
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_umask_mode(tmp_path):
    assert mode_written_under(0o022, tmp_path) == 0o644
    assert mode_written_under(0o002, tmp_path) == 0o664
    assert mode_written_under(0o077, tmp_path) == 0o600


def _modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_kind_of_output_gets_the_umask_mode(tmp_path):
    """One writer, one rule: under umask 022 every file the package writes is 0644 (safetensors'
    save_file and mkstemp make 0600 files), and under 027 it is 0640: the mode comes from the umask."""
    from types import SimpleNamespace

    import torch
    from helpers import make_activation_cache

    from sparsesteer.cli import main
    from sparsesteer.models import zeroshot
    from sparsesteer.sae import SAEConfig, build
    from sparsesteer.utils import io

    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        acts = make_activation_cache(out / "acts", n_images=100, positions=(0, 1), d=8)  # .npy shards + manifest
        train = ["-q", "train", "--activations", str(acts), "--arch", "topk,relu", "--k", "2", "--n-latents", "16",
                 "--steps", "4", "--checkpoint-every", "2", "--batch-size", "16", "--keep-state",
                 "--out", str(out / "run")]  # fmt: skip
        assert main(train) == 0  # sae.safetensors, cfg.json, metrics.jsonl, state/ (kept), fvu_vs_l0.png
        sae = out / "run" / "topk-k2-n16"
        assert (sae / "sae.safetensors").is_file() and list((out / "run").rglob("state.safetensors"))
        interpret = ["-q", "interpret", "--sae", str(sae), "--activations", str(acts), "--top-n", "2",
                     "--device", "cpu", "--out", str(out / "stats")]  # fmt: skip
        assert main(interpret) == 0  # stats.safetensors + stats.json
        for fmt in ("saelens", "sparsify"):
            assert main(["-q", "export", "--sae", str(sae), "--format", fmt, "--out", str(out / fmt)]) == 0
        backbone = SimpleNamespace(model_id="m", revision="r", dtype=torch.float32)
        zeroshot._save_cached(out / "zeroshot-x.safetensors", torch.zeros(2, 4), backbone, ("a", "b"), ("{}",))
        io.write_npy(out / "a.npy", torch.zeros(3).numpy())
        modes = _modes(out)
        assert len(modes) > 20 and {"zeroshot-x.safetensors", "saelens/sae_weights.safetensors"} <= set(modes)
        assert {k: oct(v) for k, v in modes.items() if v != 0o644} == {}

        os.umask(0o027)
        build(SAEConfig(arch="topk", d_in=8, n_latents=16, k=2)).save(tmp_path / "g", hook="blocks.2.resid_post")
        zeroshot._save_cached(tmp_path / "g" / "z.safetensors", torch.zeros(2, 4), backbone, ("a", "b"), ("{}",))
        io.write_json(tmp_path / "g" / "x.json", {})
        assert set(_modes(tmp_path / "g").values()) == {0o640}
    finally:
        os.umask(old)
