"""Every KPI formula, in one place: per-event contributions, day buckets, window values.

Flow: each ADT event (and each readmission label) yields :class:`Contribution` s, one per
dimension (facility, department, provider) and UTC day. The ADT flow adds them to a
:class:`DayBucket` per (ADT partition, dimension, day) (``stream/kpi_tally.py``); the KPI
combiner sums the partitions' buckets of a ``dimension|dimension_id|day`` and computes each
window's KPIs with :func:`window_values` from the buckets of the window's days (windows from
:func:`day_windows`). PostgreSQL computes the same windows from the same buckets (``sql/``).

Sums are kept as integers in millionths (``DayBucket.micro``): integer addition is associative,
so a bucket's value is exactly the same whatever order its contributions arrive in (they come
from several ADT partitions, whose interleaving differs between runs).

KPIs (DESIGN.md; ``value`` is None when the denominator is 0):

================================  =============================  ===============================
kpi                               numerator                      denominator (value)
================================  =============================  ===============================
readmission_rate                  readmitted index discharges    index discharges, label known
avg_length_of_stay                sum of length_of_stay_days     discharges
cost_per_patient                  sum of total_cost (known)      distinct patients discharged
                                                                 with a known cost
high_risk_pct                     discharges flagged high risk   discharges scored (x 100)
provider_utilization              sum of day-end census          capacity x days (provider only)
outcome_efficiency                good outcomes                  patient-days (x 100)
discharges, admissions, census    the count / census at end      1
model_recall (extension)          true positives                 readmitted (tp + fn)
model_precision (extension)       true positives                 flagged (tp + fp)
================================  =============================  ===============================

A label counts on the day of its *discharge* (the window that holds the discharge), so a
window's readmission rate fills in as its labels become known. ``model_recall`` and
``model_precision`` are extensions (not in ``contracts.KPI_NAMES``): the alert policy's recall and
precision per window and dimension, for the model-health dashboard.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from contracts.events import KPI_NAMES, AdmissionEvent, DischargeEvent, TransferEvent, UpdateEvent
from stream.domain.patient import LabelOutcome

FIELDS: tuple[str, ...] = (
    "admissions", "discharges", "los_sum", "cost_sum", "scored", "high_risk", "index_known",
    "readmitted", "good_outcomes", "patient_days", "census_delta", "tp", "fp", "fn",
)
PATIENTS = "patients"  # pseudo-field: the set of distinct discharged patients changed
SCALE = 1_000_000
EXTRA_KPIS: tuple[str, ...] = ("model_recall", "model_precision")
ALL_KPIS: tuple[str, ...] = (*KPI_NAMES, *EXTRA_KPIS)
WINDOWS: dict[str, int] = {"1d": 1, "7d": 7, "30d": 30}

KPI_INPUTS: dict[str, set[str]] = {
    "readmission_rate": {"readmitted", "index_known"},
    "avg_length_of_stay": {"los_sum", "discharges"},
    "cost_per_patient": {"cost_sum", PATIENTS},
    "high_risk_pct": {"high_risk", "scored"},
    "provider_utilization": {"census_delta"},
    "outcome_efficiency": {"good_outcomes", "patient_days"},
    "discharges": {"discharges"},
    "admissions": {"admissions"},
    "census": {"census_delta"},
    "model_recall": {"tp", "fn"},
    "model_precision": {"tp", "fp"},
}


def utc_day(ts: datetime) -> date:
    return ts.astimezone(timezone.utc).date()


def day_start(day: date) -> datetime:
    """The UTC midnight that starts ``day`` (window bounds on the wire)."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- contributions


@dataclass(frozen=True)
class Contribution:
    """One event's (or label's) increments of one dimension's inputs on one day."""

    dimension: str
    dimension_id: str
    facility_id: str
    day: date
    fields: dict[str, float]
    patient_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.dimension}|{self.dimension_id}"


def _dims(facility_id: str, department: str, provider: str) -> list[tuple[str, str]]:
    return [("facility", facility_id), ("department", department), ("provider", provider)]


