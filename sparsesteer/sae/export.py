"""Write one of our SAEs in SAELens' or sparsify's layout (`sparsesteer export`).

SAELens: `cfg.json` (architecture, d_in, d_sae, activation_fn_str, k, hook_name, model_name,
apply_b_dec_to_input=true, normalize_activations="none", ...; the pre-6.0 layout, which SAELens 6.x
reads through its `handle_pre_6_0_config`) + `sae_weights.safetensors` with
W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (+ threshold [d_sae] for
jumprelu). relu -> "standard", topk -> "topk", jumprelu and batchtopk (its inference rule
ReLU(pre) * (pre > threshold) is JumpReLU with one threshold for all latents) -> "jumprelu".
Hook names: ours `blocks.{i}.<point>` -> TransformerLens `blocks.{i}.hook_<point>`, same block
index (block offset 0: our blocks.9.resid_post is TransformerLens blocks.9.hook_resid_post, the
output of block 9 = transformers hidden_states[10]). SAELens attaches an SAE at its hook_name, so
an SAE that records no hook (trained on a bare .npy, converted from sparsify, built in Python)
needs `--hook`.

sparsify: `cfg.json` (activation "topk", k, num_latents, d_in, expansion_factor, normalize_decoder,
multi_topk, skip_connection, transcode) + `sae.safetensors` with encoder.weight [n, d],
encoder.bias [n], W_dec [n, d], b_dec [d]. sparsify holds topk SAEs only; it records no hook (by
convention the directory is named after the hook point).

Our input normalisation is folded into the weights when training ends, so both write
normalize_activations "none"; an imported SAE with a per-row normalisation (layer_norm,
constant_norm_rescale) keeps it under SAELens' name for the same rule, and sparsify refuses it.

Two checks before the command succeeds, each able to fail: the written files against what the
target library's own loader requires (`formats/peers.py`, written from SAELens' and sparsify's
sources, independent of our readers), then the export read back through `load_sae`, its encodings
compared with the original's. A failed export leaves nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import __version__
from ..utils import io
from ..utils.errors import SparsesteerError
from .base import SparseAutoencoder
from .formats.peers import PEERS, check_peer_layout

FORMATS = ("saelens", "sparsify")
HOLDS = {"saelens": ("relu", "topk", "jumprelu", "batchtopk"), "sparsify": ("topk",)}


def hook_to_transformerlens(hook: str | None) -> str | None:
    """'blocks.9.resid_post' -> 'blocks.9.hook_resid_post' (same block index); other names unchanged."""
    if not hook:
        return None
    return re.sub(r"^(blocks\.\d+)\.(?!hook_)(\w+)$", r"\1.hook_\2", hook)


def export_hook(sae: SparseAutoencoder, fmt: str, hook: str | None) -> str | None:
    """The hook name to record (TransformerLens naming): `hook` (--hook), else the SAE's own (its
    provenance, or an imported SAELens SAE's original name). SAELens needs one: it attaches the SAE
    there. sparsify's cfg.json has no hook field, so --hook with sparsify is refused, not ignored."""
    if hook is not None and fmt == "sparsify":
        raise SparsesteerError(
            "--hook is not recorded by sparsify (its cfg.json has no hook field): name the --out directory after "
            "the hook instead, e.g. --out runs/sparsify/blocks.9.resid_post"
        )
    source = sae.metadata.get("source")
    original = source.get("hook") if isinstance(source, dict) else None
    own = hook_to_transformerlens(sae.provenance.hook) or (original if isinstance(original, str) else None)
    if hook is not None:
        given = hook_to_transformerlens(hook.strip())
        if not given:
            raise SparsesteerError("--hook is empty: give the hook the SAE reads, e.g. blocks.9.resid_post")
        if own and own != given:
            raise SparsesteerError(
                f"--hook {hook} disagrees with the hook the SAE records ({own}): leave --hook out, or export the "
                "SAE that was trained there"
            )
        return given
    if fmt == "saelens" and not own:
        raise SparsesteerError(
            "this SAE records no hook (trained on a bare .npy, converted from sparsify or built in Python), and "
            "SAELens needs one (cfg.json hook_name, where it attaches the SAE): give --hook, e.g. --hook "
            "blocks.9.resid_post"
        )
    return own


