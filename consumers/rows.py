"""Pure mapping from contract messages to database rows, merged per key within a batch.

No I/O here: the sink feeds decoded messages (with their partition/offset) into a
:class:`Batch`, which keeps one row per table key, merged the same way the SQL upserts of
:mod:`consumers.tables` merge with what is already stored. That makes a batch a single
multi-row ``INSERT ... ON CONFLICT`` per table (PostgreSQL refuses to touch a row twice in
one statement) and keeps every write idempotent: the same messages give the same rows.

>>> from datetime import datetime, timezone
>>> from contracts.events import TransferEvent
>>> t = datetime(2025, 1, 1, tzinfo=timezone.utc)
>>> b = Batch()
>>> ev = TransferEvent(event_id="6c0f7c0e-3a56-4a8e-9d1f-0d6f2b1e8a11", hl7_trigger="A02",
...     occurred_at=t, facility_id="F1", patient_id="P1", encounter_id="E1",
...     department="Surgery", attending_provider_id="D1")
>>> b.add_adt(ev, partition=0, offset=7)
>>> b.rows("encounters")[0]["department"], b.row_count()
('Surgery', 6)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson

from contracts.events import (
    AdmissionEvent,
    Alert,
    CancellationEvent,
    ClassChangeEvent,
    DeadLetter,
    DischargeEvent,
    DischargeScore,
    FacilityRef,
    MergeEvent,
    ModelHealth,
    ProviderRef,
    ReadmissionLabel,
    RegistrationEvent,
    TransferEvent,
    UpdateEvent,
    Vitals,
    applied_as,
)
from stream.domain.kpis import FIELDS as KPI_FIELDS
from stream.kpi_tally import Partial

Row = dict[str, Any]
NO_VITALS = Vitals()  # an admission without vitals (contract v1.1): every vital column null

# Columns of ``encounters`` set by the event that opens / closes the encounter: first writer wins.
ENCOUNTER_SET_ONCE = (
    "admit_department", "admission_type", "admit_source", "age_at_admission", "sex",
    "payer_at_admission", "chronic_condition_count", "systolic_bp", "diastolic_bp", "heart_rate",
    "glucose_mg_dl", "admitted_at", "discharged_at", "length_of_stay_days", "discharge_disposition",
    "payer", "total_cost", "satisfaction_score",
)


def clean(value: Any) -> Any:
    """Replace NUL characters, which PostgreSQL text and jsonb cannot store (a valid event must
    never stall the sink).

    >>> clean({"a": ["x\\x00y"]})
    {'a': ['x\\ufffdy']}
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


def _json(model_data: Any) -> str:
    return orjson.dumps(clean(model_data)).decode()


WITHDRAWAL_FIELDS = ("withdrawn", "withdrawn_at")  # an output's withdrawal: a row removed, not a column


def _fields(model: Any, *drop: str) -> Row:
    """A contract model's fields as a dict (shallow: faster than ``model_dump`` for flat models)."""
    return {k: v for k, v in model.__dict__.items() if k != "schema_version" and k not in drop}


def _same(value: Any) -> Any:
    return value


def _cleaner(raw: bytes | None) -> Callable[[Any], Any]:
    """:func:`clean` unless the raw JSON shows no NUL (``\\u0000``): skipping it is the fast path."""
    return clean if raw is None or b"\\u0000" in raw else _same


