"""A11 / A12 / A13 (and A06 / A07, which act as an admission and as its cancellation) in the
sink's ADT facts and views, against the real PostgreSQL (and, in the last two tests, through the
real broker and the stream worker): after the cancellations, the views give what the same feed
without the cancelled events and their cancellations gives (an A06 as an A01 at the change),
whatever the batching (a message twice, a batch replayed after a crash, a cancellation in the
same batch as its event), the ADT fact tables are only updated (the sink writes as
``wardstream_sink``, which has no DELETE on them), and ``kpi_daily`` equals the stream's 1d
windows, also over a simulated HL7 feed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest

from consumers.migrate import migrate
from consumers.rows import Batch
from consumers.sink import run_sink
from consumers.tables import write_batch
from contracts.events import KPI_NAMES, Topics, UpdateEvent, dump
from faults import new_namespace
from producers.hl7_feed import hl7_messages
from producers.mllp.mapping import MapContext, map_adt
from producers.mllp.message import parse, read_header
from producers.simulator import SimConfig, Simulation
from stream.domain.examples import admission, discharge, event_id, transfer, ts
from stream.runner import StreamWorker
from test_sink_support import role_url, sink_db  # noqa: F401  (fixture)
from test_stream_class_changes import a06, a07, registration
from test_stream_withdrawals import cancel
from wardstream.config import scoped_env, settings
from wardstream.kafka_io import ensure_topics, make_producer
from wardstream.stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e

DAY = "2025-01-0{}T{:02d}:00:00+00:00"


def _at(day: int, hour: int) -> str:
    return DAY.format(day, hour)


def _feed() -> tuple[list, list]:
    """(the feed with cancellations, the same feed without the cancelled events and their
    cancellations), in order. The discharges leave from where the stay is, so a cancelled one
    moved nothing (the stream reopens the stay there)."""
    a1 = admission("P1", "E1", _at(1, 8))
    d1 = discharge("P1", "E1", _at(1, 8), _at(4, 8), total_cost=5000.0, procedure_codes=["99223", "93000"],
                   diagnosis_codes=["I50.9", "E11.9", "N18.4"])
    c13 = cancel("discharge", "E1", _at(4, 10))
    d1b = discharge("P1", "E1", _at(1, 8), _at(6, 8), total_cost=7000.0, seed="E1 again",
                    diagnosis_codes=["I50.9"], procedure_codes=["99223"])
    a2 = admission("P2", "E2", _at(1, 9))
    t2 = transfer("P2", "E2", _at(2, 8), department="Cardiology", provider="D2")
    c12 = cancel("transfer", "E2", _at(2, 9), patient="P2")
    d2 = discharge("P2", "E2", _at(1, 9), _at(5, 9))
    a3 = admission("P3", "E3", _at(2, 10), diagnosis_codes=["E11.9"])
    c11 = cancel("admission", "E3", _at(2, 13), patient="P3")
    a5 = admission("P5", "E5", _at(2, 11), admission_type="urgent")
    c11b = cancel("admission", "E5", _at(2, 12), patient="P5")
    a5b = admission("P5", "E5", _at(3, 8), admission_type="elective", seed="E5 again")
    d5 = discharge("P5", "E5", _at(3, 8), _at(5, 8))
    a4 = admission("P4", "E4", _at(1, 10))
    t4 = transfer("P4", "E4", _at(2, 10), department="Cardiology", provider="D2")
    d4 = discharge("P4", "E4", _at(1, 10), _at(3, 10), department="Cardiology", provider="D2")
    # class changes: an ED visit made an inpatient stay (A06, as an A01 at the change), and a
    # stay made an observation visit (A07: as if it never was, like an A11)
    r6 = registration("P6", "E6", _at(2, 7))
    a6 = admission("P6", "E6", _at(2, 10), admit_source="ed", diagnosis_codes=["I50.9", "E11.9"])
    d6 = discharge("P6", "E6", _at(2, 10), _at(5, 10))
    a7 = admission("P7", "E7", _at(3, 9), admission_type="urgent")
    t7 = transfer("P7", "E7", _at(3, 12), department="Cardiology", provider="D2")
    c07 = a07("E7", _at(3, 20), patient="P7")
    a9 = admission("P9", "E9", _at(7, 8))  # the last event of both feeds (horizons alike)
    with_ = [a1, a2, a4, a5, a3, t2, r6, c12, a06(a6), t4, c11b, c11, a7, t7, c07, a5b, d4, d1, c13, d2, d5,
             d6, d1b, a9]
    gone = {e.event_id for e in (d1, c13, t2, c12, a3, c11, a5, c11b, a7, t7, c07)}
    return with_, [a6 if e.event_id == a6.event_id else e for e in with_ if e.event_id not in gone]


VIEWS = {  # what must be the same with and without the cancelled events (ordered, comparable)
    "v_discharges": "SELECT * FROM v_discharges ORDER BY encounter_id",
    "v_admissions": "SELECT * FROM v_admissions ORDER BY encounter_id",
    "v_bed_segments": "SELECT * FROM v_bed_segments ORDER BY encounter_id, from_ts",
    "v_census_daily": "SELECT * FROM v_census_daily ORDER BY 1, 3, 4",
    "v_provider_utilization_daily": "SELECT * FROM v_provider_utilization_daily ORDER BY 1, 3, 4",
    "kpi_daily": "SELECT * FROM kpi_daily ORDER BY 1, 3, 4, 5, 6",
    "v_kpi_summary": "SELECT * FROM v_kpi_summary ORDER BY 1",
    "v_department_outcomes": "SELECT * FROM v_department_outcomes ORDER BY 1, 2, 3",
    "v_revenue_per_patient": "SELECT * FROM v_revenue_per_patient ORDER BY 1, 2, 3, 4",
    "v_diabetes_readmission_60d": "SELECT * FROM v_diabetes_readmission_60d ORDER BY 1",
    "live charges": "SELECT encounter_id, amount, charged_at FROM charges WHERE cancelled_by IS NULL ORDER BY 1",
    "live diagnoses": "SELECT encounter_id, coded_at, position, icd10_code FROM diagnoses "
                      "WHERE cancelled_by IS NULL ORDER BY 1, 2, 3",
    "live procedures": "SELECT encounter_id, position, cpt_code FROM procedures WHERE cancelled_by IS NULL "
                       "ORDER BY 1, 2",
}
FACTS = {  # the stored rows and marks (must not depend on the batching)
    "adt_events": "SELECT event_id, cancelled_by, cancelled_at, stay_cancelled_by FROM adt_events ORDER BY 1",
    "encounters": "SELECT * FROM encounters ORDER BY 1",
    "charges": "SELECT * FROM charges ORDER BY 1",
    "diagnoses": "SELECT * FROM diagnoses ORDER BY 1, 2, 3",
    "procedures": "SELECT * FROM procedures ORDER BY 1, 2",
}
ADT_FACTS = ("adt_events", "encounters", "diagnoses", "procedures", "charges", "patients", "providers",
             "departments", "facilities")


def _read(url: str, queries: dict[str, str]) -> dict[str, list[tuple]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            out = {}
            for name, sql in queries.items():
                cur.execute(sql)
                cols = [c.name for c in cur.description]
                out[name] = [tuple(v for c, v in zip(cols, row) if c != "updated_at") for row in cur.fetchall()]
            return out
    finally:
        conn.close()


def _write(url: str, batches: list[list[tuple[int, object]]]) -> None:
    """Write (offset, event) batches as the sink does, each in one transaction."""
    conn = psycopg2.connect(url)
    try:
        for messages in batches:
            batch = Batch()
            for offset, ev in messages:
                batch.add_adt(ev, 0, offset)
            with conn.cursor() as cur:
                write_batch(cur, batch)
            conn.commit()
    finally:
        conn.close()


def _reset(owner_url: str) -> None:
    conn = psycopg2.connect(owner_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {', '.join(ADT_FACTS)} CASCADE")
        conn.commit()
    finally:
        conn.close()


def _batchings(messages: list[tuple[int, object]]) -> Iterator[tuple[str, list[list]]]:
    """One batch; a message per batch; each message delivered twice; all, then a crash replay
    of the suffix from the first cancelled discharge on, in two batches."""
    yield "one batch", [messages]
    yield "a message per batch", [[m] for m in messages]
    yield "each message twice", [[m] for m in messages for _ in range(2)]
    k = next(i for i, (_, ev) in enumerate(messages) if ev.event_type == "discharge" and ev.encounter_id == "E1")
    yield "replayed suffix", [messages, messages[k:k + 2], messages[k + 2:]]


def test_the_views_after_cancellations_are_those_of_the_feed_without_them_whatever_the_batching(sink_db) -> None:
    sink = role_url(sink_db, "wardstream_sink", settings().sink_password)  # no DELETE on the facts
    with_, without = _feed()
    _write(sink, [list(enumerate(without))])
    want = _read(sink_db, VIEWS)
    assert [r[0] for r in want["v_discharges"]] == ["E1", "E2", "E4", "E5", "E6"]
    facts = None
    for name, batches in _batchings(list(enumerate(with_))):
        _reset(sink_db)
        _write(sink, batches)
        assert _read(sink_db, VIEWS) == want, name
        got = _read(sink_db, FACTS)
        assert facts is None or got == facts, name
        facts = got
    marks = {r[0] for r in facts["adt_events"] if r[1] or r[3]}
    assert len(marks) == 6  # d1, t2, a3, a5, a7, t7 (the A11s and the A07 withdraw their stays); d1b, a5b live
    encounters = {r[0]: r for r in facts["encounters"]}
    assert encounters["E3"][-2] is not None and encounters["E5"][-2] is None  # cancelled_by
    assert encounters["E7"][-2] is not None and encounters["E6"][-2] is None


def test_a_cancellation_before_the_sink_saw_its_event_waits_for_it(sink_db) -> None:
    """A replay that starts between an event and its cancellation (offsets committed in
    between) resolves the same: the resolution reads the stored events, not the batch."""
    sink = role_url(sink_db, "wardstream_sink", settings().sink_password)
    with_, without = _feed()
    _write(sink, [list(enumerate(without))])
    want = _read(sink_db, VIEWS)
    _reset(sink_db)
    messages = list(enumerate(with_))
    k = next(i for i, (_, ev) in enumerate(messages) if ev.event_type == "discharge" and ev.encounter_id == "E1")
    _write(sink, [messages[:k + 1], messages[k + 1:]])  # d1 in the first batch, its A13 in the second
    _write(sink, [messages[k:k + 1]])  # d1 delivered again after its cancellation
    assert _read(sink_db, VIEWS) == want


# every 1d KPI the views recompute beside the stream's window of the same day (kpi_windows, from
# the partials the stream sent again after each withdrawal): the two sides agree on the cancellations
KPI_DAILY_VS_STREAM = f"""
SELECT d.kpi, d.dimension, d.dimension_id, d.day, d.value, w.value
FROM kpi_daily d
JOIN kpi_windows w ON w.kpi = d.kpi AND w.dimension = d.dimension AND w.dimension_id = d.dimension_id
                  AND w."window" = '1d' AND w.window_start = d.day
