"""`sparsesteer reproduce sparsity`: the per-layer, per-token-type sparsity report (claim 1 of the
CLIP-steering paper) for one model and dataset.

    dataset (downloaded if missing), checked: blocks in range, token types the model has, class names
      -> cache: every chosen block's hook, all tokens (or the one configuration), of train and test
      -> sae: one SAE per block x token configuration, trained on train (or loaded from --sae-dir,
         each checked against the model, hook, tokens and width it would read)
      -> metrics: on test, per SAE: % explained variance, cosine, L0 of CLS and of patch rows, L0 per
         patch position, alive latents (all, CLS, patch)
      -> ce: zero-shot CE of test with each hook clean, spliced (SAE output) and zero-ablated ->
         % CE recovered and the spliced accuracy, sharing the clean forward below each hook
      -> report: results.json, results.md (ours; the released suite's figures beside, labelled as
         theirs), plots/

Each stage records the settings it used (`experiments.stages.Pipeline`): rerunning skips current
stages, `--stage NAME` runs one alone. Every stage is a function of the run context
(`run.SparsityRun`); the report stage lives in `report.py`, the CE loop in `splice.py`. Importing
this module does not import torch (`--help` lists the stages).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ....utils import io
from ....utils.config import to_dict
from ...stages import Pipeline, Stage
from ..saes import SAE_FIELDS, train_sae
from .config import SparsityConfig
from .run import SAEKey, SparsityRun, cache_tokens

log = logging.getLogger(__name__)

SAE_MEMORY_BUDGET = 8 << 30
"""Bytes of SAE weights the CE stage holds at once; more SAEs than that share clean passes in groups."""


# ---------------------------------------------------------------------- stages
def cache(run: SparsityRun) -> None:
    """Each chosen block's hook for the test split (and the train split when training), in one
    forward per batch; a cache of other settings in the way is replaced, an interrupted one resumed."""

    c = run.cfg
    splits = [c.train_split, c.test_split] if run.trains else [c.test_split]
    for split in splits:
        cfg = run.cache_config(
            split,
            [run.hook(b) for b in run.blocks],
            cache_tokens(c.tokens),
            run.path("cache", split),
            dtype=c.cache_dtype,
        )
        run.write_cache(cfg)


def _train(run: SparsityRun, key: SAEKey) -> None:
    """Train one SAE into OUT/sae/NAME (`clipsteer.saes.train_sae`: kept when current)."""
    c = run.cfg
    train_sae(run.rows(c.train_split, key), c, run.sae_path(key), seed=c.seed, device=c.device)


def sae(run: SparsityRun) -> None:
    """Train one SAE per block x token configuration on the train split (or check the --sae-dir ones)."""
    if run.trains:
        for key in run.keys():
            _train(run, key)
    else:
        run.check_sae_dir()
    io.write_json(
        run.path("saes.json"),
        {
            k.name: {"block": k.block, "tokens": k.tokens, "hook": run.hook(k.block), "path": str(run.sae_path(k))}
            for k in run.keys()
        },
    )


def metrics(run: SparsityRun) -> None:
    """Per SAE on the test split: EV, cosine, L0 (CLS, patch, per position), alive latents."""
    from ....sae.metrics import token_metrics

    out = {}
    for key in run.keys():
        sae = run.load_sae(key)
        out[key.name] = token_metrics(
            sae,
            run.rows(run.cfg.test_split, key),
            cls_position=run.cls_position,
            patch_positions=run.patch_positions,
            device=run.backbone.device,
        ).to_json()
        out[key.name]["n_latents"] = sae.n_latents
    io.write_json(run.path("metrics.json"), out)


def _groups(run: SparsityRun, keys: list[SAEKey]) -> list[list[SAEKey]]:
    """Keys in groups whose SAEs fit SAE_MEMORY_BUDGET together (one clean pass per group)."""
    per_sae = 4 * 2 * run.backbone.d_model * run.backbone.d_model * run.cfg.expansion  # W_enc + W_dec, float32
    size = max(1, SAE_MEMORY_BUDGET // max(per_sae, 1))
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def ce(run: SparsityRun) -> None:
    """Zero-shot CE of the test images, clean, with each SAE spliced in and with each hook ablated."""
    from ....data.batches import image_batches
    from .splice import Splice, spliced_ce

    c = run.cfg
    bb = run.backbone
    ds = run.dataset(c.test_split)
    run.cache(c.test_split)  # the metrics stage read its rows: the CE must see the same images
    clf = run.classifier()
    rows: dict[str, dict] = {}
    clean = None
    for group in _groups(run, run.keys()):
        splices = [Splice(k.name, run.hook(k.block), k.tokens, run.load_sae(k)) for k in group]
        batches = image_batches(
            ds,
            bb.preprocessor,
            batch_size=c.batch_size,
            workers=c.workers,
            on_bad_image=c.on_bad_image,
            pin_memory=bb.device.type == "cuda",
        )
        pairs = ((b.pixels, b.labels) for b in batches if len(b.indices))
        res = spliced_ce(bb, clf, pairs, splices, total=-(-len(ds) // c.batch_size))
        clean = res.clean
        for s in splices:
            zero, spliced = res.zero[(s.hook, s.tokens)], res.spliced[s.name]
            rows[s.name] = {
                "ce_spliced": spliced.ce,
                "ce_zero_ablation": zero.ce,
                "ce_recovered": res.recovered(s),
                "accuracy_spliced": spliced.accuracy,
                "accuracy_zero_ablation": zero.accuracy,
            }
    assert clean is not None
    io.write_json(
        run.path("ce.json"),
        {
            "n_images": clean.n,
            "templates": c.templates,
            "ce_clean": clean.ce,
            "accuracy_clean": clean.accuracy,
            "saes": rows,
        },
    )


def report(run: SparsityRun) -> None:
    from . import report as write_report

    write_report.write(run)


CACHE_FIELDS = (
    "model",
    "revision",
    "dataset",
    "train_split",
    "test_split",
    "data_root",
    "limit_train",
    "limit_test",
    "seed",
    "blocks",
    "tokens",
    "hook_kind",
    "cache_dtype",
    "sae_dir",
)
STAGES: tuple[Stage[SparsityRun], ...] = (
    Stage(name="cache", fields=CACHE_FIELDS, needs=(), run=cache, help="caching every chosen block of train and test"),
    Stage(name="sae", fields=SAE_FIELDS, needs=("cache",), run=sae, help="one SAE per block and token configuration"),
    Stage(name="metrics", fields=(), needs=("sae",), run=metrics, help="EV, cosine, L0 and alive latents on test"),
    Stage(
        name="ce",
        fields=("templates",),
        needs=("sae",),
        run=ce,
        help="zero-shot CE clean, spliced and ablated (% CE recovered)",
    ),
    Stage(name="report", fields=(), needs=("metrics", "ce"), run=report, help="results.json, results.md, plots"),
)
"""The stages in run order: what each reads from the settings and from earlier stages."""


# ---------------------------------------------------------------------- entry
def reproduce(cfg: SparsityConfig, out: str | Path, stage: str | None = None) -> Path:
    """Check the inputs, then run the experiment into `out` (every stage that is not current, or
    `stage` alone); returns the path of results.md."""
    run = SparsityRun(cfg, out)
    run.check_inputs()
    run.out.mkdir(parents=True, exist_ok=True)
    io.write_json(run.path("config.json"), to_dict(cfg))
    Pipeline(run.out, cfg, STAGES).run(run, stage, log=lambda m: log.info("%s", m))
    return run.path("results.md")
