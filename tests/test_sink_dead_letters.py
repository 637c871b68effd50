"""The ADT facts are the events the stream applied; dead letters are stored beside them and delete nothing.

The stream's flow (``stream.adt_flow.AdtFlow`` over plain dicts, the code the worker runs) reads a
small simulation from ``hospital.adt`` with bad events mixed in: an exact duplicate, a duplicate
event_id with changed content (would overwrite the patient's age, the admission diagnoses and the
department), an orphan discharge (a whole encounter, its charge and a patient), a far-future
transfer and a far-future admission, and a contract-invalid message. Its ``hospital.adt-accepted``
and ``hospital.dlq`` outputs go to real Kafka as the worker sends them (partition, headers); the
sink, as the ``wardstream_sink`` role (no DELETE), must store exactly the accepted events and every
dead letter, without reading ``hospital.adt``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import orjson
import psycopg2
import pytest

from consumers.fake import generate
from consumers.rows import Batch
from consumers.sink import SOURCE_OFFSET_HEADER, add_accepted, default_group, default_topics, run_sink
from consumers.state import dump_tables
from consumers.tables import TABLE_NAMES, write_batch
from flow_inputs import N, flow_tables
from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ACCEPTED, DLQ, SOURCE_OFFSET, AdtFlow, Output
from contracts.events import DeadLetter, Topics, dump, parse_adt
from test_sink_support import reset_group, role_url, sink_db  # noqa: F401  (fixture)
from wardstream.config import settings
from wardstream.kafka_io import ensure_topics, key_partition, make_producer
from wardstream.stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e

FACTS = tuple(t for t in TABLE_NAMES if t != "dead_letters")  # everything the ADT events feed
TEN_YEARS = timedelta(days=3650)


@dataclass
class Sent:
    """One ``hospital.adt`` message and the coordinates Kafka gave it."""

    key: bytes
    value: bytes
    bad: bool = False  # injected: the stream must dead-letter it
    partition: int = -1
    offset: int = -1


def _id(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def adt_input() -> list[Sent]:
    """Ten simulated days (64 beds) with six bad messages, each placed where it would do harm."""
    sim = Simulation(SimConfig(seed=5, start=date(2025, 1, 1), days=10, beds=64))
    good = [Sent(e.key.encode(), orjson.dumps(e.event)) for e in sim.stream()]
    events = [parse_adt(m.value) for m in good]
    adm_i = next(i for i, ev in enumerate(events) if ev.event_type == "admission")
    adm = events[adm_i]
    other = next(ev for ev in events if ev.department != adm.department)
    changed = adm.model_copy(update={
        "department": other.department, "attending_provider_id": other.attending_provider_id,
        "diagnosis_codes": ["Z00.00"],
        "patient": adm.patient.model_copy(update={"age": adm.patient.age % 90 + 5})})
    dis = next(ev for ev in events if ev.event_type == "discharge")
    orphan = dis.model_copy(update={"event_id": _id(1), "patient_id": "PX-ORPHAN", "encounter_id": "EX-ORPHAN"})
    tr_i = next(i for i, ev in enumerate(events) if ev.event_type == "transfer")
    future_transfer = events[tr_i].model_copy(update={
        "event_id": _id(2), "occurred_at": events[tr_i].occurred_at + TEN_YEARS})
    future_admission = adm.model_copy(update={
        "event_id": _id(3), "patient_id": "PX-FUTURE", "encounter_id": "EX-FUTURE",
        "occurred_at": adm.occurred_at + TEN_YEARS})
    after: dict[int, list[Sent]] = {  # index of a good message -> bad ones sent right after it
        adm_i: [Sent(good[adm_i].key, good[adm_i].value, True),  # exact copy
                Sent(good[adm_i].key, dump(changed), True)],
        5: [Sent(b"PX-BAD", b'{"event_type": "admission", "not": "an event"}', True)],
        12: [Sent(b"PX-ORPHAN", dump(orphan), True)],
        tr_i: [Sent(good[tr_i].key, dump(future_transfer), True)],
        len(good) // 2: [Sent(b"PX-FUTURE", dump(future_admission), True)],
    }
    return [m for i, g in enumerate(good) for m in (g, *after.get(i, ()))]


def run_stream(t: Topics, msgs: list[Sent]) -> list[Output]:
    """Send ``msgs`` to hospital.adt, run the flow over them as the worker would, send its
    accepted events and dead letters as the worker does; returns those outputs."""
    ensure_topics([t.adt, t.adt_accepted, t.dlq])
    producer = make_producer()
    try:
        futures = [producer.send(t.adt, key=m.key, value=m.value, partition=key_partition(m.key, N))
                   for m in msgs]
        producer.flush()
        for m, future in zip(msgs, futures):
            meta = future.get(10)
            m.partition, m.offset = meta.partition, meta.offset
        flow = AdtFlow(source_topic=t.adt, **flow_tables())
        outputs = [o for m in msgs for o in flow.process(m.value, m.partition, m.offset, key=m.key)
                   if o.topic in (ACCEPTED, DLQ)]
        for o in outputs:
            key = o.key.encode() if isinstance(o.key, str) else o.key
            producer.send(getattr(t, o.topic), key=key, value=o.value, partition=o.partition,
                          headers=list(o.headers))
        producer.flush()
    finally:
        producer.close()
    return outputs


def _accepted_coords(o: Output) -> tuple[int, int]:
    return o.partition, int(dict(o.headers)[SOURCE_OFFSET])


def _write_events(url: str, events: list[tuple[bytes, int, int]]) -> dict:
    """The fact tables ``events`` (value, partition, offset) give written directly, one batch."""
    batch = Batch()
    for value, partition, offset in events:
        batch.add_adt(parse_adt(value), partition, offset, value)
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        write_batch(cur, batch)
    conn.close()
    return dump_tables(url, FACTS)


def _scratch_facts(events: list[tuple[bytes, int, int]]) -> dict:
    with LocalPostgres().scratch_database(migrate=True) as url:
        return _write_events(url, events)


def _rows(url: str, query: str, *args) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    conn.close()
    return rows


def test_sink_stores_exactly_the_accepted_events_and_every_dead_letter(kafka_ns, sink_db) -> None:
    t = Topics(kafka_ns)
    assert t.adt not in default_topics() and t.adt_accepted in default_topics()
    assert SOURCE_OFFSET_HEADER == SOURCE_OFFSET  # the sink's name for the stream's header
    msgs = adt_input()
    outputs = run_stream(t, msgs)
    accepted = [o for o in outputs if o.topic == ACCEPTED]
    letters = [DeadLetter.model_validate_json(o.value) for o in outputs if o.topic == DLQ]
    # the input is what it claims: the stream dead-letters the injected messages, and only those
    assert {(ltr.source_partition, ltr.source_offset) for ltr in letters} == \
        {(m.partition, m.offset) for m in msgs if m.bad}
    assert len(accepted) == len(msgs) - len(letters)
    # a contract-invalid message on the accepted topic is counted, never stored
    producer = make_producer()
    producer.send(t.adt_accepted, key=b"X", value=b"not json", partition=0)
    producer.send(t.adt_accepted, key=b"Y", value=accepted[0].value, partition=0,
                  headers=[(SOURCE_OFFSET, b"not digits")])
    producer.flush()
    producer.close()

    stats = run_sink(once=True, handle_signals=False)

    assert dict(stats.invalid) == {t.adt_accepted: 2} and stats.rejected == 0
    assert stats.messages == len(accepted) + len(letters) + 2  # nothing of hospital.adt
    accepted_ids = [str(parse_adt(o.value).event_id) for o in accepted]
    stored = _rows(sink_db, "SELECT event_id::text, source_partition, source_offset FROM adt_events")
    assert len(stored) == len(accepted) == len(set(accepted_ids))
    assert {e for e, _, _ in stored} == set(accepted_ids)
    assert {(p, o) for _, p, o in stored} == {_accepted_coords(o) for o in accepted}  # hospital.adt's
    assert _rows(sink_db, "SELECT count(*) FROM dead_letters")[0][0] == len(letters)
    assert _rows(sink_db, "SELECT count(*) FROM dead_letters WHERE source_topic = %s", t.adt)[0][0] == len(letters)

    # nothing references a dead-lettered event
    assert _rows(sink_db, "SELECT count(*) FROM dead_letters d JOIN adt_events a ON "
                          "(a.source_partition, a.source_offset) = (d.source_partition, d.source_offset)")[0][0] == 0
    for table in ("patients", "encounters", "charges"):
        assert not _rows(sink_db, f"SELECT 1 FROM {table} WHERE patient_id IN ('PX-ORPHAN', 'PX-FUTURE')")
    for table in ("encounters", "diagnoses", "procedures", "charges"):
        assert not _rows(sink_db, f"SELECT 1 FROM {table} WHERE encounter_id IN ('EX-ORPHAN', 'EX-FUTURE')")
    last = max(parse_adt(o.value).occurred_at for o in accepted)
    latest = _rows(sink_db, "SELECT (SELECT max(last_event_at) FROM encounters), (SELECT max(as_of) FROM patients)")
    assert max(latest[0]) <= last
    # ... and the fact tables are those of the accepted events alone, which the bad ones would change
    expected = _scratch_facts([(o.value, *_accepted_coords(o)) for o in accepted])
    assert dump_tables(sink_db, FACTS) == expected
    naive = _scratch_facts([(m.value, m.partition, m.offset) for m in msgs if m.key != b"PX-BAD"])
    assert {f for f in FACTS if naive[f] != expected[f]} >= {"adt_events", "encounters", "patients",
                                                             "diagnoses", "procedures", "charges"}

    # a restart re-reads everything: nothing changes
    reset_group(default_group(), [t.adt_accepted, t.dlq])
    again = run_sink(once=True, topics=[t.adt_accepted, t.dlq], handle_signals=False)
    assert again.messages == stats.messages and again.rejected == 0
    assert dump_tables(sink_db, FACTS) == expected


def test_a_dead_letter_naming_a_stored_event_deletes_nothing(sink_db) -> None:
    """Dead letters are records of their own: one that names the coordinates of a stored event (a
    replayed range, an old worker's letter) leaves the facts as they are; the sink role could not
    delete them anyway (V009)."""
    data = generate(patients=12, days=30, seed=17)
    url = role_url(sink_db, "wardstream_sink", settings().sink_password)
    events = [(dump(ev), 0, n) for n, (_, ev) in enumerate(data.adt)]
    before = _write_events(url, events)
    value, partition, offset = events[0]
    letter = DeadLetter(reason="duplicate event_id", source_topic=Topics().adt, source_partition=partition,
                        source_offset=offset, raw=value.decode(),
                        failed_at=datetime(2025, 1, 1, tzinfo=timezone.utc))
    batch = Batch()
    batch.add_dead_letter(letter, 0, 0)
    add_accepted(batch, events[1][0], 0, 99, [(SOURCE_OFFSET, b"1")])  # re-read in the same batch
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        write_batch(cur, batch)
    conn.close()
    assert dump_tables(sink_db, FACTS) == before
    assert _rows(sink_db, "SELECT source_partition, source_offset FROM dead_letters") == [(partition, offset)]
