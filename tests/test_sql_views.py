"""The SQL KPI views equal an independent pandas computation on the same events."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import psycopg2
import pytest

from consumers.fake import generate, produce
from consumers.sink import run_sink
from contracts.events import KPI_NAMES
from test_sink_support import sink_db  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def _sql(url: str, query: str) -> pd.DataFrame:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            cols = [c.name for c in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=cols)
    finally:
        conn.close()


def _frames(data) -> dict[str, pd.DataFrame]:
    """Plain tables of the produced messages (nothing from the sink's code)."""
    adt = [ev for _, ev in data.adt]
    adm = pd.DataFrame([{
        "encounter_id": e.encounter_id, "patient_id": e.patient_id, "facility_id": e.facility_id,
        "department": e.department, "provider": e.attending_provider_id, "at": e.occurred_at,
        "admission_type": e.admission_type, "age": e.patient.age, "payer": e.patient.payer,
    } for e in adt if e.event_type == "admission"])
    dis = pd.DataFrame([{
        "encounter_id": e.encounter_id, "patient_id": e.patient_id, "facility_id": e.facility_id,
        "department": e.department, "provider": e.attending_provider_id, "at": e.occurred_at,
        "los": e.length_of_stay_days, "disposition": e.discharge_disposition, "payer": e.payer,
        "cost": e.total_cost, "satisfaction": e.satisfaction_score, "codes": list(e.diagnosis_codes),
    } for e in adt if e.event_type == "discharge"])
    dis = dis.merge(adm[["encounter_id", "age"]], on="encounter_id", how="left")
    labels = pd.DataFrame([l.model_dump() for _, l in data.labels])
    scores = pd.DataFrame([s.model_dump() for _, s in data.scores])
    alerts = pd.DataFrame([a.model_dump() for _, a in data.alerts])
    dis = dis.merge(labels[["encounter_id", "readmitted", "readmission_encounter_id"]], on="encounter_id", how="left")
    events = pd.DataFrame([{"encounter_id": e.encounter_id, "type": e.event_type, "at": e.occurred_at,
                            "department": e.department, "provider": e.attending_provider_id} for e in adt])
    for df in (adm, dis, scores, alerts, events):
        for c in ("at", "discharged_at"):
            if c in df:
                df[c] = pd.to_datetime(df[c], utc=True)
    dis["day"] = dis["at"].dt.floor("D")
    adm["day"] = adm["at"].dt.floor("D")
    scores["day"] = scores["discharged_at"].dt.floor("D")
    for df in (dis, adm):
        df["month"] = df["at"].dt.tz_localize(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    return {"adm": adm, "dis": dis, "labels": labels, "scores": scores, "alerts": alerts, "events": events}


def _auc(scores: pd.Series, y: pd.Series) -> float:
    ranks = scores.rank(method="average")
    pos = int(y.sum())
    neg = len(y) - pos
    return (ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg)


@pytest.fixture()
def loaded(kafka_ns, sink_db):
    data = generate(patients=150, days=120, seed=42)
    produce(data, kafka_ns)
    run_sink(once=True)
    return sink_db, data, _frames(data)


def _close(a, b, tol=1e-9) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def test_kpi_daily_and_summary_equal_pandas(loaded) -> None:
    url, data, f = loaded
    dis, adm, scores = f["dis"], f["adm"], f["scores"]
    dis = dis.assign(index=dis.disposition != "expired")
    expected: dict[tuple, float] = {}
    for dim, col in (("facility", "facility_id"), ("department", "department"), ("provider", "provider")):
        for (day, key), g in dis.groupby(["day", col]):
            known = g[g["index"] & g.readmitted.notna()]
            expected[(day, dim, key, "discharges")] = len(g)
            expected[(day, dim, key, "avg_length_of_stay")] = g.los.mean()
            expected[(day, dim, key, "cost_per_patient")] = g.cost.sum() / g.patient_id.nunique()
            good = ((g.disposition != "expired") & (g.readmitted == False)).sum()  # noqa: E712
            expected[(day, dim, key, "outcome_efficiency")] = 100 * good / g.los.sum() if g.los.sum() else None
            if len(known):
                expected[(day, dim, key, "readmission_rate")] = known.readmitted.astype(bool).mean()
        for (day, key), g in adm.groupby(["day", col]):
            expected[(day, dim, key, "admissions")] = len(g)
        scol = {"facility_id": "facility_id", "department": "department", "provider": "attending_provider_id"}[col]
        for (day, key), g in scores.groupby(["day", scol]):
            expected[(day, dim, key, "high_risk_pct")] = 100 * g.high_risk.mean()
    got_df = _sql(url, "SELECT day, dimension, dimension_id, kpi, value FROM kpi_daily "
                       "WHERE kpi NOT IN ('census', 'provider_utilization')")
    got = {(pd.Timestamp(r.day), r.dimension, r.dimension_id, r.kpi): r.value for r in got_df.itertuples()}
    assert set(got) == set(expected)
    bad = {k: (got[k], v) for k, v in expected.items() if not _close(got[k], v)}
    assert not bad
    assert set(got_df.kpi) | {"census", "provider_utilization"} == set(KPI_NAMES)

    summary = _sql(url, "SELECT * FROM v_kpi_summary").iloc[0]
    known = dis[dis["index"] & dis.readmitted.notna()]
    assert _close(summary.readmission_rate, known.readmitted.astype(bool).mean())
    assert _close(summary.avg_length_of_stay, dis.los.mean())
    assert _close(summary.cost_per_patient, dis.cost.sum() / dis.patient_id.nunique())
    assert _close(summary.high_risk_pct, 100 * scores.high_risk.mean())
    good = ((dis.disposition != "expired") & (dis.readmitted == False)).sum()  # noqa: E712
    assert _close(summary.outcome_efficiency, 100 * good / dis.los.sum())


def test_census_and_utilization_equal_pandas(loaded) -> None:
    url, data, f = loaded
    ev = f["events"].copy()
    ev["order"] = ev["type"].map({"admission": 0, "transfer": 1, "discharge": 2})
    ev = ev.sort_values(["encounter_id", "at", "order"])
    ev["to"] = ev.groupby("encounter_id")["at"].shift(-1)
    seg = ev[ev["type"] != "discharge"]
    census = _sql(url, "SELECT day, window_end, department, census FROM v_census_daily")
    for r in census.itertuples():
        t = pd.Timestamp(r.window_end)
        inside = seg[(seg.department == r.department) & (seg["at"] < t) & (seg["to"].isna() | (seg["to"] >= t))]
        assert r.census == len(inside), (r.day, r.department)
    days = sorted(set(census.day))
    assert len(days) == (max(days) - min(days)).days + 1  # a row per day, no gap
    util = _sql(url, "SELECT window_end, provider_id, census, capacity, utilization FROM v_provider_utilization_daily")
    caps = {r.provider_id: r.capacity for _, r in data.reference if r.kind == "provider"}
    for r in util.sample(min(200, len(util)), random_state=1).itertuples():
        t = pd.Timestamp(r.window_end)
        inside = seg[(seg.provider == r.provider_id) & (seg["at"] < t) & (seg["to"].isna() | (seg["to"] >= t))]
        assert r.census == len(inside)
        assert _close(r.utilization, len(inside) / caps[r.provider_id])
    occ = _sql(url, "SELECT day, census, beds FROM v_bed_occupancy_daily")
    assert (occ.beds == 300).all()
    assert occ.set_index("day").census.to_dict() == census.groupby("day").census.sum().to_dict()


def test_monthly_analyses_equal_pandas(loaded) -> None:
    url, _, f = loaded
    dis, adm = f["dis"], f["adm"]
    mix = _sql(url, "SELECT month, payer, discharges, share_pct FROM v_payer_mix")
    exp = dis.groupby(["month", "payer"]).size()
    share = 100 * exp / exp.groupby(level=0).transform("sum")
    for r in mix.itertuples():
        assert r.discharges == exp[(pd.Timestamp(r.month), r.payer)]
        assert _close(r.share_pct, share[(pd.Timestamp(r.month), r.payer)])
    assert len(mix) == len(exp)

    bins = [-1, 17, 44, 64, 200]
    dis = dis.assign(age_group=pd.cut(dis.age, bins, labels=["0-17", "18-44", "45-64", "65+"]).astype(str))
    rev = _sql(url, "SELECT month, department, age_group, revenue, revenue_per_patient FROM v_revenue_per_patient")
    g = dis.groupby(["month", "department", "age_group"])
    exp_rpp = g.cost.sum() / g.patient_id.nunique()
    assert len(rev) == len(exp_rpp)
    for r in rev.itertuples():
        assert _close(r.revenue_per_patient, exp_rpp[(pd.Timestamp(r.month), r.department, r.age_group)])

    sat = _sql(url, "SELECT month, department, responses, mean_satisfaction FROM v_satisfaction_monthly")
    gs = dis.groupby(["month", "department"]).satisfaction
    for r in sat.itertuples():
        key = (pd.Timestamp(r.month), r.department)
        assert r.responses == gs.count()[key]
        assert _close(r.mean_satisfaction, gs.mean()[key])

    am = _sql(url, "SELECT month, department, admissions, department_monthly_mean FROM v_admissions_monthly")
    ga = adm.groupby(["month", "department"]).size()
    for r in am.itertuples():
        assert r.admissions == ga[(pd.Timestamp(r.month), r.department)]
        assert _close(r.department_monthly_mean, ga.xs(r.department, level=1).mean())


def test_diabetes_and_pareto_equal_pandas(loaded) -> None:
    url, data, f = loaded
    dis, adm = f["dis"], f["adm"]
    horizon = f["events"]["at"].max()
    cohort = dis[(dis.disposition != "expired") & (dis.age >= 18) & dis.codes.map(lambda c: "E11.9" in c)]
    readm, known = [], []
    for r in cohort.itertuples():
        nxt = adm[(adm.patient_id == r.patient_id) & (adm.admission_type != "elective")
                  & (adm["at"] > r.at) & (adm["at"] <= r.at + timedelta(days=60))]
        readm.append(len(nxt) > 0)
        known.append(len(nxt) > 0 or horizon >= r.at + timedelta(days=60))
    got = _sql(url, "SELECT * FROM v_diabetes_readmission_60d_summary").iloc[0]
    assert len(cohort) > 5
    assert got.index_discharges_known == sum(known) and got.readmitted_60d == sum(readm)
    assert _close(got.readmission_rate_60d, sum(readm) / sum(known))

    readmission_ids = set(f["labels"].query("readmitted").readmission_encounter_id)
    costs = dis[dis.encounter_id.isin(readmission_ids)].groupby("patient_id").cost.sum().sort_values(ascending=False)
    top = costs.iloc[: math.ceil(0.05 * len(costs))].sum()
    top_all = costs.iloc[: math.ceil(0.05 * dis.patient_id.nunique())].sum()
    p = _sql(url, "SELECT * FROM v_readmission_cost_pareto_summary").iloc[0]
    assert p.readmitted_patients == len(costs)
    assert _close(p.top5pct_readmitted_share, 100 * top / costs.sum())
    assert _close(p.top5pct_all_patients_share, 100 * top_all / costs.sum())
    pareto = _sql(url, "SELECT patient_id, readmission_cost, cumulative_cost_pct FROM v_readmission_cost_pareto "
                       "ORDER BY cost_rank")
    assert np.allclose(pareto.readmission_cost.to_numpy(), costs.to_numpy())
    assert _close(pareto.cumulative_cost_pct.iloc[-1], 100.0)


def test_model_health_leaves_out_discharges_whose_label_window_is_open(loaded) -> None:
    """A readmission is known at once, a non-readmission 30 days after discharge: a flagged,
    readmitted discharge after the latest non-readmission label must not count (it would make
    precision read ~1 over the last 30 days). Inserted in a transaction that is rolled back."""
    url, _, _ = loaded
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            metrics = "SELECT labelled, positives, recall, precision FROM model_metrics_overall"
            cur.execute(metrics)
            before = cur.fetchone()
            cur.execute("SELECT max(discharged_at) FROM readmissions WHERE NOT readmitted")
            cutoff = cur.fetchone()[0]
            for at, tag in ((cutoff + timedelta(days=1), "open"), (cutoff, "closed")):
                cur.execute(
                    """INSERT INTO discharge_scores
                       SELECT %(id)s, patient_id, facility_id, department, attending_provider_id, %(at)s,
                              0.99, lace, threshold, true, model_version, top_factors, 0, 0
                       FROM discharge_scores LIMIT 1""", {"id": f"E-{tag}", "at": at})
                cur.execute(
                    """INSERT INTO readmissions
                       VALUES (%(id)s, 'P-x', %(at)s, true, 'E-next', %(at)s, 0, 0)""", {"id": f"E-{tag}", "at": at})
            cur.execute(metrics)
            after = cur.fetchone()
        assert after[:2] == (before[0] + 1, before[1] + 1)  # the one at the cutoff counts, not the other
    finally:
        conn.rollback()
        conn.close()


def test_model_health_equals_pandas(loaded) -> None:
    url, _, f = loaded
    lab = f["scores"].merge(f["labels"][["encounter_id", "readmitted"]], on="encounter_id")
    # labels of the last 30 days are readmissions only (a non-readmission is known at discharge +
    # 30 days): model health counts the discharges up to the last non-readmission label
    cutoff = pd.to_datetime(f["labels"][~f["labels"].readmitted.astype(bool)].discharged_at, utc=True).max()
    lab = lab[lab.discharged_at <= cutoff]
    y = lab.readmitted.astype(bool)
    got = _sql(url, "SELECT * FROM model_metrics_overall").iloc[0]
    assert got.labelled == len(lab) and got.positives == y.sum()
    assert _close(got.auc, _auc(lab.score, y))
    assert _close(got.lace_auc, _auc(lab.lace.astype(float), y))  # many ties: average ranks matter
    tp = (lab.high_risk & y).sum()
    assert _close(got.recall, tp / y.sum()) and _close(got.precision, tp / lab.high_risk.sum())
    assert _close(got.alerts_per_day, len(f["alerts"]) / f["scores"].day.nunique())

    monthly = _sql(url, "SELECT month, auc, labelled FROM model_metrics WHERE labelled > 0")
    lab["month"] = lab.discharged_at.dt.tz_localize(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    for r in monthly.itertuples():
        g = lab[lab.month == pd.Timestamp(r.month)]
        yy = g.readmitted.astype(bool)
        assert r.labelled == len(g)
        if 0 < yy.sum() < len(g):
            assert _close(r.auc, _auc(g.score, yy))

    cal = _sql(url, "SELECT decile, labelled, mean_score, observed_rate FROM model_calibration ORDER BY decile")
    ordered = lab.sort_values(["score", "encounter_id"]).reset_index(drop=True)
    n = len(ordered)
    sizes = [n // 10 + (1 if i < n % 10 else 0) for i in range(10)]
    start = 0
    for r, size in zip(cal.itertuples(), sizes):
        part = ordered.iloc[start:start + size]
        start += size
        assert r.labelled == size
        assert _close(r.mean_score, part.score.mean())
        assert _close(r.observed_rate, part.readmitted.astype(bool).mean())


def test_contract_v11_events_in_the_views(kafka_ns, sink_db) -> None:
    """A registration is no bed, an update moves the bed, a null cost stays out of cost per
    patient (V010)."""
    from consumers.fake import FakeData
    from contracts.events import RegistrationEvent, UpdateEvent
    from stream.domain.examples import admission, discharge, event_id, ts

    a1, a2 = "2025-01-01T08:00:00+00:00", "2025-01-01T09:00:00+00:00"
    events = [
        RegistrationEvent(event_id=event_id("R"), hl7_trigger="A04", occurred_at=ts("2024-12-31T08:00:00+00:00"),
                          facility_id="F01", patient_id="P1", encounter_id="R1", department="Emergency",
                          attending_provider_id="D9", patient_class="emergency"),
        admission("P1", "E1", a1).model_copy(update={"vitals": None}),
        admission("P2", "E2", a2),
        UpdateEvent(event_id=event_id("U"), hl7_trigger="A08", occurred_at=ts("2025-01-02T08:00:00+00:00"),
                    facility_id="F01", patient_id="P1", encounter_id="E1", department="Cardiology",
                    attending_provider_id="D2"),
        discharge("P1", "E1", a1, "2025-01-04T08:00:00+00:00", department="Cardiology", provider="D2",
                  total_cost=None),
        discharge("P2", "E2", a2, "2025-01-04T09:00:00+00:00", total_cost=5000.0),
    ]
    produce(FakeData(adt=[(ev.patient_id, ev) for ev in events]), kafka_ns, include_invalid=False)
    run_sink(once=True)
    segments = _sql(sink_db, "SELECT encounter_id, department FROM v_bed_segments ORDER BY from_ts")
    assert list(segments.itertuples(index=False, name=None)) == [
        ("E1", "Internal Medicine"), ("E2", "Internal Medicine"), ("E1", "Cardiology")]
    census = _sql(sink_db, "SELECT day::date AS day, department, census FROM v_census_daily")
    jan2 = census[census.day.astype(str) == "2025-01-02"].set_index("department").census.to_dict()
    assert jan2.get("Cardiology") == 1 and jan2.get("Internal Medicine") == 1 and "Emergency" not in jan2
    cost = _sql(sink_db, "SELECT numerator, denominator FROM kpi_daily WHERE kpi = 'cost_per_patient' "
                         "AND dimension = 'facility'")
    assert list(cost.itertuples(index=False, name=None)) == [(5000.0, 1.0)]
    summary = _sql(sink_db, "SELECT cost_per_patient FROM v_kpi_summary")
    assert summary.cost_per_patient.tolist() == [5000.0]