def _each(facility_id: str, department: str, provider: str, day: date, fields: dict[str, float],
          patient_id: str | None = None) -> list[Contribution]:
    return [Contribution(dim, dim_id, facility_id, day, dict(fields), patient_id)
            for dim, dim_id in _dims(facility_id, department, provider)]


def for_admission(adm: AdmissionEvent) -> list[Contribution]:
    """An admission: +1 admission and +1 census on its day, for each dimension."""
    return admitted(adm.facility_id, adm.department, adm.attending_provider_id, adm.occurred_at)


def admitted(facility_id: str, department: str, provider: str, at: datetime) -> list[Contribution]:
    """An admission's contributions from what a stay remembers of it (a cancellation reverts them)."""
    return _each(facility_id, department, provider, utc_day(at), {"admissions": 1.0, "census_delta": 1.0})


def for_transfer(tr: TransferEvent | UpdateEvent | DischargeEvent, from_department: str,
                 from_provider: str) -> list[Contribution]:
    """A move of the open encounter (a transfer, an update that changes department or
    attending, a discharge from elsewhere than the stay was known to be): one census unit
    moves between departments / providers (facility unchanged), at the event's time."""
    return moved(tr.facility_id, tr.occurred_at, (from_department, from_provider),
                 (tr.department, tr.attending_provider_id))


MOVE_DIMENSIONS = ("department", "provider")  # what a move changes: (department, attending)


def moved(facility_id: str, at: datetime, old: tuple[str, str] | list[str],
          new: tuple[str, str] | list[str]) -> list[Contribution]:
    """One census unit moves from ``old`` to ``new`` (department, attending) at ``at``, in each
    dimension where they differ."""
    out: list[Contribution] = []
    for dim, a, b in zip(MOVE_DIMENSIONS, old, new):
        out.extend(moved_in(dim, a, b, facility_id, at))
    return out


def moved_in(dimension: str, old: str, new: str, facility_id: str, at: datetime) -> list[Contribution]:
    """One census unit moves from ``old`` to ``new`` in one dimension (none when they are equal)."""
    if old == new:
        return []
    day = utc_day(at)
    return [Contribution(dimension, old, facility_id, day, {"census_delta": -1.0}),
            Contribution(dimension, new, facility_id, day, {"census_delta": 1.0})]


def for_discharge(dis: DischargeEvent, high_risk: bool) -> list[Contribution]:
    """A discharge: counts, stay, cost, patient-days, scoring, -1 census.

    Cost per patient counts only discharges with a known cost (contract v1.1: ``total_cost``
    is null when the feed sends no charges): such a discharge adds its cost and its patient
    id (the distinct patients of the denominator); one without adds neither, so a missing
    cost does not read as a free stay.
    """
    los = float(dis.length_of_stay_days)
    costed = dis.total_cost is not None
    return _each(dis.facility_id, dis.department, dis.attending_provider_id, utc_day(dis.occurred_at), {
        "discharges": 1.0,
        "los_sum": los,
        "cost_sum": float(dis.total_cost) if costed else 0.0,
        "patient_days": los,
        "scored": 1.0,
        "high_risk": 1.0 if high_risk else 0.0,
        "census_delta": -1.0,
    }, patient_id=dis.patient_id if costed else None)


LABEL_FIELDS = frozenset({"index_known", "readmitted", "good_outcomes", "tp", "fp", "fn"})


def needs_labels(kpi: str) -> bool:
    """Whether a KPI counts 30-day outcomes: its window is complete only 30 days after it ends
    (a readmission is known at once, a non-readmission only at discharge + 30 days).

    >>> needs_labels("readmission_rate"), needs_labels("census")
    (True, False)
    """
    return bool(KPI_INPUTS[kpi] & LABEL_FIELDS)


def for_label(outcome: LabelOutcome) -> list[Contribution]:
    """A known label, on its discharge day: outcome counts and the alert's confusion cell."""
    p, y = outcome.pending, outcome.readmitted
    fields = {
        "index_known": 1.0,
        "readmitted": 1.0 if y else 0.0,
        "good_outcomes": 0.0 if y else 1.0,
        "tp": 1.0 if p.high_risk and y else 0.0,
        "fp": 1.0 if p.high_risk and not y else 0.0,
        "fn": 1.0 if not p.high_risk and y else 0.0,
    }  # exactly LABEL_FIELDS (tests/test_domain_kpis.py)
    return _each(p.facility_id, p.department, p.attending_provider_id, utc_day(p.discharged_at), fields)


