"""dictionary_learning (saprmarks) checkpoints, the layout of the sae-for-vlm release
(ExplainableML/sae-for-vlm, "Sparse Autoencoders Learn Monosemantic Features in VLMs", which trains
with a vendored copy of dictionary_learning).

Layout (dictionary_learning/training.py): `<save_dir>/trainer_<i>/config.json` =
{"trainer": {dict_class, trainer_class, activation_dim, dict_size, k, layer, lm_name,
submodule_name, ...}, "buffer": ...} and `ae.pt`, a torch.save of the state dict (tensors only;
intermediate `checkpoints/ae_<step>.pt` alike). The trainer's input normalisation is folded into the
saved biases (`scale_biases`), so the SAE reads raw activations.

dict_class -> rule -> ours:
- AutoEncoder: encoder.weight [n, d], encoder.bias, decoder.weight [d, n], bias [d];
  ReLU(encoder(x - bias)); x_hat = decoder(f) + bias -> relu.
- AutoEncoderTopK: encoder.*, decoder.weight [d, n], b_dec, k, threshold; the k largest of
  ReLU(encoder(x - b_dec)) (its default encode) -> topk.
- BatchTopKSAE: same tensors; ReLU(pre) * (ReLU(pre) > threshold) at inference -> batchtopk.
- MatroyshkaBatchTopKSAE (sae-for-vlm's main SAEs): W_enc [d, n], b_enc, W_dec [n, d], b_dec, k,
  threshold, group_sizes; ReLU((x - b_dec) @ W_enc + b_enc) thresholded, all groups active ->
  batchtopk with matryoshka prefixes = the cumulative group sizes.
- JumpReluAutoEncoder: W_enc [d, n], b_enc, W_dec [n, d], b_dec, threshold [n];
  ReLU(pre * (pre > threshold)), pre = x @ W_enc + b_enc (b_dec not subtracted) -> jumprelu.
- GatedAutoEncoder: encoder.weight [n, d], decoder_bias, r_mag, gate_bias, mag_bias,
  decoder.weight [d, n] -> jumprelu (common.gated_as_jumprelu).

Hooks: the config's layer / submodule_name are empty in sae-for-vlm runs; the hook is in the
directory name `<dataset>_train_activations_<model>_<layer>_<point>_<sae>_<k>_x<expansion>`:
point post_mlp_residual at layer L = the output of transformers encoder layer L = our
blocks.L.resid_post (offset 0); post_projection (layer -1) = the image embedding = our `head`.
Model names are the transformers repos without their organisation (models/clip.py: openai/,
siglip: google/, dinov2: facebook/).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import torch

from ...utils import io
from ...utils.errors import SparsesteerError
from ..base import SparseAutoencoder
from ..config import SAEConfig
from .common import build_sae, gated_as_jumprelu, listing, read_pickle, require, source_record, tensor_dict
from .hooks import block_hook

CONFIG = "config.json"
WEIGHTS = "ae.pt"
CLASSES = (
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatroyshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
    "GatedAutoEncoder",
)
_DIR_NAME = re.compile(r"_activations_(?P<model>.+)_(?P<layer>-?\d+)_(?P<point>post_mlp_residual|post_projection)_")
_ORGS = {"clip": "openai", "siglip": "google", "dinov2": "facebook"}


def is_dictlearning_config(raw: dict[str, Any]) -> bool:
    return isinstance(raw.get("trainer"), dict) and "dict_class" in raw["trainer"]


def trainer_dir(path: Path) -> Path | None:
    """`path`, or its only `trainer_<i>/` holding a dictionary_learning checkpoint."""
    subs = sorted(p for p in path.glob("trainer_*") if (p / CONFIG).is_file())
    return subs[0] if len(subs) == 1 and not (path / CONFIG).is_file() else None


def _hook_model(path: Path) -> tuple[str | None, str | None]:
    for part in reversed(path.parts):
        m = _DIR_NAME.search(part)
        if m:
            layer, point, model = int(m["layer"]), m["point"], m["model"]
            hook = "head" if point == "post_projection" else block_hook(layer, "resid_post")
            org = _ORGS.get(model.split("-")[0])
            return hook, f"{org}/{model}" if org else model
    return None, None


def _n_d(t: torch.Tensor) -> torch.Tensor:
    """nn.Linear's decoder.weight [d, n] -> [n, d]."""
    return t.t()


