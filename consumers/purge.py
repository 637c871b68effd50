"""Keep the ADT events the stream dead-lettered out of ``adt_events`` and the rows derived from them.

The stream rejects some contract-valid ADT events for patient-level reasons (duplicate event_id,
discharge / transfer without an admission, out of order, far future) and sends them to the DLQ;
the sink reads ``hospital.adt`` and ``hospital.dlq`` independently, so a dead letter can arrive
before or after its event, and either may be re-read after a restart. Order independence comes
from checking both directions inside every batch's transaction, after its upserts:

* an ADT message of the batch whose (partition, offset) is in ``dead_letters``, and
* a dead letter of the batch whose (partition, offset) is in ``adt_events``

are the same case: the ``adt_events`` row at those coordinates is deleted (by coordinates, never
by event_id: a duplicate shares its event_id with the accepted original), and the encounters and
patients the rejected event touched are re-derived from the ADT events that remain, with the
same :class:`consumers.rows.Batch` merge rules (an encounter merges several events, so a
rejected event's contribution cannot be subtracted, only recomputed without it). The event
itself is found from the dead letter's ``raw`` bytes, so a duplicate whose row was never stored
(its event_id was taken) is still undone. Reference stubs (facilities, departments, providers)
are kept: they are shared reference data, not facts.

A transaction-scoped advisory lock per ADT partition, taken before the upserts, serializes a
batch with any concurrent sink transaction writing the same partition's events or dead letters
(under READ COMMITTED neither would otherwise see the other's uncommitted row).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

from pydantic import ValidationError

from consumers.rows import Batch, clean
from stream.contracts import parse_adt

log = logging.getLogger(__name__)

_LOCK_CLASS = 0x77646C71  # "wdlq": first key of the per-partition advisory locks

# Derived tables emptied for a re-derived encounter (children before encounters: foreign keys).
_ENCOUNTER_TABLES = ("diagnoses", "procedures", "charges", "encounters")
_DEMOGRAPHICS = ("age", "sex", "race", "payer", "chronic_conditions", "as_of")


@dataclass
class Affected:
    """Dead-lettered ADT coordinates met by a batch, and what their events touched."""

    coords: list[tuple[int, int]]
    encounters: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)


def lock_adt_partitions(cur, batch: Batch) -> None:
    """Serialize with other sinks on the ADT partitions this batch has events or dead letters of."""
    partitions = {p for p, _ in batch.adt_coords} | {p for p, _ in batch.dead_letter_coords()}
    for p in sorted(partitions):  # a fixed order: two batches cannot deadlock on these locks
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, p))


def find_dead_lettered(cur, batch: Batch) -> Affected | None:
    """The batch's ADT messages that are dead-lettered, and the batch's dead letters (their events).

    Runs after the batch's upserts, so its own dead letters are in ``dead_letters`` already.
    """
    coords = set(batch.adt_coords) | set(batch.dead_letter_coords())
    if not coords:
        return None
    parts, offsets = zip(*coords)
    cur.execute("SELECT d.source_partition, d.source_offset, d.raw, d.raw_encoding FROM dead_letters d "
                "JOIN unnest(%s::int[], %s::bigint[]) AS c(p, o) "
                "ON (d.source_partition, d.source_offset) = (c.p, c.o) WHERE d.source_topic = %s",
                (list(parts), list(offsets), batch.adt_topic))
    rows = cur.fetchall()
    if not rows:
        return None
    affected = Affected(coords=sorted((p, o) for p, o, _, _ in rows))
    for _p, _o, raw, encoding in rows:
        ev = _event(raw, encoding)
        if ev is not None:  # contract-invalid: the sink never stored it, nothing to undo
            affected.encounters.add(clean(ev.encounter_id))
            affected.patients.add(clean(ev.patient_id))
    return affected


def _event(raw: str, encoding: str):
    """The ADT event a dead letter carries, or None when it is not a contract-valid one."""
    try:
        return parse_adt(base64.b64decode(raw) if encoding == "base64" else raw.encode())
    except (ValidationError, ValueError, TypeError):
        return None


def remove_dead_lettered(cur, affected: Affected) -> Batch:
    """Delete the dead-lettered ``adt_events`` rows and the affected encounters' derived rows.

    Returns the rows to upsert again: the affected encounters and patients re-derived from the ADT
    events that remain (read in offset order, the order the sink first merged them in).
    """
    parts, offsets = zip(*affected.coords)
    cur.execute("DELETE FROM adt_events a USING unnest(%s::int[], %s::bigint[]) AS c(p, o) "
                "WHERE (a.source_partition, a.source_offset) = (c.p, c.o) "
                "RETURNING a.encounter_id, a.patient_id", (list(parts), list(offsets)))
    for encounter_id, patient_id in cur.fetchall():
        affected.encounters.add(encounter_id)
        affected.patients.add(patient_id)
    encounters, patients = sorted(affected.encounters), sorted(affected.patients)
    for table in _ENCOUNTER_TABLES:
        cur.execute(f"DELETE FROM {table} WHERE encounter_id = ANY(%s)", (encounters,))
    # demographics come from the latest remaining admission (reset, then upserted again)
    cur.execute(f"UPDATE patients SET {', '.join(f'{c} = NULL' for c in _DEMOGRAPHICS)} "
                "WHERE patient_id = ANY(%s)", (patients,))
    cur.execute("SELECT payload::text, source_partition, source_offset FROM adt_events "
                "WHERE encounter_id = ANY(%s) OR (patient_id = ANY(%s) AND event_type = 'admission') "
                "ORDER BY source_partition, source_offset", (encounters, patients))
    rebuilt = Batch()
    for payload, partition, offset in cur.fetchall():
        rebuilt.add_adt(parse_adt(payload), partition, offset)
    log.info("removed %d dead-lettered ADT message(s); re-derived %d encounter(s) from %d event(s)",
             len(affected.coords), len(encounters), rebuilt.messages)
    return rebuilt


def drop_orphan_patients(cur, patients: set[str]) -> None:
    """Delete patient rows that only a dead-lettered event had created (nothing refers to them)."""
    cur.execute("DELETE FROM patients p WHERE p.patient_id = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM adt_events a WHERE a.patient_id = p.patient_id) "
                "AND NOT EXISTS (SELECT 1 FROM encounters e WHERE e.patient_id = p.patient_id) "
                "AND NOT EXISTS (SELECT 1 FROM charges c WHERE c.patient_id = p.patient_id)",
                (sorted(patients),))
