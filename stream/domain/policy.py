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

Stored in chunks: a window is up to 500 entries, and the worker stores its budget after every
batch that decided a discharge. Written whole, the windows of 10 facilities were ~80 KB per
partition and batch, more than the batch's patients. So each window is kept as records of
``CHUNK`` entries by position (:meth:`AlertBudget.changes`: only the records a batch changed,
usually the newest and the oldest), and an index of where each window begins and how long it is
(:meth:`AlertBudget.index`); :meth:`AlertBudget.from_records` puts the same windows back.

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

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any

from contracts.events import TopFactor
from stream.domain.lace import HIGH_RISK_LACE

WINDOW_DAYS = 28
WINDOW_MAX = 500
MIN_SCORES = 100
WARM_LABELS = 500
MAX_LACE = 19
CHUNK = 32  # entries per stored record of a window

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
    return _mth_highest(sorted(scores), share)


def _mth_highest(ordered: list[float], share: float) -> float | None:
    """:func:`score_threshold` of scores already in ascending order (all of them when
    ``share`` x n >= n)."""
    if not ordered:
        return None
    return ordered[-min(max(1, int(share * len(ordered) + 1e-9)), len(ordered))]


def lace_cutoff(laces: Iterable[int], share: float) -> int:
    """The smallest LACE c >= 10 that at most ``share`` of ``laces`` reach (20: none flagged).

    >>> lace_cutoff([12, 11, 10, 10, 3, 3, 3, 3, 3, 3], 0.2)  # >= 10 would flag 4 of 10
    11
    >>> lace_cutoff([], 0.1), lace_cutoff([19] * 5, 0.1)
    (10, 20)
    """
    counts = [0] * (MAX_LACE + 1)
    for v in laces:
        counts[_lace_slot(v)] += 1
    return _cutoff_of_counts(counts, share)


def _lace_slot(lace: int) -> int:
    return min(max(int(lace), 0), MAX_LACE)


def _cutoff_of_counts(counts: list[int], share: float) -> int:
    """:func:`lace_cutoff` of the LACE values counted by value (``counts[v]``, v = 0..19)."""
    allowed = share * sum(counts) + 1e-9
    reached = sum(counts[HIGH_RISK_LACE:])  # values >= c, for c = 10 upwards
    for c in range(HIGH_RISK_LACE, MAX_LACE + 1):
        if reached <= allowed:
            return c
        reached -= counts[c]
    return MAX_LACE + 1


