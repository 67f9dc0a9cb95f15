"""What SAELens' and sparsify's own loaders require of an SAE directory: the check every `export`
must pass. Written from those libraries' sources (the versions below), not from our readers
(saelens.py, sparsify.py): our readers are lenient, so an export they accept may still break the
peer's loader, and a check that shares their assumptions could never fail.

SAELens 6.54.12, `SAE.load_from_disk(path)` (sae_lens/saes/sae.py):
- `sae_lens_disk_loader` reads `cfg.json` and `sae_weights.safetensors`; `handle_config_defaulting`
  sends a cfg.json without a `sae_lens_version` >= 6 (top level or under `metadata`) through
  `handle_pre_6_0_config` (loading/pretrained_sae_loaders.py): it renames hook_point -> hook_name,
  activation_fn_str -> activation_fn, evaluates `"hook_z" in cfg.get("hook_name", "")` (a null
  hook_name raises TypeError there), reads `activation_fn_kwargs.get("k")` when activation_fn is
  "topk" (then architecture is "topk"), maps a bool normalize_activations, defaults architecture to
  "standard", and keeps the top-level LLM_METADATA_KEYS (model_name, hook_name, ...) as `metadata`.
  A 6.x cfg.json names `architecture` and carries `metadata` itself.
- `SAEConfig.from_dict` builds the config class registered for `architecture` (sae_lens/__init__.py:
  standard, gated, topk, abstopk, jumprelu, and transcoder / temporal / matching_pursuit kinds that
  are not SAEs; "batchtopk" and "matryoshka_batchtopk" are training classes only, and a trained
  BatchTopK SAE is saved as "jumprelu"). Fields (SAEConfig): d_in: int, d_sae: int (required),
  dtype: str in DTYPE_MAP, device: str, apply_b_dec_to_input: bool, normalize_activations in
  none / expected_average_only_in / constant_norm_rescale / layer_norm / covariance_whitening
  (`__post_init__`), reshape_activations in none / hook_z; TopKSAEConfig (topk, abstopk) adds
  k: int and rescale_acts_by_decoder_norm: bool.
- the weights go through `load_state_dict` (strict): exactly the architecture's parameters, W_enc
  [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], + threshold [d_sae] (jumprelu),
  or b_gate, b_mag, r_mag [d_sae] instead of b_enc (gated).
- `metadata.hook_name` is where `HookedSAETransformer.add_sae` attaches the SAE, and
  `ActivationsStore.from_sae` raises "hook_name is required" without it: we require a string.

sparsify (eai-sparsify) 1.3.3, `SparseCoder.load_from_disk(path)` (sparsify/sparse_coder.py):
- `cfg.json`: `d_in` is popped (required, int); the rest is `SparseCoderConfig.from_dict(...,
  drop_extra_fields=True)` (sparsify/config.py): activation in groupmax / topk, expansion_factor:
  int, normalize_decoder: bool, num_latents: int (0 = d_in * expansion_factor), k: int,
  multi_topk: bool, skip_connection: bool, transcode: bool, all with defaults.
- `sae.safetensors` through `load_model(strict=True)`: encoder.weight [n, d_in], encoder.bias
  [n], W_dec [n, d_in], b_dec [d_in], + W_skip [d_in, d_in] with skip_connection.
- sparsify records no hook: `SparseCoder.load_many` names each SAE by its directory (the hook).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils import io
from ...utils.errors import SparsesteerError
from .common import safetensors_header

SAELENS_VERSION = "6.54.12"
SPARSIFY_VERSION = "1.3.3"

# sae_lens/__init__.py register_sae_class (SAEs, not transcoders) -> the state dict its class loads
SAELENS_WEIGHTS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "abstopk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"),
}
SAELENS_TRAINING_ONLY = ("batchtopk", "matryoshka_batchtopk")
# sae_lens/constants.py DTYPE_MAP
SAELENS_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "torch.float32",
    "torch.float64",
    "torch.float16",
    "torch.bfloat16",
)
SAELENS_NORMS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
# loading/pretrained_sae_loaders.py LLM_METADATA_KEYS: what the pre-6.0 path keeps as metadata
SAELENS_METADATA_KEYS = (
    "model_name",
    "hook_name",
    "model_class_name",
    "hook_head_index",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "sae_lens_version",
    "sae_lens_training_version",
    "hook_name_out",
    "hook_head_index_out",
    "hf_hook_name",
    "hf_hook_name_out",
)
SPARSIFY_FIELDS: dict[str, type] = {
    "expansion_factor": int,
    "normalize_decoder": bool,
    "num_latents": int,
    "k": int,
    "multi_topk": bool,
    "skip_connection": bool,
    "transcode": bool,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _is(value: Any, kind: type) -> bool:
    """isinstance for JSON values, where a bool is not an int."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _typed(cfg: dict[str, Any], key: str, kind: type, problems: list[str], *, required: bool = False) -> Any:
    if key not in cfg:
        if required:
            problems.append(f"{key} is missing")
        return None
    value = cfg[key]
    if not _is(value, kind):
        problems.append(f"{key} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")
        return None
    return value


