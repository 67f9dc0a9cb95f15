"""SAE checkpoints: our format (cfg.json + sae.safetensors) and readers for sparsify and SAELens.

Our directory: `sae.safetensors` holds W_enc [n, d], b_enc [n], W_dec [n, d], b_dec [d] (plus
`threshold` for batchtopk/jumprelu); `cfg.json` holds the SAEConfig fields at top level, the
provenance (hook, model, tokens, input normalisation, training summary) and the sha256 of the
weights file. The weights are written first and cfg.json last (both atomically), so a directory
whose cfg.json exists is complete, and a weights file that does not match its cfg.json is caught.

Foreign layouts, recognised automatically by `load_sae`:
- sparsify (EleutherAI): `cfg.json` (d_in, num_latents | expansion_factor, k, ...) +
  `sae.safetensors` (encoder.weight [n, d], encoder.bias, W_dec [n, d], b_dec).
- SAELens: `cfg.json` (d_in, d_sae, architecture, apply_b_dec_to_input, normalize_activations,
  hook_name/model_name at top level or under metadata) + `sae_weights.safetensors`
  (W_enc [d, n], b_enc, W_dec [n, d], b_dec, threshold for jumprelu).
Nothing is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..utils import io
from ..utils.config import from_dict, to_dict
from ..utils.errors import SparsesteerError
from .base import SparseAutoencoder
from .config import SAEConfig

FORMAT = "sparsesteer-sae"
FORMAT_VERSION = 1
WEIGHTS = "sae.safetensors"

ACTIVATION_RULES = {
    "topk": "codes = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)); x_hat = W_dec^T codes + b_dec",
    "topk-abs": "codes = entries of W_enc (x - b_dec) + b_enc with the k largest |values|; x_hat = W_dec^T codes + b_dec",
    "batchtopk": "codes = ReLU(pre) * (pre > threshold), pre = W_enc (x - b_dec) + b_enc (top k*B over the batch in training)",
    "relu": "codes = ReLU(W_enc (x - b_dec) + b_enc); x_hat = W_dec^T codes + b_dec",
    "jumprelu": "codes = ReLU(pre) * (pre > threshold_j), pre = W_enc (x - b_dec) + b_enc",
}


def activation_rule(cfg: SAEConfig) -> str:
    return ACTIVATION_RULES["topk-abs" if cfg.arch == "topk" and cfg.select == "abs" else cfg.arch]


def save_sae(sae: SparseAutoencoder, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    with io.atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        digest = io.sha256_file(tmp)
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **to_dict(sae.cfg),
        "activation_rule": activation_rule(sae.cfg),
        **sae.metadata,
        "weights_file": WEIGHTS,
        "weights_sha256": digest,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "sparsesteer_version": __version__,
    }
    io.write_json(path / "cfg.json", cfg)
    return path


def load_sae(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, verify: bool = True
) -> SparseAutoencoder:
    source: dict[str, Any] | None = None
    if isinstance(path, str) and path.startswith(HF_PREFIX):
        path, source = download(path)
    path = Path(path)
    if not path.is_dir():
        raise SparsesteerError(
            f"SAE directory not found: {path} (a hub SAE is given as hf:REPO[/SUBFOLDER][@REVISION])"
        )
    cfg_path = path / "cfg.json"
    if not cfg_path.is_file():
        raise SparsesteerError(
            f"{source['spec'] if source else path} is not an SAE checkpoint in a recognised layout (sparsesteer, "
            f"sparsify, SAELens): it has no cfg.json (found: {_listing(path)})"
        )
    raw = io.read_json(cfg_path)
    if raw.get("format") == FORMAT:
        sae = _load_ours(path, raw, verify=verify)
    elif (path / "sae_weights.safetensors").is_file() or "d_sae" in raw:
        sae = _load_saelens(path, raw)
    elif (path / WEIGHTS).is_file():
        sae = _load_sparsify(path, raw)
    else:
        raise SparsesteerError(
            f"{path}: cfg.json is there but no weights file: expected {WEIGHTS} (sparsesteer, sparsify) "
            "or sae_weights.safetensors (SAELens)"
        )
    if source is not None:
        sae.metadata["source"] = {**(sae.metadata.get("source") or {}), **source}
    sae.eval()
    return sae.to(device=device, dtype=dtype) if dtype is not None else sae.to(device=device)


HF_PREFIX = "hf:"
_HF_SPEC = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<sub>[^@]+?))?/?(?:@(?P<rev>[^@/]+))?$")


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'hf:org/name/sub/folder@rev' -> ('org/name', 'sub/folder', 'rev')."""
    m = _HF_SPEC.match(spec)
    if not m:
        raise SparsesteerError(f"{spec!r} is not a hub SAE id: expected hf:ORG/NAME[/SUBFOLDER][@REVISION]")
    return m["repo"], m["sub"], m["rev"]


