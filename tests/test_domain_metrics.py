"""Exact AUC vs a brute-force pair count; recall, precision and calibration by hand."""

from __future__ import annotations

import math
import random

import pytest

from stream.domain.metrics import auc, calibration, recall_precision


def brute_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(8))
def test_auc_matches_pair_count(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(5, 300)
    # coarse scores so there are many ties
    scores = [round(rng.random(), 1 if seed % 2 else 3) for _ in range(n)]
    labels = [rng.random() < 0.3 + 0.4 * s for s in scores]
    if all(labels) or not any(labels):
        labels[0] = not labels[0]
    assert auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_auc_edges() -> None:
    assert auc([0.1, 0.2, 0.9], [False, False, True]) == 1.0
    assert auc([0.9, 0.2, 0.1], [False, False, True]) == 0.0
    assert auc([0.5] * 4, [True, False, True, False]) == 0.5
    assert math.isnan(auc([0.1, 0.2], [True, True]))
    with pytest.raises(ValueError):
        auc([0.1], [True, False])


def test_recall_precision() -> None:
    flags = [True, True, True, False, False, False]
    labels = [True, True, False, True, False, False]
    assert recall_precision(flags, labels) == (2 / 3, 2 / 3)
    r, p = recall_precision([False, False], [True, False])
    assert r == 0.0 and math.isnan(p)


def test_calibration_bins() -> None:
    scores = [0.05, 0.05, 0.15, 0.95, 1.0, 0.0]
    labels = [False, True, False, True, True, False]
    cal = calibration(scores, labels, bins=10)
    assert cal[0] == (pytest.approx(0.1 / 3), pytest.approx(1 / 3), 3)
    assert cal[1] == (0.15, 0.0, 1)
    assert cal[-1] == (pytest.approx(0.975), 1.0, 2)
    assert sum(c for _, _, c in cal) == len(scores)
