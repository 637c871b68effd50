"""Unit tests of the batch merge rules (pure: no broker, no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from consumers.fake import generate
from consumers.rows import Batch, clean
from consumers.tables import TABLES
from stream.contracts import KpiValue, TransferEvent

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


def test_kpi_last_message_wins_within_a_batch() -> None:
    b = Batch()
    for offset, v in enumerate((1.0, 5.0, 3.0)):
        b.add_kpi(KpiValue(kpi="discharges", dimension="facility", dimension_id="F1", facility_id="F1",
                           window="1d", window_start=T0, window_end=T0 + timedelta(days=1), value=v,
                           numerator=v, denominator=1), 0, offset)
    (row,) = b.rows("kpi_windows")
    assert row["value"] == 3.0 and row["source_offset"] == 2


def test_nul_characters_are_replaced() -> None:
    assert clean(["a\x00", {"k": "b\x00c"}, 3]) == ["a\ufffd", {"k": "b\ufffdc"}, 3]


def test_every_table_statement_lists_its_key_columns() -> None:
    for t in TABLES:
        assert set(t.key) <= set(t.columns), t.name
        assert t.sql.startswith(f"INSERT INTO {t.name} AS t")
