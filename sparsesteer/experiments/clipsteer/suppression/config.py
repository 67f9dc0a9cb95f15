"""Settings of `reproduce disentangle` and `reproduce typographic` (torch-free: --help builds from them).

Both share `SuppressionOptions`: the swept blocks and n, the SAE options (`clipsteer.saes`), how
units are ranked (the association score of `interpret.associations`) and the splits. Three roles:
the SAEs train on `sae_split`, units are selected (and the best layer chosen) on `select_split`,
and every table is evaluated on `test_split`; the selection and test images never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ....models.hook_names import TOKEN_SELECTIONS, TokenSelection
from ....models.templates import TemplateSet
from ....utils.errors import SparsesteerError, unknown
from ....utils.options import ModelOptions, RunOptions, positive_int
from ..saes import SAEOptions
from ..sparsity.config import parse_blocks

METHODS = ("sae", "random", "neurons", "heads")
"""The edits of the table beside `none` (the unedited model): the top-n SAE latents by association,
n random latents, the top-n residual neurons by the same score, the top-n attention heads."""


def parse_ns(spec: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16) (sorted, distinct, positive)."""
    try:
        ns = sorted({int(x) for x in str(spec).replace(" ", "").split(",") if x})
    except ValueError:
        raise SparsesteerError(f"--ns {spec!r}: expected comma-separated positive integers such as 1,4,16") from None
    if not ns or ns[0] < 1:
        raise SparsesteerError(f"--ns {spec!r}: expected comma-separated positive integers such as 1,4,16")
    return tuple(ns)


