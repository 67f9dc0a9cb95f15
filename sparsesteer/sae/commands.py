"""`sparsesteer train`, and the model-free part of `sparsesteer evaluate` (the command itself is
registered from `experiments/judge_commands.py`, which adds the suites that need a model)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils import config as config_utils
from ..utils.errors import SparsesteerError, unknown

if TYPE_CHECKING:
    from ..activations.cache import RowSource

log = logging.getLogger(__name__)

# SAE fields that take comma-separated lists on the command line; their product is the sweep.
SWEEP_FIELDS = ("arch", "k", "expansion", "n_latents", "l1_coeff")

EXAMPLES = """examples:
  sparsesteer train --activations runs/cache --arch topk --k 64 --expansion 4 --out runs/sae
  sparsesteer train --activations acts.npy --arch topk --k 32,64,128 --n-latents 3072 --out runs/sweep
  sparsesteer train --activations runs/cache --hook blocks.7.resid_post --tokens patch --out runs/sae --resume
  sparsesteer train --model openai/clip-vit-base-patch32 --dataset cifar100 --hook blocks.5.resid_post \
      --hook blocks.9.resid_post --tokens all --k 64 --expansion 16 --steps 20000 --out runs/stream
  torchrun --nproc-per-node 4 -m sparsesteer train --activations runs/cache --k 64 --batch-size 4096 --out runs/ddp
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils.cli import HelpFormatter, add_overwrite
    from .config import SAEConfig, TrainConfig, TrainData

    p = sub.add_parser(
        "train",
        help="train SAE(s) on cached activations",
        description="Train one SAE, or a sweep of SAEs on the same batches (comma-separated values of "
        f"{', '.join('--' + f.replace('_', '-') for f in SWEEP_FIELDS)} form a grid). "
        "Writes cfg.json + sae.safetensors, metrics.jsonl and resumable checkpoints to --out; the last "
        "checkpoint is deleted when the run finishes (--keep-state keeps it).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data and run directory")
    config_utils.add_arguments(
        data,
        TrainData,
        flags={"hooks": "--hook"},
        metavars={"activations": "PATH", "labels": "NPY", "out": "DIR", "limit": "N"},
    )
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
    p.set_defaults(func=run_train)

    from .config import ExportConfig

    e = sub.add_parser(
        "export",
        help="write an SAE in SAELens' or sparsify's layout",
        description="Write one of our SAEs (a directory or hf:REPO[/SUBFOLDER][@REVISION]) in SAELens' layout "
        "(cfg.json + sae_weights.safetensors; relu, topk, jumprelu, batchtopk as jumprelu) or sparsify's "
        "(cfg.json + sae.safetensors; topk only). The files are checked against what the target library's "
        "own loader requires, then read back and their encodings compared with the original's. See "
        "docs/formats.md.",
        epilog="examples:\n  sparsesteer export --sae runs/sae --format saelens --out runs/sae-saelens\n"
        "  sparsesteer export --sae runs/npy-sae --format saelens --hook blocks.9.resid_post --out runs/sae-saelens\n"
        "  sparsesteer export --sae runs/sae --format sparsify --out runs/sparsify/blocks.9.resid_post\n",
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(e, ExportConfig, metavars={"sae": "DIR|hf:REPO", "out": "DIR"})
    add_overwrite(e)
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..utils import outputs
    from .base import SparseAutoencoder
    from .config import ExportConfig
    from .export import export_sae
    from .formats.peers import PEERS

    cfg = config_utils.from_args(ExportConfig, args)
    outputs.claim(cfg.out, overwrite=args.overwrite, inputs=[cfg.sae])  # before the SAE is read (or downloaded)
    out = export_sae(SparseAutoencoder.load(cfg.sae), cfg.format, cfg.out, hook=cfg.hook)
    print(f"wrote {cfg.format} SAE to {out} (checked against {PEERS[cfg.format][0]}'s loader's requirements)")
    return 0


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


def run_train(args: argparse.Namespace) -> int:
    from ..activations.loader import open_source
    from ..utils import distributed
    from ..utils.device import resolve_device
    from .config import TrainData
    from .train import TrainConfig, Trainer, check_run_dir, summary

    file_data = config_utils.load_file(args.config) if args.config else {}
    unknown_tables = set(file_data) - {"sae", "train"}
    if unknown_tables:
        raise SparsesteerError(f"{args.config}: unknown table(s) {sorted(unknown_tables)}; use [sae] and [train]")
    run = config_utils.from_args(TrainData, args, where="train")
    sae_cfgs = sweep_configs(args, dict(file_data.get("sae", {})))
    train_cfg = config_utils.from_dict(
        TrainConfig, {**file_data.get("train", {}), **config_utils.overrides(args, TrainConfig)}, where="train config"
    )
    check_run_dir(run.out, resume=run.resume, overwrite=run.overwrite)  # before any data is read
    world = distributed.init(resolve_device(train_cfg.device))  # a no-op outside torchrun
    if run.resume and world.rank == 0:  # rank 0 writes the run directory; the others never do
        from ..utils.io import remove_stale_temps

        remove_stale_temps(run.out)  # half-written files of the run that was killed
    source: RowSource
    if run.activations is not None:
        source = open_source(
            run.activations,
            hook=run.hooks[0] if run.hooks else None,
            tokens=run.tokens,
            labels=run.labels,
            verify="lazy" if run.verify else "none",
            require_complete=not run.allow_incomplete,
        )
    else:  # TrainData: exactly one of --activations and --model
        from ..activations.stream import model_widths, open_model_rows

        for d in model_widths(run):  # the flags against the model's config, before the load
            for c in sae_cfgs:
                c.resolved(d)
        stream = open_model_rows(run, train_cfg)
        source = stream
    trainer = Trainer(source, sae_cfgs, train_cfg, run.out)  # provenance comes from the source
    if run.model is not None and world.rank == 0:
        log.info("%s", stream.cost(trainer.total * train_cfg.batch_size))
    try:
        result = trainer.fit(resume=run.resume, overwrite=run.overwrite, stop_at=run.stop_at, keep_state=run.keep_state)
    except OSError as e:
        if e.filename is None:  # a failed write (disk full) inside a checkpoint: say where
            e.filename = str(run.out)
        raise
    finally:
        distributed.shutdown()
    if world.rank != 0:
        return 0
    if result.steps < trainer.total:
        print(f"{run.out}: stopped at step {result.steps} of {trainer.total} (checkpoint saved); --resume continues")
        return 0
    for path, metrics in zip(result.paths, result.metrics):
        print(f"{path}: {summary(metrics)}")
    if len(result.paths) > 1:
        print(f"wrote {sweep_plot(run.out, source.describe(), sae_cfgs, result.metrics)}")
    return 0


def sweep_plot(out: str | Path, data: dict[str, Any], sae_cfgs: list[Any], metrics: list[dict[str, float]]) -> Path:
    """OUT/fvu_vs_l0.png: the sweep's members by their last logged training FVU and L0."""
    from ..utils.plots import fvu_vs_l0

    points = [{"name": c.name, "arch": c.arch, **m} for c, m in zip(sae_cfgs, metrics)]
    model = (data.get("model") or {}).get("id") or "unknown model"
    dataset = data.get("dataset") or "unknown data"
    where = f"{model} {data.get('hook') or ''} {data.get('tokens') or ''} on {dataset} {data.get('split') or ''}"
    return fvu_vs_l0(Path(out) / "fvu_vs_l0.png", points, title=f"sweep: {where}\ntraining FVU at the last logged step")


def run_evaluate(args: argparse.Namespace, extra: Any = None) -> int:
    """`evaluate`: the reconstruction report, or with --suite `run_judge` (`extra`: see there)."""
    import torch

    from ..activations.loader import open_source
    from ..utils import outputs
    from ..utils.device import resolve_device
    from .base import SparseAutoencoder
    from .config import EvaluateConfig
    from .metrics import eval_files, eval_paths, evaluate, save_eval
    from .provenance import Provenance, check_agree, rows_for

    overwrite = bool(getattr(args, "overwrite", False))
    cfg = config_utils.from_args(EvaluateConfig, args, where="evaluate")
    if cfg.suite is not None:
        return run_judge(cfg, extra, overwrite=overwrite)
    if len(cfg.sae) > 1:
        raise SparsesteerError("several --sae are compared by the suites: add --suite (e.g. --suite default)")
    sae_dir = cfg.sae[0]
    out = eval_paths(cfg.out or Path(sae_dir) / "eval.json")[0]
    outputs.claim_files(eval_files(out), overwrite=overwrite)  # an earlier evaluation is not replaced silently
    device = resolve_device(cfg.device)
    sae = SparseAutoencoder.load(sae_dir, device=device)
    path = Path(cfg.activations)
    source: RowSource
    if path.is_dir() and (path / "manifest.json").is_file():
        from ..activations.cache import ActivationCache

        source = rows_for(ActivationCache.open(path), sae.provenance, hook=cfg.hook, tokens=cfg.tokens)
    else:
        source = open_source(cfg.activations, hook=cfg.hook, tokens=cfg.tokens)
    if source.d != sae.d_in:  # what --allow-mismatch cannot override
        raise SparsesteerError(f"activation width {source.d} does not match the SAE's d_in={sae.d_in} ({sae_dir})")
    data = Provenance.from_rows(source.describe())
    notes = check_agree(
        f"the SAE ({sae_dir})", sae.provenance, f"the activations ({cfg.activations})", data, allow=cfg.allow_mismatch
    )
    with torch.no_grad():
        result = evaluate(sae, source, batch_size=cfg.batch_size, max_rows=cfg.max_rows, device=device)
    context: dict[str, Any] = {
        "sae": str(Path(sae_dir).resolve()),
        "activations": str(path.resolve()),
        "hook": data.hook,
        "tokens": list(data.tokens) if isinstance(data.tokens, tuple) else data.tokens,
        "model": {"id": data.model_id, "revision": data.model_revision},
        "dataset": data.dataset,
        "split": data.split,
        "arch": sae.cfg.arch,
        "n_latents": sae.n_latents,
        "k": sae.cfg.k if sae.cfg.uses_k else None,
    }
    if notes:
        context["provenance_overridden"] = notes
    json_path, md_path = save_eval(result, out, context=context)
    print(result.to_markdown())
    for note in notes:
        print(f"provenance check overridden (--allow-mismatch): {note}")
    print(f"wrote {json_path} and {md_path}")
    return 0


def _open_for(sae: Any, cfg: Any) -> tuple[Any, int | None, list[int]]:
    """(rows of --activations that the SAE reads, CLS token index, patch token indices)."""
    from ..activations.loader import open_source
    from .provenance import rows_for

    path = Path(cfg.activations)
    if path.is_dir() and (path / "manifest.json").is_file():
        from ..activations.cache import ActivationCache

        cache = ActivationCache.open(path)
        cls = cache.settings.cls_position
        patches = [p for p in cache.settings.token_positions if p != cls]
        return rows_for(cache, sae.provenance, hook=cfg.hook, tokens=cfg.tokens), cls, patches
    return open_source(cfg.activations, hook=cfg.hook, tokens=cfg.tokens), None, []


def run_judge(cfg: Any, extra: Any = None, *, overwrite: bool = False) -> int:
    """`evaluate --suite`: every --sae judged by the suites, one JSON + one Markdown comparison table.

    `extra(sae_dir, sae, source, suites)` checks the inputs of the model suites (`judge.MODEL_SUITES`, from
    the experiments floor) before any work and returns the function that measures them (-> list of
    `MetricResult`); without it they are refused. `overwrite` replaces an earlier judge.json/.md."""
    from ..utils import outputs
    from ..utils.device import resolve_device
    from ..utils.report import write_result
    from .base import SparseAutoencoder
    from .judge import MODEL_SUITES, SUITES, JudgeSettings, comparison_markdown, judge
    from .metrics import eval_paths
    from .provenance import Provenance, check_agree

    names = _split(cfg.suite, "--suite")
    for name in names:  # a misspelt suite fails before any work
        if name not in (*SUITES, *MODEL_SUITES, "default"):
            raise unknown("suite (--suite)", name, (*SUITES, *MODEL_SUITES, "default"))
    default = "default" in names
    if cfg.out is None and len(cfg.sae) > 1:
        raise SparsesteerError("several --sae: give --out (a directory or .json file for the comparison)")
    out = eval_paths(cfg.out or Path(cfg.sae[0]))[0]
    out = out.with_name("judge.json") if out.name == "eval.json" else out
    outputs.claim_files([out.with_suffix(".json"), out.with_suffix(".md")], overwrite=overwrite)
    device = resolve_device(cfg.device)
    st = JudgeSettings(
        batch_size=cfg.batch_size,
        max_rows=cfg.max_rows,
        max_images=cfg.max_images,
        seed=cfg.seed,
        min_active_patches=cfg.min_active_patches,
        max_active_frac=cfg.max_active_frac,
        images_per_latent=cfg.images_per_latent,
    )
    saes = [SparseAutoencoder.load(d, device=device) for d in cfg.sae]  # all load before any work
    results, entries = {}, []
    for sae_dir, sae in zip(cfg.sae, saes):
        source, cls, patches = _open_for(sae, cfg)
        if source.d != sae.d_in:
            raise SparsesteerError(f"activation width {source.d} does not match the SAE's d_in={sae.d_in} ({sae_dir})")
        notes = check_agree(
            f"the SAE ({sae_dir})",
            sae.provenance,
            f"the activations ({cfg.activations})",
            Provenance.from_rows(source.describe()),
            allow=cfg.allow_mismatch,
        )
        suites = [n for n in names if n != "default"]
        if default:
            has_labels = source.labels(0, min(1, source.n_rows)) is not None
            tokens = set(source.row_index(0, min(source.n_rows, 4096))[:, 1]) if hasattr(source, "row_index") else set()
            for s in SUITES:
                if s in suites or (s in ("preservation", "sparse_probing") and not has_labels):
                    continue
                if s == "localisation" and not (patches and set(patches) <= tokens):
                    continue
                suites.append(s)
        model_suites = [s for s in suites if s in MODEL_SUITES] if extra is not None else []
        plain = [s for s in suites if s not in model_suites]
        measure = extra(sae_dir, sae, source, model_suites) if model_suites else None  # checks before any work
        metrics = (
            judge(sae, source, suites=plain, settings=st, cls_position=cls, patch_positions=patches) if plain else []
        )
        if measure is not None:
            metrics += measure()
        label = Path(sae_dir).name or sae_dir
        while label in results:
            label += "'"
        results[label] = metrics
        entries.append(
            {
                "sae": sae_dir,
                "arch": sae.cfg.arch,
                "n_latents": sae.n_latents,
                "suites": suites,
                "metrics": [m.to_json() for m in metrics],
                **({"provenance_overridden": notes} if notes else {}),
            }
        )
    md = comparison_markdown(results)
    md += "\n" + "\n".join(f"- {k}: {e['sae']}" for k, e in zip(results, entries)) + "\n"
    doc = {"activations": str(Path(cfg.activations).resolve()), "saes": entries}
    json_path, md_path = write_result(out.parent, out.stem, doc, md)
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return 0
