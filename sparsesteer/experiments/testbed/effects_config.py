"""Settings and targets of `sparsesteer reproduce testbed` (torch-free: --help builds from them).

The targets are the issue's, fixed before any run (never tuned to an outcome); `TARGETS` is their
one home. Roles of the splits: the SAEs train on the testbed's training distribution (train split),
units, blocks, n and thresholds are chosen on `select_split`, and every number of the table is
measured on `test_split`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...models.hook_names import TOKEN_SELECTIONS, TokenSelection
from ...utils.errors import SparsesteerError, unknown
from ...utils.options import RunOptions, positive_int
from ..clipsteer.saes import SAEOptions
from ..clipsteer.sparsity.config import parse_blocks
from ..clipsteer.suppression.config import parse_ns

TARGETS = {
    "detect_auroc": 0.95,
    "word_recovery": 0.50,
    "clean_cost": 0.02,
    "worst_group_gain": 0.10,
    "average_drop": 0.03,
    "other_shortcut": 0.02,
}
"""detection: the best latent's AUROC >= 0.95 and above the best neuron's; word suppression: >= 50%
of the accuracy the attack took recovered, <= 2 points of clean accuracy lost, above n random
latents and the top-n neurons; cue suppression: worst group +10 points, average down <= 3 points;
either suppression may make the other shortcut's effect grow by at most 2 points."""


def parse_seeds(spec: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): distinct non-negative SAE seeds, in the order given."""
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in str(spec).replace(" ", "").split(",") if x))
    except ValueError:
        raise SparsesteerError(f"--seeds {spec!r}: expected comma-separated integers such as 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise SparsesteerError(f"--seeds {spec!r}: expected comma-separated integers >= 0 such as 0,1,2")
    return seeds


@dataclass(frozen=True, kw_only=True)
class EffectsConfig(RunOptions, SAEOptions):
    """Settings of one `reproduce testbed` run."""

    model: str = "testbed"
    """The testbed CLIP: `testbed` (shipped with the package) or OUT/model of `sparsesteer testbed build`."""
    dataset: str = "cifar10"
    """CIFAR-10 (train and test splits): cifar10 (downloaded if missing) or folder:PATH; the words and
    frames are planted on it (planted:)."""
    data_root: str | None = None
    """Where built-in datasets live; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    select_split: str = "train"
    """Split on which units, blocks, n and thresholds are chosen (never the test split)."""
    test_split: str = "test"
    """Split every number of the table is measured on."""
    blocks: str = "1,3,5"
    """Blocks with an SAE (0-based; the testbed has 6): the best is chosen on the selection split."""
    tokens: TokenSelection = "all"
    """Tokens the SAEs train on and the edits apply to (the word and the frame lie on patches)."""
    seeds: str = "0,1,2"
    """SAE seeds: every SAE-dependent row is the mean and spread over them."""
    n_sae: int = 4000
    """Training images (train split, the testbed's own planting rates) the SAEs train on."""
    n_select: int = 1000
    """Images of select_split (class-stratified) on which the choices are made."""
    n_test: int = 2000
    """Images of test_split (class-stratified) the table is measured on."""
    ns: str = "1,4,16"
    """Units suppressed (n): the best n is chosen on the selection split, per seed."""
    control: str | None = None
    """A testbed trained without planted mechanisms (`testbed build --word 0 --cue-in 0 --cue-out 0`):
    its detection and suppression rows are the negative control (first seed only)."""
    paper_runs: bool = True
    """Also run `reproduce vs2` (VS2, VS2++, PASS on the final CLS; tuned on the selection split's
    validation part) and `reproduce sparsity` (ReLU SAEs per block and token type) on the testbed's clean
    images: their rows are reported whatever their sign, with no target."""
    k: int = 16
    """Active latents per token (topk, batchtopk)."""
    expansion: int = 8
    """Latents per input dimension (8: 1,024 latents at the testbed's d 128)."""
    sae_batch_size: int = 2048
    """Tokens per SAE training step."""
    sae_steps: int | None = 1500
    """SAE training steps (None: sae_epochs passes, or at least 5,000 steps)."""
    batch_size: int = 256
    """Images per forward pass (the testbed's 32 px images are small)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.model).strip():
            raise SparsesteerError("--model is empty: give testbed or a testbed build's OUT/model")
        parse_blocks(self.blocks)
        parse_seeds(self.seeds)
        parse_ns(self.ns)
        if self.tokens not in TOKEN_SELECTIONS:
            raise unknown("token configuration (--tokens)", str(self.tokens), TOKEN_SELECTIONS)
        for name in ("n_sae", "n_select", "n_test"):
            positive_int(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.select_split == self.test_split:
            raise SparsesteerError(
                f"--select-split and --test-split are both {self.test_split!r}: the choices would be made on the "
                "images they are measured on; use two splits"
            )
