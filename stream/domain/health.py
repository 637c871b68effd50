"""Model-health math: PSI over fixed bins, subgroup figures, the equity and drift checks. Pure.

The stream keeps, per (facility, day), *absolute* aggregates that these functions turn into
checks (``stream/health_monitor.py``):

* **histograms** of the day's discharges: the score and :data:`PSI_FEATURES`, over fixed bin
  edges (:data:`SCORE_EDGES`, :data:`PSI_FEATURES`), so two windows are compared bin by bin and
  the result does not depend on what the data looked like (no quantile bins);
* **subgroup figures** of the day's labelled index discharges: ``[n, readmitted, flagged and
  readmitted, flagged, sum of scores]`` per subgroup (:func:`subgroups`) and for ``all``.

PSI (population stability index) of proportions ``e`` (earlier window) and ``a`` (later window):
``sum((a - e) * ln(a / e))``, an empty bin counting as :data:`PSI_EPSILON`. Conventional levels:
below 0.10 stable, 0.10-0.25 watch, 0.25 and over act.

>>> round(psi([50, 50], [50, 50]), 6)
0.0
>>> round(psi([50, 50], [25, 75]), 3)
0.275
>>> level(0.12, watch_at=0.10, act_at=0.25), level(0.3, watch_at=0.10, act_at=0.25)
('watch', 'act')
>>> bin_index(0.5, (1.0, 2.0)), bin_index(1.0, (1.0, 2.0)), bin_index(7.0, (1.0, 2.0))
(0, 1, 2)
"""

from __future__ import annotations

import base64
import math
import pickle
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from contracts.events import HealthCheck, HealthLevel, ModelHealth

# --------------------------------------------------------------------------- PSI

PSI_WINDOW_DAYS = 28  # two consecutive windows of this length are compared
PSI_MIN_N = 500  # discharges each window needs before a PSI means anything
PSI_WATCH, PSI_ACT = 0.10, 0.25
PSI_EPSILON = 1e-4  # the proportion an empty bin counts as (PSI is undefined at 0)
WARM_UP_DAYS = 90  # windows starting in a facility's first 90 days are skipped: the model learns

