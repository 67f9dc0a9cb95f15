"""`sparsesteer reproduce testbed`: every method judged by its effect on the testbed CLIP, whose
planted mechanisms are known per image.

    cache    -> the swept blocks on `n_sae` training images with the testbed's own planting rates
    sae      -> one SAE per block x seed (`clipsteer.saes.train_sae`)
    detect   -> per block, every latent's and neuron's max over tokens on the selection and test
                images; the best unit for "word present" and for "frame present" chosen by AUROC on
                the selection split, its F1 threshold too; AUROC, AUPRC, P/R/F1 on the test split
    suppress -> the units ranked word vs no word and frame vs no frame (`suppression.sweep.rank_units`,
                the score of `reproduce typographic` / `disentangle`), zero-shot predictions of every
                method x block x n on both splits (`suppression.sweep.predictions`)
    steer    -> per class, the latent most tied to it set on the other classes' images, vs a random latent
    steerability -> `reproduce steerability` on the first seed's SAEs, against the random-init model
    vs2      -> `reproduce vs2` on the clean images, into OUT/vs2 (--no-paper-runs skips it)
    sparsity -> `reproduce sparsity` with ReLU SAEs on the clean images, into OUT/sparsity (likewise)
    control  -> the detect and suppress stages on --control (first seed), into OUT/control
    report   -> results.json, results.md: one table of effects, each with its target and margin

One image set per split carries both shortcuts independently (`planted:`, a misleading word on half
the images, the frame on half): the word's attacked images are those with a word and no frame,
the frame's groups are read on the images without a word, and the images with neither measure the
collateral damage; the unplanted twin of each image (`ds.base`) is the oracle. Importing this
module does not import torch.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...models.hook_names import TokenSelection, hook_name
from ...utils import io
from ...utils.config import to_dict
from ...utils.errors import SparsesteerError
from ..clipsteer.saes import SAE_FIELDS, SAEKey, train_sae
from ..clipsteer.sparsity.config import parse_blocks
from ..clipsteer.suppression.config import parse_ns
from ..context import RunContext
from ..stages import Pipeline, Stage
from .effects_config import EffectsConfig, parse_seeds

log = logging.getLogger(__name__)

TRAIN_PLANTING = "seed=0,word=0.5,cue_in=0.95,cue_out=0.05"
"""The testbed's training rates (`testbed build`'s defaults): what the SAEs see."""
MIXED_PLANTING = {"select": "seed=31,word=0.5,words=misleading,cue_in=0.5,cue_out=0.5",
                  "test": "seed=2,word=0.5,words=misleading,cue_in=0.5,cue_out=0.5"}  # fmt: skip
"""Both shortcuts, each on half the images, independent of each other and of the class."""
ROLES = ("select", "test")
SPARSITY_TOKENS: tuple[TokenSelection, ...] = ("all", "cls", "patch")


@dataclasses.dataclass
class MixedSet:
    """The images of one role with both shortcuts planted, their unplanted twins, and the truth."""

    images: Any
    clean: Any
    labels: np.ndarray
    word: np.ndarray
    cue: np.ndarray
    group: np.ndarray

    def describe(self) -> dict[str, Any]:
        d = self.images.describe()
        return {"dataset": d.get("name"), "split": d.get("split"), "n": len(self.labels), "subset": d.get("subset")}


class EffectsRun(RunContext):
    """One `reproduce testbed` run: settings, run directory, the model and the image sets."""

    cfg: EffectsConfig

    def __init__(self, cfg: EffectsConfig, out: str | Path):
        super().__init__(cfg, out)
        self._sets: dict[str, MixedSet] = {}
        self._pixels: dict[tuple[str, str], Any] = {}

    @property
    def blocks(self) -> tuple[int, ...]:
        return parse_blocks(self.cfg.blocks, self.shape.n_blocks)

    @property
    def seeds(self) -> tuple[int, ...]:
        return parse_seeds(self.cfg.seeds)

    @property
    def ns(self) -> tuple[int, ...]:
        return parse_ns(self.cfg.ns)

    def hook(self, block: int) -> str:
        return hook_name(block, "resid_post")

    def sae_path(self, block: int, seed: int) -> Path:
        return self.path("sae", f"seed{seed}", SAEKey(block, self.cfg.tokens).name)

    def load_sae(self, block: int, seed: int) -> Any:
        from ...sae import SparseAutoencoder

        return SparseAutoencoder.load(self.sae_path(block, seed), device=self.backbone.device)

    def split(self, role: str) -> str:
        return self.cfg.select_split if role == "select" else self.cfg.test_split

    def mixed(self, role: str) -> MixedSet:
        if role not in self._sets:
            from ...data import ensure_dataset
            from ...data.planted import PlantedDataset
            from ...data.subset import Subset, draw

            c = self.cfg
            n = c.n_select if role == "select" else c.n_test
            full = ensure_dataset(
                f"planted:{MIXED_PLANTING[role]}:{c.dataset}", self.split(role), data_root=c.data_root
            )
            assert isinstance(full, PlantedDataset)
            ds = draw(full, "class-stratified", n, seed=0)
            keep = ds.indices if isinstance(ds, Subset) else np.arange(len(full))
            clean = ds.paired(full.base) if isinstance(ds, Subset) else full.base
            a = {k: np.asarray(full.attribute_array(k), dtype=np.int64)[keep] for k in ("word", "cue", "group")}
            self._sets[role] = MixedSet(ds, clean, full.labels()[keep], a["word"], a["cue"], a["group"])
        return self._sets[role]

    def pixels(self, role: str, which: str = "images") -> Any:
        """The preprocessed images of a role's set (`images`, or their unplanted twins `clean`) as one
        tensor, decoded and planted once per run: every pass of every stage reads them (a testbed's
        32 px images: 12 KB each)."""
        import torch

        from ...data.batches import image_batches

        key = (role, which)
        if key not in self._pixels:
            c = self.cfg
            ds = getattr(self.mixed(role), which)
            parts = [
                b.pixels
                for b in image_batches(
                    ds,
                    self.backbone.preprocessor,
                    batch_size=c.batch_size,
                    workers=c.workers,
                    on_bad_image="error",
                    pin_memory=False,
                )  # fmt: skip
            ]
            self._pixels[key] = torch.cat(parts)
        return self._pixels[key]

    def batches(self, role: str, which: str = "images"):  # noqa: ANN201 - (pixels, image ids) batches
        pixels, bs = self.pixels(role, which), self.cfg.batch_size
        for start in range(0, len(pixels), bs):
            yield pixels[start : start + bs], np.arange(start, min(start + bs, len(pixels)), dtype=np.int64)

    def classifier(self) -> Any:
        from ...models.templates import get_templates
        from ...models.zeroshot import ZeroShotClassifier

        classes = list(self.mixed("test").images.classes)
        return ZeroShotClassifier.build(self.backbone, classes, get_templates("ensemble"), cache_dir=self.path("text"))

    def vs2_config(self) -> Any:
        """`reproduce vs2` on the clean images: SAEs and tuning on the selection split, rows on the test
        split, VS2++ retrieving with the testbed's own image embeddings (no DINOv2 offline), Table 7's
        multi-block rows for the block counts the model has."""
        from ..vs2.config import VS2Config

        c = self.cfg
        return VS2Config(
            model=c.model, dataset=c.dataset, train_split=c.select_split, test_split=c.test_split,
            data_root=c.data_root, retriever="clip", device=c.device, batch_size=c.batch_size, workers=c.workers,
            multi_layer=tuple(n for n in (2, 3) if n <= self.shape.n_blocks),
        )  # fmt: skip

    def sparsity_config(self) -> Any:
        """`reproduce sparsity` on the clean images: one ReLU + L1 SAE per block and token type (top-k
        would fix L0), at the run's expansion, steps and batch, trained on n_sae selection-split images
        and measured on n_test test images."""
        from ..clipsteer.sparsity.config import SparsityConfig

        c = self.cfg
        return SparsityConfig(
            model=c.model, dataset=c.dataset, train_split=c.select_split, test_split=c.test_split,
            data_root=c.data_root, limit_train=c.n_sae, limit_test=c.n_test, seed=self.seeds[0], blocks="all",
            tokens=SPARSITY_TOKENS, arch="relu", l1_coeff=c.l1_coeff, expansion=c.expansion, sae_lr=c.sae_lr,
            sae_batch_size=c.sae_batch_size, sae_steps=c.sae_steps, templates="ensemble", device=c.device,
            batch_size=c.batch_size, workers=c.workers,
        )  # fmt: skip

    def check_inputs(self) -> None:
        """Refuse what cannot work before any stage runs: a model without a text tower or the blocks,
        a dataset without CIFAR-10's ten classes, an unreadable --control."""
        from ...data import ensure_dataset
        from .build import check_classes

        c, shape = self.cfg, self.shape
        if not shape.has_text:
            raise SparsesteerError(f"{c.model!r} ({shape.arch}) has no text tower: the testbed's effects are zero-shot")
        self.blocks  # noqa: B018 - range check
        c.check_width(shape.d_model, c.model)
        for role in ROLES:
            ds = ensure_dataset(c.dataset, self.split(role), data_root=c.data_root)
            check_classes(list(ds.classes), f"{c.dataset} [{self.split(role)}]")
        if c.control is not None:
            from ...models.backbone import model_shape

            model_shape(c.control)
        if c.paper_runs:  # their own checks (sizes, kNN, splits) before any stage, not after an hour
            from ..clipsteer.sparsity.run import SparsityRun
            from ..vs2.run import VS2Run

            VS2Run(self.vs2_config(), self.path("vs2")).check_inputs()
            SparsityRun(self.sparsity_config(), self.path("sparsity")).check_inputs()


