"""Contract v1.1 events in the ADT flow (over plain dicts, as tests/test_stream_flow.py): what the
stream applies (registrations, updates), what it dead-letters (what cannot be applied),
null costs and vitals, and the KPI oracle on a simulated HL7 feed."""

from __future__ import annotations

from collections import Counter
from datetime import date

import orjson
import pytest

from contracts.events import (
    DeadLetter,
    DischargeScore,
    KpiValue,
    RegistrationEvent,
    UpdateEvent,
    dump,
    format_ts,
)
from flow_inputs import flow_tables, run_flow
from producers.hl7_feed import hl7_messages
from producers.mllp.mapping import MapContext, map_adt
from producers.mllp.message import parse, read_header
from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ACCEPTED, ALERTS, DLQ, LABELS, SCORES, AdtFlow
from stream.domain.examples import admission, discharge, event_id, ts
from stream.kpi_combiner import KpiCombiner
from stream_oracle import Oracle, differing_windows

ADMIT, DISCHARGE = "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00"


def _update(at: str, department: str, provider: str, codes: list[str], **extra) -> UpdateEvent:
    return UpdateEvent(event_id=event_id(f"U|{at}"), hl7_trigger="A08", occurred_at=ts(at),
                       facility_id="F01", patient_id="P1", encounter_id="E1", department=department,
                       attending_provider_id=provider, diagnosis_codes=codes, **extra)


class Run:
    """One flow over a list of events of one partition; the outputs and the final KPI values."""

    def __init__(self, events: list) -> None:
        self.flow = AdtFlow(source_topic="hospital.adt", **flow_tables())
        self.out = []
        combiner = KpiCombiner(days={})
        for offset, ev in enumerate(events):
            raw = ev if isinstance(ev, bytes) else dump(ev)
            self.out += self.flow.process(raw, 0, offset, key=b"P1", commit=False)
            for o in self.flow.kpi_partials(1):
                combiner.put(o.value)
            self.flow.commit()
        self.kpis = {k: KpiValue.model_validate_json(v) for k, v in combiner.flush()}

    def of(self, topic: str) -> list:
        return [o for o in self.out if o.topic == topic]

    def kpi(self, kpi: str, dimension: str, dimension_id: str, window: str = "1d",
            day: str = "2025-01-04") -> KpiValue:
        return next(v for v in self.kpis.values() if (v.kpi, v.dimension, v.dimension_id, v.window)
                    == (kpi, dimension, dimension_id, window) and v.window_start.date().isoformat() == day)


def test_an_update_moves_the_stay_and_feeds_the_discharge_score() -> None:
    """A08: department and attending move like a transfer (census), the diagnoses it carries
    replace the admission's (Charlson, hence the score), and the discharge is attributed to
    where the stay is."""
    adm = admission("P1", "E1", ADMIT, diagnosis_codes=["I10"])
    upd = _update("2025-01-02T08:00:00+00:00", "Cardiology", "D2", ["I50.9", "N18.4", "E11.9"])
    dis = discharge("P1", "E1", ADMIT, DISCHARGE, department="Cardiology", provider="D2",
                    diagnosis_codes=["I10"])
    with_update, without = Run([adm, upd, dis]), Run([adm, dis.model_copy(update={
        "department": "Internal Medicine", "attending_provider_id": "D1"})])
    (score,) = [DischargeScore.model_validate_json(o.value) for o in with_update.of(SCORES)]
    (base,) = [DischargeScore.model_validate_json(o.value) for o in without.of(SCORES)]
    assert (score.department, score.attending_provider_id) == ("Cardiology", "D2")
    assert score.lace > base.lace  # the update's heart failure, CKD and diabetes count in Charlson
    assert [o.topic for o in with_update.out].count(ACCEPTED) == 3 and not with_update.of(DLQ)
    r = with_update
    assert r.kpi("census", "department", "Internal Medicine", day="2025-01-02").value == 0
    assert r.kpi("census", "department", "Cardiology", day="2025-01-02").value == 1
    assert r.kpi("census", "department", "Cardiology").value == 0
    assert r.kpi("admissions", "department", "Internal Medicine", day="2025-01-01").value == 1
    assert r.kpi("discharges", "provider", "D2").value == 1


def test_an_update_keeps_what_it_does_not_carry_and_replaces_demographics_it_does() -> None:
    adm = admission("P1", "E1", ADMIT, age=70, payer="medicare")
    upd = _update("2025-01-02T08:00:00+00:00", "Internal Medicine", "D1", [],
                  patient={"age": 71, "payer": "private"})
    r = Run([adm, upd])
    state = r.flow.patients.table["P1"]["open"]
    assert (state["age"], state["payer"], state["sex"], state["diagnosis_codes"]) == (
        71, "private", "F", ["I50.9"])


