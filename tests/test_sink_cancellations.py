"""Cancellations in the sink's ADT facts, pure (consumers/cancellations.py): which event each
A11 / A12 / A13 cancels, and the encounter, charge and code rows its stored events give. The
rows must not depend on the order the events are handed over in (batches, replays)."""

from __future__ import annotations

import random

from consumers.cancellations import Stored, mark_rows, resolve, stays
from consumers.rows import Batch
from contracts.events import UpdateEvent
from stream.domain.examples import admission, discharge, event_id, transfer, ts
from test_stream_withdrawals import cancel

ADMIT, D1, D2 = "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00", "2025-01-06T08:00:00+00:00"


def _stored(*events) -> list[Stored]:
    return [Stored(ev, 0, i) for i, ev in enumerate(events)]


def _id(ev) -> str:
    return str(ev.event_id)


def _cancelled(res) -> dict[str, str]:
    return {eid: m.cancelled_by for eid, m in res.marks.items() if m.cancelled_by}


def test_a_cancelled_discharge_reopens_the_encounter_and_withdraws_its_charge_and_codes() -> None:
    adm = admission("P1", "E1", ADMIT)
    dis = discharge("P1", "E1", ADMIT, D1, procedure_codes=["99223"], diagnosis_codes=["I50.9", "E11.9"])
    a13 = cancel("discharge", "E1", "2025-01-04T10:00:00+00:00")
    res = resolve("E1", _stored(adm, dis, a13))
    assert _cancelled(res) == {_id(dis): _id(a13)}
    e = res.encounter
    assert e["discharged_at"] is None and e["length_of_stay_days"] is None and e["total_cost"] is None
    assert e["discharge_disposition"] is None and e["admitted_at"] == ts(ADMIT) and e["cancelled_by"] is None
    assert res.charge is None and res.charge_withdrawn_by == (_id(a13), a13.occurred_at)
    codes = {(c.table, c.coded_at): (len(c.live), c.withdrawn_by) for c in res.codes}
    assert codes == {("diagnoses", "admission"): (1, None),
                     ("diagnoses", "discharge"): (0, (_id(a13), a13.occurred_at)),
                     ("procedures", None): (0, (_id(a13), a13.occurred_at))}


def test_the_discharge_after_a_cancelled_one_counts_with_its_own_values() -> None:
    adm = admission("P1", "E1", ADMIT)
    first = discharge("P1", "E1", ADMIT, D1, total_cost=5000.0, diagnosis_codes=["I50.9", "E11.9", "N18.4"])
    a13 = cancel("discharge", "E1", "2025-01-04T10:00:00+00:00")
    second = discharge("P1", "E1", ADMIT, D2, total_cost=7000.0, seed="second", diagnosis_codes=["I50.9"])
    res = resolve("E1", _stored(adm, first, a13, second))
    assert _cancelled(res) == {_id(first): _id(a13)}
    assert (res.encounter["discharged_at"], res.encounter["total_cost"]) == (ts(D2), 7000.0)
    assert res.charge["amount"] == 7000.0 and res.charge_withdrawn_by is None
    dx = next(c for c in res.codes if c.coded_at == "discharge")
    assert [r["icd10_code"] for r in dx.live] == ["I50.9"] and dx.withdrawn_by == (_id(a13), a13.occurred_at)


def test_a_second_a13_cancels_the_later_discharge() -> None:
    adm = admission("P1", "E1", ADMIT)
    first = discharge("P1", "E1", ADMIT, D1)
    c1 = cancel("discharge", "E1", "2025-01-04T10:00:00+00:00")
    second = discharge("P1", "E1", ADMIT, D2, seed="second")
    c2 = cancel("discharge", "E1", "2025-01-06T10:00:00+00:00")
    res = resolve("E1", _stored(adm, first, c1, second, c2))
    assert _cancelled(res) == {_id(first): _id(c1), _id(second): _id(c2)}
    assert res.encounter["discharged_at"] is None


def test_a_cancelled_admission_withdraws_its_stay() -> None:
    adm = admission("P1", "E1", ADMIT)
    moved = transfer("P1", "E1", "2025-01-02T08:00:00+00:00")
    a11 = cancel("admission", "E1", "2025-01-02T09:00:00+00:00")
    res = resolve("E1", _stored(adm, moved, a11))
    assert _cancelled(res) == {_id(adm): _id(a11)}
    assert {eid: m.stay_cancelled_by for eid, m in res.marks.items()} == {
        _id(adm): _id(a11), _id(moved): _id(a11), _id(a11): None}
    assert (res.encounter["cancelled_by"], res.encounter["cancelled_at"]) == (_id(a11), a11.occurred_at)
    assert res.encounter["admission_type"] == "emergency"  # described as admitted, marked cancelled
    assert all(not c.live for c in res.codes)
    assert next(c for c in res.codes if c.coded_at == "admission").withdrawn_by == (_id(a11), a11.occurred_at)


