"""Group and typographic-attack metrics on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsesteer.models.groups import (
    Change,
    compare_groups,
    compare_typographic,
    group_accuracy,
    typographic_accuracy,
)
from sparsesteer.utils.errors import SparsesteerError

# Waterbirds-style: group = 2 * y + place
LABELS = [0, 0, 0, 1, 1, 1, 1, 0, 1]
GROUPS = [0, 0, 1, 2, 3, 3, 2, 1, 2]
BASE = [0, 1, 0, 1, 0, 1, 1, 1, 1]  # hits 1 0 1 1 0 1 1 0 1
EDIT = [0, 0, 1, 1, 1, 1, 1, 1, 1]  # hits 1 1 0 1 1 1 1 0 1


def test_group_accuracy_by_hand():
    r = group_accuracy(np.array(BASE), np.array(LABELS), np.array(GROUPS))
    assert r.groups == (0, 1, 2, 3) and r.n == (2, 2, 3, 2)
    assert r.accuracy == (0.5, 0.5, 1.0, 0.5)
    assert (r.worst_group, r.worst_group_id) == (0.5, 0)  # ties go to the lower id
    assert r.average == pytest.approx(6 / 9)
    assert r.mean_of_groups == pytest.approx(2.5 / 4)
    # logits (argmax) and torch tensors give the same; a negative group id is left out of the groups
    logits = torch.nn.functional.one_hot(torch.tensor(BASE), 2).float()
    g = np.array(GROUPS)
    g[3] = -1
    r2 = group_accuracy(logits, torch.tensor(LABELS), g)
    assert r2.n == (2, 2, 2, 2) and r2.accuracy == (0.5, 0.5, 1.0, 0.5) and r2.average == pytest.approx(6 / 9)
    assert r.to_dict()["groups"]["2"] == {"n": 3, "accuracy": 1.0}


def test_compare_groups_by_hand():
    c = compare_groups(BASE, EDIT, LABELS, GROUPS)
    assert c.edited.accuracy == (1.0, 0.0, 1.0, 1.0)
    assert c.worst_group == Change(0.5, 0.0, -0.5)
    assert c.average.baseline == pytest.approx(6 / 9) and c.average.edited == pytest.approx(7 / 9)
    assert c.average.delta == pytest.approx(1 / 9)
    assert c.mean_of_groups.delta == pytest.approx(3 / 4 - 2.5 / 4)
    assert c.per_group[1] == Change(0.5, 0.0, -0.5) and c.per_group[3] == Change(0.5, 1.0, 0.5)


def test_typographic_metrics_by_hand():
    labels = [0, 1, 2, 0, 1, 2]
    typo = [1, 2, 0, 2, -1, 2]  # image 4's word is no class; image 5's word is its own class
    clean = [0, 1, 2, 0, 0, 2]
    attacked = [1, 1, 0, 0, 1, 2]
    r = typographic_accuracy(clean, attacked, labels, typo)
    assert r.n == 6 and r.clean_accuracy == pytest.approx(5 / 6) and r.attacked_accuracy == pytest.approx(4 / 6)
    assert r.n_attackable == 4 and r.attack_success_rate == 0.5  # images 0 and 2 follow the word
    c = compare_typographic(clean, attacked, labels, labels, labels, typo)
    assert c.clean_accuracy.delta == pytest.approx(1 / 6)
    assert c.attacked_accuracy == Change(pytest.approx(4 / 6), 1.0, pytest.approx(2 / 6))
    assert c.attack_success_rate == Change(0.5, 0.0, -0.5)
    # sets without clean images (RTA-100): clean accuracy is NaN, the rest is still computed
    r = typographic_accuracy(None, attacked, labels, typo)
    assert math.isnan(r.clean_accuracy) and r.attack_success_rate == 0.5 and r.to_dict()["clean_accuracy"] is None


def test_bad_inputs():
    with pytest.raises(SparsesteerError, match="pair up by image: 5 clean, 6 attacked"):
        typographic_accuracy([0] * 5, [0] * 6, [0] * 6, [1] * 6)
    with pytest.raises(SparsesteerError, match="labels: expected 9 values"):
        group_accuracy(BASE, LABELS[:-1], GROUPS)
    with pytest.raises(SparsesteerError, match="every group id is negative"):
        group_accuracy(BASE, LABELS, [-1] * 9)
    with pytest.raises(SparsesteerError, match="integer class indices"):
        group_accuracy(np.array(BASE, dtype=float), LABELS, GROUPS)
