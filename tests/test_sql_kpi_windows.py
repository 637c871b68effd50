"""The view ``kpi_windows`` (V008) computes the stream's KPI windows from ``hospital.kpi-partials``.

End to end through the real broker and database: the ADT flow (pure, in-process, over plain
dicts) turns simulated events into day partials, batch by batch as the worker does; they go to
``hospital.kpi-partials`` with the reference data, the sink stores them, and every row of the
view must equal the independent oracle (tests/stream_oracle.py, pandas from the raw events) and
the windows must be exactly those the stream's KPI combiner emits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import orjson
import psycopg2
import pytest

from consumers.sink import run_sink
from flow_inputs import flow_tables, partitioned_messages
from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ACCEPTED, SCORES, AdtFlow
from contracts.events import KpiValue, Topics, dump
from stream.kpi_combiner import KpiCombiner
from stream.kpi_tally import capacity_partial
from stream_oracle import Oracle, close, windows_holding
from test_sink_support import sink_db  # noqa: F401  (fixture)
from wardstream.kafka_io import ensure_topics, make_producer

pytestmark = pytest.mark.e2e

CFG = SimConfig(seed=11, start=date(2025, 1, 1), days=100, beds=64, facilities=2)  # departments span both
BATCH = 250
PARTITIONS = 4

Key = tuple[str, str, str, str, date]  # (kpi, dimension, dimension_id, window, window_start)


@dataclass
class Flowed:
    partials: list[tuple[int, bytes]]  # (partition, bundle), in send order
    events: list[dict]  # applied events with "_partition"
    scores: dict[str, dict]  # encounter_id -> last score


@pytest.fixture(scope="module")
def flowed() -> Flowed:
    """The partials the ADT agent sends for the simulation, batch after batch."""
    messages = partitioned_messages(CFG, PARTITIONS)
    flow = AdtFlow(source_topic="hospital.adt", **flow_tables())
    partials: list[tuple[int, bytes]] = []
    events: list[dict] = []
    scores: dict[str, dict] = {}
    for a in range(0, len(messages), BATCH):
        for p, off, key, raw in messages[a:a + BATCH]:
            for o in flow.process(raw, p, off, key=key, commit=False):
                if o.topic == ACCEPTED:
                    events.append({**orjson.loads(o.value), "_partition": p})
                elif o.topic == SCORES:
                    s = orjson.loads(o.value)
                    scores[s["encounter_id"]] = s
        partials.extend((o.partition, o.value) for o in flow.kpi_partials(PARTITIONS))
        flow.commit()
    return Flowed(partials, events, scores)


def _send(ns: str, records: list[tuple[int, bytes]], reference: bool = False) -> None:
    t = Topics(ns)
    ensure_topics()
    producer = make_producer()
    if reference:
        sim = Simulation(CFG)
        for ref in (*sim.reference.providers, *sim.reference.facilities):
            key = getattr(ref, "provider_id", None) or ref.facility_id
            producer.send(t.reference, key=key.encode(), value=dump(ref))
    for partition, value in records:  # bundles, as the stream routes them (stream/kpi_tally.py)
        producer.send(t.kpi_partials, value=value, partition=partition)
    producer.flush()
    producer.close()


def _view(url: str, where: str = "") -> dict[Key, tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute('SELECT kpi, dimension, dimension_id, "window", window_start, window_end, facility_id, '
                    f"value, numerator, denominator FROM kpi_windows {where}")
        rows = cur.fetchall()
    conn.close()
    out = {(r[0], r[1], r[2], r[3], r[4].date()): r[5:] for r in rows}
    assert len(out) == len(rows), "one row per window and KPI"
    return out


def _stream_windows(f: Flowed) -> dict[Key, KpiValue]:
    """What the stream's KPI combiner ends with (the last message per window)."""
    combiner = KpiCombiner(days={})
    for p in Simulation(CFG).reference.providers:
        combiner.put(capacity_partial(p.provider_id, p.facility_id, p.capacity)[2])
    for _, value in f.partials:
        combiner.put(value)
    out = {}
    for _, raw in combiner.flush():
        v = KpiValue.model_validate_json(raw)
        out[(v.kpi, v.dimension, v.dimension_id, v.window, v.window_start.date())] = v
    return out


