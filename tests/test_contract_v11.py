"""Event contract v1.1 (DESIGN.md "Changes since v1"): the new event types, the trigger each may
carry, the fields v1.1 makes nullable, and v1 events unchanged."""

from __future__ import annotations

from datetime import date

import orjson
import pytest
from pydantic import ValidationError

from contracts.events import (
    TRIGGERS_OF,
    CancellationEvent,
    ClassChangeEvent,
    DischargeEvent,
    MergeEvent,
    RegistrationEvent,
    UpdateEvent,
    dump,
    parse_adt,
)
from producers.simulator import SimConfig, Simulation

BASE = {"schema_version": 1, "event_id": "6c0f7c0e-3a56-4a8e-9d1f-0d6f2b1e8a11",
        "occurred_at": "2025-01-01T10:00:00Z", "facility_id": "F01", "patient_id": "P1",
        "encounter_id": "E1", "department": "Emergency", "attending_provider_id": "D1"}


def _parse(**fields) -> object:
    return parse_adt(orjson.dumps({**BASE, **fields}))


@pytest.mark.parametrize("fields, model", [
    ({"event_type": "registration", "hl7_trigger": "A04", "patient_class": "emergency"}, RegistrationEvent),
    ({"event_type": "class_change", "hl7_trigger": "A06", "patient_class": "inpatient"}, ClassChangeEvent),
    ({"event_type": "class_change", "hl7_trigger": "A07", "patient_class": "outpatient"}, ClassChangeEvent),
    ({"event_type": "update", "hl7_trigger": "A08", "diagnosis_codes": ["I50.9"],
      "patient": {"age": 70, "payer": "medicare"}}, UpdateEvent),
    ({"event_type": "cancellation", "hl7_trigger": "A13", "cancelled_event_type": "discharge"},
     CancellationEvent),
    ({"event_type": "merge", "hl7_trigger": "A40", "prior_patient_id": "P0",
      "encounter_id": None, "department": None, "attending_provider_id": None}, MergeEvent),
])
def test_every_v11_type_parses_and_round_trips(fields, model) -> None:
    ev = _parse(**fields)
    assert isinstance(ev, model)
    assert parse_adt(dump(ev)) == ev


@pytest.mark.parametrize("fields", [
    {"event_type": "update", "hl7_trigger": "A01"},
    {"event_type": "admission", "hl7_trigger": "A08"},
    {"event_type": "registration", "hl7_trigger": "A01", "patient_class": "emergency"},
    {"event_type": "class_change", "hl7_trigger": "A06", "patient_class": "outpatient"},
    {"event_type": "class_change", "hl7_trigger": "A07", "patient_class": "inpatient"},
    {"event_type": "cancellation", "hl7_trigger": "A11", "cancelled_event_type": "discharge"},
    {"event_type": "merge", "hl7_trigger": "A40", "prior_patient_id": "P1"},
    {"event_type": "merge", "hl7_trigger": "A40"},
])
def test_triggers_and_types_must_agree(fields) -> None:
    with pytest.raises(ValidationError):
        _parse(**fields)


def test_every_type_has_its_triggers() -> None:
    assert sorted(t for ts in TRIGGERS_OF.values() for t in ts) == [
        "A01", "A02", "A03", "A04", "A06", "A07", "A08", "A11", "A12", "A13", "A40"]


def test_v1_events_are_unchanged() -> None:
    """Every simulated v1 event parses to the same model and dumps to the same JSON as in v1."""
    sim = Simulation(SimConfig(seed=5, start=date(2025, 1, 1), days=10, beds=64))
    for item in sim.stream():
        raw = orjson.dumps(item.event)
        ev = parse_adt(raw)
        assert orjson.loads(dump(ev)) == {**item.event, "schema_version": 1}


def test_an_adt_feed_without_cost_or_vitals_is_valid() -> None:
    dis = _parse(event_type="discharge", hl7_trigger="A03", admitted_at="2025-01-01T08:00:00Z",
                 length_of_stay_days=2 / 24, discharge_disposition="home", diagnosis_codes=["R07.9"],
                 procedure_codes=[], payer="private")
    assert isinstance(dis, DischargeEvent) and dis.total_cost is None and dis.satisfaction_score is None
    adm = _parse(event_type="admission", hl7_trigger="A01", admission_type="emergency",
                 admit_source="ed", diagnosis_codes=["R07.9"],
                 patient={"age": 50, "sex": "F", "race": "white", "payer": "private",
                          "chronic_conditions": []},
                 vitals={"heart_rate": 88})
    assert adm.vitals.heart_rate == 88 and adm.vitals.systolic_bp is None