# Bin edges: a value v falls in bin bisect_right(edges, v) (edges are lower bounds of the next
# bin). Chosen once from a simulated year's distributions so that no bin is tiny, then fixed.
# Scores under 0.10 are one bin: after its 90 days a model keeps spreading its lowest scores
# further down (on the simulated year the share under 0.05 grew from 5% to 25%, the patients
# unchanged), which finer low bins read as drift (PSI up to 0.13 in a stationary year; 0.04 now).
SCORE_EDGES: tuple[float, ...] = (0.10, 0.15, 0.20, 0.30, 0.40, 0.50)
PSI_FEATURES: dict[str, tuple[float, ...]] = {
    # the model's most important case-mix features (features.py names)
    "age": (18.0, 40.0, 50.0, 60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0),
    "charlson": (1.0, 2.0, 3.0, 4.0, 5.0, 7.0),
    # stay of 1, 2, 3, 4, 5, 7, 10, 14 days (the feature is log1p(days))
    "los_log1p": tuple(math.log1p(d) for d in (1, 2, 3, 4, 5, 7, 10, 14)),
    "ed_visits_6m": (1.0, 2.0, 3.0, 5.0),
    "prior_admissions_12m": (1.0, 2.0, 3.0, 5.0),
    "n_chronic": (1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
}
SUBJECT_TEXT = {
    "score": "risk score", "age": "age", "charlson": "Charlson index", "los_log1p": "length of stay",
    "ed_visits_6m": "ED visits in 6 months", "prior_admissions_12m": "admissions in 12 months",
    "n_chronic": "chronic conditions",
}


def psi_edges() -> dict[str, tuple[float, ...]]:
    """Every PSI subject (``score`` first) with its bin edges."""
    return {"score": SCORE_EDGES, **PSI_FEATURES}


def bin_index(value: float, edges: Sequence[float]) -> int:
    return bisect_right(edges, value)


def empty_histograms() -> dict[str, list[int]]:
    return {subject: [0] * (len(edges) + 1) for subject, edges in psi_edges().items()}


def add_to_histograms(hist: dict[str, list[int]], score: float, x: Mapping[str, float],
                      weight: int = 1) -> None:
    """Count one discharge (its score and feature dict) into ``hist`` (in place); ``weight``
    -1 takes a counted one back out (a cancelled discharge)."""
    for subject, edges in psi_edges().items():
        value = score if subject == "score" else float(x.get(subject, 0.0))
        hist[subject][bin_index(value, edges)] += weight


def empty_day() -> dict[str, Any]:
    """A (facility, day) record: ``n`` discharges, ``n_index`` index discharges, ``hist``
    (:func:`add_to_histograms`) and ``labels`` (:func:`add_label`)."""
    return {"n": 0, "n_index": 0, "hist": empty_histograms(), "labels": {}}


def add_day(into: dict[str, Any], record: Mapping[str, Any], weight: int = 1) -> None:
    """Add a (facility, day) record to ``into`` (in place): day records sum over ADT partitions
    and over the days of a window (``weight`` -1: take a day back out of a window's sum).

    >>> total = empty_day()
    >>> add_day(total, {"n": 2, "n_index": 1, "hist": {"score": [2, 0, 0, 0, 0, 0, 0]},
    ...                 "labels": {"all": [1, 0, 0, 0, 0.2]}})
    >>> add_day(total, {"n": 1, "n_index": 1, "hist": {}, "labels": {"all": [1, 1, 1, 1, 0.6]}})
    >>> total["n"], total["hist"]["score"][0], total["labels"]["all"]
    (3, 2, [2, 1, 1, 1, 0.8])
    """
    into["n"] += weight * record["n"]
    into["n_index"] += weight * record["n_index"]
    for part in ("hist", "labels"):
        rows = into[part]
        for name, values in record[part].items():
            row = rows.get(name)
            if row is None:
                rows[name] = [weight * v for v in values]
            else:
                for i, v in enumerate(values):
                    row[i] += weight * v


def psi(earlier: Sequence[float], later: Sequence[float], eps: float = PSI_EPSILON) -> float:
    """PSI of two histograms over the same bins (counts; each must have a positive total)."""
    n_e, n_a = sum(earlier), sum(later)
    total = 0.0
    for e, a in zip(earlier, later, strict=True):
        pe, pa = max(e / n_e, eps), max(a / n_a, eps)
        total += (pa - pe) * math.log(pa / pe)
    return total


def largest_move(earlier: Sequence[float], later: Sequence[float]) -> tuple[int, float, float]:
    """The bin whose share moved most: ``(bin, earlier share, later share)``.

    >>> largest_move([50, 50, 0], [40, 40, 20])
    (2, 0.0, 0.2)
    """
    n_e, n_a = sum(earlier), sum(later)
    shares = [(e / n_e, a / n_a) for e, a in zip(earlier, later, strict=True)]
    i = max(range(len(shares)), key=lambda k: (abs(shares[k][1] - shares[k][0]), -k))
    return i, round(shares[i][0], 4), round(shares[i][1], 4)


def bin_text(subject: str, i: int) -> str:
    """Plain words for bin ``i`` of a subject.

    >>> bin_text("age", 0), bin_text("age", 10), bin_text("los_log1p", 1)
    ('age < 18', 'age >= 90', 'length of stay 1-2')
    """
    edges = psi_edges()[subject]
    show = (lambda v: f"{math.expm1(v):.0f}") if subject == "los_log1p" else (lambda v: f"{v:g}")
    name = SUBJECT_TEXT.get(subject, subject)
    if i == 0:
        return f"{name} < {show(edges[0])}"
    if i == len(edges):
        return f"{name} >= {show(edges[-1])}"
    return f"{name} {show(edges[i - 1])}-{show(edges[i])}"


def level(value: float, *, watch_at: float | None, act_at: float) -> HealthLevel:
    if value >= act_at:
        return "act"
    if watch_at is not None and value >= watch_at:
        return "watch"
    return "ok"


# --------------------------------------------------------------------------- subgroups and equity

EQUITY_WINDOW_DAYS = 90
EQUITY_MIN_READMISSIONS = 100  # a subgroup needs this many readmissions in the window
RECALL_GAP_ACT = 0.10  # |subgroup recall - facility recall| above this: act
OE_ACT = 1.25  # observed / expected above this, or below 1 / 1.25 = 0.8: act

# subgroup figures: n, readmitted, flagged and readmitted, flagged, sum of scores
N, READMITTED, FLAGGED_READMITTED, FLAGGED, SUM_SCORES = range(5)
ALL = "all"


def age_band(age: float) -> str:
    """The age band of the equity checks.

    >>> [age_band(a) for a in (17, 50, 64, 65, 79, 80)]
    ['<50', '50-64', '50-64', '65-79', '65-79', '80+']
    """
    if age < 50:
        return "<50"
    if age < 65:
        return "50-64"
    if age < 80:
        return "65-79"
    return "80+"


def subgroups(sex: str, race: str, payer: str, age: float) -> dict[str, str]:
    """The equity attributes of a discharge (kept on its pending discharge until the label).

    >>> subgroups("F", "Black", "medicare", 81)
    {'sex': 'F', 'race': 'Black', 'payer': 'medicare', 'age': '80+'}
    """
    return {"sex": sex, "race": race, "payer": payer, "age": age_band(age)}


def add_label(figures: dict[str, list[float]], groups: Mapping[str, str], *, readmitted: bool,
              flagged: bool, score: float, weight: int = 1) -> None:
    """Count one labelled index discharge into ``all`` and each of its subgroups (in place);
    ``weight`` -1 takes a counted label back out (a readmission its cancelled admission undid).

    >>> f = {}
    >>> add_label(f, {"sex": "F"}, readmitted=True, flagged=True, score=0.4)
    >>> f
    {'all': [1, 1, 1, 1, 0.4], 'sex=F': [1, 1, 1, 1, 0.4]}
    """
    for name in (ALL, *(f"{k}={v}" for k, v in groups.items())):
        row = figures.setdefault(name, [0, 0, 0, 0, 0.0])
        row[N] += weight
        row[READMITTED] += weight * int(readmitted)
        row[FLAGGED_READMITTED] += weight * int(readmitted and flagged)
        row[FLAGGED] += weight * int(flagged)
        row[SUM_SCORES] += weight * score


def recall(row: Sequence[float]) -> float | None:
    """Recall at the budget: flagged and readmitted / readmitted."""
    return row[FLAGGED_READMITTED] / row[READMITTED] if row[READMITTED] else None


def observed_expected(row: Sequence[float]) -> float | None:
    """Observed / expected readmissions: readmitted / sum of scores."""
    return row[READMITTED] / row[SUM_SCORES] if row[SUM_SCORES] > 0 else None


# --------------------------------------------------------------------------- messages


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def check_id(check: HealthCheck, facility_id: str, subject: str, window_end: date) -> str:
    """Derived from what was checked, never random: the last message per id is its state.

    >>> check_id("psi_score", "F01", "score", date(2025, 3, 1))
    'psi_score|F01|score|2025-03-01'
    """
    return f"{check}|{facility_id}|{subject}|{window_end.isoformat()}"


@dataclass(frozen=True)
class Window:
    """Days ``[start, end)`` of a facility."""

    facility_id: str
    start: date
    end: date


def psi_check(w: Window, subject: str, earlier: Sequence[int], later: Sequence[int]) -> ModelHealth:
    """The PSI check of one subject between ``[start, start+28)`` and ``[end-28, end)``."""
    value = psi(earlier, later)
    i, before, after = largest_move(earlier, later)
    check: HealthCheck = "psi_score" if subject == "score" else "psi_feature"
    lvl = level(value, watch_at=PSI_WATCH, act_at=PSI_ACT)
    name = SUBJECT_TEXT.get(subject, subject)
    return ModelHealth(
        check_id=check_id(check, w.facility_id, subject, w.end), check=check,
        facility_id=w.facility_id, subject=subject, level=lvl, value=round(value, 6),
        watch_at=PSI_WATCH, act_at=PSI_ACT, baseline=None, n=int(min(sum(earlier), sum(later))),
        window_start=day_start(w.start), window_end=day_start(w.end),
        message=(f"PSI of the {name} {value:.3f} between the 28 days before "
                 f"{(w.end - timedelta(days=PSI_WINDOW_DAYS)).isoformat()} and the 28 days after "
                 f"({sum(earlier)} vs {sum(later)} discharges); largest move: "
                 f"{bin_text(subject, i)} {before:.1%} -> {after:.1%}"),
    )


def equity_checks(w: Window, figures: Mapping[str, Sequence[float]]) -> list[ModelHealth]:
    """Recall and O/E of every subgroup with enough readmissions, against the facility's."""
    facility = figures.get(ALL)
    if facility is None:
        return []
    base_recall, base_oe = recall(facility), observed_expected(facility)
    out: list[ModelHealth] = []
    common = dict(facility_id=w.facility_id, window_start=day_start(w.start),
                  window_end=day_start(w.end))
    for subject in sorted(figures):
        row = figures[subject]
        if subject == ALL or row[READMITTED] < EQUITY_MIN_READMISSIONS:
            continue
        r, oe = recall(row), observed_expected(row)
        if r is not None and base_recall is not None:
            gap = r - base_recall
            out.append(ModelHealth(
                check_id=check_id("equity_recall", w.facility_id, subject, w.end),
                check="equity_recall", subject=subject,
                level="act" if abs(gap) > RECALL_GAP_ACT else "ok", value=round(gap, 6),
                watch_at=None, act_at=RECALL_GAP_ACT, baseline=round(base_recall, 6),
                n=int(row[READMITTED]),
                message=(f"recall at the budget of {subject} {r:.3f} vs the facility's "
                         f"{base_recall:.3f} ({gap:+.3f}) over 90 days, "
                         f"{int(row[READMITTED])} readmissions"),
                **common))
        if oe is not None:
            out_of_band = oe > OE_ACT or oe < 1 / OE_ACT
            out.append(ModelHealth(
                check_id=check_id("equity_oe", w.facility_id, subject, w.end),
                check="equity_oe", subject=subject, level="act" if out_of_band else "ok",
                value=round(oe, 6), watch_at=None, act_at=OE_ACT,
                baseline=None if base_oe is None else round(base_oe, 6), n=int(row[N]),
                message=(f"observed / expected readmissions of {subject} {oe:.3f} "
                         f"(facility {base_oe or 0:.3f}; band {1 / OE_ACT:.2f}-{OE_ACT:.2f}) "
                         f"over 90 days, {int(row[N])} discharges"),
                **common))
    return out


# --------------------------------------------------------------------------- error drift

ERROR_DRIFT_ACT = 0.02  # recent Brier error this much above the earlier mean: act (else watch)
RECENT_ALPHA = 0.02  # weight of the newest error in the recent mean (~ the last 50 labels)


def error_drift_check(facility_id: str, partition: int, *, since: datetime, at: datetime,
                      recent: float, earlier: float, n: int) -> ModelHealth:
    """A warning from a partition's error detector: its Brier error went up."""
    change = recent - earlier
    subject = f"partition {partition}"
    return ModelHealth(
        check_id=check_id("error_drift", facility_id, subject, at.date()), check="error_drift",
        facility_id=facility_id, subject=subject,
        level="act" if change >= ERROR_DRIFT_ACT else "watch", value=round(change, 6),
        watch_at=0.0, act_at=ERROR_DRIFT_ACT, baseline=round(earlier, 6), n=n,
        window_start=since, window_end=at,
        message=(f"the Brier error of the model of partition {partition} went up: recent "
                 f"{recent:.3f} vs {earlier:.3f} over the {n} labels before"),
    )


# Page-Hinkley on the live Brier error, upward only (mode "up"): while the model learns its error
# falls, which must not warn. delta is the tolerated rise per label, threshold the cumulative rise
# that warns; with a Brier error of sd ~0.2 a stationary stream stays far below it.
PH_DELTA, PH_THRESHOLD, PH_MIN_INSTANCES = 0.01, 20.0, 100


class ErrorDrift:
    """The error detector of one (partition, facility): river's PageHinkley, JSON-storable.

    >>> d = ErrorDrift.new(datetime(2025, 1, 1, tzinfo=timezone.utc))
    >>> fired = [d.update(0.1 if i % 10 else 0.5, datetime(2025, 1, 1, tzinfo=timezone.utc))
    ...          for i in range(400)]
    >>> any(fired)
    False
    >>> at = datetime(2025, 2, 1, tzinfo=timezone.utc)
    >>> fired = [d.update(0.6, at) for i in range(200)]
    >>> [f for f in fired if f][0]
    (0.424276, 0.188367, 447)
    """

    def __init__(self, detector: Any, n: int, total: float, recent: float, since: datetime) -> None:
        self.detector, self.n, self.total, self.recent, self.since = detector, n, total, recent, since

    @classmethod
    def new(cls, since: datetime) -> "ErrorDrift":
        from river.drift import PageHinkley

        ph = PageHinkley(min_instances=PH_MIN_INSTANCES, delta=PH_DELTA, threshold=PH_THRESHOLD,
                         mode="up")
        return cls(ph, 0, 0.0, 0.0, since)

    def update(self, error: float, at: datetime) -> tuple[float, float, int] | None:
        """Add one label's error; ``(recent mean, earlier mean, labels before)`` when it warns."""
        earlier = self.total / self.n if self.n else error
        self.recent = error if self.n == 0 else self.recent + RECENT_ALPHA * (error - self.recent)
        self.detector.update(error)
        fired = self.detector.drift_detected
        result = (round(self.recent, 6), round(earlier, 6), self.n) if fired else None
        if fired:  # the detector starts over; so do the means
            self.n, self.total, self.since = 0, 0.0, at
        else:
            self.n += 1
            self.total += error
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"ph": base64.b64encode(pickle.dumps(self.detector)).decode("ascii"), "n": self.n,
                "total": self.total, "recent": self.recent, "since": self.since.isoformat()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ErrorDrift":
        return cls(pickle.loads(base64.b64decode(d["ph"])), int(d["n"]), float(d["total"]),
                   float(d["recent"]), datetime.fromisoformat(d["since"]))
