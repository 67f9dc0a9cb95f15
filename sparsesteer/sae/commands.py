"""`sparsesteer train` and `sparsesteer evaluate`."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path
from typing import Any

from ..utils import config as config_utils
from ..utils.errors import SparsesteerError

# SAE fields that take comma-separated lists on the command line; their product is the sweep.
SWEEP_FIELDS = ("arch", "k", "expansion", "n_latents", "l1_coeff")

EXAMPLES = """examples:
  sparsesteer train --activations runs/cache --arch topk --k 64 --expansion 4 --out runs/sae
  sparsesteer train --activations acts.npy --arch topk --k 32,64,128 --n-latents 3072 --out runs/sweep
  sparsesteer train --activations runs/cache --hook blocks.7.resid_post --tokens patch --out runs/sae --resume
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils.cli import HelpFormatter
    from .config import SAEConfig, TrainConfig

    p = sub.add_parser(
        "train",
        help="train SAE(s) on cached activations",
        description="Train one SAE, or a sweep of SAEs on the same batches (comma-separated values of "
        f"{', '.join('--' + f.replace('_', '-') for f in SWEEP_FIELDS)} form a grid). "
        "Writes cfg.json + sae.safetensors, metrics.jsonl and resumable checkpoints to --out.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--activations", required=True, metavar="PATH", help="activation cache directory, or a .npy file [N, d]"
    )
    data.add_argument("--hook", help="hook point to train on when the cache holds several (default: its only hook)")
    data.add_argument("--tokens", help="train on these rows of the cache: cls, patch or all (default: all cached rows)")
    data.add_argument("--labels", metavar="NPY", help="labels .npy [N] for a .npy activations file (PASS needs labels)")
    data.add_argument("--no-verify", action="store_true", help="skip checksum verification of cache shards")
    data.add_argument("--allow-incomplete", action="store_true", help="train on a cache whose writing has not finished")
    arch = p.add_argument_group("SAE (comma-separated values of the first five make a sweep)")
    for name in SWEEP_FIELDS:
        arch.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar="V[,V...]",
            help=config_utils.help_for(SAEConfig, name),
        )
    config_utils.add_arguments(
        arch,
        SAEConfig,
        [
            "select",
            "normalize_decoder",
            "l1_weight_by_decoder_norm",
            "aux_k",
            "aux_coeff",
            "dead_after",
            "matryoshka",
            "threshold_ema",
            "pass_ema",
        ],
    )
    arch.add_argument(
        "--pass-weight",
        dest="pass_weight",
        nargs="?",
        const=0.8,
        type=float,
        default=None,
        metavar="W",
        help="enable PASS prototype alignment with weight W (0.8 when given without a value; needs labels) (default: off)",
    )
    loop = p.add_argument_group("training loop")
    config_utils.add_arguments(loop, TrainConfig)
    p.add_argument("--config", metavar="TOML", help="TOML/JSON file with [sae] and [train] tables; flags override it")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds (by default a run starts only in a new or empty directory)",
    )
    p.set_defaults(func=run_train)

    e = sub.add_parser(
        "evaluate",
        help="measure an SAE on activations (FVU, L0, dead/dense, ...)",
        description="Reconstruction and sparsity metrics of an SAE over activations; writes JSON and Markdown.",
        formatter_class=HelpFormatter,
    )
    e.add_argument(
        "--sae", required=True, metavar="DIR", help="SAE directory (sparsesteer, sparsify or SAELens layout)"
    )
    e.add_argument("--activations", required=True, metavar="PATH", help="activation cache directory or .npy file")
    e.add_argument("--hook", help="hook point in a multi-hook cache (default: the SAE's hook)")
    e.add_argument("--tokens", help="cls, patch or all rows of the cache (default: all cached rows)")
    e.add_argument("--batch-size", type=int, default=4096, help="rows per batch (does not change the metrics)")
    e.add_argument("--max-rows", type=int, default=None, help="evaluate only the first N rows")
    e.add_argument("--device", default="auto", help="cpu, cuda, ... or auto")
    e.add_argument("--out", metavar="PATH", help="metrics JSON file or directory (default: SAE_DIR/eval.json)")
    e.set_defaults(func=run_evaluate, output_args=())  # --out may name a file: checked in run_evaluate


def _split(value: Any, name: str) -> list[str]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise SparsesteerError(f"--{name.replace('_', '-')} needs at least one value")
    return items


def sweep_configs(args: argparse.Namespace, base: dict[str, Any]) -> list[Any]:
    """The product of the comma-separated sweep fields, each as an SAEConfig."""
    from .config import SAEConfig

    if args.expansion is not None and args.n_latents is not None:
        raise SparsesteerError("give --expansion or --n-latents, not both")
    lists = {name: _split(getattr(args, name), name) for name in SWEEP_FIELDS if getattr(args, name) is not None}
    single = {
        k: v
        for k, v in vars(args).items()
        if k in {f.name for f in dataclasses.fields(SAEConfig)} and k not in SWEEP_FIELDS and v is not None
    }
    cfgs = []
    keys = list(lists)
    for combo in itertools.product(*(lists[k] for k in keys)):
        data = {**base, **single, **dict(zip(keys, combo))}
        cfgs.append(config_utils.from_dict(SAEConfig, data, where="SAE config"))
    _check_grid(cfgs, {k: v for k, v in lists.items() if len(v) > 1})
    return cfgs