WHERE d.kpi IN ({", ".join(f"'{k}'" for k in KPI_NAMES)})
ORDER BY 1, 2, 3, 4"""


def _close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9))


def test_an_a08_between_a_transfer_and_its_a12_is_in_bed_where_the_stream_has_it(sink_db) -> None:
    """The A08 names the transfer's department (it moved only the attending): after the A12 its
    segment is in the department before the transfer, as the stream's census has it."""
    sink = role_url(sink_db, "wardstream_sink", settings().sink_password)
    adm = admission("P1", "E1", _at(1, 8))
    moved = transfer("P1", "E1", _at(2, 8))  # Cardiology, D2
    upd = UpdateEvent(event_id=event_id("U3"), hl7_trigger="A08", occurred_at=ts(_at(3, 8)), facility_id="F01",
                      patient_id="P1", encounter_id="E1", department="Cardiology", attending_provider_id="D3")
    _write(sink, [list(enumerate([adm, moved, upd, cancel("transfer", "E1", _at(3, 10))]))])
    got = _read(sink_db, {"segments": "SELECT department, attending_provider_id, from_ts, to_ts "
                                      "FROM v_bed_segments ORDER BY from_ts",
                          "encounter": "SELECT department, attending_provider_id FROM encounters"})
    assert got["segments"] == [("Internal Medicine", "D1", ts(_at(1, 8)), ts(_at(3, 8))),
                               ("Internal Medicine", "D3", ts(_at(3, 8)), None)]
    assert got["encounter"] == [("Internal Medicine", "D3")]


