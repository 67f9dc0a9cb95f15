"""% CE recovered of spliced SAEs: the model's zero-shot cross-entropy with a hook replaced by the
SAE's output (spliced, `steering.edits.reconstruct`: error term dropped) or by zeros (ablated),
against the clean model:

    % CE recovered = 100 (CE_zero_ablation - CE_spliced) / (CE_zero_ablation - CE_clean)

100% = splicing the SAE in costs nothing; 0% = as bad as deleting the activation. CE is the mean
cross-entropy of the zero-shot logits (`models.zeroshot.ZeroShotClassifier`) against the labels.
The hook is replaced on the SAE's tokens only (a CLS SAE splices and ablates the CLS token).

The ratio means something only when ablating the hook moves the CE: below a gap of `MIN_CE_GAP`
nats (`ce_gap_meaningful`) it is reported as not meaningful, with the gap, and the raw number kept.

The forwards share the work below the hook (`spliced_ce`): per image batch, one clean forward
captures the `resid_pre` of every block a splice sits in (and gives the clean logits); the spliced
and ablated forwards then resume at that block (`Backbone.embed_from`, bit-identical to a full
forward), so a block-b splice costs the blocks from b on, not the whole tower, and every block's
SAEs share one clean pass. `benchmarks/spliced_ce.py` measures this against three full forwards per
block. Splicing is a model-level metric, so it lives here and not in `sae/metrics.py` (an SAE never
sees the model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.backbone import Backbone
from ..models.hook_names import HookPoint, Tokens
from ..models.hooks import Intervention
from ..models.zeroshot import ZeroShotClassifier
from ..sae.base import SparseAutoencoder
from ..utils.errors import SparsesteerError
from ..utils.progress import progress
from .edits import reconstruct


def zero_ablation(hook: str, tokens: Tokens = "all") -> Intervention:
    """The activation at `hook` replaced by zeros on `tokens`."""
    return Intervention(str(HookPoint.parse(hook)), lambda acts_btd, positions_t: torch.zeros_like(acts_btd), tokens)


MIN_CE_GAP = 0.01
"""Nats. % CE recovered is not meaningful when |CE_zero - CE_clean| is below this: zero-ablating the
hook then changes the (geometric) mean probability of the right class by less than 1% (e^0.01 = 1.01),
so the hook barely matters to the output, and the SAE's own small effect on the CE, divided by that
gap, can take any value (issue 20 saw -167% to +131%). Nats are already a
log-ratio of probabilities, so one threshold holds for any number of classes (docs/clipsteer.md)."""


def ce_gap_meaningful(ce_clean: float, ce_zero: float) -> bool:
    """Whether zero-ablation moves the CE by at least MIN_CE_GAP nats (then % CE recovered means something)."""
    gap = ce_zero - ce_clean
    return math.isfinite(gap) and abs(gap) >= MIN_CE_GAP


def gap_note(gap: float) -> str:
    """The ablation gap `gap` (nats) as a not-meaningful % CE recovered is annotated: 'gap 0.0003 nats'."""
    return f"gap {gap:.2g} nats"


def not_meaningful(gap: float) -> str:
    """How a % CE recovered below MIN_CE_GAP is shown: 'n/m (gap 0.0003 nats)'."""
    return f"n/m ({gap_note(gap)})"


def ce_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float | None:
    """100 (CE_zero - CE_spliced) / (CE_zero - CE_clean); None when ablating the hook does not change
    the CE (nothing to recover: the ratio is undefined)."""
    gap = ce_zero - ce_clean
    if not math.isfinite(gap) or gap == 0:
        return None
    return 100.0 * (ce_zero - ce_spliced) / gap


@dataclass(frozen=True)
class Splice:
    """One SAE to splice in: its name in the results, its hook and token selection."""

    name: str
    hook: str
    tokens: str
    sae: SparseAutoencoder

    @property
    def block(self) -> int:
        hp = HookPoint.parse(self.hook)
        if hp.block is None:
            raise SparsesteerError(f"splice {self.name}: hook {self.hook!r} is not inside a block")
        return hp.block


@dataclass
class Score:
    """Running zero-shot cross-entropy and accuracy over images."""

    ce_sum: float = 0.0
    correct: int = 0
    n: int = 0

    def add(self, logits_bc: Tensor, labels_b: Tensor) -> None:
        y = labels_b.to(logits_bc.device)
        self.ce_sum += float(F.cross_entropy(logits_bc.double(), y, reduction="sum"))
        self.correct += int((logits_bc.argmax(-1) == y).sum())
        self.n += int(y.numel())

    @property
    def ce(self) -> float:
        """Mean cross-entropy (nats)."""
        return self.ce_sum / self.n if self.n else math.nan

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in %."""
        return 100.0 * self.correct / self.n if self.n else math.nan


