"""A cancelled discharge through the real broker and PostgreSQL: worker, sink, notifier and a
real HTTP receiver. Its score, its alert (a retraction delivered once), its KPI contributions and
its model-health counts end withdrawn in Kafka and in PostgreSQL; the other discharge of the day
stays. A discharge of the same encounter after the cancellation is alerted and delivered again."""

from __future__ import annotations

import psycopg2
import pytest

from consumers.notify import run_notifier
from consumers.sink import run_sink
from contracts.events import Topics, dump
from stream.runner import StreamWorker
from stream.health_tally import parse_partial
from stream_oracle import RunOutputs, read_all
from test_sink_support import reset_group, sink_db  # noqa: F401  (fixture)
from test_stream_withdrawals import SICK, cancel
from stream.domain.examples import admission, discharge
from wardstream.config import scoped_env
from wardstream.kafka_io import ensure_topics, make_producer
from webhook import Webhook

pytestmark = pytest.mark.e2e

ADMIT, DISCHARGE, LATER = "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00", "2025-01-04T10:00:00+00:00"


def _events() -> list:
    """P1's flagged discharge, cancelled two hours later; P2 discharged the same day."""
    return [admission("P1", "E1", ADMIT, diagnosis_codes=SICK),
            admission("P2", "E2", ADMIT, seed="p2"),
            discharge("P1", "E1", ADMIT, DISCHARGE, diagnosis_codes=SICK),
            discharge("P2", "E2", ADMIT, "2025-01-04T09:00:00+00:00", seed="d2"),
            cancel("discharge", "E1", LATER)]


def _query(url: str, sql: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return rows


def _stream(kafka_ns: str, events: list, tmp_path) -> None:
    """``events`` on the namespace's hospital.adt, through one worker (every flagged discharge
    alerted: alert share 1.0)."""
    ensure_topics()
    producer = make_producer()
    for ev in events:
        producer.send(Topics(kafka_ns).adt, key=ev.patient_id.encode(), value=dump(ev))
    producer.flush()
    producer.close()
    with scoped_env(WARDSTREAM_STATE_DIR=str(tmp_path / "state")):
        with StreamWorker(env={"WARDSTREAM_ALERT_SHARE": "1.0"}, log_path=tmp_path / "worker.log") as w:
            w.wait_caught_up(timeout=600)


def _notify_twice(kafka_ns: str) -> list[dict]:
    """The notifier over hospital.alerts, then again from offset 0 (a replay): the deliveries."""
    with Webhook() as hook:
        run_notifier(url=hook.url, once=True, backoff_initial=0.01, backoff_max=0.05, handle_signals=False)
        reset_group(f"{kafka_ns}wardstream-notifier", [Topics(kafka_ns).alerts])
        run_notifier(url=hook.url, once=True, backoff_initial=0.01, backoff_max=0.05, handle_signals=False)
    return hook.delivered


def test_a_cancelled_discharge_is_withdrawn_in_kafka_and_postgresql(kafka_ns, sink_db, tmp_path) -> None:
    _stream(kafka_ns, _events(), tmp_path)

    # Kafka: the last message per key is the state
    final = RunOutputs.read(kafka_ns).final()
    assert final["scores"]["E1"]["withdrawn"] is True and "withdrawn" not in final["scores"]["E2"]
    assert final["alerts"]["E1"]["withdrawn"] is True
    assert not final["labels"] and not RunOutputs.read(kafka_ns).dlq
    # the day's model-health records (one per ADT partition, the last one each; what the monitor's
    # drift and equity checks read) count E2 only
    health = {(h["partition"], h["facility_id"], h["day"]): h
              for h in map(parse_partial, (m.value for m in read_all(Topics(kafka_ns).health_partials)))}
    day = [h for (_, f, d), h in health.items() if (f, d) == ("F01", "2025-01-04")]
    assert len(day) == 2 and (sum(h["n"] for h in day), sum(sum(h["hist"]["score"]) for h in day)) == (1, 1)

    run_sink(until_idle=3, handle_signals=False)
    assert _query(sink_db, "SELECT encounter_id FROM discharge_scores") == [("E2",)]
    assert ("alert-E1",) not in _query(sink_db, "SELECT alert_id FROM alerts")
    assert sorted(_query(sink_db, "SELECT output, key FROM withdrawn_outputs")) == [
        ("alerts", "alert-E1"), ("discharge_scores", "E1")]
    kpi = {r[0]: r[1] for r in _query(sink_db, "SELECT kpi, value FROM kpi_windows WHERE dimension = 'facility' "
                                               "AND dimension_id = 'F01' AND \"window\" = '1d' "
                                               "AND window_start = '2025-01-04'")}
    assert kpi["discharges"] == 1 and kpi["census"] == 1  # P1 is in hospital again

    delivered = _notify_twice(kafka_ns)
    keys = [d["key"] for d in delivered]
    assert sorted(keys) == sorted(["alert-E1", "alert-E1:withdrawn"] + [
        f"alert-{e}" for e in ("E2",) if "E2" in final["alerts"]])  # each once, over two runs
    retraction = next(d["body"] for d in delivered if d["key"] == "alert-E1:withdrawn")
    assert retraction["withdrawn"] is True and "E1" in retraction["text"]
    assert _query(sink_db, "SELECT alert_id, status FROM alert_retractions") == [("alert-E1", "delivered")]


def test_a_discharge_after_a_cancelled_one_is_alerted_and_delivered_again(kafka_ns, sink_db, tmp_path) -> None:
    """A13 then a new A03 of the same encounter: the new discharge's alert (same alert_id) is
    delivered after the retraction, each once over a replay, under its own idempotency key."""
    again = "2025-01-05T08:00:00+00:00"
    _stream(kafka_ns, _events() + [discharge("P1", "E1", ADMIT, again, diagnosis_codes=SICK, seed="D2")], tmp_path)
    outputs = RunOutputs.read(kafka_ns)
    assert not outputs.dlq
    final = outputs.final()
    assert "withdrawn" not in final["alerts"]["E1"] and final["alerts"]["E1"]["discharged_at"].startswith("2025-01-05")

    run_sink(until_idle=3, handle_signals=False)
    delivered = _notify_twice(kafka_ns)
    keys = [d["key"] for d in delivered if d["key"].startswith("alert-E1")]
    assert keys == ["alert-E1", "alert-E1:withdrawn", "alert-E1@2025-01-05T08:00:00Z"], keys
    assert "withdrawn" not in delivered[[d["key"] for d in delivered].index(keys[-1])]["body"]
    assert sorted(_query(sink_db, "SELECT alert_id, discharged_at::text, status FROM alert_deliveries "
                                  "WHERE encounter_id = 'E1'")) == [
        ("alert-E1", "2025-01-04 08:00:00+00", "delivered"), ("alert-E1", "2025-01-05 08:00:00+00", "delivered")]
