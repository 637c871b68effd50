"""Cancellations (A11 / A12 / A13) in the ADT flow, over plain dicts: what each withdraws from
the outputs (scores, alerts, labels marked withdrawn) and from the KPIs (the day partials
sent again), and that a re-delivered cancellation changes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from contracts.events import CancellationEvent, KpiValue, UpdateEvent, dump
from flow_inputs import flow_tables
from stream.adt_flow import ALERTS, DLQ, LABELS, SCORES, AdtFlow
from stream.domain.examples import admission, discharge, event_id, transfer, ts
from stream.kpi_combiner import KpiCombiner

ADMIT, DISCHARGE = "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00"
LATER = "2025-01-04T10:00:00+00:00"
# a stay LACE flags (14 days, emergency, Charlson 5+): alerted while the model is cold
SICK = ["I50.9", "C78.00", "N18.4", "E11.9", "J44.9"]


def cancel(kind: str, encounter: str, at: str, *, department: str = "Internal Medicine",
           provider: str = "D1", patient: str = "P1") -> CancellationEvent:
    trigger = {"admission": "A11", "transfer": "A12", "discharge": "A13"}[kind]
    return CancellationEvent(event_id=event_id(f"C|{encounter}|{at}"), hl7_trigger=trigger, occurred_at=ts(at),
                             facility_id="F01", patient_id=patient, encounter_id=encounter,
                             department=department, attending_provider_id=provider,
                             cancelled_event_type=kind)


class Run:
    """The flow over events of one partition (each message offered ``repeat`` times, as a
    re-delivery would); outputs, and the final KPI windows."""

    def __init__(self, events: list, repeat: int = 1) -> None:
        self.flow = AdtFlow(source_topic="hospital.adt", alert_share=lambda _f: 1.0, **flow_tables())
        self.out = []
        combiner = KpiCombiner(days={})
        for offset, ev in enumerate(events):
            for _ in range(repeat):
                self.out += self.flow.process(dump(ev), 0, offset, key=ev.patient_id.encode(), commit=False)
                for o in self.flow.kpi_partials(1):
                    combiner.put(o.value)
                self.flow.commit()
        self.kpis = {k: KpiValue.model_validate_json(v) for k, v in combiner.flush()}

    def of(self, topic: str) -> list[dict]:
        return [orjson.loads(o.value) for o in self.out if o.topic == topic]

    def last(self, topic: str) -> dict[str, dict]:
        return {o.key: orjson.loads(o.value) for o in self.out if o.topic == topic}

    def kpi(self, kpi: str, dimension: str, dimension_id: str, day: str, window: str = "1d") -> float | None:
        """The window's value; "absent" when no window went out (the dimension has no data yet)."""
        return next((v.value for v in self.kpis.values() if (v.kpi, v.dimension, v.dimension_id, v.window)
                     == (kpi, dimension, dimension_id, window) and v.window_start.date().isoformat() == day),
                    "absent")

    def state(self, patient_id: str = "P1") -> dict:
        return self.flow.patients.table[patient_id]


def clock(until: str) -> list:
    """Admissions of other patients in another facility every 5 days from 2025-01-08 up to
    ``until``: event time moves on without jumping ahead (a jump of 7+ days is a clock error)."""
    out, day = [], datetime(2025, 1, 8, 12, tzinfo=ts(ADMIT).tzinfo)
    while day <= ts(f"{until}T12:00:00+00:00"):
        out.append(admission(f"X{day:%m%d}", f"X{day:%m%d}", day, facility="F02", seed=f"clock{day}"))
        day += timedelta(days=5)
    return out


def _sick_stay(encounter: str = "E1", admit: str = ADMIT, at: str = DISCHARGE, **kw):
    return (admission("P1", encounter, admit, diagnosis_codes=SICK),
            discharge("P1", encounter, admit, at, diagnosis_codes=SICK, **kw))


# --------------------------------------------------------------------------- A13


def test_a_cancelled_discharge_withdraws_its_score_alert_and_kpis_and_reopens_the_stay() -> None:
    adm, dis = _sick_stay()
    r = Run([adm, dis, cancel("discharge", "E1", LATER)])
    assert not r.of(DLQ)
    first, withdrawn = r.of(SCORES)
    assert withdrawn == {**first, "withdrawn": True, "withdrawn_at": "2025-01-04T10:00:00Z"}
    (alert, retraction) = r.of(ALERTS)
    assert retraction == {**alert, "withdrawn": True, "withdrawn_at": "2025-01-04T10:00:00Z"}
    assert not r.of(LABELS) and r.state()["pending"] == [] and r.state()["open"]["encounter_id"] == "E1"
    day = "2025-01-04"
    for dim, did in (("facility", "F01"), ("department", "Internal Medicine"), ("provider", "D1")):
        assert r.kpi("discharges", dim, did, day) == 0
        assert r.kpi("census", dim, did, day) == 1  # in hospital again
        assert r.kpi("avg_length_of_stay", dim, did, day) is None
        assert r.kpi("cost_per_patient", dim, did, day) is None
        assert r.kpi("high_risk_pct", dim, did, day) is None