def cache(run: EffectsRun) -> None:
    """The swept blocks on the SAEs' training images."""
    from ...activations.produce import CacheConfig

    c = run.cfg
    cfg = CacheConfig(
        model=c.model, dataset=f"planted:{TRAIN_PLANTING}:{c.dataset}", split="train",
        hooks=tuple(run.hook(b) for b in run.blocks), tokens=c.tokens, out=str(run.path("cache", "train")),
        batch_size=c.batch_size, limit=c.n_sae, limit_seed=0, workers=c.workers, device=c.device,
        data_root=c.data_root,
    )  # fmt: skip
    run.write_cache(cfg)


def sae(run: EffectsRun) -> None:
    """One SAE per block and seed."""
    from ...activations.cache import ActivationCache

    c = run.cfg
    cached = ActivationCache.open(run.path("cache", "train"), verify="none")
    for seed in run.seeds:
        for b in run.blocks:
            train_sae(cached.rows(run.hook(b), c.tokens), c, run.sae_path(b, seed), seed=seed, device=c.device)


def detect(run: EffectsRun) -> None:
    from .effects_compute import detection

    io.write_json(run.path("detect.json"), detection(run))


def suppress(run: EffectsRun) -> None:
    from .effects_compute import suppression

    io.write_json(run.path("suppress.json"), suppression(run))