def test_a_discharge_from_elsewhere_leaves_the_census_balanced() -> None:
    """The discharge's own department and attending are the latest word (real feeds send the
    current ones): the stay moves there, then leaves, so no census is left behind."""
    r = Run([admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE, department="Surgery",
                                                     provider="D5")])
    for dim, did in (("department", "Internal Medicine"), ("department", "Surgery"),
                     ("provider", "D1"), ("provider", "D5"), ("facility", "F01")):
        assert r.kpi("census", dim, did).value == 0, did
    assert r.kpi("discharges", "department", "Surgery").value == 1


def test_a_registration_is_recorded_without_a_bed() -> None:
    reg = RegistrationEvent(event_id=event_id("R1"), hl7_trigger="A04", occurred_at=ts("2024-12-30T10:00:00+00:00"),
                            facility_id="F01", patient_id="P1", encounter_id="R1", department="Emergency",
                            attending_provider_id="D9", patient_class="emergency")
    r = Run([reg, reg, admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE)])
    assert [o.topic for o in r.out if o.topic in (ACCEPTED, DLQ)] == [ACCEPTED, DLQ, ACCEPTED, ACCEPTED]
    assert DeadLetter.model_validate_json(r.of(DLQ)[0].value).reason == "duplicate event_id"
    assert not [v for v in r.kpis.values() if v.dimension_id in ("Emergency", "D9")]  # no KPI
    assert r.kpi("admissions", "facility", "F01", day="2025-01-01").value == 1


@pytest.mark.parametrize("fields, reason", [
    ({"event_type": "cancellation", "hl7_trigger": "A13", "cancelled_event_type": "discharge"},
     "discharge cancellation while an encounter is open"),
    ({"event_type": "cancellation", "hl7_trigger": "A12", "cancelled_event_type": "transfer"},
     "transfer cancellation without a transfer"),
    ({"event_type": "class_change", "hl7_trigger": "A06", "patient_class": "inpatient"},
     "class change to inpatient without the admission's type, source, patient and diagnoses"),
    ({"event_type": "update", "hl7_trigger": "A08", "encounter_id": "E9"},
     "encounter_id does not match the open encounter"),
])
def test_what_is_not_applied_goes_to_the_dlq_whole_and_changes_nothing(fields, reason) -> None:
    adm, dis = admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE)
    raw = orjson.dumps({"schema_version": 1, "event_id": str(event_id("X")),
                        "occurred_at": "2025-01-02T00:00:00Z", "facility_id": "F01", "patient_id": "P1",
                        "encounter_id": "E1", "department": "Surgery", "attending_provider_id": "D1",
                        **fields})
    r = Run([adm, raw, dis])
    (letter,) = [DeadLetter.model_validate_json(o.value) for o in r.of(DLQ)]
    assert (letter.reason, letter.raw.encode(), letter.source_offset) == (reason, raw, 1)
    clean = Run([adm, dis])
    same = [(o.topic, o.key, o.value) for o in r.out if o.topic != DLQ]  # the offsets differ
    assert same == [(o.topic, o.key, o.value) for o in clean.out] and r.kpis == clean.kpis


def test_an_update_after_the_discharge_goes_to_the_dlq() -> None:
    late = _update("2025-01-06T08:00:00+00:00", "Internal Medicine", "D1", ["I50.9", "E87.1"])
    r = Run([admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE), late])
    assert [DeadLetter.model_validate_json(o.value).reason for o in r.of(DLQ)] == ["update without open admission"]


def test_null_cost_and_vitals_are_scored_and_left_out_of_cost_per_patient() -> None:
    adm = admission("P1", "E1", ADMIT).model_copy(update={"vitals": None})
    adm2 = admission("P2", "E2", ADMIT, seed="a2")
    r = Run([adm, adm2, discharge("P1", "E1", ADMIT, DISCHARGE, total_cost=None),
             discharge("P2", "E2", ADMIT, DISCHARGE, total_cost=5000.0, seed="d2")])
    assert len(r.of(SCORES)) == 2 and not r.of(DLQ)
    cost = r.kpi("cost_per_patient", "facility", "F01")
    assert (cost.value, cost.numerator, cost.denominator) == (5000.0, 5000.0, 1.0)


# --------------------------------------------------------------------------- a simulated HL7 feed


