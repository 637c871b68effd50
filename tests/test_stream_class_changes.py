"""Class changes (A06 / A07) in the ADT flow, over plain dicts: an A06 that carries the
admission's fields opens the stay an A01 at the change would (same outputs, same KPIs), and an A07
withdraws the inpatient stay as an A11 at the change would (``contracts.events.applied_as``); on a
simulated feed with both, KPIs and labels equal the independent oracle."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import orjson

from contracts.events import (
    AdmissionEvent,
    ClassChangeEvent,
    RegistrationEvent,
    applied_as,
    dump,
    parse_adt,
)
from consumers.rows import Batch
from flow_inputs import run_flow
from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ACCEPTED, DLQ, LABELS, SCORES
from stream.domain.examples import admission, discharge, event_id, transfer, ts
from stream_oracle import Oracle, differing_windows
from test_stream_withdrawals import ADMIT, DISCHARGE, Run, cancel

ED = "2024-12-31T22:00:00+00:00"  # the ED visit the A06 turns into an inpatient stay


def a06(adm: AdmissionEvent) -> ClassChangeEvent:
    """The admission as an A06 (same id, time and fields)."""
    fields = adm.model_dump(exclude={"event_type", "hl7_trigger"})
    return ClassChangeEvent(**fields, hl7_trigger="A06", patient_class="inpatient")


def a07(encounter: str, at: str, patient: str = "P1") -> ClassChangeEvent:
    """The A11 ``cancel`` would send, as an A07 (same id and time)."""
    c = cancel("admission", encounter, at, patient=patient)
    return ClassChangeEvent(**c.model_dump(exclude={"event_type", "hl7_trigger", "cancelled_event_type",
                                                    "cancelled_occurred_at"}),
                            hl7_trigger="A07", patient_class="outpatient")


def registration(patient: str = "P1", encounter: str = "E1", at: str = ED) -> RegistrationEvent:
    """The ED visit (A04) before an A06."""
    return RegistrationEvent(event_id=event_id(f"R|{encounter}|{at}"), hl7_trigger="A04", occurred_at=ts(at),
                             facility_id="F01", patient_id=patient, encounter_id=encounter,
                             department="Emergency", attending_provider_id="D9", patient_class="emergency")


def _same(a: Run, b: Run) -> None:
    """Every output but the accepted events themselves (their bytes differ), and every KPI."""
    def outputs(r: Run) -> list:
        return [(o.topic, o.key, o.value) for o in r.out if o.topic != ACCEPTED]
    assert outputs(a) == outputs(b)
    assert a.kpis == b.kpis
    assert [o.topic for o in a.out] == [o.topic for o in b.out]


def test_an_a06_opens_the_stay_an_a01_at_the_change_would() -> None:
    adm = admission("P1", "E1", ADMIT, admit_source="ed")
    dis = discharge("P1", "E1", ADMIT, DISCHARGE)
    back = admission("P1", "E2", "2025-01-10T08:00:00+00:00", seed="back")  # a readmission: labels too
    changed = Run([registration(), a06(adm), dis, a06(back)])
    _same(changed, Run([registration(), adm, dis, back]))
    assert not changed.of(DLQ) and changed.of(LABELS)[0]["readmitted"] is True
    assert changed.kpi("admissions", "facility", "F01", "2025-01-01") == 1
    assert changed.state()["open"]["opened_by"] == "A06"


def test_the_discharge_of_an_a06_stay_may_count_it_from_the_visit_before() -> None:
    """PV1-44 of the A03 may be the ED arrival (before the A06): accepted after an A06 only."""
    adm = admission("P1", "E1", ADMIT)
    from_ed = discharge("P1", "E1", ED, DISCHARGE)
    assert not Run([registration(), a06(adm), from_ed]).of(DLQ)
    (letter,) = Run([registration(), adm, from_ed]).of(DLQ)
    assert letter["reason"] == "admitted_at does not match the open encounter"
    later = discharge("P1", "E1", "2025-01-02T08:00:00+00:00", DISCHARGE)  # after the A06: still wrong
    (letter,) = Run([a06(adm), later]).of(DLQ)
    assert letter["reason"] == "admitted_at does not match the open encounter"


def test_an_a07_withdraws_the_stay_as_an_a11_at_the_change_would() -> None:
    """A readmission turned into an outpatient visit: the stay, its transfer and the
    readmission it caused are withdrawn; the discharge the feed still sends is dead-lettered."""
    index = [admission("P1", "E1", ADMIT), discharge("P1", "E1", ADMIT, DISCHARGE)]
    stay = [admission("P1", "E2", "2025-01-10T08:00:00+00:00", seed="back"),
            transfer("P1", "E2", "2025-01-10T20:00:00+00:00")]
    at = "2025-01-11T08:00:00+00:00"
    end = discharge("P1", "E2", "2025-01-10T08:00:00+00:00", "2025-01-12T08:00:00+00:00", seed="end")
    changed = Run([*index, *stay, a07("E2", at), end])
    _same(changed, Run([*index, *stay, cancel("admission", "E2", at), end]))
    (letter,) = changed.of(DLQ)
    assert letter["reason"] == "discharge without open admission"
    assert changed.of(LABELS)[-1]["withdrawn"] is True  # E1 is pending again
    assert changed.kpi("admissions", "facility", "F01", "2025-01-10") == 0


def test_class_changes_that_cannot_be_applied_go_to_the_dlq_with_their_reason() -> None:
    adm = admission("P1", "E1", ADMIT)
    sparse = ClassChangeEvent(**{**a06(adm).model_dump(), "patient": None})
    r = Run([a07("E1", ADMIT), sparse, adm, a06(admission("P1", "E1", DISCHARGE, seed="again"))])
    assert [d["reason"] for d in r.of(DLQ)] == [
        "class change (A07) without open admission",
        "class change to inpatient without the admission's type, source, patient and diagnoses",
        "class change (A06) while an encounter is open"]


def test_the_sink_stores_a_class_change_as_what_it_acts_as_under_its_own_trigger() -> None:
    adm = admission("P1", "E1", ADMIT)
    changed, plain = Batch(), Batch()
    changed.add_adt(a06(adm), 0, 1, dump(a06(adm)))
    changed.add_adt(a07("E1", DISCHARGE), 0, 2)
    plain.add_adt(adm, 0, 1)
    assert changed.rows("encounters") == plain.rows("encounters")
    assert changed.rows("diagnoses") == plain.rows("diagnoses")
    rows = {r["hl7_trigger"]: r for r in changed.rows("adt_events")}
    assert (rows["A06"]["event_type"], rows["A07"]["event_type"]) == ("admission", "cancellation")
    assert parse_adt(rows["A06"]["payload"]) == a06(adm)  # the message as sent
    assert orjson.loads(rows["A07"]["payload"])["event_type"] == "class_change"
    assert applied_as(parse_adt(rows["A07"]["payload"])).cancelled_event_type == "admission"


# --------------------------------------------------------------------------- a simulated feed


def _with_class_changes(events: list[dict]) -> list[dict]:
    """Every 4th ED admission as an A04 three hours before and an A06 at the admission; every
    9th other admission made an observation visit by an A07 a second after it (its transfers
    and discharge then find no stay)."""
    out, n = [], 0
    for ev in events:
        if ev["event_type"] != "admission":
            out.append(ev)
            continue
        n += 1
        at = ts(ev["occurred_at"])
        if ev["admit_source"] == "ed" and n % 4 == 0:
            out.append(orjson.loads(dump(registration(ev["patient_id"], ev["encounter_id"],
                                                      (at - timedelta(hours=3)).isoformat()))))
            out.append({**ev, "event_type": "class_change", "hl7_trigger": "A06", "patient_class": "inpatient"})
        elif n % 9 == 0:
            out.append(ev)
            c = a07(ev["encounter_id"], (at + timedelta(seconds=1)).isoformat(), patient=ev["patient_id"])
            out.append(orjson.loads(dump(c)))
        else:
            out.append(ev)
    return out


def test_on_a_simulated_feed_with_class_changes_kpis_and_labels_equal_the_oracle() -> None:
    """45 days of two hospitals on 4 partitions, with A06s and A07s: the oracle applies an A06 as
    the admission and an A07 as its cancellation (tests/stream_oracle.py), independently."""
    sim = Simulation(SimConfig(seed=12, start=date(2025, 1, 1), days=45, facilities=2, beds=64))
    applied, outputs, flushed = run_flow(_with_class_changes([e.event for e in sim.stream()]),
                                         sim.reference.providers)
    out = [o for got in outputs for o in got]
    by = Counter(e["hl7_trigger"] for e in applied)
    assert by["A06"] > 50 and by["A07"] > 50 and by["A04"] == by["A06"]
    last = {(o.topic, o.key): orjson.loads(o.value) for o in out if o.topic in (SCORES, LABELS)}
    scores = {k: v for (t, k), v in last.items() if t == SCORES}
    oracle = Oracle(applied, scores, {p.provider_id: p.capacity for p in sim.reference.providers})

    bad, want = differing_windows(flushed, oracle)
    assert not bad and Counter(k[0] for k in want)["admissions"] > 100, f"{len(bad)} of {len(want)} differ"
    labels = {k: (v["readmitted"], v["readmission_encounter_id"]) for (t, k), v in last.items()
              if t == LABELS and not v.get("withdrawn")}
    assert labels == {k: (v["readmitted"], v["readmission_encounter_id"]) for k, v in oracle.labels.items()}
    reasons = Counter(orjson.loads(o.value)["reason"] for o in out if o.topic == DLQ)
    assert set(reasons) <= {"transfer without open admission", "discharge without open admission"}, reasons