def steer(run: EffectsRun) -> None:
    from .effects_compute import steering

    io.write_json(run.path("steer.json"), steering(run))


STEERABILITY = {"n_images": 96, "latent_fraction": 0.0625, "neuron_fraction": 0.5}
"""`reproduce steerability`'s sample on the testbed: 64 of each SAE's 1,024 latents and 64 of the 128
neurons per block, 96 test images, on the trained model and on its random-init copy."""


def steerability(run: EffectsRun) -> None:
    """`reproduce steerability` with the first seed's SAEs, the class names as the vocabulary."""
    from ..clipsteer.steerability.config import SteerabilityConfig
    from ..clipsteer.steerability.pipeline import reproduce as measure

    c = run.cfg
    vocab = run.path("steerability-vocab.txt")
    io.write_text(vocab, "\n".join(run.mixed("test").images.classes) + "\n")
    cfg = SteerabilityConfig(
        model=c.model, sae=tuple(str(run.sae_path(b, run.seeds[0])) for b in run.blocks),
        dataset=c.dataset, split=c.test_split, data_root=c.data_root, vocab=str(vocab),
        vocab_template="a photo of a {}.", device=c.device, batch_size=c.batch_size, workers=c.workers,
        **STEERABILITY,  # type: ignore[arg-type]
    )  # fmt: skip
    measure(cfg, run.path("steerability"))


