"""`sparsesteer testbed build`: train the testbed CLIP on a labelled dataset with planted mechanisms.

    base images --augment (flip, shift)--> plant (word / frame of planted:, per image index)
        --> the model's own preprocessing --> image tower;  class captions --> text tower
    loss: cross-entropy of each image against the 10 class captions (one random template per class
    and step), the zero-shot classifier that `sparsesteer zeroshot` later uses.

Every random choice is a pure function of (seed, step) or (seed, image index): the epoch's order
from `default_rng([seed, epoch])`, a step's augmentation and templates from `default_rng([seed,
1, step])`, what is planted from `planted:`'s hash. So a run killed at any moment and started again
(the same command) resumes from its last checkpoint and ends with the same weights, bit for bit on
the same CPU and thread count. Checkpoints are `state/STEP/` (model and AdamW moments as
safetensors, `state.json` written last); the curves go to `curves.jsonl`.

A share of the training split (every `val_every`-th image) is held out as a validation split: the
per-epoch curves are measured there, never on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data.planted import PlantedDataset, PlantOptions
from ...models.testbed import TestbedShape, caption_words, make_testbed_clip
from ...utils import io
from ...utils.errors import SparsesteerError
from ...utils.settings_hash import first_difference, settings_sha256

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Settings of `sparsesteer testbed build`."""

    dataset: str
    """Labelled training images: cifar10 (downloaded if missing), or folder:PATH with CIFAR-10's classes."""
    out: str
    """Run directory: checkpoints, curves, and the trained model under OUT/model."""
    split: str = "train"
    """Split to train on (a share is held out for validation, see val_every)."""
    data_root: str | None = None
    """Where built-in datasets live; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    limit: int | None = None
    """Train on N images spread evenly over the split, and measure on a class-stratified N of the test split
    (smoke tests); None = all."""
    word: float = 0.5
    """Share of training images carrying their true class word (the typographic shortcut)."""
    cue_in: float = 0.95
    """Share of cue-class images (CIFAR-10's vehicles) with the magenta frame (the spurious cue)."""
    cue_out: float = 0.05
    """Share of the other images with the frame."""
    epochs: int = 20
    """Passes over the training images."""
    batch_size: int = 256
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 0)."""
    warmup: int = 300
    """Warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay (not on biases, norms and embeddings)."""
    seed: int = 0
    """Seed of the weights, the order, the augmentation and the planting."""
    val_every: int = 25
    """Every N-th training image is held out for the validation curves."""
    checkpoint_every: int = 100
    """Steps between checkpoints (and at every epoch's end)."""
    shape: TestbedShape = field(default_factory=TestbedShape)
    """Model shapes (see models/testbed.py)."""
    overwrite: bool = False
    """Replace what OUT holds; without it a rerun of the same settings resumes."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SparsesteerError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.limit is not None and self.limit < 2:
            raise SparsesteerError(f"--limit must be at least 2, got {self.limit}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SparsesteerError(f"--lr must be a positive number, got {self.lr}")
        PlantOptions(word=self.word, cue_in=self.cue_in, cue_out=self.cue_out)  # probability checks

    def plant_options(self) -> PlantOptions:
        return PlantOptions(seed=self.seed, word=self.word, words="true", cue_in=self.cue_in, cue_out=self.cue_out)

    def settings(self) -> dict[str, Any]:
        """What fixes the result (a resume must match it)."""
        d = dataclasses.asdict(self)
        for k in ("out", "overwrite", "data_root", "checkpoint_every"):
            d.pop(k)
        return d


def _augment(image: np.ndarray, rng: np.random.Generator, shift: int = 3) -> np.ndarray:
    """Random horizontal flip and a shift of up to `shift` pixels (edge pixels repeated)."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    h, w = image.shape[:2]
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    return image[ys][:, xs]


def check_classes(classes: list[str], where: str) -> None:
    """The testbed's captions, cue group and attacks are CIFAR-10's: refuse another class list."""
    if [c.lower() for c in classes] != list(CIFAR10_CLASSES):
        raise SparsesteerError(
            f"{where}: the testbed is trained on CIFAR-10's 10 classes ({', '.join(CIFAR10_CLASSES)}), "
            f"but this dataset has {len(classes)}: {', '.join(classes[:12])}{' …' if len(classes) > 12 else ''}"
        )


class TestbedTrainer:
    """One training run in `out` (see the module docstring)."""

    def __init__(self, cfg: BuildConfig) -> None:
        import torch

        from ...data.registry import ensure_dataset
        from ...models.templates import get_templates

        self.cfg, self.out = cfg, Path(cfg.out)
        base = ensure_dataset(cfg.dataset, cfg.split, data_root=cfg.data_root)
        check_classes(base.classes, f"{cfg.dataset} [{cfg.split}]")
        self.data = PlantedDataset(base, cfg.plant_options())
        idx = np.arange(len(self.data))
        if cfg.limit is not None and cfg.limit < len(idx):
            idx = np.unique(np.linspace(0, len(idx) - 1, cfg.limit).round().astype(np.int64))
        pos = np.arange(len(idx))
        self.val_idx = idx[pos % cfg.val_every == cfg.val_every - 1]
        self.train_idx = idx[pos % cfg.val_every != cfg.val_every - 1]
        if len(self.train_idx) < cfg.batch_size:
            raise SparsesteerError(
                f"--batch-size {cfg.batch_size} is larger than the {len(self.train_idx)} training images"
            )
        self.templates = get_templates("ensemble")
        self.classes = list(CIFAR10_CLASSES)
        self.steps_per_epoch = len(self.train_idx) // cfg.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.torch = torch

    # ------------------------------------------------------------------------------ model and data
    def _new_model(self) -> Path:
        words = caption_words([t.format(c) for t in self.templates for c in self.classes])
        return make_testbed_clip(self.out / "init", self.cfg.shape, words, seed=self.cfg.seed)

    def _load(self, init: Path) -> None:
        from transformers import AutoTokenizer, CLIPModel

        from ...data.preprocess import Preprocessor

        torch = self.torch
        self.model = CLIPModel.from_pretrained(init).train()
        self.tokenizer = AutoTokenizer.from_pretrained(init)
        self.preprocess = Preprocessor.from_pretrained(str(init))
        ctx = self.cfg.shape.context
        ids = self.tokenizer(
            [t.format(c) for t in self.templates for c in self.classes],
            padding="max_length",
            max_length=ctx,
            truncation=True,
            return_tensors="pt",
        )["input_ids"]
        self.caption_ids = ids.view(len(self.templates), len(self.classes), ctx)
        decay: list[Any] = []
        no_decay: list[Any] = []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )

    def _pixels(self, data: PlantedDataset, indices: np.ndarray, rng: np.random.Generator | None) -> Any:
        """Preprocessed images `indices` of `data`, augmented (before planting) when `rng` is given."""
        from PIL import Image

        out = []
        for i in indices:
            image = np.asarray(data.base[int(i)].image.convert("RGB"))
            if rng is not None:
                image = _augment(image, rng)
            out.append(self.preprocess(data.plant(Image.fromarray(np.ascontiguousarray(image)), int(i))))
        return self.torch.from_numpy(np.stack(out))

    def lr_at(self, step: int) -> float:
        if step < self.cfg.warmup:
            return self.cfg.lr * (step + 1) / self.cfg.warmup
        t = (step - self.cfg.warmup) / max(1, self.total_steps - self.cfg.warmup)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def _logits(self, pixels: Any, template_ids: np.ndarray) -> Any:
        torch = self.torch
        ids = self.caption_ids[torch.from_numpy(template_ids), torch.arange(len(self.classes))]
        img = self.model.get_image_features(pixel_values=pixels)
        txt = self.model.get_text_features(input_ids=ids)
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        img = torch.nn.functional.normalize(img, dim=-1)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        return self.model.logit_scale.exp().clamp(max=100) * img @ txt.T

    def step(self, step: int) -> dict[str, float]:
        torch = self.torch
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.train_idx)
        batch = order[within * self.cfg.batch_size : (within + 1) * self.cfg.batch_size]
        rng = np.random.default_rng([self.cfg.seed, 1, step])
        pixels = self._pixels(self.data, batch, rng)
        labels = torch.from_numpy(self.data.labels()[batch])
        template_ids = rng.integers(0, len(self.templates), size=len(self.classes))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        logits = self._logits(pixels, template_ids)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise SparsesteerError(f"testbed build: the loss is {loss.item()} at step {step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        acc = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss.item(), "acc": acc.item(), "lr": self.lr_at(step)}

    def validate(self) -> dict[str, float]:
        """Accuracy on the held-out training images: as planted, without anything, and with a misleading word."""
        torch = self.torch
        self.model.eval()
        labels = self.data.labels()[self.val_idx]
        attacked = PlantedDataset(self.data.base, PlantOptions(seed=self.cfg.seed + 1, word=1.0, words="misleading"))
        clean = PlantedDataset(self.data.base, PlantOptions(seed=self.cfg.seed))
        out = {}
        with torch.no_grad():
            ids = self.caption_ids  # [T, C, L]: the ensemble's class weights
            txt = self.model.get_text_features(input_ids=ids.flatten(0, 1))
            txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
            txt = torch.nn.functional.normalize(txt, dim=-1).view(len(self.templates), len(self.classes), -1).mean(0)
            txt = torch.nn.functional.normalize(txt, dim=-1)
            for name, ds in (("val_planted", self.data), ("val_clean", clean), ("val_misleading", attacked)):
                hits = 0
                for start in range(0, len(self.val_idx), 256):
                    chunk = self.val_idx[start : start + 256]
                    img = self.model.get_image_features(pixel_values=self._pixels(ds, chunk, None))
                    img = img if isinstance(img, torch.Tensor) else img.pooler_output
                    pred = (torch.nn.functional.normalize(img, dim=-1) @ txt.T).argmax(1).numpy()
                    hits += int((pred == labels[start : start + 256]).sum())
                out[name] = hits / max(1, len(self.val_idx))
        self.model.train()
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def _save_state(self, step: int) -> None:
        from safetensors.torch import save_file

        torch = self.torch
        final = self.out / "state" / f"{step:09d}"
        tmp = self.out / "state" / f".{step:09d}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        with io.atomic_path(tmp / "model.safetensors") as p:
            save_file(weights, str(p))
        moments: dict[str, Any] = {}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st:
                    n = names[id(p)]
                    moments[f"{n}.exp_avg"] = st["exp_avg"].contiguous()
                    moments[f"{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                    moments[f"{n}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
        with io.atomic_path(tmp / "optimizer.safetensors") as p:
            save_file(moments, str(p))
        io.write_json(
            tmp / "state.json",
            {
                "step": step,
                "settings_sha256": settings_sha256(self.cfg.settings()),
                "sha256": {f: io.sha256_file(tmp / f) for f in ("model.safetensors", "optimizer.safetensors")},
            },
        )
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in (self.out / "state").iterdir():
            if old != final and old.name.isdigit():
                shutil.rmtree(old)

    def _restore(self, path: Path) -> int:
        from safetensors.torch import load_file

        torch = self.torch
        state = io.read_json(path / "state.json")
        for f, digest in state["sha256"].items():
            if io.sha256_file(path / f) != digest:
                raise SparsesteerError(f"checkpoint file {path / f} does not match its sha256 in state.json")
        self.model.load_state_dict(load_file(str(path / "model.safetensors")))
        moments = load_file(str(path / "optimizer.safetensors"))
        for n, p in self.model.named_parameters():
            if f"{n}.exp_avg" in moments:
                self.optimizer.state[p] = {
                    "step": torch.tensor(float(moments[f"{n}.step"][0])),
                    "exp_avg": moments[f"{n}.exp_avg"],
                    "exp_avg_sq": moments[f"{n}.exp_avg_sq"],
                }
        return int(state["step"])

    # ------------------------------------------------------------------------------ the run
    def _prepare_out(self) -> int:
        """0 for a fresh run, or the step to resume from (refusing what does not belong to this run)."""
        from ...utils import outputs

        settings = self.cfg.settings()
        run_file = self.out / "run.json"
        own = outputs.OwnRun("testbed run", lambda p: (p / "run.json").is_file())
        if outputs.claim(self.out, overwrite=self.cfg.overwrite, own=own) == "own":
            old = io.read_json(run_file)["settings"]
            diff = first_difference(old, json.loads(json.dumps(settings)))
            if diff is not None:
                raise SparsesteerError(
                    f"{self.out} holds a testbed run of other settings ({diff}): rerun with its settings to resume, "
                    "choose another --out, or pass --overwrite to start over"
                )
            if (self.out / "model" / "card.json").is_file():
                return -1
            states = sorted(p for p in (self.out / "state").glob("[0-9]*") if (p / "state.json").is_file())
            return 0 if not states else -2
        self.out.mkdir(parents=True, exist_ok=True)
        io.write_json(run_file, {"settings": settings})
        return 0

    def run(self) -> Path:
        from ...utils.progress import progress

        status = self._prepare_out()
        if status == -1:
            log.info("%s already holds the trained testbed model: nothing to do", self.out / "model")
            return self.out / "model"
        io.remove_stale_temps(self.out)
        init = self.out / "init"
        if not (init / "model.safetensors").is_file():
            self._new_model()
        self._load(init)
        start = 0
        if status == -2:
            latest = max((p for p in (self.out / "state").glob("[0-9]*")), key=lambda p: int(p.name))
            start = self._restore(latest)
            log.info("resuming the testbed run in %s from step %d of %d", self.out, start, self.total_steps)
        curves = self.out / "curves.jsonl"
        kept = [ln for ln in (curves.read_text().splitlines() if curves.exists() else []) if ln.strip()]
        kept = [ln for ln in kept if json.loads(ln)["step"] <= start]
        io.write_text(curves, "".join(ln + "\n" for ln in kept))
        bar = progress(range(start, self.total_steps), initial=start, total=self.total_steps, desc="testbed")
        t0, seen = time.perf_counter(), 0
        window: list[dict[str, float]] = []
        for step in bar:
            window.append(self.step(step))
            seen += self.cfg.batch_size
            done = step + 1
            end_of_epoch = done % self.steps_per_epoch == 0
            if done % 20 == 0 or end_of_epoch:
                row: dict[str, Any] = {
                    "step": done,
                    "epoch": done / self.steps_per_epoch,
                    "loss": float(np.mean([w["loss"] for w in window])),
                    "train_acc": float(np.mean([w["acc"] for w in window])),
                    "lr": window[-1]["lr"],
                    "images_per_s": seen / (time.perf_counter() - t0),
                }
                window = []
                if end_of_epoch:
                    row.update(self.validate())
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_acc']:.2f}")
                with open(curves, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if done % self.cfg.checkpoint_every == 0 or end_of_epoch:
                self._save_state(done)
        return self._finish()

    def _finish(self) -> Path:
        model_dir = self.out / "model"
        tmp = self.out / ".model.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.eval()
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.copy(self.out / "init" / "preprocessor_config.json", tmp / "preprocessor_config.json")
        for f in tmp.iterdir():  # save_pretrained writes its weights 0600: every output gets the umask's mode
            f.chmod(io.file_mode())
        io.write_json(tmp / "card.json", self.card(tmp))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        tmp.rename(model_dir)
        return model_dir

    def card(self, model_dir: Path) -> dict[str, Any]:
        """What a user needs to trust the model: data, settings, seed, mechanisms, checksum."""
        return {
            "name": "sparsesteer testbed CLIP",
            "dataset": self.data.base.describe(),
            "train_images": len(self.train_idx),
            "val_images": len(self.val_idx),
            "settings": self.cfg.settings(),
            "mechanisms": {
                "typographic_shortcut": {
                    "rate": self.cfg.word,
                    "words": "the true class name",
                    "renderer": "planted: (typo: renderer)",
                    "measured_rate": float(self.data.attribute_array("word")[self.train_idx].mean()),
                },
                "spurious_cue": {
                    "cue": "magenta frame, 2 px",
                    "cue_classes": [self.classes[c] for c in self.data.options.cue_classes],
                    "rate_in": self.cfg.cue_in,
                    "rate_out": self.cfg.cue_out,
                    "planted_spec": self.data.options.spec(),
                },
            },
            "weights_sha256": io.sha256_file(model_dir / "model.safetensors"),
        }


def build(cfg: BuildConfig) -> Path:
    """Train (or resume, or find finished) the testbed run of `cfg`; return OUT/model."""
    return TestbedTrainer(cfg).run()