def test_the_reopened_stay_is_scored_at_its_real_discharge_and_labelled_once() -> None:
    adm, dis = _sick_stay()
    real = discharge("P1", "E1", ADMIT, "2025-01-06T08:00:00+00:00", diagnosis_codes=SICK, seed="D2")
    r = Run([adm, dis, cancel("discharge", "E1", LATER), real, *clock("2025-02-20")])
    scores = r.last(SCORES)
    assert "withdrawn" not in scores["E1"] and scores["E1"]["discharged_at"] == "2025-01-06T08:00:00Z"
    assert "withdrawn" not in r.last(ALERTS)["E1"]
    (label,) = r.of(LABELS)
    assert (label["encounter_id"], label["readmitted"], label["discharged_at"]) == ("E1", False, "2025-01-06T08:00:00Z")
    assert r.kpi("discharges", "facility", "F01", "2025-01-06") == 1
    assert r.kpi("census", "facility", "F01", "2025-01-06") == 0
    assert r.kpi("readmission_rate", "facility", "F01", "2025-01-06") == 0
    assert r.kpi("discharges", "facility", "F01", "2025-01-04") == 0


def test_a_discharge_cancellation_is_dead_lettered_once_its_label_is_known_or_a_stay_is_open() -> None:
    adm, dis = _sick_stay()
    late = cancel("discharge", "E1", "2025-02-20T08:00:00+00:00")
    r = Run([adm, dis, *clock("2025-02-19"), late])
    assert [orjson.loads(o.value)["reason"] for o in r.out if o.topic == DLQ] == [
        "discharge cancellation after its label is known"]
    r = Run([adm, dis, admission("P1", "E2", "2025-01-05T08:00:00+00:00"),
             cancel("discharge", "E1", "2025-01-05T10:00:00+00:00")])
    assert [orjson.loads(o.value)["reason"] for o in r.out if o.topic == DLQ] == [
        "discharge cancellation while an encounter is open"]


def _health_day(r: Run, day: str) -> dict:
    return r.flow.health.table[f"h0|F01|{day}"]


def test_a_cancelled_discharge_leaves_the_alert_budget_and_the_model_health_histograms() -> None:
    """As if it had never been scored: the facility's budget window (later thresholds) and the
    day's health record are those of the same feed without it."""
    adm, dis = _sick_stay()
    other = [admission("P2", "E2", ADMIT, seed="p2"), discharge("P2", "E2", ADMIT, "2025-01-04T09:00:00+00:00", seed="d2")]
    r, without = Run([adm, other[0], dis, other[1], cancel("discharge", "E1", LATER)]), Run([adm, *other])
    assert r.flow.brain(0).policy.size("F01") == 1
    assert r.flow.brain(0).policy.to_dict() == without.flow.brain(0).policy.to_dict()
    assert _health_day(r, "2025-01-04") == _health_day(without, "2025-01-04")
    stored = [{k: v for k, v in run.flow.models.table.items() if k.startswith("p0")} for run in (r, without)]
    assert stored[0] == stored[1] and stored[0]["p0"]["budget"] == {"F01": [0, 1]}  # saved


# --------------------------------------------------------------------------- A11


def test_a_cancelled_admission_withdraws_the_stay_from_every_kpi() -> None:
    adm = admission("P1", "E1", ADMIT)
    moved = transfer("P1", "E1", "2025-01-02T08:00:00+00:00")
    r = Run([adm, moved, cancel("admission", "E1", "2025-01-03T08:00:00+00:00", department="Cardiology",
                                provider="D2")])
    assert not r.of(DLQ) and r.state()["open"] is None and r.state()["admissions"] == []
    for dim, did in (("facility", "F01"), ("department", "Internal Medicine"), ("provider", "D1")):
        assert r.kpi("census", dim, did, "2025-01-01") == 0, (dim, did)
    assert r.kpi("census", "department", "Internal Medicine", "2025-01-02") == 0
    assert r.kpi("census", "department", "Cardiology", "2025-01-02") == 0
    assert r.kpi("census", "provider", "D2", "2025-01-02") == 0
    assert r.kpi("admissions", "facility", "F01", "2025-01-01") == 0


def _readmitted(cancel_at: str, then: list) -> Run:
    adm, dis = admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE)
    back = admission("P1", "E2", "2025-01-10T08:00:00+00:00", seed="back")
    return Run([adm, dis, back, cancel("admission", "E2", cancel_at), *then])


