"""Model health end to end: simulator (with a drift scenario) -> hospital.adt -> `wardstream worker`
(ADT flow -> hospital.health-partials -> monitor_health -> hospital.model-health) -> sink ->
PostgreSQL's ``model_health`` table, against the same checks computed by the pure flow and monitor
over the same input (stream/health_tally.py, stream/health_monitor.py)."""

from __future__ import annotations

import time
from datetime import date, timedelta

import orjson
import psycopg2
import pytest

from consumers.sink import run_sink
from producers.simulator import SimConfig, Simulation
from stream.adt_flow import MODEL_HEALTH, AdtFlow
from contracts.events import ModelHealth, Topics
from stream.domain import health
from stream.health_monitor import HealthMonitor
from stream.runner import StreamWorker, committed_offsets, end_offsets, group_id
from test_sink_support import sink_db  # noqa: F401  (fixture)
from wardstream.config import scoped_env, settings
from wardstream.kafka_io import ensure_topics, key_partition, make_producer

pytestmark = pytest.mark.e2e

START = date(2025, 1, 1)
# PSI windows from day 146 (90 of warm-up + 2 x 28); equity windows from ~day 181 (90 of warm-up
# + 90), each evaluated once its discharges' labels are all known (30 days later)
DAYS = 220
SHIFT = START + timedelta(days=139)


def _expected(events: list[dict], partitions: int) -> dict[str, ModelHealth]:
    """The last message per check_id of the pure flow and monitor, on the worker's partitions."""
    flow = AdtFlow(source_topic="hospital.adt", patients={}, partitions={}, due={}, models={},
                   health={})
    monitor = HealthMonitor({})
    offsets = [0] * partitions
    last: dict[str, ModelHealth] = {}
    for i in range(0, len(events), 500):
        for e in events[i:i + 500]:
            p = key_partition(e["patient_id"], partitions)
            for o in flow.process(orjson.dumps(e), p, offsets[p], commit=False):
                if o.topic == MODEL_HEALTH:
                    m = ModelHealth.model_validate_json(o.value)
                    last[m.check_id] = m
            offsets[p] += 1
        for o in flow.health_partials():
            monitor.add(o.value)
        flow.commit()
        for m in monitor.evaluate():
            last[m.check_id] = m
    return last


def _wait_consumed(topic: str, group: str, timeout: float) -> None:
    """Until ``group`` has committed every offset of ``topic``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = end_offsets([topic])
        done = committed_offsets(group)
        if ends and all(done.get(tp, 0) >= end for tp, end in ends.items()):
            return
        time.sleep(1)
    raise TimeoutError(f"{topic} not consumed by {group} within {timeout} s")


def test_model_health_reaches_postgresql(kafka_ns, sink_db, tmp_path) -> None:
    sim = Simulation(SimConfig(seed=42, start=START, days=DAYS, shift_at=SHIFT))
    events = [e.event for e in sim.stream()]
    topics = Topics(kafka_ns)
    ensure_topics()
    producer = make_producer()
    for e in events:
        producer.send(topics.adt, key=e["patient_id"].encode(), value=orjson.dumps(e))
    producer.flush()
    producer.close()

    with scoped_env(WARDSTREAM_STATE_DIR=str(tmp_path / "state")):
        with StreamWorker(log_path=tmp_path / "worker.log") as w:
            w.wait_caught_up(timeout=900)
            _wait_consumed(topics.health_partials, group_id(kafka_ns), timeout=300)
    stats = run_sink(topics=[topics.model_health], until_idle=3, handle_signals=False)
    assert stats.messages > 0

    with psycopg2.connect(sink_db) as conn, conn.cursor() as cur:
        cur.execute('SELECT check_id, "check", level, value, n, window_end, message FROM model_health')
        rows = {r[0]: r[1:] for r in cur.fetchall()}

    expected = _expected(events, settings().adt_partitions)
    assert set(rows) == set(expected)
    for check_id, m in expected.items():
        check, level, value, n, window_end, message = rows[check_id]
        assert (check, level, n, message) == (m.check, m.level, m.n, m.message), check_id
        assert value == pytest.approx(m.value) and window_end == m.window_end
    psi = [r for r in rows.values() if r[0] in ("psi_score", "psi_feature")]
    ends = {r[4].date() for r in psi}
    first = min(date.fromisoformat(e["occurred_at"][:10]) for e in events
                if e["event_type"] == "discharge")
    assert min(ends) == first + timedelta(days=health.WARM_UP_DAYS + 56)  # the warm-up skipped
    assert ends == {min(ends) + timedelta(days=k) for k in range(len(ends))}  # every day's windows
    assert len(ends) >= 10
    assert any(r[1] == "ok" for r in psi)
    warned = sorted(r[4].date() for r in psi if r[1] != "ok")
    assert warned and SHIFT < warned[0] <= SHIFT + timedelta(days=14)
    # the equity checks went through the worker and the sink too (compared with the pure flow above)
    assert {r[0] for r in rows.values()} >= {"equity_recall", "equity_oe"}
