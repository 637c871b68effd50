"""KPI contributions, day buckets and window math on hand-made data."""

from __future__ import annotations

import itertools
import json
import random
from datetime import date, datetime, timedelta, timezone

import pytest

from contracts.events import KPI_NAMES
from stream.domain import kpis
from stream.domain.examples import admission, discharge, transfer
from stream.domain.kpis import Contribution, DayBucket, day_windows, window_values
from stream.domain.patient import LabelOutcome, PendingDischarge


def by_dim(contribs):
    return {(c.dimension, c.dimension_id): c for c in contribs}


def test_admission_contributions() -> None:
    adm = admission("P1", "E1", "2025-02-03T23:30:00-02:00", department="Surgery", provider="D4", facility="F02")
    cs = by_dim(kpis.for_admission(adm))
    assert set(cs) == {("facility", "F02"), ("department", "Surgery"), ("provider", "D4")}
    for c in cs.values():
        assert c.fields == {"admissions": 1.0, "census_delta": 1.0}
        assert c.day == date(2025, 2, 4)  # UTC day
        assert c.facility_id == "F02" and c.patient_id is None
    assert cs[("provider", "D4")].key == "provider|D4"


def test_transfer_contributions() -> None:
    tr = transfer("P1", "E1", "2025-02-04T10:00:00+00:00", department="Cardiology", provider="D9")
    cs = kpis.for_transfer(tr, "Surgery", "D4")
    assert sorted((c.dimension, c.dimension_id, c.fields["census_delta"]) for c in cs) == [
        ("department", "Cardiology", 1.0), ("department", "Surgery", -1.0),
        ("provider", "D4", -1.0), ("provider", "D9", 1.0),
    ]
    # a provider change inside the same department moves nothing on the department
    same = kpis.for_transfer(transfer("P1", "E1", "2025-02-04T10:00:00+00:00", department="Surgery", provider="D9"),
                             "Surgery", "D4")
    assert {c.dimension for c in same} == {"provider"}


def test_discharge_and_label_contributions() -> None:
    dis = discharge("P1", "E1", "2025-02-01T00:00:00+00:00", "2025-02-04T12:00:00+00:00", total_cost=12000.5,
                    department="Surgery", provider="D4")
    cs = by_dim(kpis.for_discharge(dis, high_risk=True))
    c = cs[("department", "Surgery")]
    assert c.fields == {"discharges": 1.0, "los_sum": 3.5, "cost_sum": 12000.5, "patient_days": 3.5,
                        "scored": 1.0, "high_risk": 1.0, "census_delta": -1.0}
    assert c.patient_id == "P1" and c.day == date(2025, 2, 4)
    pending = PendingDischarge("E1", "P1", "F01", "Surgery", "D4", dis.occurred_at, {}, 0.4, 11, 0.3, True)
    for y, tp, fp in ((True, 1.0, 0.0), (False, 0.0, 1.0)):
        out = LabelOutcome(pending, y, "E2" if y else None, dis.occurred_at + timedelta(days=40))
        lc = by_dim(kpis.for_label(out))[("provider", "D4")]
        assert lc.day == date(2025, 2, 4)  # the discharge day, not known_at
        assert lc.fields == {"index_known": 1.0, "readmitted": float(y), "good_outcomes": float(not y),
                             "tp": tp, "fp": fp, "fn": 0.0}
        assert lc.fields.keys() == kpis.LABEL_FIELDS  # what needs_labels() reads a label KPI by
    low = PendingDischarge("E1", "P1", "F01", "Surgery", "D4", dis.occurred_at, {}, 0.1, 3, 0.3, False)
    assert by_dim(kpis.for_label(LabelOutcome(low, True, "E2", dis.occurred_at)))[("facility", "F01")].fields["fn"] == 1.0


def test_bucket_is_order_independent_and_reports_changes() -> None:
    rng = random.Random(4)
    contribs = [Contribution("facility", "F01", "F01", date(2025, 1, 1),
                             {"los_sum": rng.random() * 10, "cost_sum": round(rng.random() * 20000, 2)},
                             patient_id=f"P{rng.randint(1, 30)}") for _ in range(200)]
    states = []
    for perm in range(5):
        b = DayBucket()
        order = contribs[:]
        random.Random(perm).shuffle(order)
        for c in order:
            b.add(c)
        states.append(json.dumps(b.to_dict()))
    assert len(set(states)) == 1  # exactly equal, not approximately
    b = DayBucket()
    first = b.add(contribs[0])
    assert first == {"los_sum", "cost_sum", "patients"}
    again = Contribution("facility", "F01", "F01", date(2025, 1, 1), {"cost_sum": 5.0, "high_risk": 0.0},
                         patient_id=contribs[0].patient_id)
    assert b.add(again) == {"cost_sum"}  # zero deltas and known patients change nothing
    assert DayBucket.from_dict(json.loads(json.dumps(b.to_dict()))) == b