def _refuse(sae: SparseAutoencoder, fmt: str) -> None:
    arch = sae.cfg.arch
    if arch not in HOLDS[fmt]:
        raise SparsesteerError(
            f"a {arch} SAE cannot be exported to {fmt}: {fmt} holds {', '.join(HOLDS[fmt])} SAEs only"
        )
    if arch == "topk" and sae.cfg.select == "abs":
        raise SparsesteerError(
            f"a topk SAE with select='abs' cannot be exported to {fmt}: {fmt} keeps the k largest values after "
            "ReLU, not the k largest |values|"
        )
    if sae.row_norm is not None and fmt == "sparsify":
        raise SparsesteerError(
            f"this SAE normalises each input row ({sae.row_norm['kind']}); sparsify has no such normalisation"
        )
    if arch == "batchtopk" and float(sae.get_buffer("threshold")) < 0:
        raise SparsesteerError("this batchtopk SAE has no inference threshold yet (train it first): nothing to export")


def _tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in sae.state_dict().items()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with io.atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _saelens(sae: SparseAutoencoder, out: Path, hook: str | None) -> None:
    t = _tensors(sae)
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}[sae.cfg.arch]
    weights = {
        "W_enc": t["W_enc"].t().contiguous(),
        "b_enc": t["b_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    if arch == "jumprelu":
        weights["threshold"] = t["threshold"].expand(sae.n_latents).contiguous()
    prov = sae.provenance
    layer = re.match(r"blocks\.(\d+)\.", hook or "")
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "model_name": prov.model_id,
        "hook_name": hook,
        "hook_layer": int(layer.group(1)) if layer else None,
        "hook_head_index": None,
        "activation_fn_str": "topk" if arch == "topk" else "relu",
        "activation_fn_kwargs": {"k": sae.cfg.k} if arch == "topk" else {},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": sae.row_norm["kind"] if sae.row_norm else "none",
        "metadata": {"model_name": prov.model_id, "hook_name": hook, "exported_by": f"sparsesteer {__version__}"},
    }
    if arch == "topk":
        cfg["k"] = sae.cfg.k
    _save(weights, out / "sae_weights.safetensors")
    io.write_json(out / "cfg.json", cfg)


def _sparsify(sae: SparseAutoencoder, out: Path) -> None:
    t = _tensors(sae)
    weights = {"encoder.weight": t["W_enc"], "encoder.bias": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.n_latents // sae.d_in),
        "normalize_decoder": bool(sae.cfg.normalize_decoder),
        "num_latents": sae.n_latents,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.d_in,
    }
    _save(weights, out / "sae.safetensors")
    io.write_json(out / "cfg.json", cfg)


def export_sae(
    sae: SparseAutoencoder, fmt: str, out: str | Path, *, hook: str | None = None, check_rows: int = 256
) -> Path:
    """Write `sae` to `out` in `fmt`'s layout (`hook`: the hook to record when the SAE has none),
    check the files against what the target library's loader requires, read them back and compare
    encodings; on any failure remove what was written."""
    from .formats import load_sae

    if fmt not in FORMATS:
        raise SparsesteerError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    _refuse(sae, fmt)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SparsesteerError(f"--out {out} exists and is not empty: refusing to overwrite it")
    hook = export_hook(sae, fmt, hook)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    sae = sae.to("cpu").float().eval()
    try:
        _saelens(sae, out, hook) if fmt == "saelens" else _sparsify(sae, out)
        check_peer_layout(out, fmt)
        back = load_sae(out)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(check_rows, sae.d_in, generator=g) * 2 + sae.b_dec.detach()
        with torch.no_grad():
            want, got = sae.encode_dense(x), back.encode_dense(x)
        if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
            raise SparsesteerError(
                f"{out}: the exported SAE does not encode like the original (max diff "
                f"{(want - got).abs().max().item():.3g}); please report this"
            )
    except BaseException:
        for name in ("cfg.json", PEERS[fmt][1]):
            (out / name).unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    return out