def _check_grid(cfgs: list[Any], swept: dict[str, list[str]]) -> None:
    """Refuse a grid whose points would train identical SAEs: an axis that the architecture does
    not read (k on relu, l1-coeff on topk), or a value given twice."""
    from ..utils.config import to_dict
    from .config import APPLIES_TO

    for axis, values in swept.items():
        flag = "--" + axis.replace("_", "-")
        for cfg in cfgs:
            if not cfg.applies(axis):
                raise SparsesteerError(
                    f"{flag} sweeps {','.join(values)} but arch {cfg.arch} does not use {axis} (only "
                    f"{', '.join(APPLIES_TO[axis])} do): the grid would train identical {cfg.arch} SAEs; "
                    f"sweep {axis} over those architectures only, and train {cfg.arch} separately"
                )
    seen: dict[str, str] = {}
    for cfg in cfgs:
        key = repr(sorted((k, v) for k, v in to_dict(cfg).items() if cfg.applies(k)))
        if key in seen:
            raise SparsesteerError(f"the sweep lists the same SAE twice ({cfg.name}): remove the repeated value")
        seen[key] = cfg.name


def source_metadata(path: str | Path, hook: str | None, tokens: str | None) -> dict[str, Any]:
    """Hook, model, token selection and dataset of a cache directory, for the SAE's cfg.json."""
    path = Path(path)
    hooks = _cache_hooks(path)
    if hooks is None:
        return {"hook": hook, "model": None, "tokens": tokens, "activations": str(path)}
    from ..activations.cache import ActivationCache

    settings = ActivationCache.open(path, verify="none").settings
    return {
        "hook": hook or (hooks[0] if len(hooks) == 1 else None),
        "model": settings.model,
        "tokens": tokens or settings.tokens,
        "activations": str(path.resolve()),
        "dataset": settings.dataset,
        "split": settings.split,
    }


def run_train(args: argparse.Namespace) -> int:
    from ..activations.loader import open_source
    from .train import TrainConfig, Trainer, check_run_dir

    file_data = config_utils.load_file(args.config) if args.config else {}
    unknown_tables = set(file_data) - {"sae", "train"}
    if unknown_tables:
        raise SparsesteerError(f"{args.config}: unknown table(s) {sorted(unknown_tables)}; use [sae] and [train]")
    sae_cfgs = sweep_configs(args, dict(file_data.get("sae", {})))
    train_cfg = config_utils.from_dict(
        TrainConfig, {**file_data.get("train", {}), **config_utils.overrides(args, TrainConfig)}, where="train config"
    )
    check_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)  # before any data is read
    source = open_source(
        args.activations,
        hook=args.hook,
        tokens=args.tokens,
        labels=args.labels,
        verify="none" if args.no_verify else "lazy",
        require_complete=not args.allow_incomplete,
    )
    meta = source_metadata(args.activations, args.hook, args.tokens)
    trainer = Trainer(source, sae_cfgs, train_cfg, args.out, metadata=meta)
    result = trainer.fit(resume=args.resume, overwrite=args.overwrite)
    for path, metrics in zip(result.paths, result.metrics):
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("fvu", "l0", "dead_frac"))
        print(f"{path}: {summary}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..activations.loader import open_source
    from ..utils import io
    from ..utils.device import resolve_device
    from .base import SparseAutoencoder
    from .metrics import eval_paths, evaluate, save_eval

    if args.batch_size < 1:
        raise SparsesteerError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_rows is not None and args.max_rows < 1:
        raise SparsesteerError(f"--max-rows must be >= 1, got {args.max_rows}")
    out = eval_paths(args.out or Path(args.sae) / "eval.json")[0]
    io.check_writable_dir(out.parent, what="--out", given=out)
    device = resolve_device(args.device)
    sae = SparseAutoencoder.load(args.sae, device=device)
    meta = source_metadata(args.activations, args.hook or sae.metadata.get("hook"), args.tokens)
    cache_hooks = _cache_hooks(args.activations)
    hook = args.hook
    if hook is None and cache_hooks and len(cache_hooks) > 1:
        hook = sae.metadata.get("hook")
    sae_hook = sae.metadata.get("hook")
    if sae_hook and meta.get("hook") and sae_hook != meta["hook"]:
        raise SparsesteerError(
            f"the SAE was trained on {sae_hook} but the activations are from {meta['hook']}; pass matching activations"
        )
    source = open_source(args.activations, hook=hook, tokens=args.tokens)
    if source.d != sae.d_in:
        raise SparsesteerError(f"activation width {source.d} does not match the SAE's d_in={sae.d_in} ({args.sae})")
    with torch.no_grad():
        result = evaluate(sae, source, batch_size=args.batch_size, max_rows=args.max_rows, device=device)
    context = {
        "sae": str(Path(args.sae).resolve()),
        "activations": str(Path(args.activations).resolve()),
        "hook": meta.get("hook"),
        "tokens": meta.get("tokens"),
        "model": meta.get("model"),
        "dataset": meta.get("dataset"),
        "split": meta.get("split"),
        "arch": sae.cfg.arch,
        "n_latents": sae.n_latents,
        "k": sae.cfg.k if sae.cfg.uses_k else None,
    }
    json_path, md_path = save_eval(result, out, context=context)
    print(result.to_markdown())
    print(f"wrote {json_path} and {md_path}")
    return 0


def _cache_hooks(path: str | Path) -> list[str] | None:
    """The hooks of a cache directory, or None when `path` is not one."""
    if not (Path(path) / "manifest.json").is_file():
        return None
    from ..activations.cache import ActivationCache

    return list(ActivationCache.open(path, verify="none").hooks)