@contextmanager
def _second_db() -> Iterator[str]:
    with LocalPostgres().scratch_database() as url:
        migrate(url)
        yield url


def stream_events(events: list, namespace: str, state_dir, **env: str) -> None:
    """The events on hospital.adt of ``namespace``, then a stream worker (``env`` added to its
    environment) until caught up."""
    state_dir.mkdir(parents=True)
    with scoped_env(WARDSTREAM_NAMESPACE=namespace, WARDSTREAM_STATE_DIR=str(state_dir)):
        topics = Topics(namespace)
        ensure_topics()
        producer = make_producer()
        for ev in events:
            producer.send(topics.adt, key=ev.patient_id.encode(), value=dump(ev))
        producer.flush()
        producer.close()
        with StreamWorker(env=env, log_path=state_dir / "worker.log") as w:
            w.wait_caught_up(timeout=600)


def _pipeline(events: list, namespace: str, db_url: str, state_dir) -> None:
    """The events through a stream worker (:func:`stream_events`), then the sink."""
    stream_events(events, namespace, state_dir, WARDSTREAM_ALERT_SHARE="1.0")
    run_sink(until_idle=3, handle_signals=False, namespace=namespace,
             db_url=role_url(db_url, "wardstream_sink", settings().sink_password))


def test_through_the_stream_the_cancelled_feed_gives_the_views_of_the_feed_without(
        kafka_ns, sink_db, tmp_path) -> None:
    with_, without = _feed()
    _pipeline(with_, kafka_ns, sink_db, tmp_path / "with")
    got = _read(sink_db, {**VIEWS, "dead letters": "SELECT reason FROM dead_letters",
                          "cancellations": "SELECT count(*) FROM adt_events WHERE event_type = 'cancellation'",
                          "kpi_daily vs stream": KPI_DAILY_VS_STREAM})
    assert got.pop("dead letters") == [] and got.pop("cancellations") == [(5,)]  # each forwarded, applied
    compared = got.pop("kpi_daily vs stream")
    assert len(compared) > 50 and [r for r in compared if not _close(r[-2], r[-1])] == []
    with _second_db() as other:
        _pipeline(without, new_namespace("t"), other, tmp_path / "without")
        want = _read(other, VIEWS)
    assert [r[0] for r in want["v_discharges"]] == ["E1", "E2", "E4", "E5", "E6"]
    assert got == want