def load_dictlearning(path: Path, file: Path | None = None) -> SparseAutoencoder:
    cfg_file = path / CONFIG
    raw = io.read_json(cfg_file)
    tr = raw["trainer"]
    file = file or path / WEIGHTS
    if not file.is_file():
        raise SparsesteerError(f"{path}: a dictionary_learning config.json but no {WEIGHTS} (found: {listing(path)})")
    t = tensor_dict(read_pickle(file), file)
    cls = tr.get("dict_class")
    g = lambda key: require(t, key, file)  # noqa: E731
    k = int(t["k"]) if "k" in t else tr.get("k")
    kw: dict[str, Any] = {"where": file}
    if cls in ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"):
        b_dec = g("bias") if cls == "AutoEncoder" else g("b_dec")
        kw |= {
            "W_enc": g("encoder.weight"),
            "b_enc": g("encoder.bias"),
            "W_dec": _n_d(g("decoder.weight")),
            "b_dec": b_dec,
        }
    elif cls in ("MatroyshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        kw |= {"W_enc": g("W_enc").t(), "b_enc": g("b_enc"), "W_dec": g("W_dec"), "b_dec": g("b_dec")}
    elif cls == "GatedAutoEncoder":
        w, b, thr = gated_as_jumprelu(g("encoder.weight"), g("r_mag"), g("gate_bias"), g("mag_bias"))
        kw |= {"W_enc": w, "b_enc": b, "W_dec": _n_d(g("decoder.weight")), "b_dec": g("decoder_bias"), "threshold": thr}
    else:
        raise SparsesteerError(
            f"{cfg_file}: dictionary_learning dict_class {cls!r} is not supported ({', '.join(CLASSES)})"
        )
    n, d = kw["W_enc"].shape
    extra: dict[str, Any] = {"normalize_decoder": False}
    if cls == "AutoEncoder":
        cfg = SAEConfig(arch="relu", d_in=d, n_latents=n, **extra)
    elif cls == "AutoEncoderTopK":
        cfg = SAEConfig(arch="topk", d_in=d, n_latents=n, k=int(k), **extra)
    elif cls in ("BatchTopKSAE", "MatroyshkaBatchTopKSAE"):
        thr = g("threshold")
        if float(thr) < 0:
            raise SparsesteerError(
                f"{file}: threshold {float(thr)} < 0: the SAE was saved before its inference threshold was set "
                "(threshold_start_step), so it has no per-sample rule"
            )
        if cls == "MatroyshkaBatchTopKSAE":
            sizes = [int(s) for s in g("group_sizes").tolist()]
            extra["matryoshka"] = tuple(itertools.accumulate(sizes))[:-1]
        cfg = SAEConfig(arch="batchtopk", d_in=d, n_latents=n, k=int(k), **extra)
        kw["threshold"] = thr
    else:
        cfg = SAEConfig(arch="jumprelu", d_in=d, n_latents=n, **extra)
        if cls == "JumpReluAutoEncoder":
            kw |= {"threshold": g("threshold"), "subtract_b_dec": False}
    for key, want in (("activation_dim", d), ("dict_size", n)):
        if key in tr and int(tr[key]) != want:
            raise SparsesteerError(f"{cfg_file}: {key}={tr[key]} but {file} holds a {n} x {d} SAE")
    sae = build_sae(cfg, **kw)
    hook, model = _hook_model(path)
    sae.metadata = {
        "hook": hook,
        "model": {"id": model},
        "source": source_record("dictionary_learning", path, [cfg_file, file], raw, dict_class=cls),
    }
    return sae