class _Window:
    """One facility's entries, oldest first, and what a decision reads from them kept up to date
    as entries come and go: the warm scores in ascending order, the count of each LACE value, and
    the budget decisions' count and flags (rather than summing up to 500 entries at every
    discharge; bench/README.md, "Cheaper discharges and labels").

    For storage, an entry's position is ``first`` (the entries ever popped from the front) plus
    its index, and the positions ``c * CHUNK`` to ``(c + 1) * CHUNK - 1`` make chunk ``c``;
    ``dirty`` holds the chunks changed since they were last stored."""

    __slots__ = ("entries", "scores", "laces", "decided", "flagged", "first", "dirty")

    def __init__(self, entries: Iterable[Entry] = (), first: int = 0) -> None:
        self.entries: deque[Entry] = deque()
        self.scores: list[float] = []
        self.laces = [0] * (MAX_LACE + 1)
        self.decided = self.flagged = 0
        self.first = first
        self.dirty: set[int] = set()
        for entry in entries:
            self.append(entry)

    def append(self, entry: Entry) -> None:
        self.dirty.add((self.first + len(self.entries)) // CHUNK)
        self.entries.append(entry)
        self._count(entry, 1)

    def popleft(self) -> None:
        self.dirty.add(self.first // CHUNK)
        self.first += 1
        self._count(self.entries.popleft(), -1)

    def delete(self, i: int) -> None:
        """Remove the ``i``-th entry: every later one moves up a position (rare: a withdrawal)."""
        self.dirty.update(range((self.first + i) // CHUNK, (self.first + len(self.entries) - 1) // CHUNK + 1))
        entry = self.entries[i]
        del self.entries[i]
        self._count(entry, -1)

    def chunk(self, c: int) -> list[Entry] | None:
        """The entries of chunk ``c`` now (None: it holds none)."""
        lo, hi = max(c * CHUNK - self.first, 0), min((c + 1) * CHUNK - self.first, len(self.entries))
        return list(islice(self.entries, lo, hi)) if lo < hi else None

    def _count(self, entry: Entry, sign: int) -> None:
        _, score, lace, flag = entry
        if score is not None:
            if sign > 0:
                bisect.insort(self.scores, score)
            else:
                del self.scores[bisect.bisect_left(self.scores, score)]
        self.laces[_lace_slot(lace)] += sign
        if flag is not None:
            self.decided += sign
            self.flagged += sign * flag


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
        self._windows: dict[str, _Window] = {}

    def decide(self, facility_id: str, at: datetime, score: float, lace: int, share: float,
               warm: bool) -> Decision:
        """Flag or not one discharge at event time ``at``, then add it to the facility's window.

        ``warm``: the partition's model has learned enough labels (``WARM_LABELS``) to rank.
        """
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        window = self._windows.get(facility_id) or self._windows.setdefault(facility_id, _Window())
        entries = window.entries
        t = int(at.timestamp())
        cutoff = t - int(self.window.total_seconds())
        while entries and entries[0][0] < cutoff:
            window.popleft()
        threshold = _mth_highest(window.scores, share * self._pace(window.decided, window.flagged, share))
        if warm and threshold is not None and len(window.scores) >= self.min_scores:
            decision = Decision(score >= threshold, threshold, BUDGET, share)
        else:
            flagged = lace >= _cutoff_of_counts(window.laces, share)
            decision = Decision(flagged, 1.0 if threshold is None else threshold, LACE_COLD_START, share)
        budgeted = int(decision.high_risk) if decision.policy == BUDGET else None
        if len(entries) >= self.window_max:
            window.popleft()
        window.append((t, float(score) if warm else None, int(lace), budgeted))
        return decision

    @staticmethod
    def _pace(decided: int, flagged: int, share: float) -> float:
        """How much of ``share`` the quantile takes so that the window's budget decisions
        (``decided`` of them, ``flagged`` flagged) keep to ``share``: 1 on budget, less after
        over-spending, more after under-spending.

        >>> AlertBudget._pace(100, 12, 0.10)  # 20% over
        0.6
        """
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
        if window is None:
            return False
        t = int(at.timestamp())
        for i in range(len(window.entries) - 1, -1, -1):
            entry_t, entry_score, entry_lace, _ = window.entries[i]
            if entry_t == t and entry_lace == lace and (entry_score is None or abs(entry_score - score) < 1e-12):
                window.delete(i)
                return True
        return False

    def size(self, facility_id: str) -> int:
        window = self._windows.get(facility_id)
        return 0 if window is None else len(window.entries)

    def index(self) -> dict[str, list[int]]:
        """Where each facility's window begins and how many entries it holds, ``{facility:
        [first, n]}``: with the chunks of :meth:`changes`, what :meth:`from_records` needs."""
        return {f: [w.first, len(w.entries)] for f, w in sorted(self._windows.items())}

    def changes(self) -> dict[str, list[Entry] | None]:
        """The chunks changed since the last call, ``{"{facility}|{chunk}": entries}`` (None: the
        chunk holds no entry any more, delete it); they are then clean."""
        out: dict[str, list[Entry] | None] = {}
        for facility, w in sorted(self._windows.items()):
            for c in sorted(w.dirty):
                out[f"{facility}|{c}"] = w.chunk(c)
            w.dirty.clear()
        return out

    @classmethod
    def from_records(cls, index: dict[str, list[int]], get: Callable[[str], list[Entry] | None]
                     ) -> "AlertBudget":
        """The windows :meth:`index` and the chunks (``get("{facility}|{chunk}")``) describe.

        >>> b = AlertBudget()
        >>> at = datetime(2025, 1, 1, tzinfo=timezone.utc)
        >>> for i in range(40):
        ...     _ = b.decide("F01", at + timedelta(hours=i), i / 40, 5, 0.1, warm=True)
        >>> stored = b.changes()
        >>> sorted(stored), b.index()
        (['F01|0', 'F01|1'], {'F01': [0, 40]})
        >>> AlertBudget.from_records(b.index(), stored.get).to_dict() == b.to_dict()
        True
        """
        budget = cls()
        for facility, (first, n) in index.items():
            entries: list[Entry] = []
            for c in range(first // CHUNK, (first + n - 1) // CHUNK + 1) if n else ():
                entries += get(f"{facility}|{c}") or []
            if len(entries) != n:
                raise ValueError(f"alert budget of {facility}: {len(entries)} entries stored, the index says {n}")
            window = budget._windows[facility] = _Window((_entry(e) for e in entries), first)
            window.dirty.clear()  # as stored
        return budget

    def to_dict(self) -> dict[str, Any]:
        """The windows as JSON-ready data, whole (tests; the worker stores :meth:`changes`)."""
        return {"windows": {f: list(w.entries) for f, w in sorted(self._windows.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AlertBudget":
        """Restore windows stored whole (how the worker stored them before the chunks; every
        chunk is then to be stored); a state without them (an older policy's) starts empty."""
        budget = cls()
        for facility, entries in ((d or {}).get("windows") or {}).items():
            budget._windows[facility] = _Window(_entry(e) for e in entries[-budget.window_max:])
        return budget


def _entry(stored: Any) -> Entry:
    t, s, v, f = stored
    return int(t), None if s is None else float(s), int(v), None if f is None else int(f)


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