class Batch:
    """Rows of one database transaction, one per table key, merged in arrival (offset) order."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple, Row]] = {}
        self._deletes: dict[str, set[tuple]] = {}  # output rows a withdrawal removes
        self.adt_encounters: set[str] = set()  # encounters of its ADT events (cancellations: V013)
        self.messages = 0

    # ------------------------------------------------------------------ generic merges

    def _put(self, table: str, key: tuple, row: Row) -> None:
        """Last writer wins (outputs: scores, labels, alerts, KPI partials, dead letters, facts)."""
        self._rows.setdefault(table, {})[key] = row
        self._deletes.get(table, set()).discard(key)

    def _withdraw(self, table: str, key: tuple, message: Any, partition: int, offset: int) -> None:
        """A withdrawn output (``withdrawn`` true; the last message for a key is its state):
        its row leaves ``table``, so no view or panel counts it, and ``withdrawn_outputs``
        records the withdrawal (a later message for the key puts the row back)."""
        self._rows.get(table, {}).pop(key, None)
        self._deletes.setdefault(table, set()).add(key)
        self._put("withdrawn_outputs", (table, key[0]), {
            "output": table, "key": key[0], "withdrawn_at": message.withdrawn_at,
            "payload": _json(message.model_dump(mode="json")),
            "source_partition": partition, "source_offset": offset})

    def _fill(self, table: str, key: tuple, row: Row) -> None:
        """Reference rows: a non-null value replaces, a null keeps what is known."""
        rows = self._rows.setdefault(table, {})
        old = rows.get(key)
        rows[key] = row if old is None else {k: (v if v is not None else old.get(k)) for k, v in row.items()}

    def _first(self, table: str, key: tuple, row: Row) -> None:
        """Insert-only rows (raw events): the first copy is kept."""
        self._rows.setdefault(table, {}).setdefault(key, row)

    # ------------------------------------------------------------------ hospital.adt-accepted

    def add_adt(self, ev: AdmissionEvent | DischargeEvent | TransferEvent | RegistrationEvent | UpdateEvent
                | CancellationEvent | ClassChangeEvent | MergeEvent, partition: int, offset: int,
                raw: bytes | None = None) -> None:
        """An event the stream applied, at its ``hospital.adt`` (partition, offset); ``raw``: the
        message as received, stored as the payload when it needs no cleaning.

        Contract v1.1: a registration (a visit without a bed) is stored as an event only, not as
        an encounter (``encounters`` are inpatient stays); an update moves its encounter's
        current department and attending like a transfer. A null cost writes no charge. A
        cancellation is stored as an event only: what it withdraws from the encounter's rows is
        derived from the encounter's stored events after the batch is written
        (:mod:`consumers.cancellations`, ``consumers.tables.apply_cancellations``). A class
        change is stored as what the stream applied it as (``contracts.events.applied_as``: an
        A06 as an admission, an A07 as the cancellation of its stay's admission), under its own
        trigger and payload. A merge is stored as an event and in ``patient_merges``
        (``consumers.tables.apply_merges`` then points the prior's rows at the survivor).
        """
        self.messages += 1
        sent, ev = ev, applied_as(ev)
        clean = _cleaner(raw)
        self._stubs(ev.facility_id, ev.department, ev.attending_provider_id, ev.patient_id, clean)
        payload = raw.decode() if raw is not None and clean is _same else _json(sent.model_dump(mode="json"))
        self._first("adt_events", (str(ev.event_id),), {
            "event_id": str(ev.event_id), "event_type": ev.event_type, "hl7_trigger": ev.hl7_trigger,
            "occurred_at": ev.occurred_at, "facility_id": clean(ev.facility_id),
            "patient_id": clean(ev.patient_id), "encounter_id": clean(ev.encounter_id),
            "department": clean(ev.department), "attending_provider_id": clean(ev.attending_provider_id),
            "payload": payload, "source_partition": partition, "source_offset": offset,
        })
        if isinstance(ev, MergeEvent):  # V016: the sink points the prior's rows at the survivor
            self._first("patient_merges", (clean(ev.prior_patient_id),), {
                "prior_patient_id": clean(ev.prior_patient_id), "patient_id": clean(ev.patient_id),
                "merged_at": ev.occurred_at, "event_id": str(ev.event_id),
                "source_partition": partition, "source_offset": offset})
        if isinstance(ev, (RegistrationEvent, MergeEvent)):
            return
        self.adt_encounters.add(clean(ev.encounter_id))
        if isinstance(ev, CancellationEvent):
            return
        patch: Row = {
            "encounter_id": clean(ev.encounter_id), "patient_id": clean(ev.patient_id),
            "facility_id": clean(ev.facility_id), "department": clean(ev.department),
            "attending_provider_id": clean(ev.attending_provider_id),
            "last_event_at": ev.occurred_at, "last_event_offset": offset,
        }
        if isinstance(ev, AdmissionEvent):
            p = ev.patient
            patch.update(
                admit_department=clean(ev.department), admission_type=ev.admission_type,
                admit_source=ev.admit_source, age_at_admission=p.age, sex=p.sex,
                payer_at_admission=p.payer, chronic_condition_count=len(p.chronic_conditions),
                **(ev.vitals or NO_VITALS).model_dump(), admitted_at=ev.occurred_at,
            )
            self._patient({
                "patient_id": clean(ev.patient_id), "age": p.age, "sex": p.sex, "race": clean(p.race),
                "payer": p.payer, "chronic_conditions": clean(list(p.chronic_conditions)),
                "as_of": ev.occurred_at,
            })
            self._codes("diagnoses", ev.encounter_id, "admission", ev.diagnosis_codes, clean)
        elif isinstance(ev, DischargeEvent):
            patch.update(
                admitted_at=ev.admitted_at, discharged_at=ev.occurred_at,
                length_of_stay_days=ev.length_of_stay_days,
                discharge_disposition=ev.discharge_disposition, payer=ev.payer,
                total_cost=ev.total_cost, satisfaction_score=ev.satisfaction_score,
            )
            self._codes("diagnoses", ev.encounter_id, "discharge", ev.diagnosis_codes, clean)
            for i, code in enumerate(ev.procedure_codes):
                self._put("procedures", (clean(ev.encounter_id), i),
                          {"encounter_id": clean(ev.encounter_id), "position": i, "cpt_code": clean(code)})
            if ev.total_cost is not None:
                self._put("charges", (clean(ev.encounter_id),), {
                    "encounter_id": clean(ev.encounter_id), "patient_id": clean(ev.patient_id),
                    "facility_id": clean(ev.facility_id), "department": clean(ev.department),
                    "payer": ev.payer, "amount": ev.total_cost, "charged_at": ev.occurred_at,
                })
        self._encounter(patch)

    def _stubs(self, facility_id: str, department: str, provider_id: str, patient_id: str,
               clean: Callable[[Any], Any]) -> None:
        f, d, pr, pa = clean(facility_id), clean(department), clean(provider_id), clean(patient_id)
        # A stub adds nothing to a row already in the batch (fast path: 4 stubs per event).
        get = self._rows.setdefault
        get("facilities", {}).setdefault((f,), {"facility_id": f, "name": None, "beds": None})
        if d is not None:  # a merge names no department nor attending
            get("departments", {}).setdefault((f, d), {"facility_id": f, "department": d, "beds": None})
        if pr is not None:
            get("providers", {}).setdefault((pr,), {"provider_id": pr, "facility_id": f, "department": None,
                                                    "capacity": None})
        get("patients", {}).setdefault((pa,), {"patient_id": pa, "age": None, "sex": None, "race": None,
                                               "payer": None, "chronic_conditions": None, "as_of": None})

    def _patient(self, row: Row) -> None:
        """Demographics of the latest admission (by event time) win; stubs never overwrite."""
        rows = self._rows.setdefault("patients", {})
        old = rows.get((row["patient_id"],))
        if old is None or (row["as_of"] is not None and (old["as_of"] is None or row["as_of"] >= old["as_of"])):
            rows[(row["patient_id"],)] = row

    def _codes(self, table: str, encounter_id: str, coded_at: str, codes: Iterable[str],
               clean: Callable[[Any], Any]) -> None:
        e = clean(encounter_id)
        for i, code in enumerate(codes):
            self._put(table, (e, coded_at, i),
                      {"encounter_id": e, "coded_at": coded_at, "position": i, "icd10_code": clean(code)})

    def _encounter(self, patch: Row) -> None:
        rows = self._rows.setdefault("encounters", {})
        key = (patch["encounter_id"],)
        old = rows.get(key)
        if old is None:
            row = {c: None for c in ENCOUNTER_SET_ONCE}
            row.update(patch)
            rows[key] = row
            return
        for c in ENCOUNTER_SET_ONCE:  # first writer wins, like the SQL upsert
            if old.get(c) is None and patch.get(c) is not None:
                old[c] = patch[c]
        if (patch["last_event_at"], patch["last_event_offset"]) >= (old["last_event_at"], old["last_event_offset"]):
            for c in ("department", "attending_provider_id", "last_event_at", "last_event_offset"):
                old[c] = patch[c]

    # ------------------------------------------------------------------ hospital.reference

    def add_reference(self, ref: ProviderRef | FacilityRef) -> None:
        self.messages += 1
        if isinstance(ref, ProviderRef):
            f = clean(ref.facility_id)
            self._fill("facilities", (f,), {"facility_id": f, "name": None, "beds": None})
            self._fill("departments", (f, clean(ref.department)),
                       {"facility_id": f, "department": clean(ref.department), "beds": None})
            self._fill("providers", (clean(ref.provider_id),), {
                "provider_id": clean(ref.provider_id), "facility_id": f,
                "department": clean(ref.department), "capacity": ref.capacity})
        else:
            f = clean(ref.facility_id)
            self._fill("facilities", (f,), {"facility_id": f, "name": clean(ref.name), "beds": ref.beds})
            for dep, beds in ref.department_beds.items():
                self._fill("departments", (f, clean(dep)),
                           {"facility_id": f, "department": clean(dep), "beds": beds})

    # ------------------------------------------------------------------ output topics

    def add_score(self, s: DischargeScore, partition: int, offset: int, raw: bytes | None = None) -> None:
        self.messages += 1
        if s.withdrawn:
            return self._withdraw("discharge_scores", (s.encounter_id,), s, partition, offset)
        clean = _cleaner(raw)
        row = clean(_fields(s, "top_factors", *WITHDRAWAL_FIELDS))
        row.update(top_factors=_json([f.model_dump(mode="json") for f in s.top_factors]),
                   source_partition=partition, source_offset=offset)
        self._put("discharge_scores", (row["encounter_id"],), row)

    def add_label(self, lab: ReadmissionLabel, partition: int, offset: int, raw: bytes | None = None) -> None:
        self.messages += 1
        if lab.withdrawn:  # the label is unknown again
            return self._withdraw("readmissions", (lab.encounter_id,), lab, partition, offset)
        clean = _cleaner(raw)
        row = clean(_fields(lab, *WITHDRAWAL_FIELDS))
        row.update(source_partition=partition, source_offset=offset)
        self._put("readmissions", (row["encounter_id"],), row)

    def add_alert(self, a: Alert, partition: int, offset: int, raw: bytes | None = None) -> None:
        self.messages += 1
        if a.withdrawn:
            return self._withdraw("alerts", (a.alert_id,), a, partition, offset)
        clean = _cleaner(raw)
        row = clean(_fields(a, *WITHDRAWAL_FIELDS))
        row.update(source_partition=partition, source_offset=offset)
        self._put("alerts", (row["alert_id"],), row)

    def add_kpi_partials(self, records: list[Partial]) -> None:
        """The records of one ``hospital.kpi-partials`` message (``stream/kpi_tally.py``): a day
        record replaces the row of its (dimension, dimension_id, day, ADT partition); the view
        ``kpi_windows`` computes the windows from them. A provider's capacity record is not
        stored: ``providers.capacity`` already comes from ``hospital.reference`` (the stream
        routes it through this topic only to reach the combiner that holds the provider's days)."""
        self.messages += 1
        for p in records:
            if p.day is None or p.bucket is None:
                continue
            micro = p.bucket.micro
            row: Row = {"dimension": p.dimension, "dimension_id": clean(p.dimension_id), "day": p.day,
                        "adt_partition": p.partition, "facility_id": clean(p.facility_id),
                        **{f"{f}_micro": micro.get(f) for f in KPI_FIELDS},
                        "patients": clean(sorted(p.bucket.patients))}
            self._put("kpi_partials", (row["dimension"], row["dimension_id"], row["day"], row["adt_partition"]),
                      row)

    def add_health(self, h: ModelHealth, partition: int, offset: int, raw: bytes | None = None) -> None:
        self.messages += 1
        clean = _cleaner(raw)
        row = clean(_fields(h))
        row.update(source_partition=partition, source_offset=offset)
        self._put("model_health", (row["check_id"],), row)

    def add_dead_letter(self, d: DeadLetter, partition: int, offset: int, raw: bytes | None = None) -> None:
        self.messages += 1
        clean = _cleaner(raw)
        row = clean(_fields(d))
        row.update(dlq_partition=partition, dlq_offset=offset)
        self._put("dead_letters", (row["source_topic"], row["source_partition"], row["source_offset"]), row)

    # ------------------------------------------------------------------ output

    def rows(self, table: str) -> list[Row]:
        """The rows of ``table`` sorted by key (a fixed lock order: concurrent sinks cannot deadlock)."""
        items = self._rows.get(table, {})
        return [items[k] for k in sorted(items, key=_sort_key)]

    def deletes(self, table: str) -> list[tuple]:
        """The keys whose rows ``table`` loses (withdrawn outputs), sorted like :meth:`rows`."""
        return sorted(self._deletes.get(table, ()), key=_sort_key)

    def tables(self) -> list[str]:
        return [t for t, rows in self._rows.items() if rows]

    def row_count(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def __len__(self) -> int:
        return self.messages


def _sort_key(key: tuple) -> tuple:
    return tuple(k.isoformat() if isinstance(k, datetime) else k for k in key)
