"""ADT events the stream dead-lettered leave no row behind, whichever topic the sink reads first.

Four rejected events, each harmful if stored: a duplicate event_id with changed content (would
overwrite the patient's age, the admission diagnoses and the current department), an orphan
discharge (a whole encounter, its charge and a patient), a far-future transfer (the current
department of a real encounter) and a far-future admission (a new encounter, and the patient's
demographics latched to a date ten years ahead). Whatever the order and batching of the ADT and
DLQ messages, and after a restart re-reads everything, the tables must equal those of the
accepted events alone (real PostgreSQL, written as the ``wardstream_sink`` role).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from consumers.fake import generate
from consumers.rows import Batch
from consumers.sink import default_group, run_sink
from consumers.state import dump_tables
from consumers.tables import TABLE_NAMES, write_batch
from stream.contracts import AdmissionEvent, DeadLetter, DischargeEvent, Topics, TransferEvent, dump
from test_sink_support import reset_group, role_url, sink_db  # noqa: F401  (fixture)
from wardstream.config import settings
from wardstream.stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e

FACTS = tuple(t for t in TABLE_NAMES if t != "dead_letters")  # everything the ADT topic feeds
TEN_YEARS = timedelta(days=3650)


@dataclass
class Msg:
    """One ADT message; ``reason`` set = the stream dead-letters it."""

    event: AdmissionEvent | DischargeEvent | TransferEvent
    reason: str | None = None
    partition: int = 0
    offset: int = 0

    @property
    def key(self) -> str:
        return self.event.patient_id


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=n, version=4)


def scenario() -> list[Msg]:
    """Accepted events with four rejected ones placed after the events they would corrupt."""
    events = [ev for _, ev in generate(patients=24, days=40, seed=17).adt]
    msgs = [Msg(ev) for ev in events]
    first_adm = events[0]
    other = next(ev for ev in events if ev.department != first_adm.department)
    dup = first_adm.model_copy(update={
        "department": other.department, "attending_provider_id": other.attending_provider_id,
        "diagnosis_codes": ["Z00.00"],
        "patient": first_adm.patient.model_copy(update={"age": first_adm.patient.age % 90 + 5})})
    dis = next(ev for ev in events if ev.event_type == "discharge")
    orphan = dis.model_copy(update={"event_id": _id(1), "patient_id": "PX-ORPHAN", "encounter_id": "EX-ORPHAN"})
    late = events[-1]
    transfer = TransferEvent(event_id=_id(2), hl7_trigger="A02", occurred_at=late.occurred_at + TEN_YEARS,
                             facility_id=late.facility_id, patient_id=late.patient_id,
                             encounter_id=late.encounter_id, department=other.department,
                             attending_provider_id=other.attending_provider_id)
    adm = next(ev for ev in reversed(events) if ev.event_type == "admission" and ev.patient_id != late.patient_id)
    future = adm.model_copy(update={
        "event_id": _id(3), "encounter_id": "EX-FUTURE", "occurred_at": adm.occurred_at + TEN_YEARS,
        "patient": adm.patient.model_copy(update={"age": adm.patient.age % 90 + 7, "payer": "uninsured"})})
    last_of = max(i for i, m in enumerate(msgs) if m.key == adm.patient_id)
    msgs.insert(last_of + 1, Msg(future, "far future"))
    msgs.append(Msg(transfer, "far future"))
    msgs.insert(6, Msg(orphan, "discharge without open admission"))
    msgs.insert(1, Msg(dup, "duplicate event_id"))
    offsets: dict[int, int] = {}
    for m in msgs:  # one patient = one key = one partition, offsets in order
        m.partition = zlib.crc32(m.key.encode()) % 4
        m.offset = offsets[m.partition] = offsets.get(m.partition, -1) + 1
    return msgs


def dead_letter(m: Msg, topic: str) -> DeadLetter:
    return DeadLetter(reason=m.reason, source_topic=topic, source_partition=m.partition,
                      source_offset=m.offset, raw=dump(m.event).decode(),
                      failed_at=datetime(2025, 1, 1, tzinfo=timezone.utc))


def adt_batches(msgs: list[Msg], size: int = 25) -> Iterator[Batch]:
    for i in range(0, len(msgs), size):
        batch = Batch()
        for m in msgs[i:i + size]:
            batch.add_adt(m.event, m.partition, m.offset)
        yield batch


def dlq_batch(msgs: list[Msg]) -> Batch:
    batch = Batch()
    for n, m in enumerate(m for m in msgs if m.reason):
        batch.add_dead_letter(dead_letter(m, batch.adt_topic), 0, n)
    return batch


def ordered(msgs: list[Msg], order: str) -> list[Batch]:
    """The batches one sink would write when it reads the two topics in ``order``."""
    adt, dlq = list(adt_batches(msgs)), dlq_batch(msgs)
    if order == "dlq_first":
        return [dlq, *adt]
    if order == "adt_first":
        return [*adt, dlq]
    if order == "dlq_between":  # some rejected events are stored before their dead letter, some after
        return [*adt[:2], dlq, *adt[2:]]
    one = Batch()
    for m in msgs:
        one.add_adt(m.event, m.partition, m.offset)
    for n, m in enumerate(m for m in msgs if m.reason):
        one.add_dead_letter(dead_letter(m, one.adt_topic), 0, n)
    return [one]


def write(url: str, batches: list[Batch]) -> None:
    """One transaction per batch, like the sink."""
    conn = psycopg2.connect(url)
    try:
        for batch in batches:
            with conn, conn.cursor() as cur:
                write_batch(cur, batch)
    finally:
        conn.close()


def accepted_dump(msgs: list[Msg]) -> dict:
    """The fact tables the accepted events alone give (same coordinates, no dead letter at all)."""
    with LocalPostgres().scratch_database(migrate=True) as url:
        write(url, list(adt_batches([m for m in msgs if not m.reason], size=10_000)))
        return dump_tables(url, FACTS)


@pytest.fixture(scope="module")
def expected(stack) -> dict:
    return accepted_dump(scenario())


def _both(url: str) -> int:
    """ADT rows whose source coordinates were dead-lettered."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dead_letters d JOIN adt_events a "
                    "ON (a.source_partition, a.source_offset) = (d.source_partition, d.source_offset)")
        n = cur.fetchone()[0]
    conn.close()
    return n