@dataclass(frozen=True, kw_only=True)
class SuppressionOptions(RunOptions, ModelOptions, SAEOptions):
    """What both suppression commands share."""

    blocks: str = "all"
    """Blocks swept (one SAE each), 0-based: all, or indices and ranges such as 4-8 or 3,5,7."""
    ns: str = "1,4,16,64,256"
    """Numbers of units suppressed (n), comma-separated; an n above a method's units is left out for it."""
    tokens: TokenSelection = "patch"
    """Tokens the SAEs train on and the latents (and neurons) are zeroed on (the authors: patches only)."""
    hook_kind: Literal["resid_post"] = "resid_post"
    """Where in each block the SAEs read and the edits apply (the block output)."""
    sae_dir: str | None = None
    """Load the SAEs from DIR/blockNN-TOKENS (e.g. an earlier run's OUT/sae) instead of training them."""
    data_root: str | None = None
    """Where built-in datasets live (downloaded there when missing); None = SPARSESTEER_DATA or ~/.cache."""
    sae_split: str = "train"
    """Split the SAEs are trained on (not read with --sae-dir)."""
    limit_sae: int | None = None
    """Train the SAEs on a class-stratified sample of N images of sae_split (quick runs); None = all."""
    n_select: int | None = None
    """Images of select_split the units are ranked on: a class- and group-balanced sample; None = all."""
    n_test: int | None = None
    """Images of test_split evaluated: a class- and group-balanced sample; None = all."""
    seed: int = 0
    """Seed of the samples, the random latents and SAE training."""
    score: Literal["mean_diff", "cohens_d", "point_biserial", "firing_rate_diff"] = "cohens_d"
    """Association score that ranks latents, neurons and heads (interpret.associations)."""
    reduce: Literal["max", "mean"] = "max"
    """Per-image reduction of a unit over its tokens before scoring."""
    sign: Literal["positive", "negative", "absolute"] = "absolute"
    """Which side of the contrast: units higher with the attribute, lower, or either (|score|)."""
    templates: TemplateSet = "single"
    """Zero-shot prompt templates (typographic; disentangle uses its --prompts as they are)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_blocks(self.blocks)
        parse_ns(self.ns)
        if self.tokens not in TOKEN_SELECTIONS:
            raise unknown("token configuration (--tokens)", str(self.tokens), TOKEN_SELECTIONS)
        for name in ("limit_sae", "n_select", "n_test"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), f"--{name.replace('_', '-')}")


TASKS = {
    "celeba": {
        "dataset": "celeba",
        "attribute": "Blond_Hair",
        "attribute_file": "celeba/list_attr_celeba.txt",
        "select_split": "train",
        "test_split": "valid",
        "prompts": ("male=Blond Male", "male=Non-blond male", "female=Blond female", "female=Non-blond female"),
    },
    "waterbirds": {
        "dataset": "waterbirds",
        "attribute": "place",
        "attribute_file": "waterbird_complete95_forest2water2/metadata.csv",
        "select_split": "val",
        "test_split": "test",
        "prompts": ("landbird=a photo of a landbird.", "waterbird=a photo of a waterbird."),
    },
}
"""Per task: the dataset, its spurious attribute (and the file that holds it), the default splits
and prompts. CelebA: gender with blond hair spurious, the authors' four group prompts; Waterbirds:
bird type with the background (`place`) spurious, its metadata.csv split."""


def parse_prompts(prompts: tuple[str, ...], classes: list[str]) -> tuple[list[str], list[int]]:
    """'CLASS=TEXT' items -> (texts, class index of each text); every class needs a prompt."""
    texts, owners = [], []
    for item in prompts:
        cls, sep, text = str(item).partition("=")
        if not sep or not text.strip():
            raise SparsesteerError(f"--prompts item {item!r}: expected CLASS=TEXT, e.g. 'male=Blond Male'")
        if cls.strip() not in classes:
            raise unknown("class in --prompts", cls.strip(), classes)
        texts.append(text.strip())
        owners.append(classes.index(cls.strip()))
    lacking = [c for i, c in enumerate(classes) if i not in owners]
    if lacking:
        raise SparsesteerError(f"--prompts: no prompt for class(es) {', '.join(lacking)}")
    return texts, owners


@dataclass(frozen=True, kw_only=True)
class DisentangleConfig(SuppressionOptions):
    """Settings of one `reproduce disentangle` run."""

    task: Literal["celeba", "waterbirds"]
    """celeba: gender, blond hair spurious; waterbirds: bird type, background spurious."""
    prompts: tuple[str, ...] = ()
    """Zero-shot prompts as CLASS=TEXT (a class may have several); empty = the task's default (CelebA: the
    authors' four group prompts 'Blond Male', 'Non-blond male', 'Blond female', 'Non-blond female')."""
    select_split: str | None = None
    """Split the units are ranked on and the best layer chosen on; None = the task's (celeba: train, waterbirds: val)."""
    test_split: str | None = None
    """Split every table is evaluated on; None = the task's (celeba: valid, waterbirds: test)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise unknown("task (--task)", str(self.task), TASKS)
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        if self.select == self.test:
            raise SparsesteerError(
                f"--select-split and --test-split are both {self.test!r}: the units would be selected on the "
                "images they are evaluated on; use two splits"
            )

    @property
    def select(self) -> str:
        return self.select_split or str(TASKS[self.task]["select_split"])

    @property
    def test(self) -> str:
        return self.test_split or str(TASKS[self.task]["test_split"])


@dataclass(frozen=True, kw_only=True)
class TypographicConfig(SuppressionOptions):
    """Settings of one `reproduce typographic` run."""

    dataset: str
    """Attacked images: typo:[OPTIONS:]SPEC (clean versions pair by index), rta100, paint-typo or disentangling."""
    select_dataset: str | None = None
    """Images the units are ranked on (attacked vs clean, so a typo: spec); None = --dataset."""
    select_split: str = "train"
    """Split of select_dataset the units are ranked on and the best layer chosen on."""
    test_split: str = "test"
    """Split of --dataset every table is evaluated on."""
    sign: Literal["positive", "negative", "absolute"] = "positive"
    """Which side of the contrast: units higher on attacked images (positive), lower, or either."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.dataset).strip():
            raise SparsesteerError("--dataset is empty: give a typo:SPEC, rta100, paint-typo or disentangling")
        if (self.select_dataset or self.dataset) == self.dataset and self.select_split == self.test_split:
            raise SparsesteerError(
                f"--select-split and --test-split are both {self.test_split!r} of {self.dataset!r}: the units would "
                "be selected on the images they are evaluated on; use two splits or --select-dataset"
            )
