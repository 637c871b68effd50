"""A PostgreSQL restart in the middle of a sink run loses nothing and duplicates nothing."""

from __future__ import annotations

import threading

import pytest

from consumers.fake import generate, produce
from consumers.rows import Batch
from consumers.sink import run_sink
from consumers.state import dump_tables, table_counts
from consumers.tables import write_batch
from test_sink_support import sink_db  # noqa: F401  (fixture)
from wardstream.stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e


def test_postgres_restart_mid_run_loses_nothing(kafka_ns, sink_db) -> None:
    data = generate(patients=120, days=90, seed=21)
    produce(data, kafka_ns, include_invalid=False)
    pg = LocalPostgres()
    restarted = threading.Event()

    def on_batch(stats) -> None:
        # After a few committed batches, restart the server under the sink's open connection:
        # the next write fails, is retried with backoff after the server is back, nothing is lost.
        if stats.batches == 3 and not restarted.is_set():
            restarted.set()
            pg.restart()

    try:
        stats = run_sink(once=True, max_batch=25, on_batch=on_batch)
    finally:
        if not pg.healthy():  # leave the shared server up whatever happened
            pg.up()
    assert restarted.is_set()
    assert stats.db_retries >= 1
    assert stats.rejected == 0 and not stats.invalid

    # Expected state: the same messages written in one batch into a second fresh database.
    counts = table_counts(sink_db)
    assert counts["adt_events"] == len(data.adt)
    assert counts["discharge_scores"] == len(data.scores)
    assert counts["readmissions"] == len(data.labels)
    assert counts["alerts"] == len(data.alerts)
    reference = _reference_dump(data)
    assert dump_tables(sink_db) == reference


def _reference_dump(data) -> dict:
    """The rows the same messages give when written directly (no Kafka, no fault)."""
    import psycopg2

    with LocalPostgres().scratch_database(migrate=True) as url:
        batch = _batch_as_produced(data)
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            write_batch(cur, batch)
        conn.close()
        return dump_tables(url)


def _batch_as_produced(data) -> Batch:
    """Replays the messages with the partitions/offsets Kafka gave them (read back from the topics)."""
    from consumers.sink import _adders, default_topics
    from wardstream.config import settings
    from wardstream.kafka_io import make_consumer

    consumer = make_consumer(*default_topics(), group_id=None, consumer_timeout_ms=3000)
    adders = _adders(settings().topic_namespace)
    batch = Batch()
    records = sorted(consumer, key=lambda r: (r.topic, r.partition, r.offset))
    consumer.close()
    for r in records:
        adders[r.topic](batch, r.value, r.partition, r.offset, r.headers)
    return batch