@pytest.fixture(scope="module")
def hl7_run():
    """45 days of two small hospitals as ``wardstream mllp`` maps their HL7 feed (A01-A03, A07,
    A08, A11-A13, A40), through the flow on 4 partitions."""
    sim = Simulation(SimConfig(seed=9, start=date(2025, 1, 1), days=45, facilities=2, beds=64))
    events = [map_adt(parse(m.text), read_header(m.text), MapContext()) for m in hl7_messages(sim)]
    triggers = Counter(ev.hl7_trigger for ev in events)
    applied, outputs, flushed = run_flow((orjson.loads(dump(ev)) for ev in events), sim.reference.providers)
    dead = [(ev, DeadLetter.model_validate_json(o.value).reason)
            for ev, got in zip(events, outputs) for o in got if o.topic == DLQ]
    capacity = {p.provider_id: p.capacity for p in sim.reference.providers}
    return triggers, applied, [o for got in outputs for o in got], flushed, capacity, dead


def test_the_feed_is_applied_or_dead_lettered_never_both_nor_lost(hl7_run) -> None:
    triggers, applied, out, _, _, dead = hl7_run
    assert {"A07", "A08", "A11", "A12", "A13"} <= set(triggers)
    letters = [DeadLetter.model_validate_json(o.value).reason for o in out if o.topic == DLQ]
    assert len(applied) + len(letters) == sum(triggers.values())
    assert Counter(e["hl7_trigger"] for e in applied)["A08"] > 1000
    # the A08s of final coding come after the discharge, some after the patient's next admission
    allowed = {"update without open admission", "encounter_id does not match the open encounter"}
    assert {r for ev, r in dead if ev.hl7_trigger == "A08"} <= allowed
    assert not [r for ev, r in dead if ev.hl7_trigger == "A40"]  # a duplicate registration merged
    assert Counter(e["hl7_trigger"] for e in applied)["A40"] > 0
    # the simulated feed goes on as simulated after a cancellation: a cancelled admission's
    # transfers, discharge and their cancellations find no stay; a patient whose discharge was
    # cancelled is in hospital again when the next admission comes
    applied_by = Counter(e["hl7_trigger"] for e in applied)
    assert sum(applied_by[t] for t in ("A11", "A12", "A13")) > 40
    cancelled = {e["encounter_id"] for e in applied if e["hl7_trigger"] in ("A07", "A11")}  # stays withdrawn
    reopened = {e["patient_id"] for e in applied if e["hl7_trigger"] == "A13"}
    for ev, reason in dead:
        if ev.hl7_trigger == "A08":
            continue
        if reason in ("admission while an encounter is open", "encounter_id does not match the open encounter"):
            assert ev.patient_id in reopened, reason
        else:
            assert ev.encounter_id in cancelled, reason
    assert "cancellation events are not applied yet" not in letters


def test_kpis_equal_the_oracle_on_the_hl7_feed(hl7_run) -> None:
    _, applied, out, flushed, capacity, _ = hl7_run
    scores = {o.key: orjson.loads(o.value) for o in out if o.topic == SCORES}
    bad, want = differing_windows(flushed, Oracle(applied, scores, capacity))
    assert not bad, f"{len(bad)} of {len(want)} windows differ, e.g. {bad[:3]}"
    assert Counter(k[0] for k in want)["census"] > 100


def test_labels_and_withdrawn_outputs_equal_the_oracle_on_the_hl7_feed(hl7_run) -> None:
    """The last label per discharge is the oracle's (cancelled admissions' readmissions undone,
    cancelled discharges never labelled); every cancelled discharge's score and alert end
    withdrawn."""
    _, applied, out, _, capacity, _ = hl7_run
    last = {}
    for o in out:
        if o.topic in (SCORES, LABELS, ALERTS):
            last[(o.topic, o.key)] = orjson.loads(o.value)
    scores = {k: v for (t, k), v in last.items() if t == SCORES}
    oracle = Oracle(applied, scores, capacity)
    labels = {k: v for (t, k), v in last.items() if t == LABELS and not v.get("withdrawn")}
    assert {k: (v["readmitted"], v["readmission_encounter_id"], v["known_at"]) for k, v in labels.items()} == {
        k: (v["readmitted"], v["readmission_encounter_id"], format_ts(v["known_at"]))
        for k, v in oracle.labels.items()}
    assert any(v.get("withdrawn") for (t, _), v in last.items() if t == LABELS)  # readmissions undone
    cancelled = {e["encounter_id"] for e in applied if e["hl7_trigger"] == "A13"}
    assert cancelled and all(scores[k].get("withdrawn") for k in cancelled)
    withdrawn = {k for (t, k), v in last.items() if v.get("withdrawn") and t in (SCORES, ALERTS)}
    assert withdrawn <= cancelled and {k for (t, k) in last if t == ALERTS} & cancelled <= withdrawn
