"""`sparsesteer reproduce vs2`: the VS2 paper's Table 1 (and Table 7) for one backbone and dataset.

    dataset (downloaded if missing)
      -> cached final-layer CLS of train and test (+ every block's CLS of train for SAE_REC^A)
      -> retrieval embeddings (DINOv2 `head`, or CLIP image embeddings)
      -> SAEs with the paper's configuration (final block; PASS; one per block for in-forward rows),
         trained on the train split minus a validation part
      -> zero-shot logits (single prompt and 80-prompt ensemble), CLIP pseudo-labels of train
      -> tuning of every steering method on the validation part of TRAIN (never on test)
      -> every row on the test split -> results.json, results.md, per_class.md, plots/

Each stage records the settings it used (`stages.Pipeline`): rerunning skips stages whose results
are current, and `--stage NAME` runs one stage alone.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.hook_names import hook_name
from ..utils import io
from ..utils.errors import SparsesteerError
from . import vs2_paper
from .stages import Pipeline, Stage
from .vs2_config import VS2Config

log = logging.getLogger(__name__)

CACHE_FIELDS = (
    "model",
    "dataset",
    "train_split",
    "test_split",
    "limit_train",
    "limit_test",
    "cache_dtype",
    "in_forward",
)


class VS2Experiment:
    """One run directory: OUT/{cache, sae, arrays, plots, stages}, results.json, results.md."""

    def __init__(self, cfg: VS2Config, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)
        self._bb = None
        self._ds: dict[str, Any] = {}
        stages = [
            Stage("cache", CACHE_FIELDS, (), self.stage_cache, "caching CLIP CLS activations of train and test"),
            Stage(
                "retrieval", ("retriever",), ("cache",), self.stage_retrieval, "retrieval embeddings of train and test"
            ),
            Stage(
                "sae",
                (
                    "sae_k",
                    "sae_expansion",
                    "sae_lr",
                    "sae_batch_size",
                    "sae_epochs",
                    "sae_dead_after_steps",
                    "pass_weight",
                    "val_fraction",
                    "seed",
                ),
                ("cache",),
                self.stage_sae,
                "training SAEs",
            ),
            Stage("zeroshot", (), ("cache",), self.stage_zeroshot, "zero-shot logits and pseudo-labels"),
            Stage(
                "tune",
                ("neighbours", "positive_rule", "lams", "gammas", "clip_lams", "alphas"),
                ("sae", "zeroshot", "retrieval"),
                self.stage_tune,
                "tuning on the validation part of train",
            ),
            Stage(
                "evaluate", ("gamma_rec", "gate_quantiles"), ("tune",), self.stage_evaluate, "rows on the test split"
            ),
            Stage(
                "inforward",
                ("multi_layer",),
                ("tune",),
                self.stage_inforward,
                "rows that need model forwards (SAE_REC^A, multi-layer VS2)",
            ),
            Stage(
                "report",
                (),
                ("evaluate", "inforward"),
                self.stage_report,
                "writing results.json, results.md, per-class table and plots",
            ),
        ]
        self.pipeline = Pipeline(self.out, cfg, stages)

    # ------------------------------------------------------------------ shared resources
    @property
    def backbone(self):
        if self._bb is None:
            from ..models import load_backbone
            from ..utils.device import resolve_device

            self._bb = load_backbone(self.cfg.model, device=resolve_device(self.cfg.device))
            if self._bb.arch != "clip":
                raise SparsesteerError(
                    f"VS2 needs a CLIP backbone (zero-shot through the CLS head); {self.cfg.model!r} is {self._bb.arch}"
                )
        return self._bb

    def dataset(self, split: str):
        """The split, downloading a built-in dataset first when it is not under the data root."""
        if split not in self._ds:
            from ..data import ensure_dataset, limit_dataset

            name, c = self.cfg.dataset, self.cfg
            limit = c.limit_train if split == c.train_split else c.limit_test
            ds = limit_dataset(ensure_dataset(name, split, data_root=c.data_root), limit, c.seed)
            if not ds.classes:
                raise SparsesteerError(f"dataset {name!r} has no class names: zero-shot classification needs them")
            self._ds[split] = ds
        return self._ds[split]

    @property
    def final_block(self) -> int:
        block, _, _ = vs2_paper.sae_config(self.cfg.model, self.backbone.n_blocks)
        return block

    def sae_shape(self) -> tuple[int, int]:
        _, expansion, k = vs2_paper.sae_config(self.cfg.model, self.backbone.n_blocks)
        return self.cfg.sae_expansion or expansion, self.cfg.sae_k or k

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def classifier(self, templates: str = "single"):
        from ..models.templates import get_templates
        from ..models.zeroshot import ZeroShotClassifier

        return ZeroShotClassifier.build(
            self.backbone,
            self.dataset(self.cfg.test_split).classes,
            get_templates(templates),
            cache_dir=self.path("text"),
        )

    def cls_classifier(self, templates: str = "single"):
        from ..steering.classify import CLSClassifier

        return CLSClassifier(self.backbone, self.classifier(templates))

    def cls_rows(self, split: str, block: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """(CLS vectors [N, d] float32, labels [N]) of a cached split at `block` (default: final)."""
        from ..activations.cache import ActivationCache

        cache = ActivationCache.open(self.path("cache", split), verify="none")
        hook = hook_name(self.final_block if block is None else block)
        view = cache.rows(hook, "cls")
        return view.read(0, view.n_rows).float(), view.labels(0, view.n_rows)

    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        from ..steering.tuning import validation_split

        n = int(np.load(self.path("arrays", "train_labels.npy")).shape[0])
        return validation_split(n, self.cfg.val_fraction, self.cfg.seed)

    def save_array(self, name: str, array: np.ndarray | torch.Tensor) -> None:
        io.write_npy(
            self.path("arrays", f"{name}.npy"), np.asarray(array.cpu() if isinstance(array, torch.Tensor) else array)
        )

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.path("arrays", f"{name}.npy"), allow_pickle=False)

    # ------------------------------------------------------------------ stages
    def stage_cache(self) -> None:
        from ..activations.produce import CacheConfig, cache_activations

        c = self.cfg
        final = hook_name(self.final_block)
        train_hooks = [hook_name(b) for b in range(self.backbone.n_blocks)] if c.in_forward else [final]
        for split, hooks, limit in ((c.train_split, train_hooks, c.limit_train), (c.test_split, [final], c.limit_test)):
            self.dataset(split)  # download / validate first, with clear errors
            cache_activations(
                CacheConfig(
                    model=c.model,
                    dataset=c.dataset,
                    split=split,
                    hooks=tuple(hooks),
                    tokens="cls",
                    out=str(self.path("cache", split)),
                    dtype=c.cache_dtype,
                    batch_size=c.batch_size,
                    limit=limit,
                    limit_seed=c.seed,
                    workers=c.workers,
                    device=c.device,
                    data_root=c.data_root,
                    on_bad_image=c.on_bad_image,
                )
            )
        _, labels = self.cls_rows(c.train_split)
        self.save_array("train_labels", labels)
        _, test_labels = self.cls_rows(c.test_split)
        self.save_array("test_labels", test_labels)

    def stage_retrieval(self) -> None:
        c = self.cfg
        for split in (c.train_split, c.test_split):
            if c.retriever == "clip":
                x, _ = self.cls_rows(split)
                emb = self.cls_classifier().embed(x)
            else:
                from ..activations.cache import ActivationCache
                from ..activations.produce import CacheConfig, cache_activations

                limit = c.limit_train if split == c.train_split else c.limit_test
                out = self.path("cache", f"retriever-{split}")
                cache_activations(
                    CacheConfig(
                        model=c.retriever,
                        dataset=c.dataset,
                        split=split,
                        hooks=("head",),
                        tokens="cls",
                        out=str(out),
                        batch_size=c.batch_size,
                        limit=limit,
                        limit_seed=c.seed,
                        workers=c.workers,
                        device=c.device,
                        data_root=c.data_root,
                        on_bad_image=c.on_bad_image,
                    )
                )
                view = ActivationCache.open(out, verify="none").rows("head")
                emb = view.read(0, view.n_rows).float()
                n_clip = self.load_array("train_labels" if split == c.train_split else "test_labels").shape[0]
                if emb.shape[0] != n_clip:
                    raise SparsesteerError(
                        f"retriever cache of {split} has {emb.shape[0]} rows but the CLIP cache has {n_clip}"
                    )
            self.save_array(f"retrieval_{split}", emb)

    def _sae_cfg(self, pass_weight: float = 0.0):
        from ..sae import SAEConfig

        expansion, k = self.sae_shape()
        return SAEConfig(
            arch="topk",
            k=k,
            expansion=expansion,
            dead_after=self.cfg.sae_dead_after_steps * self.cfg.sae_batch_size,
            pass_weight=pass_weight,
        )

    def _train_cfg(self):
        from ..sae.train import TrainConfig

        c = self.cfg
        return TrainConfig(
            batch_size=c.sae_batch_size,
            lr=c.sae_lr,
            decay="linear",
            epochs=c.sae_epochs,
            seed=c.seed,
            b_dec_init="mean",
            device=c.device,
            checkpoint_every=0,
        )

    def _train_sae(self, name: str, block: int, *, pass_weight: float = 0.0):
        import shutil

        from ..activations.loader import TensorSource
        from ..sae.train import Trainer

        fit, _ = self.split_indices()
        x, labels = self.cls_rows(self.cfg.train_split, block)
        out = self.path("sae", name)
        shutil.rmtree(out, ignore_errors=True)  # a stage rerun retrains from scratch
        source = TensorSource(x[fit], labels=labels[fit], name=f"{self.cfg.train_split} CLS block {block} (fit part)")
        meta = {
            "hook": hook_name(block),
            "tokens": "cls",
            "model": {"id": self.backbone.model_id, "revision": self.backbone.revision},
            "dataset": self.cfg.dataset,
            "split": f"{self.cfg.train_split} (minus validation)",
        }
        return Trainer(source, self._sae_cfg(pass_weight), self._train_cfg(), out, metadata=meta).fit().saes[0]

    def stage_sae(self) -> None:
        final = self.final_block
        self._train_sae("final", final)
        if self.cfg.pass_weight:
            self._train_sae("pass", final, pass_weight=self.cfg.pass_weight)
        if self.cfg.in_forward:
            for b in range(self.backbone.n_blocks):
                if b != final:
                    self._train_sae(f"block{b:02d}", b)

    def load_sae(self, name: str):
        from ..sae import SparseAutoencoder

        return SparseAutoencoder.load(self.path("sae", name), device=self.backbone.device)

    def block_saes(self) -> dict[int, Any]:
        final = self.final_block
        return {b: self.load_sae("final" if b == final else f"block{b:02d}") for b in range(self.backbone.n_blocks)}

    def stage_zeroshot(self) -> None:
        c = self.cfg
        single = self.cls_classifier("single")
        x_test, _ = self.cls_rows(c.test_split)
        self.save_array("logits_zeroshot", single.logits(x_test))
        self.save_array("logits_zeroshot_ensemble", self.cls_classifier("ensemble").logits(x_test))
        x_train, _ = self.cls_rows(c.train_split)
        self.save_array("pseudo_train", single.logits(x_train).argmax(-1))
        self.save_array("pseudo_test", single.logits(x_test).argmax(-1))

    def stage_tune(self) -> None:
        from . import vs2_tuning

        vs2_tuning.tune(self)

    def stage_evaluate(self) -> None:
        from . import vs2_tuning

        vs2_tuning.evaluate_test(self)

    def stage_inforward(self) -> None:
        from ..steering import inforward

        c = self.cfg
        rows: dict[str, Any] = {}
        if c.in_forward:
            tuned = io.read_json(self.path("tuning.json"))
            lam, gamma = tuned["vs2"]["best_lam"], tuned["vs2"]["best_gamma"]
            saes = self.block_saes()
            clf = self.classifier("single")
            ds = self.dataset(c.test_split)
            stop = None
            runs = {"sae_rec_a": inforward.sae_rec_all(saes)}
            for n in c.multi_layer:
                if 1 < n <= self.backbone.n_blocks:
                    runs[f"vs2_last{n}"] = inforward.vs2_last_blocks(saes, self.backbone.n_blocks, n, lam, gamma)
            for key, interventions in runs.items():
                logits, _ = inforward.classify_dataset(
                    self.backbone, clf, ds, interventions, batch_size=c.batch_size, workers=c.workers, stop=stop
                )
                self.save_array(f"logits_{key}", logits)
                rows[key] = {"lam": lam, "gamma": gamma} if key.startswith("vs2") else {}
        io.write_json(self.path("inforward.json"), rows)

    def stage_report(self) -> None:
        from . import vs2_report

        vs2_report.write(self)

    # ------------------------------------------------------------------ entry
    def run(self, stage: str | None = None) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        io.write_json(self.path("config.json"), dataclasses.asdict(self.cfg))
        self.pipeline.run(stage, log=lambda m: log.info("%s", m))
        return self.path("results.md")