def test_a_cancelled_readmission_puts_the_index_discharge_back_to_pending() -> None:
    r = _readmitted("2025-01-10T09:00:00+00:00", [])
    true, withdrawn = r.of(LABELS)
    assert true["readmitted"] and withdrawn == {**true, "withdrawn": True, "withdrawn_at": "2025-01-10T09:00:00Z"}
    assert [p["encounter_id"] for p in r.state()["pending"]] == ["E1"] and r.state()["readmissions"] == []
    assert r.kpi("readmission_rate", "facility", "F01", "2025-01-04") is None  # unknown again
    labels = _health_day(r, "2025-01-04")["labels"]  # the true label is out of the equity figures
    assert labels["all"][0] == 0 and all(v == 0 for row in labels.values() for v in row)
    # then its 30 days pass: not readmitted
    r = _readmitted("2025-01-10T09:00:00+00:00", clock("2025-02-10"))
    assert r.last(LABELS)["E1"]["readmitted"] is False and "withdrawn" not in r.last(LABELS)["E1"]
    assert r.kpi("readmission_rate", "facility", "F01", "2025-01-04") == 0


def test_a_readmission_cancelled_after_the_30_days_makes_the_label_false_at_once() -> None:
    adm, dis = admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE)
    back = admission("P1", "E2", "2025-02-02T08:00:00+00:00", seed="back")  # day 29: readmitted
    r = Run([adm, dis, *clock("2025-02-01"), back, *clock("2025-02-04")[-1:],
             cancel("admission", "E2", "2025-02-04T09:00:00+00:00")])
    true, false = r.of(LABELS)
    assert true["readmitted"] and false["readmitted"] is False and false["known_at"] == "2025-02-03T08:00:00Z"
    assert r.kpi("readmission_rate", "facility", "F01", "2025-01-04") == 0
    assert r.kpi("model_recall", "facility", "F01", "2025-01-04") is None


# --------------------------------------------------------------------------- A12


def test_a_cancelled_transfer_gives_the_stay_back_to_its_department() -> None:
    adm = admission("P1", "E1", ADMIT)
    moved = transfer("P1", "E1", "2025-01-02T08:00:00+00:00")
    r = Run([adm, moved, cancel("transfer", "E1", "2025-01-02T10:00:00+00:00"),
             discharge("P1", "E1", ADMIT, DISCHARGE)])
    assert not r.of(DLQ)
    assert r.kpi("census", "department", "Internal Medicine", "2025-01-02") == 1
    assert r.kpi("census", "department", "Cardiology", "2025-01-02") == 0
    assert r.kpi("census", "provider", "D2", "2025-01-02") == 0
    assert r.kpi("discharges", "department", "Internal Medicine", "2025-01-04") == 1
    assert r.kpi("census", "department", "Internal Medicine", "2025-01-04") == 0


def test_a_cancelled_transfer_followed_by_an_update_re_attributes_only_its_interval() -> None:
    """Admitted to Internal Medicine / D1, transferred to Cardiology / D2 on day 2, attending D3
    from day 3 (an A08), the transfer cancelled on day 3: Internal Medicine from day 2 on, D1
    on day 2 only."""
    adm = admission("P1", "E1", ADMIT)
    moved = transfer("P1", "E1", "2025-01-02T08:00:00+00:00")
    upd = UpdateEvent(event_id=event_id("U3"), hl7_trigger="A08", occurred_at=ts("2025-01-03T08:00:00+00:00"),
                      facility_id="F01", patient_id="P1", encounter_id="E1", department="Cardiology",
                      attending_provider_id="D3")
    r = Run([adm, moved, upd, cancel("transfer", "E1", "2025-01-03T10:00:00+00:00")])
    open_ = r.state()["open"]
    assert (open_["department"], open_["attending_provider_id"]) == ("Internal Medicine", "D3")
    # (a 1d census window goes out for the days a dimension has data)
    want = {("department", "Internal Medicine"): (1, "absent"), ("department", "Cardiology"): (0, "absent"),
            ("provider", "D1"): (1, 0), ("provider", "D2"): (0, 0), ("provider", "D3"): ("absent", 1)}
    for (dim, did), (day2, day3) in want.items():
        assert (r.kpi("census", dim, did, "2025-01-02"), r.kpi("census", dim, did, "2025-01-03")) == (day2, day3), did


# --------------------------------------------------------------------------- idempotence


def test_re_delivered_cancellations_change_nothing() -> None:
    adm, dis = _sick_stay()
    events = [adm, dis, cancel("discharge", "E1", LATER)]
    once, twice = Run(events), Run(events, repeat=2)
    assert [(o.topic, o.key, o.value) for o in once.out] == [(o.topic, o.key, o.value) for o in twice.out]
    assert once.kpis == twice.kpis


def test_the_model_never_learns_from_a_cancelled_discharge() -> None:
    adm, dis = _sick_stay()
    r = Run([adm, dis, cancel("discharge", "E1", LATER), *clock("2025-02-20")])
    assert r.flow.brain(0).model.n_learned == 0 and not r.of(LABELS)


def test_withdrawn_fields_are_absent_until_set() -> None:
    adm, dis = _sick_stay()
    r = Run([adm, dis])
    assert all(b"withdrawn" not in o.value for o in r.out)