def _major(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def _tensors(header: dict[str, Any], want: dict[str, tuple[int, ...]], problems: list[str]) -> None:
    """The safetensors header holds exactly `want` (name -> shape), each a float tensor."""
    have = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    if missing:
        problems.append(f"tensor(s) missing: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected tensor(s) (the loader is strict): {', '.join(extra)}")
    for name, shape in want.items():
        info = have.get(name)
        if not isinstance(info, dict):
            continue
        if tuple(info.get("shape") or ()) != shape:
            problems.append(f"tensor {name} has shape {tuple(info.get('shape') or ())}, expected {shape}")
        if info.get("dtype") not in FLOAT_DTYPES:
            problems.append(f"tensor {name} has dtype {info.get('dtype')}, expected one of {', '.join(FLOAT_DTYPES)}")


def saelens_problems(cfg: Any, header: dict[str, Any]) -> list[str]:
    """Why SAELens 6.54.12's `SAE.load_from_disk` (or an SAE it builds) would fail on this cfg.json
    and weights header; empty when it loads. See the module docstring for each rule's source."""
    if not isinstance(cfg, dict):
        return [f"cfg.json must be a JSON object, got {type(cfg).__name__}"]
    problems: list[str] = []
    meta = cfg.get("metadata", {})
    if not isinstance(meta, dict):
        return [f"metadata must be an object, got {meta!r}"]
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if version and _major(version) is None:
        problems.append(f"sae_lens_version {version!r} is not a version number")
    if not version or (_major(version) or 0) < 6:  # handle_pre_6_0_config
        renames = {
            "hook_point": "hook_name",
            "hook_point_head_index": "hook_head_index",
            "activation_fn_str": "activation_fn",
        }
        cfg = {renames.get(k, k): v for k, v in cfg.items()}
        if "hook_name" in cfg and not isinstance(cfg["hook_name"], str):
            problems.append(
                f"hook_name must be a string, got {cfg['hook_name']!r} (SAELens' pre-6.0 path raises TypeError)"
            )
        arch = cfg.get("architecture", "standard")
        if cfg.get("activation_fn") == "topk":
            kwargs = cfg.get("activation_fn_kwargs", {})
            if not isinstance(kwargs, dict):
                problems.append(f"activation_fn_kwargs must be an object, got {kwargs!r}")
            elif kwargs.get("k") is not None:
                arch, cfg = "topk", {**cfg, "k": kwargs["k"]}
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
        elif cfg.get("normalize_activations") is None:
            cfg["normalize_activations"] = "none"
        meta = {k: v for k, v in cfg.items() if k in SAELENS_METADATA_KEYS}
    elif "architecture" not in cfg:
        return [*problems, "architecture is missing"]
    else:
        arch = cfg["architecture"]
    if not isinstance(arch, str):
        problems.append(f"architecture must be a string, got {arch!r}")
    elif arch in SAELENS_TRAINING_ONLY:
        problems.append(f"architecture {arch!r} is a training class only (a trained one is saved as 'jumprelu')")
    elif arch not in SAELENS_WEIGHTS:
        problems.append(f"architecture {arch!r} is not one of {', '.join(SAELENS_WEIGHTS)}")
    d_in = _typed(cfg, "d_in", int, problems, required=True)
    d_sae = _typed(cfg, "d_sae", int, problems, required=True)
    for key, ok in (("d_in", d_in), ("d_sae", d_sae)):
        if ok is not None and ok < 1:
            problems.append(f"{key} must be >= 1, got {ok}")
    if _typed(cfg, "dtype", str, problems) not in (None, *SAELENS_DTYPES):
        problems.append(f"dtype {cfg['dtype']!r} is not one of {', '.join(SAELENS_DTYPES[:4])}")
    _typed(cfg, "device", str, problems)
    _typed(cfg, "apply_b_dec_to_input", bool, problems)
    if cfg.get("normalize_activations", "none") not in SAELENS_NORMS:
        problems.append(
            f"normalize_activations {cfg['normalize_activations']!r} is not one of {', '.join(SAELENS_NORMS)}"
        )
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        problems.append(f"reshape_activations {cfg['reshape_activations']!r} is not one of none, hook_z")
    if arch in ("topk", "abstopk"):
        k = _typed(cfg, "k", int, problems, required=True)
        if k is not None and d_sae is not None and not 1 <= k <= d_sae:
            problems.append(f"k={k} must be in 1..d_sae={d_sae}")
        _typed(cfg, "rescale_acts_by_decoder_norm", bool, problems)
    hook = meta.get("hook_name")
    if not (isinstance(hook, str) and hook):
        problems.append(f"metadata hook_name must name the hook the SAE attaches at, got {hook!r}")
    if meta.get("model_name") is not None and not isinstance(meta["model_name"], str):
        problems.append(f"model_name must be a string or null, got {meta['model_name']!r}")
    if arch in SAELENS_WEIGHTS and d_in is not None and d_sae is not None:
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        _tensors(header, {k: shapes.get(k, (d_sae,)) for k in SAELENS_WEIGHTS[arch]}, problems)
    return problems


def sparsify_problems(cfg: Any, header: dict[str, Any]) -> list[str]:
    """Why sparsify 1.3.3's `SparseCoder.load_from_disk` would fail on this cfg.json and weights
    header; empty when it loads. See the module docstring for each rule's source."""
    if not isinstance(cfg, dict):
        return [f"cfg.json must be a JSON object, got {type(cfg).__name__}"]
    problems: list[str] = []
    d_in = _typed(cfg, "d_in", int, problems, required=True)
    values = {key: _typed(cfg, key, kind, problems) for key, kind in SPARSIFY_FIELDS.items()}
    activation = cfg.get("activation", "topk")
    if activation not in ("groupmax", "topk"):
        problems.append(f"activation {activation!r} is not one of groupmax, topk")
    if d_in is None:
        return problems
    n = values["num_latents"] or d_in * (32 if values["expansion_factor"] is None else values["expansion_factor"])
    k = 32 if values["k"] is None else values["k"]
    if n < 1:
        problems.append(f"num_latents={n}: give num_latents or expansion_factor >= 1")
    elif not 1 <= k <= n:
        problems.append(f"k={k} must be in 1..num_latents={n}")
    want = {"encoder.weight": (n, d_in), "encoder.bias": (n,), "W_dec": (n, d_in), "b_dec": (d_in,)}
    if values["skip_connection"]:
        want["W_skip"] = (d_in, d_in)
    _tensors(header, want, problems)
    return problems


PEERS = {
    "saelens": (f"SAELens {SAELENS_VERSION}", "sae_weights.safetensors", saelens_problems),
    "sparsify": (f"sparsify {SPARSIFY_VERSION}", "sae.safetensors", sparsify_problems),
}


def check_peer_layout(path: str | Path, fmt: str) -> None:
    """Refuse, naming each problem, an SAE directory that `fmt`'s own loader would not load (or
    whose SAELens cfg.json names no hook), reading only its files: cfg.json and the weights'
    safetensors header."""
    name, weights, problems_of = PEERS[fmt]
    path = Path(path)
    header = safetensors_header(path / weights)
    if header is None:
        raise SparsesteerError(f"{path / weights}: missing, or not a safetensors file")
    problems = problems_of(io.read_json(path / "cfg.json"), header)
    if problems:
        raise SparsesteerError(f"{path} would not load in {name}: {'; '.join(problems)}")