def test_a_visit_admitted_again_after_an_a11_counts_again() -> None:
    adm = admission("P1", "E1", ADMIT, admission_type="urgent")
    a11 = cancel("admission", "E1", "2025-01-01T09:00:00+00:00")
    again = admission("P1", "E1", "2025-01-01T10:00:00+00:00", admission_type="elective", seed="again")
    res = resolve("E1", _stored(adm, a11, again))
    assert [len(s) for s in stays(_stored(adm, a11, again))] == [2, 1]
    assert res.marks[_id(again)].stay_cancelled_by is None and res.marks[_id(adm)].stay_cancelled_by == _id(a11)
    e = res.encounter
    assert (e["cancelled_by"], e["admission_type"], e["admitted_at"]) == (
        None, "elective", ts("2025-01-01T10:00:00+00:00"))


def _update(at: str, department: str, provider: str, seed: str) -> UpdateEvent:
    return UpdateEvent(event_id=event_id(seed), hl7_trigger="A08", occurred_at=ts(at), facility_id="F01",
                       patient_id="P1", encounter_id="E1", department=department, attending_provider_id=provider)


def test_a12_cancels_the_latest_transfer_not_cancelled_and_the_bed_before_it_goes_on() -> None:
    adm = admission("P1", "E1", ADMIT)
    t1 = transfer("P1", "E1", "2025-01-02T08:00:00+00:00", department="Cardiology", provider="D2", seed="t1")
    t2 = transfer("P1", "E1", "2025-01-03T08:00:00+00:00", department="Surgery", provider="D3", seed="t2")
    c1 = cancel("transfer", "E1", "2025-01-03T09:00:00+00:00", department="Cardiology", provider="D2")
    c2 = cancel("transfer", "E1", "2025-01-03T10:00:00+00:00")
    res = resolve("E1", _stored(adm, t1, t2, c1, c2))
    assert _cancelled(res) == {_id(t2): _id(c1), _id(t1): _id(c2)}
    assert (res.encounter["department"], res.encounter["attending_provider_id"]) == ("Internal Medicine", "D1")
    one = resolve("E1", _stored(adm, t1, t2, c1))
    assert (one.encounter["department"], one.encounter["attending_provider_id"]) == ("Cardiology", "D2")


def test_an_a08_between_a_transfer_and_its_a12_is_put_back_where_the_stream_puts_it() -> None:
    """As tests/test_stream_withdrawals.py: the A08 names the transfer's department (it moved
    only the attending), so after the A12 the stay is in the department before the transfer."""
    adm = admission("P1", "E1", ADMIT)
    moved = transfer("P1", "E1", "2025-01-02T08:00:00+00:00")  # Cardiology, D2
    upd = _update("2025-01-03T08:00:00+00:00", "Cardiology", "D3", "U3")
    res = resolve("E1", _stored(adm, moved, upd, cancel("transfer", "E1", "2025-01-03T10:00:00+00:00")))
    assert res.places == {_id(upd): ("Internal Medicine", "D3")}
    assert (res.encounter["department"], res.encounter["attending_provider_id"]) == ("Internal Medicine", "D3")
    rows = {r["event_id"]: r for r in mark_rows([res])["adt_events"]}
    assert rows[_id(upd)]["bed_department"] == "Internal Medicine" and rows[_id(adm)]["bed_department"] is None


def test_a_cancelled_discharge_leaves_the_stay_where_the_discharge_put_it() -> None:
    adm = admission("P1", "E1", ADMIT)
    upd = _update("2025-01-02T08:00:00+00:00", "Internal Medicine", "D7", "u1")
    dis = discharge("P1", "E1", ADMIT, D1)  # the simulator's attending D1, not the A08's D7
    res = resolve("E1", _stored(adm, upd, dis, cancel("discharge", "E1", "2025-01-04T10:00:00+00:00")))
    assert res.encounter["attending_provider_id"] == "D1" and res.encounter["last_event_offset"] == 2


def test_the_rows_are_the_same_whatever_order_the_events_come_in() -> None:
    adm = admission("P1", "E1", ADMIT)
    moved = transfer("P1", "E1", "2025-01-02T08:00:00+00:00")
    c12 = cancel("transfer", "E1", "2025-01-02T09:00:00+00:00")
    first = discharge("P1", "E1", ADMIT, D1)
    c13 = cancel("discharge", "E1", "2025-01-04T10:00:00+00:00")
    second = discharge("P1", "E1", ADMIT, D2, seed="second", total_cost=100.0)
    events = _stored(adm, moved, c12, first, c13, second)
    want = mark_rows([resolve("E1", events)])
    rng = random.Random(7)
    for _ in range(20):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert mark_rows([resolve("E1", shuffled)]) == want


def test_a_cancellation_adds_no_encounter_row_and_names_its_encounter_for_resolution() -> None:
    batch = Batch()
    batch.add_adt(cancel("discharge", "E9", D1), partition=0, offset=3)
    assert batch.rows("encounters") == [] and batch.adt_encounters == {"E9"}
    assert [r["event_type"] for r in batch.rows("adt_events")] == ["cancellation"]
