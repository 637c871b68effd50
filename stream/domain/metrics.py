"""Model health, computed exactly: ROC AUC, recall and precision, calibration.

Exact because the approximations around (river's ``ROCAUC`` uses 10 thresholds by default) can be
off by a few points, which is the size of the differences we care about (model vs LACE).

>>> auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
0.75
>>> recall_precision([True, True, False, False], [True, False, True, False])
(0.5, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count half.

    Rank formulation (Mann-Whitney U) with average ranks for ties: O(n log n). NaN when only
    one class is present.
    """
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum_pos = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum_pos += avg_rank * sum(1 for t in order[i: j + 1] if labels[t])
        i = j + 1
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def recall_precision(flags: Sequence[bool], labels: Sequence[bool]) -> tuple[float, float]:
    """(recall, precision) of boolean flags; NaN where the denominator is 0."""
    if len(flags) != len(labels):
        raise ValueError("flags and labels differ in length")
    tp = sum(1 for f, y in zip(flags, labels) if f and y)
    fn = sum(1 for f, y in zip(flags, labels) if not f and y)
    fp = sum(1 for f, y in zip(flags, labels) if f and not y)
    recall = tp / (tp + fn) if tp + fn else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    return recall, precision


def calibration(
    scores: Sequence[float], labels: Sequence[bool], bins: int = 10
) -> list[tuple[float, float, int]]:
    """Reliability curve: (mean score, observed rate, count) per equal-width score bin.

    Empty bins are left out. A calibrated model has mean score ~ observed rate in every bin.
    """
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    sums = [0.0] * bins
    hits = [0] * bins
    counts = [0] * bins
    for s, y in zip(scores, labels):
        b = min(int(s * bins), bins - 1) if s > 0 else 0
        sums[b] += s
        hits[b] += 1 if y else 0
        counts[b] += 1
    return [(sums[b] / counts[b], hits[b] / counts[b], counts[b]) for b in range(bins) if counts[b]]