def test_affected_kpis() -> None:
    assert kpis.affected_kpis({"discharges"}, "facility") == ["avg_length_of_stay", "discharges"]
    assert kpis.affected_kpis({"census_delta"}, "provider") == ["provider_utilization", "census"]
    assert kpis.affected_kpis({"census_delta"}, "department") == ["census"]
    assert kpis.affected_kpis({"patients"}, "facility") == ["cost_per_patient"]
    assert kpis.affected_kpis({"tp"}, "facility") == ["model_recall", "model_precision"]
    assert set(kpis.KPI_INPUTS) == set(kpis.ALL_KPIS) and set(KPI_NAMES) <= set(kpis.ALL_KPIS)


def test_window_values_by_hand() -> None:
    d1 = DayBucket({"admissions": 4, "discharges": 3, "los_sum": 12.0, "cost_sum": 30000.0, "scored": 3,
                    "high_risk": 1, "index_known": 2, "readmitted": 1, "good_outcomes": 1, "patient_days": 12.0,
                    "tp": 1, "fn": 0, "fp": 0}, {"P1", "P2", "P3"})
    d2 = DayBucket({"admissions": 1, "discharges": 2, "los_sum": 3.0, "cost_sum": 10000.0, "scored": 2,
                    "high_risk": 1, "index_known": 2, "readmitted": 0, "good_outcomes": 2, "patient_days": 3.0,
                    "tp": 0, "fn": 1, "fp": 1}, {"P3", "P4"})
    v = window_values([d1, d2], [10.0, 9.0], 12.0, "provider")
    assert v["readmission_rate"] == (0.25, 1.0, 4.0)
    assert v["avg_length_of_stay"] == (3.0, 15.0, 5.0)
    assert v["cost_per_patient"] == (10000.0, 40000.0, 4.0)  # 4 distinct patients, P3 twice
    assert v["high_risk_pct"] == (40.0, 2.0, 5.0)
    assert v["outcome_efficiency"] == (20.0, 3.0, 15.0)  # 3 good outcomes per 15 patient-days
    assert v["provider_utilization"] == (pytest.approx(19.0 / 24.0), 19.0, 24.0)
    assert v["discharges"] == (5.0, 5.0, 1.0) and v["admissions"] == (5.0, 5.0, 1.0)
    assert v["census"] == (9.0, 9.0, 1.0)
    assert v["model_recall"] == (0.5, 1.0, 2.0) and v["model_precision"] == (0.5, 1.0, 2.0)
    assert list(v) == list(kpis.ALL_KPIS)
    fac = window_values([d1, d2], [10.0, 9.0], None, "facility")
    assert "provider_utilization" not in fac
    empty = window_values([DayBucket()], [0.0], None, "provider")
    assert empty["readmission_rate"][0] is None and empty["provider_utilization"] == (None, 0.0, 0.0)
    assert empty["discharges"] == (0.0, 0.0, 1.0)


def test_census_series() -> None:
    bs = [DayBucket({"census_delta": 3}), DayBucket(), DayBucket({"census_delta": -2})]
    assert kpis.census_series(5.0, bs) == [8.0, 8.0, 6.0]


def test_day_windows() -> None:
    day = date(2025, 3, 31)
    ws = day_windows(day)
    assert len(ws) == 1 + 7 + 30
    for name, start, end in ws:
        assert start <= day < end and (end - start).days == kpis.WINDOWS[name]
    assert len(set(ws)) == len(ws)
    # every window of a given size that holds the day, and no other
    for name, n in kpis.WINDOWS.items():
        ends = sorted(e for w, _, e in ws if w == name)
        assert ends == [day + timedelta(days=k) for k in range(1, n + 1)]
    assert kpis.window_days(date(2025, 1, 30), date(2025, 2, 2)) == (date(2025, 1, 30), date(2025, 1, 31), date(2025, 2, 1))
    assert kpis.day_start(day) == datetime(2025, 3, 31, tzinfo=timezone.utc)


def test_a_day_of_events_end_to_end() -> None:
    """Contributions of a small day of events, summed in buckets, give the expected facility KPIs."""
    t = "2025-06-01T{:02d}:00:00+00:00"
    events = [
        kpis.for_admission(admission("P1", "E1", t.format(1))),
        kpis.for_admission(admission("P2", "E2", t.format(2))),
        kpis.for_discharge(discharge("P1", "E1", t.format(1), t.format(13), total_cost=1000.0), False),
        kpis.for_discharge(discharge("P2", "E2", t.format(2), t.format(20), total_cost=3000.0), True),
    ]
    bucket = DayBucket()
    for c in itertools.chain.from_iterable(events):
        if c.dimension == "facility":
            bucket.add(c)
    census = kpis.census_series(0.0, [bucket])
    v = window_values([bucket], census, None, "facility")
    assert v["admissions"][0] == 2 and v["discharges"][0] == 2 and v["census"][0] == 0
    assert v["avg_length_of_stay"][0] == pytest.approx(0.625)  # (12 h + 18 h) / 2 in days
    assert v["cost_per_patient"][0] == 2000.0 and v["high_risk_pct"][0] == 50.0
