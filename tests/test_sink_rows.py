"""Unit tests of the batch merge rules (pure: no broker, no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson

from consumers.fake import generate
from consumers.rows import Batch, clean
from consumers.tables import TABLES
from contracts.events import ReadmissionLabel, TransferEvent
from stream.kpi_tally import Partial, capacity_partial

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _transfer(dept: str, minutes: int, eid: str) -> TransferEvent:
    return TransferEvent(event_id=eid, hl7_trigger="A02", occurred_at=T0 + timedelta(minutes=minutes),
                         facility_id="F1", patient_id="P1", encounter_id="E1", department=dept,
                         attending_provider_id="D1")


def test_encounter_current_department_follows_event_time_then_offset() -> None:
    b = Batch()
    b.add_adt(_transfer("Surgery", 10, "00000000-0000-4000-8000-000000000001"), 0, 1)
    b.add_adt(_transfer("Neurology", 20, "00000000-0000-4000-8000-000000000002"), 0, 2)
    b.add_adt(_transfer("Oncology", 5, "00000000-0000-4000-8000-000000000003"), 0, 3)  # older event
    (enc,) = b.rows("encounters")
    assert enc["department"] == "Neurology"
    assert enc["last_event_offset"] == 2
    assert len(b.rows("adt_events")) == 3


def test_full_encounter_merge_sets_admission_and_discharge_columns_once() -> None:
    data = generate(patients=5, days=40, seed=3)
    b = Batch()
    for offset, (_, ev) in enumerate(data.adt):
        b.add_adt(ev, 0, offset)
    encounters = {r["encounter_id"]: r for r in b.rows("encounters")}
    for _, ev in data.adt:
        row = encounters[ev.encounter_id]
        if ev.event_type == "admission":
            assert row["admitted_at"] == ev.occurred_at and row["admission_type"] == ev.admission_type
        if ev.event_type == "discharge":
            assert row["discharged_at"] == ev.occurred_at and row["total_cost"] == ev.total_cost
            assert row["department"] == ev.department  # the discharge is the latest event
    # a patient row carries the demographics of the latest admission, not a stub
    assert all(r["as_of"] is not None for r in b.rows("patients"))


def _partial(admissions: int, partition: int = 0) -> bytes:
    return orjson.dumps({"dimension": "facility", "dimension_id": "F1", "facility_id": "F1",
                         "day": "2025-01-01", "partition": partition,
                         "micro": {"admissions": admissions * 1_000_000, "census_delta": 0},
                         "patients": ["P2", "P1"]})


def test_kpi_partial_last_record_per_key_wins_within_a_batch() -> None:
    b = Batch()
    for v in (1, 5, 3):
        b.add_kpi_partials(Partial.parse_all(_partial(v)))
    b.add_kpi_partials(Partial.parse_all(_partial(7, partition=1)))  # another key: its own row
    rows = b.rows("kpi_partials")
    assert [(r["adt_partition"], r["admissions_micro"]) for r in rows] == [(0, 3_000_000), (1, 7_000_000)]
    row = rows[0]
    assert row["census_delta_micro"] == 0 and row["discharges_micro"] is None  # absent, not 0
    assert row["patients"] == ["P1", "P2"] and row["day"] == T0.date()


def test_a_capacity_record_stores_nothing() -> None:
    """providers.capacity comes from hospital.reference; the topic's copy is for the combiner."""
    b = Batch()
    b.add_kpi_partials(Partial.parse_all(capacity_partial("D1", "F1", 12)[2]))
    assert len(b) == 1 and b.row_count() == 0


def test_nul_characters_are_replaced() -> None:
    assert clean(["a\x00", {"k": "b\x00c"}, 3]) == ["a\ufffd", {"k": "b\ufffdc"}, 3]


def test_every_table_statement_lists_its_key_columns() -> None:
    for t in TABLES:
        assert set(t.key) <= set(t.columns), t.name
        assert t.sql.startswith(f"INSERT INTO {t.name} AS t")


