"""Sink throughput into the local PostgreSQL vs a plain COPY of the same rows (same run).

Three figures on the same data set (consumers.fake: ADT events with every output topic):

* ``sink``: ``run_sink(once=True)`` end to end — Kafka consume, contract validation, batched
  ``INSERT ... ON CONFLICT`` upserts, offset commits — into a fresh migrated database;
* ``upsert``: the same final rows written by the sink's upsert statements in one transaction,
  no Kafka (the database side of the sink alone);
* ``copy``: the same final rows loaded with ``COPY ... FROM STDIN`` (CSV built in Python) into a
  fresh migrated database: the floor for getting those rows into PostgreSQL.

rows/s count the final table rows (``count(*)`` summed over the sink's tables). Target: sink
>= 0.5x COPY.

And the cost of one *small* batch, as a live stream gives the sink (a few to a few hundred
messages per poll): PostgreSQL CPU (its backend process) and wall time per batch for each write
method of :func:`consumers.tables.write_batch` (``copy``, ``values``, ``auto``), same messages.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from datetime import datetime

import psycopg2

from consumers.fake import generate, produce
from consumers.rows import Batch
from consumers.state import table_counts
from consumers.tables import TABLES, write_batch
from wardstream.stack.postgres import LocalPostgres


def _fresh_db():
    return LocalPostgres().scratch_database("wardstream_bench_", migrate=True)


def _csv_value(v):
    if v is None:
        return None
    if isinstance(v, list):
        return "{" + ",".join('"' + str(x).replace("\\", "\\\\").replace('"', '\\"') + '"' for x in v) + "}"
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _copy(url: str, batch: Batch) -> None:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        for t in TABLES:
            rows = batch.rows(t.name)
            if not rows:
                continue
            buf = io.StringIO()
            w = csv.writer(buf)
            for r in rows:
                w.writerow([_csv_value(r[c]) for c in t.columns])
            buf.seek(0)
            cols = ", ".join(f'"{c}"' for c in t.columns)
            cur.copy_expert(f"COPY {t.name} ({cols}) FROM STDIN WITH (FORMAT csv)", buf)
    conn.close()


def _read_back(namespace: str) -> tuple[Batch, list]:
    """The messages as Kafka stored them (partition, offset), in one batch, and the valid records."""
    from consumers.sink import SinkStats, _adders, _decode, default_topics
    from wardstream.kafka_io import make_consumer

    consumer = make_consumer(*default_topics(namespace), group_id=None, consumer_timeout_ms=3000)
    batch = Batch()
    records = _decode(list(consumer), _adders(namespace), SinkStats(), batch)  # skips the few invalid
    consumer.close()
    return batch, records


def small_batches(namespace: str, records: list, sizes: tuple[int, ...] = (5, 20, 200),
                  limit: int = 2000) -> dict[str, float]:
    """PostgreSQL CPU and wall ms per batch of ``size`` messages, per write method (fresh database each)."""
    import psutil

    from consumers.sink import SinkStats, _adders, _decode

    adders = _adders(namespace)
    out: dict[str, float] = {}
    for size in sizes:
        for method in ("copy", "values", "auto"):
            with _fresh_db() as url:
                conn = psycopg2.connect(url)
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    backend = psutil.Process(cur.fetchone()[0])
                cpu0, t0, n = sum(backend.cpu_times()[:2]), time.perf_counter(), 0
                for i in range(0, min(limit, len(records)), size):
                    batch = Batch()
                    _decode(records[i:i + size], adders, SinkStats(), batch)
                    with conn.cursor() as cur:
                        write_batch(cur, batch, method)
                    conn.commit()
                    n += 1
                wall, cpu = time.perf_counter() - t0, sum(backend.cpu_times()[:2]) - cpu0
                conn.close()
            out[f"batch{size}_{method}_postgres_cpu_ms"] = round(cpu / n * 1000, 2)
            out[f"batch{size}_{method}_wall_ms"] = round(wall / n * 1000, 2)
    return out


def run(quick: bool = False) -> dict:
    from consumers.sink import run_sink
    from wardstream.kafka_io import delete_namespace_topics

    patients = 1500 if quick else 12000
    data = generate(patients=patients, days=365, seed=1)
    ns = f"bench{uuid.uuid4().hex[:8]}."
    old_ns, old_sink = os.environ.get("WARDSTREAM_NAMESPACE"), os.environ.get("SINK_DATABASE_URL")
    os.environ["WARDSTREAM_NAMESPACE"] = ns
    try:
        messages = produce(data, ns)
        batch, records = _read_back(ns)
        with _fresh_db() as url:
            os.environ["SINK_DATABASE_URL"] = url
            t0 = time.perf_counter()
            stats = run_sink(once=True, handle_signals=False)
            sink_s = time.perf_counter() - t0
            rows = sum(table_counts(url).values())
        with _fresh_db() as url:
            conn = psycopg2.connect(url)
            t0 = time.perf_counter()
            with conn, conn.cursor() as cur:
                write_batch(cur, batch)
            upsert_s = time.perf_counter() - t0
            conn.close()
            assert sum(table_counts(url).values()) == rows
        with _fresh_db() as url:
            t0 = time.perf_counter()
            _copy(url, batch)
            copy_s = time.perf_counter() - t0
            assert sum(table_counts(url).values()) == rows
        small = small_batches(ns, records)
    finally:
        for k, v in (("WARDSTREAM_NAMESPACE", old_ns), ("SINK_DATABASE_URL", old_sink)):
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        delete_namespace_topics(ns)
    return {
        "messages": messages,
        "rows": rows,
        "sink_batches": stats.batches,
        "sink_s": round(sink_s, 2),
        "sink_rows_per_s": round(rows / sink_s),
        "upsert_rows_per_s": round(rows / upsert_s),
        "copy_rows_per_s": round(rows / copy_s),
        "sink_vs_copy": round(copy_s / sink_s, 2),
        "upsert_vs_copy": round(copy_s / upsert_s, 2),
        **small,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
