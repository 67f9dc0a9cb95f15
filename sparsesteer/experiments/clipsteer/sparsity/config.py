"""Settings of `sparsesteer reproduce sparsity` (no torch import: the CLI builds --help from them).

The SAE defaults are the paper's (spec clip-sae-steering.md): top-k with k 64 and expansion 64 on
`resid_post`, batches of 4,096 tokens, b_dec at the geometric median, inputs rescaled to a fixed
mean norm; `--arch relu` gives the vanilla ReLU + L1 SAEs of the released suite. Expansion 64 is
meant for a GPU; the CPU quick configuration in docs/clipsteer.md uses expansion 4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ....models.hook_names import TOKEN_SELECTIONS, TokenSelection
from ....models.templates import TemplateSet
from ....utils.errors import SparsesteerError, unknown
from ....utils.options import ModelOptions, RunOptions, positive_int
from ..saes import SAEOptions

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


MAX_BLOCKS = 1024
"""No vision transformer this tool loads has more blocks; a larger index is a typo."""


def parse_blocks(spec: str, n_blocks: int | None = None) -> tuple[int, ...]:
    """'all' | '0-11' | '0,3,6-8' -> sorted block indices (0-based). With `n_blocks`, 'all' means
    every block and an index past the model's last block is an error naming the valid range."""
    text = str(spec).replace(" ", "")
    if text == "all":
        if n_blocks is None:
            return ()
        return tuple(range(n_blocks))
    blocks: set[int] = set()
    for part in text.split(","):
        m = _RANGE.match(part)
        if m is None:
            raise SparsesteerError(
                f"--blocks {spec!r}: expected 'all' or block indices and ranges such as 0-11 or 0,3,6-8 (0-based)"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise SparsesteerError(f"--blocks {spec!r}: the range {part} runs backwards")
        limit = n_blocks if n_blocks is not None else MAX_BLOCKS
        if hi >= limit:  # checked before the range is built: '0-9999999999' must not fill the memory
            bad = lo if lo >= limit else limit
            if n_blocks is not None:
                raise SparsesteerError(
                    f"--blocks {spec!r}: block {bad} out of range; the model has {n_blocks} blocks, "
                    f"valid indices 0..{n_blocks - 1}"
                )
            raise SparsesteerError(
                f"--blocks {spec!r}: block {hi} is past any ViT's depth (at most {MAX_BLOCKS} blocks)"
            )
        blocks.update(range(lo, hi + 1))
    return tuple(sorted(blocks))


@dataclass(frozen=True, kw_only=True)
class SparsityConfig(RunOptions, ModelOptions, SAEOptions):  # flags in --help: model, run (batch, workers, device), own
    """Settings of one `reproduce sparsity` run."""

    dataset: str
    """Dataset with class names (zero-shot CE needs them): built-in name, folder:PATH or hf:REPO_ID."""
    train_split: str = "train"
    """Split the SAEs are trained on (not cached or read with --sae-dir)."""
    test_split: str = "test"
    """Split every metric and the zero-shot CE are measured on."""
    data_root: str | None = None
    """Where built-in datasets live (downloaded there when missing); None = SPARSESTEER_DATA or ~/.cache."""
    limit_train: int | None = None
    """Use a class-stratified sample of N train images, drawn with `seed` (quick runs); None = all."""
    limit_test: int | None = None
    """Use a class-stratified sample of N test images, drawn with `seed` (quick runs); None = all."""
    seed: int = 0
    """Seed of the --limit samples and of SAE training."""
    blocks: str = "all"
    """Blocks to report, 0-based: all, or indices and ranges such as 0-11 or 0,3,6-8."""
    tokens: tuple[TokenSelection, ...] = ("all", "cls", "patch")
    """Token configurations: one SAE per block and configuration, trained on all tokens, CLS only or patches only."""
    hook_kind: Literal["resid_post", "mlp_out"] = "resid_post"
    """Where in each block the SAEs read (and the CE splices): the block output or the MLP's output."""
    sae_dir: str | None = None
    """Load the SAEs from DIR/blockNN-TOKENS (e.g. an earlier run's OUT/sae) instead of training them."""
    templates: TemplateSet = "single"
    """Zero-shot prompts for the CE: single ('a photo of a {}.'), ensemble (CLIP's 80) or ensemble7."""
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype of the cached activations (float16 halves the disk; the CE always runs the model in float32)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # model, batch size, workers, device, on_bad_image
        if not str(self.dataset).strip():
            raise SparsesteerError("--dataset is empty: give a built-in name, folder:PATH or hf:REPO_ID")
        parse_blocks(self.blocks)  # syntax; the range is checked against the model
        tokens = (self.tokens,) if isinstance(self.tokens, str) else tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if not tokens:
            raise SparsesteerError("--tokens is empty: give one or more of all, cls, patch")
        for t in tokens:
            if t not in TOKEN_SELECTIONS:
                raise unknown("token configuration (--tokens)", str(t), TOKEN_SELECTIONS)
        if len(set(tokens)) != len(tokens):
            raise SparsesteerError(f"--tokens {','.join(tokens)}: a configuration is given twice")
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.train_split == self.test_split and self.sae_dir is None:
            raise SparsesteerError(
                f"--train-split and --test-split are both {self.train_split!r}: the SAEs would be measured on "
                "the images they were trained on; use two splits"
            )