def test_a_bundle_is_one_message_and_each_record_its_row() -> None:
    """A ``hospital.kpi-partials`` message holds a batch's records of a partition (a JSON array)."""
    b = Batch()
    b.add_kpi_partials(Partial.parse_all(b"[" + _partial(1) + b"," + _partial(4, partition=1) + b"]"))
    b.add_kpi_partials(Partial.parse_all(b"[" + _partial(2) + b"]"))  # a later bundle replaces key (.., 0)
    rows = b.rows("kpi_partials")
    assert len(b) == 2 and [(r["adt_partition"], r["admissions_micro"]) for r in rows] == [(0, 2_000_000),
                                                                                            (1, 4_000_000)]


def _v11(**fields) -> object:
    from contracts.events import parse_adt

    base = {"schema_version": 1, "occurred_at": "2025-01-01T10:00:00Z", "facility_id": "F1",
            "patient_id": "P1", "encounter_id": "E1", "department": "Emergency",
            "attending_provider_id": "D1"}
    return parse_adt(orjson.dumps({**base, **fields}))


def test_contract_v11_events_and_nulls() -> None:
    """A registration is an event, not an encounter; an update moves the encounter's current
    department; an admission without vitals and a discharge without a cost store nulls and no
    charge."""
    b = Batch()
    b.add_adt(_v11(event_id="00000000-0000-4000-8000-000000000010", event_type="registration",
                   hl7_trigger="A04", patient_class="emergency", encounter_id="R1"), 0, 1)
    assert [r["event_type"] for r in b.rows("adt_events")] == ["registration"]
    assert b.rows("encounters") == []
    b.add_adt(_v11(event_id="00000000-0000-4000-8000-000000000011", event_type="admission",
                   hl7_trigger="A01", admission_type="emergency", admit_source="ed",
                   patient={"age": 50, "sex": "F", "race": "white", "payer": "private",
                            "chronic_conditions": []}, diagnosis_codes=["R07.9"]), 0, 2)
    b.add_adt(_v11(event_id="00000000-0000-4000-8000-000000000012", event_type="update",
                   hl7_trigger="A08", occurred_at="2025-01-01T11:00:00Z", department="Cardiology",
                   attending_provider_id="D2"), 0, 3)
    b.add_adt(_v11(event_id="00000000-0000-4000-8000-000000000013", event_type="discharge",
                   hl7_trigger="A03", occurred_at="2025-01-02T10:00:00Z", department="Cardiology",
                   attending_provider_id="D2", admitted_at="2025-01-01T10:00:00Z",
                   length_of_stay_days=1.0, discharge_disposition="home", diagnosis_codes=["R07.9"],
                   procedure_codes=[], payer="private"), 0, 4)
    (enc,) = b.rows("encounters")
    assert (enc["department"], enc["attending_provider_id"]) == ("Cardiology", "D2")
    assert enc["systolic_bp"] is None and enc["total_cost"] is None
    assert b.rows("charges") == []


def test_a_withdrawn_output_removes_its_row_and_a_later_message_puts_it_back() -> None:
    """The last message for a key is its state: withdrawn -> the row leaves its table (a delete)
    and ``withdrawn_outputs`` records it; a later message for the key -> the row, no delete."""
    at = datetime(2025, 1, 4, 10, tzinfo=timezone.utc)
    label = ReadmissionLabel(encounter_id="E1", patient_id="P1", discharged_at=at - timedelta(days=3),
                             readmitted=True, readmission_encounter_id="E2", known_at=at)
    b = Batch()
    b.add_label(label, 0, 1)
    b.add_label(label.withdrawn_copy(at), 0, 2)
    assert b.rows("readmissions") == [] and b.deletes("readmissions") == [("E1",)]
    (record,) = b.rows("withdrawn_outputs")
    assert (record["output"], record["key"], record["source_offset"]) == ("readmissions", "E1", 2)
    assert orjson.loads(record["payload"])["withdrawn"] is True
    b.add_label(label.model_copy(update={"readmitted": False, "readmission_encounter_id": None}), 0, 3)
    assert b.deletes("readmissions") == [] and b.rows("readmissions")[0]["readmitted"] is False
    assert "withdrawn" not in b.rows("readmissions")[0]
