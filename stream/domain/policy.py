"""When a discharge is high risk: a per-facility alert budget, and the reasons.

A care-transitions team can follow up a fixed share of its discharges (coaches x ~25 active
patients / 30 days / daily discharges; ``k`` = 0.10 by default, per facility in the
configuration: ``wardstream.config.Settings.alert_share_for``). So the policy flags the top
``k`` of a facility's discharges, not a recall target:

* **budget**: the threshold is the rolling ``(1 - k)`` quantile of the facility's recent scores
  on this partition (the model is per ADT partition, stream/README.md "Determinism", so the
  window is too). A discharge is compared with the threshold from the scores *before* it, then
  joins the window. As an order statistic: with ``n`` recent scores the threshold is the
  ``m``-th highest, ``m = max(1, floor(k * n))``, and a score at or above it is flagged; a new
  score from the same distribution lands there with probability ``m / (n + 1)`` <= k.
  The budget is a count of alerts, so the quantile is paced: when the window's budget decisions
  flagged more than ``k`` of them, the quantile takes ``k x (1 - PACE_GAIN x overspend)``
  (bounded to 0.5k-1.5k), and more after underspending. Without it, one partition's ~300
  recent scores estimate the 90th percentile with a relative error of ~17%, and a seasonal
  case mix moves the scores faster than a 28-day window follows: on a simulated year, monthly
  shares ranged 8.4%-12.4% unpaced, 8.6%-10.9% with a gain of 2 (deviation halves every ~n/2
  decisions, about two weeks of a partition's discharges; bench/bench_model.py).
* **lace_cold_start**: while the model has learned fewer than ``WARM_LABELS`` labels, or fewer
  than ``MIN_SCORES`` of the window's scores come from a warm model, rank by LACE instead: flag
  LACE >= c, where c is the smallest integer >= 10 (the validated LACE cut-off) that at most
  ``k`` of the window's LACE values reach. LACE has ties, so a quantile alone would overshoot
  ``k``; this cap keeps the share <= k (often well below: LACE >= 10 is ~20% of discharges).
  The reported ``threshold`` is then the score threshold the budget would use, 1.0 if none.

The window: the facility's discharges of the last ``WINDOW_DAYS`` = 28 days of event time on
this partition, at most ``WINDOW_MAX`` = 500 of them. Four weeks cover every weekday pattern
four times and follow a model that still learns (its scores drift upwards as it sharpens) or a
seasonal case mix within weeks; the cap bounds the state of a large facility (a 300-bed
hospital with 4 partitions has ~300 discharges a partition in 28 days, under the cap: its
quantile rests on ~30 flagged scores). ``MIN_SCORES`` = 100: fewer leaves under 10 scores above
a 10% threshold, and one outlier moves it. ``WARM_LABELS`` = 500: on a simulated year
(bench/bench_model.py, AUC per 100 labels learned) a partition's model ranks below LACE for its
first ~300 labels (0.61-0.69 vs 0.63-0.70) and above it from then on (0.73-0.75 vs 0.62-0.66 at
300-600); 500 leaves a margin, and a partition reaches it ~75 days after the hospital opens.
Only scores given by a warm model enter the budget's quantile: a young model's scores are
spread differently and would bias the threshold for 28 days.

Everything is a function of the sequence of calls (event time only): a replay gives the same
alerts. Pure, no I/O.

>>> b = AlertBudget(min_scores=10)
>>> t0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
>>> [b.decide("F01", t0, 0.05, lace=12, share=0.10, warm=False).high_risk for _ in range(3)]
[True, False, False]
>>> for i in range(20):  # a warm model scores 0.00 .. 0.19
...     d = b.decide("F01", t0 + timedelta(hours=i), i / 100, lace=5, share=0.10, warm=True)
>>> d.policy, d.threshold  # 19 warm scores before the last: m = 1, the highest of them
('budget', 0.18)
>>> d.high_risk, d.alert_share
(True, 0.1)
>>> b.decide("F02", t0, 0.9, lace=9, share=0.10, warm=True)  # another facility: its own window
Decision(high_risk=False, threshold=1.0, policy='lace_cold_start', alert_share=0.1)
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from contracts.events import TopFactor
from stream.domain.lace import HIGH_RISK_LACE

WINDOW_DAYS = 28
WINDOW_MAX = 500
MIN_SCORES = 100
WARM_LABELS = 500
MAX_LACE = 19

PACE_GAIN = 2.0
MAX_PACE = 0.5

BUDGET, LACE_COLD_START = "budget", "lace_cold_start"

Entry = tuple[int, float | None, int, int | None]


@dataclass(frozen=True)
class Decision:
    """The policy's verdict on one discharge (the fields of DischargeScore / Alert it fills)."""

    high_risk: bool
    threshold: float  # the score threshold (0-1); 1.0 when the budget has none yet
    policy: str  # BUDGET | LACE_COLD_START
    alert_share: float  # the facility's k


def score_threshold(scores: Iterable[float], share: float) -> float | None:
    """The ``(1 - share)`` quantile as the ``m``-th highest score, ``m = max(1, floor(share * n))``.

    >>> score_threshold([0.1, 0.4, 0.3, 0.2], 0.5), score_threshold([], 0.1)
    (0.3, None)
    """
    values = list(scores)
    if not values:
        return None
    m = max(1, int(share * len(values) + 1e-9))
    return heapq.nlargest(m, values)[-1]