def _listing(path: Path, limit: int = 40) -> str:
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    if not files:
        return "nothing"
    return ", ".join(files[:limit]) + (f", ... ({len(files) - limit} more)" if len(files) > limit else "")


def download(spec: str) -> tuple[Path, dict[str, Any]]:
    """Fetch (or find in the cache) the hub SAE `spec`: its local directory and its source record."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from ..utils.hub import check_hub

    repo, sub, rev = parse_hub_spec(spec)
    patterns = [f"{sub}/*"] if sub else None

    def fetch(local_only: bool) -> str:
        return snapshot_download(repo, revision=rev, allow_patterns=patterns, local_files_only=local_only)

    def cached() -> bool:
        try:
            fetch(True)
            return True
        except Exception:
            return False

    check_hub(repo, what="SAE", flag="--sae", cached=cached)
    try:
        root = Path(fetch(False))
    except LocalEntryNotFoundError:
        from ..utils.hub import unreachable_error

        raise unreachable_error("SAE", repo, "--sae") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise SparsesteerError(f"cannot download the SAE {spec!r} from the Hugging Face hub: {e}") from None
    path = root / sub if sub else root
    if not path.is_dir():
        raise SparsesteerError(f"{spec}: the repository has no folder {sub!r} (found: {_listing(root)})")
    source = {"spec": spec, "hub": repo, "subfolder": sub, "revision": root.name, "requested_revision": rev}
    return path, source


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise SparsesteerError(f"missing weights file: {file}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise SparsesteerError(f"cannot read {file} as safetensors (corrupted or truncated?): {e}") from None


def _build(cfg: SAEConfig, tensors: dict[str, torch.Tensor], where: Path) -> SparseAutoencoder:
    from . import build

    sae = build(cfg)
    expected = sae.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise SparsesteerError(f"{where}: missing tensor(s) {', '.join(missing)}")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise SparsesteerError(f"{where}: unexpected tensor(s) {', '.join(extra)} for arch {cfg.arch!r}")
    for name, t in tensors.items():
        want = tuple(expected[name].shape)
        if name == "threshold" and t.ndim == 0:
            t = t.reshape(want) if want == () else t.expand(want).clone()
            tensors[name] = t
        if tuple(t.shape) != want:
            raise SparsesteerError(
                f"{where}: tensor {name} has shape {tuple(t.shape)}, expected {want} for d_in={cfg.d_in}, "
                f"n_latents={cfg.n_latents}"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(sae, name).copy_(t.to(expected[name].dtype))
    return sae


def _load_ours(path: Path, raw: dict[str, Any], *, verify: bool) -> SparseAutoencoder:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise SparsesteerError(f"{path}/cfg.json has format_version {version}; this sparsesteer reads {FORMAT_VERSION}")
    fields = {f.name for f in dataclasses.fields(SAEConfig)}
    cfg = from_dict(SAEConfig, {k: v for k, v in raw.items() if k in fields}, where=f"{path}/cfg.json")
    file = path / raw.get("weights_file", WEIGHTS)
    if not file.is_file():
        raise SparsesteerError(f"{path} is missing its weights file {file.name}")
    if verify and raw.get("weights_sha256") and io.sha256_file(file) != raw["weights_sha256"]:
        raise SparsesteerError(
            f"{file}: checksum does not match cfg.json (weights_sha256): the file is corrupted or belongs to "
            "another checkpoint"
        )
    sae = _build(cfg, _read_weights(file), file)
    reserved = fields | {
        "format",
        "format_version",
        "activation_rule",
        "weights_file",
        "weights_sha256",
        "dtype",
        "sparsesteer_version",
    }
    sae.metadata = {k: v for k, v in raw.items() if k not in reserved}
    return sae


def _require(mapping: dict[str, Any], key: str, where: Path) -> Any:
    """mapping[key], or an error saying that the file `where` lacks it."""
    if key not in mapping:
        raise SparsesteerError(f"{where} has no {key!r}")
    return mapping[key]


def _load_sparsify(path: Path, raw: dict[str, Any]) -> SparseAutoencoder:
    where = path / "cfg.json"
    d_in = int(_require(raw, "d_in", where))
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise SparsesteerError(f"{where}: sparsify activation {activation!r} is not supported (only topk)")
    if raw.get("transcode"):
        raise SparsesteerError(f"{where}: sparsify transcoders are not supported (only autoencoders)")
    tensors = _read_weights(path / WEIGHTS)
    if "encoder.weight" not in tensors:
        raise SparsesteerError(f"{path / WEIGHTS}: no 'encoder.weight': not a sparsify SAE")
    if "W_skip" in tensors and bool(tensors["W_skip"].any()):
        raise SparsesteerError(f"{where}: sparsify skip connections are not supported")
    n = (
        int(raw.get("num_latents") or 0)
        or d_in * int(raw.get("expansion_factor", 0) or 0)
        or tensors["encoder.weight"].shape[0]
    )
    cfg = SAEConfig(
        arch="topk",
        d_in=d_in,
        n_latents=n,
        k=int(_require(raw, "k", where)),
        normalize_decoder=bool(raw.get("normalize_decoder", True)),
    )
    ours = {
        "W_enc": tensors["encoder.weight"],
        "b_enc": tensors["encoder.bias"],
        "W_dec": _require(tensors, "W_dec", path / WEIGHTS),
        "b_dec": _require(tensors, "b_dec", path / WEIGHTS),
    }
    sae = _build(cfg, ours, path / WEIGHTS)
    sae.metadata = {"source": {"format": "sparsify", "path": str(path), "cfg": raw}}
    return sae


def _load_saelens(path: Path, raw: dict[str, Any]) -> SparseAutoencoder:
    where = path / "cfg.json"
    meta = raw.get("metadata") or {}
    d_in = int(_require(raw, "d_in", where))
    n = int(_require(raw, "d_sae", where))
    arch = raw.get("architecture") or ("topk" if raw.get("activation_fn_str") == "topk" else "standard")
    norm = raw.get("normalize_activations") or "none"
    if norm != "none":
        raise SparsesteerError(
            f"{where}: normalize_activations={norm!r} is not supported (only 'none'); fold the scaling into the weights first"
        )
    file = path / "sae_weights.safetensors"
    tensors = _read_weights(file)
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        _require(tensors, key, file)
    W_enc = tensors["W_enc"].t().contiguous()  # SAELens stores [d_in, d_sae]
    b_enc = tensors["b_enc"]
    if not raw.get("apply_b_dec_to_input", True):
        # SAELens: pre = x W_enc + b_enc; ours subtracts b_dec first, so move it into the bias.
        b_enc = b_enc + W_enc @ tensors["b_dec"]
    ours = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    if arch == "standard":
        cfg = SAEConfig(arch="relu", d_in=d_in, n_latents=n, normalize_decoder=False)
    elif arch == "topk":
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        if not k:
            raise SparsesteerError(f"{where}: topk SAE without k")
        cfg = SAEConfig(arch="topk", d_in=d_in, n_latents=n, k=int(k), normalize_decoder=False)
    elif arch == "jumprelu":
        cfg = SAEConfig(arch="jumprelu", d_in=d_in, n_latents=n, normalize_decoder=False)
        ours["threshold"] = _require(tensors, "threshold", file)
    else:
        raise SparsesteerError(f"{where}: SAELens architecture {arch!r} is not supported (standard, topk, jumprelu)")
    sae = _build(cfg, ours, file)
    hook = raw.get("hook_name") or meta.get("hook_name")
    sae.metadata = {
        "hook": _hook_from_transformerlens(hook) if hook else None,
        "model": {"id": raw.get("model_name") or meta.get("model_name")},
        "source": {"format": "saelens", "path": str(path), "cfg": raw},
    }
    return sae


def _hook_from_transformerlens(name: str) -> str:
    """'blocks.9.hook_resid_post' -> 'blocks.9.resid_post' (TransformerLens / ViT-Prisma names)."""
    return re.sub(r"\.hook_", ".", name)
