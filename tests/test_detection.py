"""interpret.detection against brute-force definitions and hand-worked cases."""

import numpy as np
import pytest

from sparsesteer.interpret.detection import auroc, average_precision, best_threshold, precision_recall_f1
from sparsesteer.utils.errors import SparsesteerError


def _pairwise_auroc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.4).astype(int)
    y[:2] = [0, 1]
    s = rng.integers(0, 4, size=(60, 7)).astype(float)  # many ties
    s[:, 0] = 0.0  # a latent that never fires: exactly 0.5
    got = auroc(s, y)
    want = [_pairwise_auroc(s[:, u], y) for u in range(7)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0] == 0.5


def test_auroc_hand_worked():
    # positives 3, 2; negatives 1, 2: pairs (3>1, 3>2, 2>1, 2=2) -> 3.5 / 4
    assert auroc(np.array([3.0, 2.0, 1.0, 2.0]), np.array([1, 1, 0, 0]))[0] == pytest.approx(0.875)


def test_average_precision_hand_worked_and_tied_groups():
    # ranks: 0.9 (pos), 0.8 (neg), 0.7 (pos): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx(0.5 + 1 / 3)
    # all tied: one threshold, precision = prevalence
    assert average_precision(np.zeros(4), np.array([1, 0, 0, 0])) == pytest.approx(0.25)


@pytest.mark.parametrize("seed", range(4))
def test_best_threshold_is_the_best_f1_over_every_cut(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(50) < 0.3).astype(int)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=50) + y, 1)
    best = best_threshold(s, y)
    cuts = np.r_[s.min() - 1, np.unique(s)]
    brute = max(precision_recall_f1(s, y, c).f1 for c in cuts)
    assert best.f1 == pytest.approx(brute)
    again = precision_recall_f1(s, y, best.threshold)
    assert again == best


def test_precision_recall_f1_hand_worked():
    d = precision_recall_f1(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 0, 1, 0]), 0.5)
    assert (d.precision, d.recall, d.f1) == (0.5, 0.5, 0.5)


def test_one_class_labels_are_refused():
    with pytest.raises(SparsesteerError, match="one class only"):
        auroc(np.zeros(3), np.ones(3, int))