def test_kpi_windows_view_equals_the_oracle_and_the_stream(flowed, kafka_ns, sink_db) -> None:
    _send(kafka_ns, flowed.partials, reference=True)
    t = Topics(kafka_ns)
    stats = run_sink(topics=[t.reference, t.kpi_partials], once=True, handle_signals=False)
    assert stats.rejected == 0 and not stats.invalid, stats.as_dict()
    got = _view(sink_db)

    # the windows and KPIs the stream emits, no more, no fewer
    stream = _stream_windows(flowed)
    assert set(got) == set(stream), (sorted(set(got) - set(stream))[:5], sorted(set(stream) - set(got))[:5])
    for k, v in stream.items():
        end, facility = got[k][0], got[k][1]
        assert (end, facility) == (v.window_end, v.facility_id), k

    # completeness: counts and census for every window holding a day with admissions, up to the
    # window holding the dimension's last admission or discharge (a transfer within a department
    # or to the same provider gives that dimension no day)
    dims = (("facility", "facility_id"), ("department", "department"), ("provider", "attending_provider_id"))
    last_day: dict[tuple[str, str], date] = {}
    adm_days = set()
    for e in flowed.events:
        if e["event_type"] == "transfer":
            continue
        day = date.fromisoformat(e["occurred_at"][:10])
        for dim, f in dims:
            last_day[(dim, e[f])] = max(day, last_day.get((dim, e[f]), day))
            if e["event_type"] == "admission":
                adm_days.add((dim, e[f], day))
    needed = {(kpi, dim, did, w, s) for dim, did, day in adm_days for w, s in windows_holding(day)
              if s + timedelta(days=int(w[:-1])) <= last_day[(dim, did)] + timedelta(days=1)
              for kpi in ("admissions", "census")}
    assert needed <= set(got), sorted(needed - set(got))[:5]

    # every value equals the independent oracle
    capacity = {p.provider_id: p.capacity for p in Simulation(CFG).reference.providers}
    want = Oracle(flowed.events, flowed.scores, capacity).expected(got)
    bad = [(k, got[k][2:], w) for k, w in want.items()
           if not all(close(a, b) for a, b in zip(got[k][2:], w))]
    assert not bad, f"{len(bad)} of {len(want)} KPI windows differ, e.g. {bad[:5]}"
    kinds = {(k[0], k[3]) for k in want}
    assert {(kpi, w) for kpi in ("provider_utilization", "readmission_rate", "cost_per_patient", "census")
            for w in ("1d", "7d", "30d")} <= kinds
    assert any(v[2] is not None for k, v in got.items() if k[0] == "provider_utilization")


def test_a_partial_sent_again_replaces_the_stored_one(flowed, kafka_ns, sink_db) -> None:
    """Replace semantics: a record re-sent with another value replaces the row (never adds)."""
    partition, record = next((p, r) for p, bundle in flowed.partials for r in orjson.loads(bundle)
                             if r["dimension"] == "facility")
    admissions = record["micro"]["admissions"]
    _send(kafka_ns, [(partition, orjson.dumps([record]))])
    t = Topics(kafka_ns)
    where = f"WHERE kpi = 'admissions' AND \"window\" = '1d' AND window_start = '{record['day']}'"
    run_sink(topics=[t.kpi_partials], once=True, handle_signals=False)
    assert [v[2] for v in _view(sink_db, where).values()] == [admissions / 1e6]
    changed = orjson.dumps([{**record, "micro": {**record["micro"], "admissions": admissions + 2_000_000}}])
    _send(kafka_ns, [(partition, changed), (partition, changed)])
    run_sink(topics=[t.kpi_partials], once=True, handle_signals=False)
    assert [v[2] for v in _view(sink_db, where).values()] == [admissions / 1e6 + 2]
    with psycopg2.connect(sink_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kpi_partials")
        assert cur.fetchone()[0] == 1
    conn.close()
