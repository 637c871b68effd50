"""When a discharge is high risk: an alert threshold that keeps recall >= 0.80, and the reasons.

The threshold is re-derived from the most recent ``window`` labelled discharges (the score each
had at discharge, and whether it was readmitted): the highest threshold that would have flagged
at least ``recall_target`` of the readmitted ones. Highest, because alerts cost care-team time:
we flag as few patients as the recall target allows. Until ``min_positives`` readmissions have
been seen, the default threshold applies (no basis for an estimate yet).

The window is short on purpose (500 labels: about two months of one partition's discharges at a
300-bed hospital with 4 partitions). The buffer holds scores the model gave when it was younger;
while it is still learning its scores spread out, so an old buffer sets the bar too high and the
live recall falls below the target. Measured on a simulated year (bench/bench_model.py): live
recall after the 90-day warm-up 0.77 with 500, 0.73 with 2000; ~0.80 once the model has settled.
So the policy aims at recall 0.85 on its buffer (``RECALL_TARGET``): the margin keeps the live recall,
which lags behind the buffer's, at or above the 0.80 the care teams were promised.

>>> pol = ThresholdPolicy(min_positives=4, default_threshold=0.5)
>>> pol.threshold
0.5
>>> for s, y in [(0.9, True), (0.7, True), (0.6, False), (0.4, True), (0.2, True), (0.1, False)]:
...     pol.observe(s, y)
>>> pol.threshold  # 4 positives, 85% of them = 4 (ceil 3.4): the 4th highest positive score
0.2
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from stream.contracts import TopFactor
from stream.domain.lace import HIGH_RISK_LACE


RECALL_TARGET = 0.85  # on the buffer; the promise to care teams is >= 0.80 live (see above)


class ThresholdPolicy:
    def __init__(
        self,
        recall_target: float = RECALL_TARGET,
        window: int = 500,
        min_positives: int = 20,
        default_threshold: float = 0.5,
    ) -> None:
        if not 0 < recall_target <= 1:
            raise ValueError("recall_target must be in (0, 1]")
        if window < 1 or min_positives < 1:
            raise ValueError("window and min_positives must be >= 1")
        self.recall_target = recall_target
        self.window = window
        self.min_positives = min_positives
        self.default_threshold = default_threshold
        self._buffer: deque[tuple[float, bool]] = deque(maxlen=window)
        self._cached: float | None = None

    def observe(self, score: float, readmitted: bool) -> None:
        """Record a labelled discharge (its score at discharge time)."""
        self._buffer.append((float(score), bool(readmitted)))
        self._cached = None

    @property
    def n_positives(self) -> int:
        return sum(1 for _, y in self._buffer if y)

    @property
    def threshold(self) -> float:
        """Highest t with recall(score >= t) >= recall_target on the buffer (default before)."""
        if self._cached is None:
            pos = sorted((s for s, y in self._buffer if y), reverse=True)
            if len(pos) < self.min_positives:
                self._cached = self.default_threshold
            else:
                k = math.ceil(self.recall_target * len(pos) - 1e-9)
                self._cached = pos[k - 1]
        return self._cached

    def is_high_risk(self, score: float) -> bool:
        return score >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall_target": self.recall_target,
            "window": self.window,
            "min_positives": self.min_positives,
            "default_threshold": self.default_threshold,
            "buffer": [[s, y] for s, y in self._buffer],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThresholdPolicy":
        pol = cls(d["recall_target"], d["window"], d["min_positives"], d["default_threshold"])
        for s, y in d["buffer"]:
            pol.observe(s, y)
        return pol


LACE_WORDS = {"L": "length of stay", "A": "acute admission", "C": "comorbidity", "E": "emergency visits"}


def alert_reasons(top_factors: list[TopFactor], lace: int, lace_points: dict[str, int]) -> list[str]:
    """Plain-words reasons for an alert: the LACE reading, then the model's top factors.

    Only feature-derived phrases (no names, no free text about the patient). Factors that lower
    the risk are left out.

    >>> alert_reasons([TopFactor(feature="ed_visits_6m", contribution=0.4, text="3 emergency visits in the past 6 months")],
    ...               12, {"L": 4, "A": 3, "C": 2, "E": 3})
    ['LACE index 12 (>= 10: high risk; length of stay 4, acute admission 3, comorbidity 2, emergency visits 3)', '3 emergency visits in the past 6 months']
    """
    parts = ", ".join(f"{LACE_WORDS[k]} {v}" for k, v in lace_points.items() if v and k in LACE_WORDS)
    band = f">= {HIGH_RISK_LACE}: high risk" if lace >= HIGH_RISK_LACE else f"< {HIGH_RISK_LACE}"
    reasons = [f"LACE index {lace} ({band}{'; ' + parts if parts else ''})"]
    reasons += [f.text for f in top_factors if f.contribution > 0]
    return reasons