def _hl7_month(days: int = 40) -> list:
    """A simulated HL7 feed (A08 updates, A11 / A12 / A13 cancellations, A40 merges) mapped to
    contract v1.1 events as ``wardstream mllp`` maps them."""
    ctx = MapContext()
    return [map_adt(parse(m.text), read_header(m.text), ctx)
            for m in hl7_messages(Simulation(SimConfig(seed=16, beds=150, days=days)))]


def test_a_simulated_hl7_feed_kpi_daily_equals_the_streams_windows(kafka_ns, sink_db, tmp_path) -> None:
    """Over a realistic feed, with its ~1.5% cancellations applied by the stream and by the sink,
    the views recompute the stream's 1d KPIs, and every discharge the views count has its score."""
    events = _hl7_month()
    kinds = {e.cancelled_event_type for e in events if e.event_type == "cancellation"}
    assert kinds == {"admission", "transfer", "discharge"}
    _pipeline(events, kafka_ns, sink_db, tmp_path / "hl7")
    got = _read(sink_db, {
        "compared": KPI_DAILY_VS_STREAM,
        "applied": "SELECT count(*) FILTER (WHERE cancelled_by IS NOT NULL) FROM adt_events",
        "unscored": "SELECT count(*) FROM v_discharges WHERE score IS NULL",
        "scores": "SELECT (SELECT count(*) FROM v_discharges), (SELECT count(*) FROM discharge_scores)"})
    assert got["applied"][0][0] > 10 and got["unscored"] == [(0,)]
    assert got["scores"][0][0] == got["scores"][0][1]
    off = [r for r in got["compared"] if not _close(r[-2], r[-1])]
    assert len(got["compared"]) > 1000 and off == []