# --------------------------------------------------------------------------- day buckets


def _micro(value: float) -> int:
    return round(value * SCALE)


@dataclass
class DayBucket:
    """Sums of one dimension's contributions on one UTC day (exact, order-independent).

    Kept in millionths (``micro``); made from them, or from the values themselves (``values``,
    the first argument), which are then converted.
    """

    values: InitVar[dict[str, float] | None] = None
    patients: set[str] = field(default_factory=set)
    micro: dict[str, int] = field(default_factory=dict)
    # how many times more than once a patient was added: a revert removes a patient from
    # ``patients`` only when no other contribution of theirs remains (stored only when any)
    repeats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self, values: dict[str, float] | None) -> None:
        if values and not self.micro:
            self.micro = {k: _micro(v) for k, v in values.items()}

    @property
    def fields(self) -> dict[str, float]:
        """The sums as values (computed when asked: the combiner builds buckets by the
        hundred thousand and reads only ``micro``)."""
        return {k: v / SCALE for k, v in self.micro.items()}

    def add(self, c: Contribution) -> set[str]:
        """Add a contribution; returns what changed (field names, and ``"patients"``)."""
        changed: set[str] = set()
        for k, v in c.fields.items():
            m = _micro(v)
            if m:
                self.micro[k] = self.micro.get(k, 0) + m
                changed.add(k)
        if c.patient_id is not None:
            if c.patient_id not in self.patients:
                self.patients.add(c.patient_id)
                changed.add(PATIENTS)
            else:
                self.repeats[c.patient_id] = self.repeats.get(c.patient_id, 0) + 1
        return changed

    def revert(self, c: Contribution) -> set[str]:
        """Remove a contribution added before (a cancellation withdraws its event); returns
        what changed, like :meth:`add`."""
        changed = self.add(Contribution(c.dimension, c.dimension_id, c.facility_id, c.day,
                                        {k: -v for k, v in c.fields.items()}))
        pid = c.patient_id
        if pid is not None and pid in self.patients:
            if self.repeats.get(pid):
                self.repeats[pid] -= 1
                if not self.repeats[pid]:
                    del self.repeats[pid]
            else:
                self.patients.discard(pid)
                changed.add(PATIENTS)
        for k in [k for k in changed if k in self.micro and not self.micro[k]]:
            del self.micro[k]
        return changed

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"micro": dict(sorted(self.micro.items())), "patients": sorted(self.patients)}
        if self.repeats:
            d["repeats"] = dict(sorted(self.repeats.items()))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DayBucket":
        micro = {k: int(v) for k, v in d["micro"].items()}
        return cls(patients=set(d["patients"]), micro=micro,
                   repeats={k: int(v) for k, v in (d.get("repeats") or {}).items()})


def affected_kpis(changed: set[str], dimension: str) -> list[str]:
    """The KPIs whose value may have changed, in ``ALL_KPIS`` order (only those to re-emit)."""
    return [k for k in kpis_of(dimension) if KPI_INPUTS[k] & changed]


@lru_cache(maxsize=None)
def kpis_of(dimension: str) -> tuple[str, ...]:
    """The KPIs a dimension has (utilization is a provider KPI)."""
    return tuple(k for k in ALL_KPIS if k != "provider_utilization" or dimension == "provider")


def census_series(start_census: float, buckets: list[DayBucket]) -> list[float]:
    """Census at the end of each bucket's day, from the census at the start of the first day."""
    out, census = [], start_census
    for b in buckets:
        census += b.micro.get("census_delta", 0) / SCALE
        out.append(census)
    return out


# --------------------------------------------------------------------------- windows