def vs2(run: EffectsRun) -> None:
    """`reproduce vs2` on the clean images (`EffectsRun.vs2_config`)."""
    from ..vs2.pipeline import reproduce as measure

    if not run.cfg.paper_runs:
        shutil.rmtree(run.path("vs2"), ignore_errors=True)
        return
    measure(run.vs2_config(), run.path("vs2"))


def sparsity(run: EffectsRun) -> None:
    """`reproduce sparsity` on the clean images (`EffectsRun.sparsity_config`)."""
    from ..clipsteer.sparsity.pipeline import reproduce as measure

    if not run.cfg.paper_runs:
        shutil.rmtree(run.path("sparsity"), ignore_errors=True)
        return
    measure(run.sparsity_config(), run.path("sparsity"))


def control(run: EffectsRun) -> None:
    """The detect and suppress stages on the untrained-mechanism testbed (first seed)."""
    c = run.cfg
    if c.control is None:
        shutil.rmtree(run.path("control"), ignore_errors=True)
        return
    sub = dataclasses.replace(c, model=c.control, control=None, seeds=str(run.seeds[0]))
    sub_run = EffectsRun(sub, run.path("control"))
    sub_run.check_inputs()
    sub_run.out.mkdir(parents=True, exist_ok=True)
    io.write_json(sub_run.path("config.json"), to_dict(sub))
    Pipeline(sub_run.out, sub, STAGES[:4]).run(sub_run, None, log=lambda m: log.info("control: %s", m))


def report(run: EffectsRun) -> None:
    from .effects_report import write

    write(run)


COMMON = ("model", "dataset", "data_root", "blocks", "tokens")
STAGES: tuple[Stage[EffectsRun], ...] = (
    Stage("cache", (*COMMON, "n_sae"), (), cache, "caching the swept blocks on the SAEs' training images"),
    Stage("sae", (*SAE_FIELDS, "seeds"), ("cache",), sae, "one SAE per block and seed"),
    Stage("detect", ("select_split", "test_split", "n_select", "n_test"), ("sae",), detect, "detection scores"),
    Stage(
        "suppress",
        ("select_split", "test_split", "n_select", "n_test", "ns"),
        ("sae",),
        suppress,
        "suppression: ranking, then zero-shot predictions per method x block x n",
    ),  # fmt: skip
    Stage(
        "steer",
        ("select_split", "test_split", "n_select", "n_test"),
        ("sae",),
        steer,
        "steering: the latent most tied to each class, set on images of the other classes",
    ),
    Stage(
        "steerability",
        ("test_split", "seeds"),
        ("sae",),
        steerability,
        "reproduce steerability on the SAEs of the first seed, against the random-init model",
    ),
    Stage(
        "vs2",
        ("model", "dataset", "data_root", "select_split", "test_split", "paper_runs"),
        (),
        vs2,
        "reproduce vs2 on the clean images (VS2, VS2++, PASS on the final CLS)",
    ),
    Stage(
        "sparsity",
        (
            "model",
            "dataset",
            "data_root",
            "select_split",
            "test_split",
            "n_sae",
            "n_test",
            "seeds",
            "expansion",
            "l1_coeff",
            "sae_lr",
            "sae_batch_size",
            "sae_steps",
            "paper_runs",
        ),
        (),
        sparsity,
        "reproduce sparsity on the clean images (ReLU SAEs per block and token type)",
    ),  # fmt: skip
    Stage(
        "control",
        (*COMMON, *SAE_FIELDS, "control", "seeds", "select_split", "test_split", "n_sae", "n_select", "n_test", "ns"),
        (),
        control,
        "the negative control (--control)",
    ),  # fmt: skip
    Stage(
        "report",
        (),
        ("detect", "suppress", "steer", "steerability", "vs2", "sparsity", "control"),
        report,
        "results.json, results.md",
    ),
)


def reproduce(cfg: EffectsConfig, out: str | Path, stage: str | None = None) -> Path:
    """Check the inputs, then run every stage into `out`; returns the path of results.md."""
    run = EffectsRun(cfg, out)
    run.check_inputs()
    run.out.mkdir(parents=True, exist_ok=True)
    io.write_json(run.path("config.json"), to_dict(cfg))
    Pipeline(run.out, cfg, STAGES).run(run, stage, log=lambda m: log.info("%s", m))
    return run.path("results.md")