@dataclass
class SpliceCE:
    """Clean, zero-ablated and spliced scores of a set of splices over the same images."""

    clean: Score = field(default_factory=Score)
    zero: dict[tuple[str, str], Score] = field(default_factory=dict)
    """(hook, tokens) -> the model with that hook zeroed on those tokens."""
    spliced: dict[str, Score] = field(default_factory=dict)
    """Splice name -> the model with its SAE spliced in."""

    def recovered(self, splice: Splice) -> float | None:
        """% CE recovered of `splice` (the raw ratio: see `meaningful`)."""
        zero = self.zero[(splice.hook, splice.tokens)]
        return ce_recovered(self.clean.ce, self.spliced[splice.name].ce, zero.ce)

    def gap(self, splice: Splice) -> float:
        """CE_zero - CE_clean of `splice`'s hook and tokens (nats): the denominator of % CE recovered."""
        return self.zero[(splice.hook, splice.tokens)].ce - self.clean.ce

    def meaningful(self, splice: Splice) -> bool:
        """Whether `splice`'s % CE recovered means something (`ce_gap_meaningful`)."""
        return ce_gap_meaningful(self.clean.ce, self.zero[(splice.hook, splice.tokens)].ce)


@torch.no_grad()
def spliced_ce(
    backbone: Backbone,
    classifier: ZeroShotClassifier,
    batches: Iterable[tuple[Tensor, Tensor]],
    splices: Sequence[Splice],
    *,
    total: int | None = None,
) -> SpliceCE:
    """Clean, zero-ablated and spliced zero-shot CE and accuracy over (pixel_values, labels) batches.

    Per batch: one clean forward to the head that captures the input of every block a splice sits
    in, then per (hook, tokens) one ablated and per splice one spliced forward resumed at its block."""
    names = [s.name for s in splices]
    if len(set(names)) != len(names):
        raise SparsesteerError("spliced_ce: two splices have the same name")
    for s in splices:
        backbone.hook_point(s.hook)  # exists in this model
    blocks = sorted({s.block for s in splices})
    starts = {b: str(HookPoint.resid_pre(b)) for b in blocks}
    ablations = list(dict.fromkeys((s.hook, s.tokens) for s in splices))
    edits = {s.name: [reconstruct(s.hook, s.sae, tokens=s.tokens)] for s in splices}
    zeros = {a: [zero_ablation(*a)] for a in ablations}
    block_of = {(s.hook, s.tokens): s.block for s in splices}
    out = SpliceCE(zero={a: Score() for a in ablations}, spliced={s.name: Score() for s in splices})
    for pixels, labels in progress(batches, total=total, desc="spliced CE", unit="batch"):
        acts = backbone.run(pixels, [*starts.values(), "head"])
        out.clean.add(classifier.logits(acts["head"]), labels)
        for a in ablations:
            block = block_of[a]
            emb = backbone.embed_from(block, acts[starts[block]], interventions=zeros[a])
            out.zero[a].add(classifier.logits(emb), labels)
        for s in splices:
            emb = backbone.embed_from(s.block, acts[starts[s.block]], interventions=edits[s.name])
            out.spliced[s.name].add(classifier.logits(emb), labels)
    if out.clean.n == 0:
        raise SparsesteerError("spliced CE: no images")
    return out