@lru_cache(maxsize=4096)
def day_windows(day: date) -> tuple[tuple[str, date, date], ...]:
    """Every window (``1d``/``7d``/``30d``, start, end) holding ``day``; half-open [start, end).

    Rolling windows end on every UTC day boundary, so a day sits in 7 seven-day windows and 30
    thirty-day windows (ends ``day + 1`` .. ``day + n``). Cached: a flush asks for the same
    recent days once per dimension.

    >>> [(w, s.isoformat(), e.isoformat()) for w, s, e in day_windows(date(2025, 1, 10))][:3]
    [('1d', '2025-01-10', '2025-01-11'), ('7d', '2025-01-04', '2025-01-11'), ('7d', '2025-01-05', '2025-01-12')]
    >>> len(day_windows(date(2025, 1, 10)))
    38
    """
    out: list[tuple[str, date, date]] = []
    for name, n in WINDOWS.items():
        for k in range(1, n + 1):
            end = day + timedelta(days=k)
            out.append((name, end - timedelta(days=n), end))
    return tuple(out)


@lru_cache(maxsize=8192)
def window_days(start: date, end: date) -> tuple[date, ...]:
    """The days of [start, end). Cached: every dimension's flush asks for the same windows."""
    return tuple(start + timedelta(days=i) for i in range((end - start).days))


def _ratio(num: float, den: float, scale: float = 1.0) -> tuple[float | None, float, float]:
    return (scale * num / den if den else None), num, den


def sum_micro(buckets: list[DayBucket]) -> dict[str, int]:
    """The buckets' ``micro`` fields added up (exact integers)."""
    tot: dict[str, int] = {}
    for b in buckets:
        for k, v in b.micro.items():
            tot[k] = tot.get(k, 0) + v
    return tot


def window_values(
    buckets: list[DayBucket],
    daily_census: list[float],
    capacity: float | None,
    dimension: str,
    totals: dict[str, int] | None = None,
) -> dict[str, tuple[float | None, float, float]]:
    """kpi -> (value, numerator, denominator) for a window made of these day buckets.

    ``daily_census`` is the census at the end of each day of the window (its last item is the
    census at ``window_end``); ``capacity`` is the provider's (None when unknown). ``totals``,
    the buckets' summed ``micro`` fields, may be given when the caller has them already (the
    combiner takes them from running sums instead of adding up to 30 buckets per window).

    >>> b = DayBucket({"discharges": 2, "los_sum": 7.0, "cost_sum": 3000.0}, {"P1", "P2"})
    >>> v = window_values([b, DayBucket({"discharges": 1, "los_sum": 2.0, "cost_sum": 900.0}, {"P1"})],
    ...                   [5, 4], None, "facility")
    >>> v["avg_length_of_stay"], v["cost_per_patient"], v["census"], v["readmission_rate"]
    ((3.0, 9.0, 3.0), (1950.0, 3900.0, 2.0), (4.0, 4.0, 1.0), (None, 0.0, 0.0))
    """
    tot = totals if totals is not None else sum_micro(buckets)
    f = {k: tot.get(k, 0) / SCALE for k in FIELDS}
    patients: set[str] = set().union(*(b.patients for b in buckets)) if buckets else set()
    census = float(daily_census[-1]) if daily_census else 0.0
    out: dict[str, tuple[float | None, float, float]] = {
        "readmission_rate": _ratio(f["readmitted"], f["index_known"]),
        "avg_length_of_stay": _ratio(f["los_sum"], f["discharges"]),
        "cost_per_patient": _ratio(f["cost_sum"], float(len(patients))),
        "high_risk_pct": _ratio(f["high_risk"], f["scored"], 100.0),
        "outcome_efficiency": _ratio(f["good_outcomes"], f["patient_days"], 100.0),
        "discharges": (f["discharges"], f["discharges"], 1.0),
        "admissions": (f["admissions"], f["admissions"], 1.0),
        "census": (census, census, 1.0),
        "model_recall": _ratio(f["tp"], f["tp"] + f["fn"]),
        "model_precision": _ratio(f["tp"], f["tp"] + f["fp"]),
    }
    if dimension == "provider":
        days = len(daily_census)
        out["provider_utilization"] = _ratio(
            float(sum(daily_census)), float(capacity * days) if capacity else 0.0
        )
    return {k: out[k] for k in ALL_KPIS if k in out}