def lace_cutoff(laces: Iterable[int], share: float) -> int:
    """The smallest LACE c >= 10 that at most ``share`` of ``laces`` reach (20: none flagged).

    >>> lace_cutoff([12, 11, 10, 10, 3, 3, 3, 3, 3, 3], 0.2)  # >= 10 would flag 4 of 10
    11
    >>> lace_cutoff([], 0.1), lace_cutoff([19] * 5, 0.1)
    (10, 20)
    """
    counts = [0] * (MAX_LACE + 2)
    n = 0
    for v in laces:
        counts[min(max(int(v), 0), MAX_LACE)] += 1
        n += 1
    allowed = share * n + 1e-9
    reached = sum(counts[HIGH_RISK_LACE:])  # values >= c, for c = 10 upwards
    for c in range(HIGH_RISK_LACE, MAX_LACE + 1):
        if reached <= allowed:
            return c
        reached -= counts[c]
    return MAX_LACE + 1


class AlertBudget:
    """The alert windows of one partition, one per facility (see the module docstring)."""

    def __init__(self, window_days: int = WINDOW_DAYS, window_max: int = WINDOW_MAX,
                 min_scores: int = MIN_SCORES) -> None:
        if window_days < 1 or window_max < 1 or min_scores < 1:
            raise ValueError("window_days, window_max and min_scores must be >= 1")
        self.window = timedelta(days=window_days)
        self.window_max = window_max
        self.min_scores = min_scores
        # facility -> (epoch seconds, score or None (model not warm), LACE, flagged by the
        # budget: 1 / 0, None for a cold-start decision), oldest first
        self._windows: dict[str, deque[Entry]] = {}

    def decide(self, facility_id: str, at: datetime, score: float, lace: int, share: float,
               warm: bool) -> Decision:
        """Flag or not one discharge at event time ``at``, then add it to the facility's window.

        ``warm``: the partition's model has learned enough labels (``WARM_LABELS``) to rank.
        """
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        window = self._windows.setdefault(facility_id, deque(maxlen=self.window_max))
        t = int(at.timestamp())
        cutoff = t - int(self.window.total_seconds())
        while window and window[0][0] < cutoff:
            window.popleft()
        scores = [s for _, s, _, _ in window if s is not None]
        threshold = score_threshold(scores, share * self._pace(window, share))
        if warm and threshold is not None and len(scores) >= self.min_scores:
            decision = Decision(score >= threshold, threshold, BUDGET, share)
        else:
            flagged = lace >= lace_cutoff((v for _, _, v, _ in window), share)
            decision = Decision(flagged, 1.0 if threshold is None else threshold, LACE_COLD_START, share)
        budgeted = int(decision.high_risk) if decision.policy == BUDGET else None
        window.append((t, float(score) if warm else None, int(lace), budgeted))
        return decision

    @staticmethod
    def _pace(window: Iterable[Entry], share: float) -> float:
        """How much of ``share`` the quantile takes so that the window's budget decisions keep
        to ``share``: 1 on budget, less after over-spending, more after under-spending.

        >>> AlertBudget._pace([(0, 0.5, 3, 1)] * 12 + [(0, 0.1, 3, 0)] * 88, 0.10)  # 20% over
        0.6
        """
        decided = flagged = 0
        for *_, f in window:
            if f is not None:
                decided += 1
                flagged += f
        if decided == 0:
            return 1.0
        over = (flagged - share * decided) / (share * decided)
        return min(max(1.0 - PACE_GAIN * over, 1.0 - MAX_PACE), 1.0 + MAX_PACE)

    def forget(self, facility_id: str, at: datetime, score: float, lace: int) -> bool:
        """Take a withdrawn discharge (a cancelled A03) out of its facility's window, if it is
        still there: the latest entry of its time and LACE whose score is its score (or None,
        scored while the model was cold). Later thresholds are then those without it.

        >>> b = AlertBudget()
        >>> at = datetime(2025, 1, 1, tzinfo=timezone.utc)
        >>> _ = b.decide("F01", at, 0.3, 11, 0.1, warm=False)
        >>> b.forget("F01", at, 0.3, 11), b.size("F01"), b.forget("F01", at, 0.3, 11)
        (True, 0, False)
        """
        window = self._windows.get(facility_id)
        t = int(at.timestamp())
        for i in range(len(window or ()) - 1, -1, -1):
            entry_t, entry_score, entry_lace, _ = window[i]
            if entry_t == t and entry_lace == lace and (entry_score is None or abs(entry_score - score) < 1e-12):
                del window[i]
                return True
        return False

    def size(self, facility_id: str) -> int:
        return len(self._windows.get(facility_id, ()))

    def to_dict(self) -> dict[str, Any]:
        """The windows as JSON-ready data (entries stay tuples: JSON writes them as arrays; a
        copy per entry cost a fifth of the ADT agent's time with 10 facilities on a partition)."""
        return {"windows": {f: list(w) for f, w in sorted(self._windows.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AlertBudget":
        """Restore the windows; a state without them (an older policy's) starts empty."""
        budget = cls()
        for facility, entries in ((d or {}).get("windows") or {}).items():
            budget._windows[facility] = deque(
                ((int(t), None if s is None else float(s), int(v), None if f is None else int(f))
                 for t, s, v, f in entries),
                maxlen=budget.window_max)
        return budget


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