def test_scenario_events_would_change_the_tables(sink_db, expected) -> None:
    """Guard: stored as plain events, the rejected ones do change the fact tables."""
    msgs = [Msg(m.event, None, m.partition, m.offset) for m in scenario()]
    write(sink_db, list(adt_batches(msgs)))
    got = dump_tables(sink_db, FACTS)
    assert {t for t in FACTS if got[t] != expected[t]} >= {"adt_events", "encounters", "patients", "diagnoses",
                                                          "procedures", "charges"}


@pytest.mark.parametrize("order", ["dlq_first", "adt_first", "dlq_between", "one_batch"])
def test_dead_lettered_events_leave_no_rows_in_any_order(order, sink_db, expected) -> None:
    msgs = scenario()
    url = role_url(sink_db, "wardstream_sink", settings().sink_password)  # the sink's grants suffice
    write(url, ordered(msgs, order))
    assert dump_tables(sink_db, FACTS) == expected
    assert _both(sink_db) == 0
    dup = next(m for m in msgs if m.reason == "duplicate event_id")
    with psycopg2.connect(sink_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT source_partition, source_offset FROM adt_events WHERE event_id = %s",
                    (str(dup.event.event_id),))
        assert cur.fetchall() == [(dup.partition, dup.offset - 1)]  # the accepted original stays
        cur.execute("SELECT count(*) FROM dead_letters")
        assert cur.fetchone()[0] == 4
    conn.close()
    # a restart re-reads both topics, in the other order too: nothing changes
    write(url, ordered(msgs, "adt_first") + ordered(msgs, "dlq_first"))
    assert dump_tables(sink_db, FACTS) == expected


@pytest.mark.parametrize("first", ["dlq", "adt"])
def test_sink_reading_either_topic_first_keeps_dead_letters_out(first, kafka_ns, sink_db) -> None:
    """Through Kafka and ``run_sink``: the topics read by separate runs, then re-read from offset 0."""
    from wardstream.kafka_io import ensure_topics, make_producer

    t = Topics(kafka_ns)
    ensure_topics([t.adt, t.dlq])
    msgs = scenario()
    producer = make_producer()
    sent = [(m, producer.send(t.adt, key=m.key.encode(), value=dump(m.event))) for m in msgs]
    producer.flush()
    for m, future in sent:  # the coordinates Kafka gave them
        meta = future.get(10)
        m.partition, m.offset = meta.partition, meta.offset
    for m in msgs:
        if m.reason:
            producer.send(t.dlq, key=m.key.encode(), value=dump(dead_letter(m, t.adt)))
    producer.flush()
    producer.close()

    for topic in ((t.dlq, t.adt) if first == "dlq" else (t.adt, t.dlq)):
        run_sink(once=True, topics=[topic], handle_signals=False)
    expected = accepted_dump(msgs)
    assert dump_tables(sink_db, FACTS) == expected
    assert _both(sink_db) == 0
    reset_group(default_group(), [t.adt, t.dlq])
    again = run_sink(once=True, topics=[t.adt, t.dlq], handle_signals=False)
    assert again.messages == len(msgs) + 4 and again.rejected == 0
    assert dump_tables(sink_db, FACTS) == expected
