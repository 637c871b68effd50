"""Replay: a simulated year of a 10-hospital system re-processed from offset 0 into PostgreSQL.

1. ``simulate --facilities 10`` for 365 days (30 with ``--quick``) into a source namespace's
   ``hospital.adt`` (~411k events for the year), timed;
2. ``wardstream replay`` into a fresh namespace (``consumers.replay.plan_replay`` +
   ``copy_into_namespace``: same keys, same partitions, byte for byte), timed;
3. in that namespace, against the clock, one ``wardstream worker`` (then two, each with its own
   ``WARDSTREAM_STATE_DIR``, in a second fresh namespace and database) and one ``wardstream sink``
   start together from nothing (fresh groups, empty state, a fresh migrated database) and run
   until everything is in PostgreSQL. Measured WHOLE, nothing extrapolated.

The clock (``replay_<n>w_s``) runs from just before the worker and sink processes are started
(cold start included) to the first poll (every ``POLL_S``) at which both hold:

* the worker is caught up: its group has committed every ``hospital.adt`` offset and, past the
  last data record, every partition of ``hospital.kpi-partials`` (the combiner commits a partial
  once its windows are out) and ``hospital.health-partials`` (:meth:`StreamWorker.progress`), so
  nothing more is coming to the topics the sink reads;
* the sink's group has committed the end offset of every partition of every topic it reads
  (``consumers.sink.default_topics``): the sink commits a batch's offsets only after that
  batch's PostgreSQL transaction committed, so then every row is committed.

A run not done after ``LIMIT_S`` (``QUICK_LIMIT_S`` with ``--quick``) is reported as far as it got,
not raised: ``completed`` 0, ``applied_events`` the ``hospital.adt`` offsets the worker group had
committed by then, ``s`` the limit, ``events_per_s`` = applied events / ``s``; the traffic and
database figures are read as they stand (``completed`` 1 and ``applied_events`` = every event
otherwise). A process that died or nothing moving for 5 minutes still raises.

So the figure is the time to the last committed PostgreSQL row, late by at most one poll interval
plus one poll's look-ups (``poll_s_max``); the polls are every 2 s until the ADT side is done
(their Kafka look-ups take CPU from the run), then every 0.5 s. ``events_per_s`` =
``hospital.adt`` events / that time.

From the same run (after the clock stopped): KPI partial messages per ADT event (messages
produced to ``hospital.kpi-partials``, the sum of its end offsets, over ``hospital.adt`` events:
each message a bundle of a batch's records for one partition; no producer is transactional
under the default ``at_least_once``); ``hospital.kpis`` messages per distinct window (every message read back; distinct
``(kpi, dimension, dimension_id, window, window_start)``; the issue's ceiling is 1.6); the
workers' peak RSS (process tree, sampled every 0.25 s); the CPU each process took over the
clocked span (cores = CPU seconds / wall seconds); the rows in PostgreSQL; and how long one
``SELECT count(*) FROM kpi_windows`` (the view computing every window from the partials) takes.

Alone: ``python -m bench.bench_replay [--quick | --days N] [--workers 1 2] [--unsettled] [--split]``
(``--unsettled``: each worker count again with ``WARDSTREAM_KPI_SETTLE=0``, the KPI flushes that
never settle; ``--split``: each worker as two processes, its ADT side and its KPI side); each
run's figures also go to stderr as soon as they are measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import psycopg2

from bench.bench_e2e import (RESULTS, CpuMeter, Produced, RssSampler, Service, fresh_db, mib, namespace,
                              produce_simulation)
from producers.simulator import SimConfig
from wardstream.config import scoped_env

POLL_S = 0.5  # once every hospital.adt offset is committed
FAR_POLL_S = 2.0  # before (the clock only stops after that)
LIMIT_S, QUICK_LIMIT_S = 3600, 600  # then the run is reported as far as it got
TABLES = ("adt_events", "discharge_scores", "readmissions", "alerts", "kpi_partials", "model_health",
          "dead_letters")


def run(quick: bool = False, workers: tuple[int, ...] = (1, 2),
        brokers: Callable[[], dict[str, int | None]] | None = None, days: int | None = None,
        unsettled: bool = False, split: bool = False) -> dict:
    """The figures of the module doc; ``brokers``: the broker processes to measure the CPU of, by
    name (default: the local broker's JVM); ``days``: another period than 365 (30 if ``quick``);
    ``unsettled``: after each worker count, the same again with ``WARDSTREAM_KPI_SETTLE=0``
    (figures ``replay_<n>w_unsettled_*``: KPI flushes that never settle, stream/README.md);
    ``split``: each worker as two processes, its ADT side and its KPI side (``replay_<n>w_split_*``,
    stream/README.md "Roles")."""
    from consumers.replay import copy_into_namespace, plan_replay

    brokers = brokers or (lambda: {"kafka": kafka_pid()})
    days = days or (30 if quick else 365)
    cfg = SimConfig(seed=42, days=days, facilities=10)
    logs = RESULTS / "logs" / "replay"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {"sim_days": days, "sim_facilities": cfg.facilities, "sim_beds_each": cfg.beds}
    with namespace("brsrc") as src:
        produced = produce_simulation(cfg)
        out.update(events=produced.events, patients=produced.patients,
                   simulate_to_kafka_s=round(produced.seconds, 1),
                   simulate_to_kafka_events_per_s=round(produced.events / produced.seconds))
        runs = [(n, label) for n in workers for label in ("", "unsettled_")[:2 if unsettled else 1]]
        if split:
            runs = [(n, "split_" + label) for n, label in runs]
        for n, label in runs:
            unsettled_env = {"WARDSTREAM_KPI_SETTLE": "0"} if "unsettled" in label else {}
            with namespace(f"brdst{n}w") as dst, scoped_env(**unsettled_env):
                t0 = time.perf_counter()
                copied = copy_into_namespace(plan_replay(src), dst)
                copy_s = time.perf_counter() - t0
                out.setdefault("replay_copy_s", round(copy_s, 1))
                out.setdefault("replay_copy_events_per_s", round(copied.events / copy_s))
                with fresh_db() as url:
                    figures = replay(produced, url, n, logs, brokers(), timeout=LIMIT_S if days > 30 else QUICK_LIMIT_S,
                                     split=split)
                    figures.update(traffic(dst, int(figures["applied_events"])))  # per event applied
                    figures.update(database(url))
            part = {f"replay_{n}w_{label}{k}": v for k, v in figures.items()}
            print(json.dumps(part), file=sys.stderr, flush=True)  # a long run keeps what it measured
            out.update(part)
    return out


def replay(produced: Produced, url: str, n: int, logs: Path, brokers: dict[str, int | None],
           timeout: float, split: bool = False) -> dict[str, object]:
    """``n`` workers + one sink from a cold start until every row is committed (module doc)."""
    from stream.runner import StreamWorker

    state = Path(os.environ["WARDSTREAM_STATE_DIR"])
    for p in [*(logs / f"{n}w-worker{i}.log" for i in range(n)), logs / f"{n}w-sink.log"]:
        p.unlink(missing_ok=True)
    ws = [StreamWorker(env={"WARDSTREAM_STATE_DIR": str(state / f"w{i}")},
                       log_path=logs / f"{n}w-worker{i}.log", loglevel="warning", split=split) for i in range(n)]
    samplers: list[RssSampler] = []
    t0 = time.perf_counter()
    try:
        for w in ws:
            w.start()
            for proc in w.procs:
                samplers.append(RssSampler(proc.pid))
                samplers[-1].start()
        with Service("sink", log=logs / f"{n}w-sink.log") as sink:
            cpu = CpuMeter({**{f"worker{i}": w.proc.pid for i, w in enumerate(ws)},
                            **{f"worker{i}_kpis": w.kpis_proc.pid for i, w in enumerate(ws) if w.kpis_proc},
                            "sink": sink.proc.pid, **brokers})
            seconds, marks = wait_in_postgres(ws, sink, t0, timeout)
            cores = cpu.cores()
    finally:
        for w in ws:
            w.stop()
        for s in samplers:
            s.stop()
    return {
        "s": round(seconds, 1),
        "events_per_s": round(marks["applied_events"] / seconds),
        **{k: round(v, 2) for k, v in marks.items()},
        "worker_peak_rss_mib": ", ".join(str(mib(s.peak)) for s in samplers),
        "cores": ", ".join(f"{k} {v}" for k, v in cores.items()),
    }


def wait_in_postgres(ws: list, sink: Service, t0: float, timeout: float,
                     stall: float = 300) -> tuple[float, dict[str, float]]:
    """Poll until the workers are caught up and the sink committed every offset (module doc).

    Returns the seconds since ``t0`` and marks on the way, also since ``t0``: the first poll that
    found every ``hospital.adt`` offset committed (``adt_done_s``), the worker caught up
    (``worker_done_s``), the slowest poll's own seconds (``poll_s_max``), ``completed`` and
    ``applied_events``. After ``timeout``, returns as far as it got (``completed`` 0); raises
    when a process died or nothing moved for ``stall`` seconds."""
    from consumers.sink import default_group, default_topics
    from stream.runner import committed_offsets, end_offsets

    sink_group, sink_topics = default_group(), default_topics()
    last, moved = None, time.perf_counter()
    marks: dict[str, float] = {"poll_s_max": 0.0}
    while True:
        polled = time.perf_counter()
        p = ws[0].progress()
        sink_committed = committed_offsets(sink_group)
        sink_behind = sum(max(0, end - sink_committed.get(tp, 0))
                          for tp, end in end_offsets(sink_topics).items())
        now = time.perf_counter()
        marks["poll_s_max"] = max(marks["poll_s_max"], now - polled)
        worker_done = p["adt_lag"] == 0 and ws[0].kpis_caught_up(p) and ws[0].health_caught_up(p)
        if p["adt_lag"] == 0:
            marks.setdefault("adt_done_s", now - t0)
        if worker_done:
            marks.setdefault("worker_done_s", now - t0)
        if worker_done and sink_behind == 0:
            marks.update(completed=1, applied_events=p["adt_end"])
            return now - t0, marks
        snapshot = (p["adt_lag"], sink_behind)
        if snapshot != last:
            last, moved = snapshot, now
        if not all(w.alive() for w in ws) or sink.proc.poll() is not None:
            raise RuntimeError(f"a worker or the sink died: {p}, sink behind {sink_behind}")
        if now - t0 > timeout:  # the figure as far as it got
            marks.update(completed=0, applied_events=p["adt_end"] - p["adt_lag"])
            return now - t0, marks
        if now - moved > stall:
            raise TimeoutError(f"not in PostgreSQL after {now - t0:.0f} s: {p}, sink behind {sink_behind}")
        every = POLL_S if p["adt_lag"] == 0 else FAR_POLL_S  # the look-ups take CPU from the run
        time.sleep(max(0.0, every - (time.perf_counter() - polled)))


def kafka_pid() -> int | None:
    """The local broker's JVM (``kafka.Kafka``), for the CPU figures; None if not found."""
    for proc in psutil.process_iter(["cmdline"]):
        if "kafka.Kafka" in (proc.info["cmdline"] or ()):
            return proc.pid
    return None


def traffic(ns: str, events: int) -> dict[str, object]:
    """KPI partials per ADT event and ``hospital.kpis`` messages per distinct window (module doc)."""
    from contracts.events import Topics
    from stream.runner import end_offsets

    t = Topics(ns)
    partials = sum(end_offsets([t.kpi_partials]).values())
    messages, windows = read_windows(t.kpis)
    return {
        "kpi_partials": partials,
        "kpi_partials_per_adt_event": round(partials / events, 2),
        "kpis_messages": messages,
        "kpis_distinct_windows": windows,
        "kpis_messages_per_window": round(messages / max(1, windows), 3),
    }


def read_windows(topic: str) -> tuple[int, int]:
    """(messages, distinct windows) of ``topic``, read from the start to its end."""
    n, seen, loads = 0, set(), orjson.loads
    for _partition, _key, value in read_records(topic):
        v = loads(value)
        seen.add(hash64("|".join(v[k] for k in ("kpi", "dimension", "dimension_id", "window", "window_start"))))
        n += 1
    return n, len(seen)


def read_records(topic: str, timeout: float = 600) -> Iterator[tuple[int, bytes | None, bytes]]:
    """Every committed record of ``topic`` as (partition, key, value), each partition from its
    start to its end as of the read (librdkafka, no group; fast enough for millions)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from wardstream.config import settings

    consumer = Consumer({"bootstrap.servers": settings().kafka.bootstrap_servers, "group.id": "bench-unused",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        left, deadline = set(parts), time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(left)} not read to their end in {timeout:.0f}s")
            for m in consumer.consume(num_messages=10_000, timeout=1.0):
                if m.error() is None:
                    yield m.partition(), m.key(), m.value()
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    left.discard(m.partition())
    finally:
        consumer.close()


def hash64(text: str) -> int:
    """A 64-bit digest (a set of millions of windows in ~50 bytes each; a collision among 10M
    windows has a chance of ~3e-6).

    >>> hash64("census|facility|F01|1d|2025-01-01T00:00:00Z") == hash64("census|facility|F01|1d|2025-01-01")
    False
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def database(url: str) -> dict[str, object]:
    """Rows in the tables the sink writes, and the time of one count over the ``kpi_windows`` view."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            out: dict[str, object] = {}
            for table in TABLES:
                cur.execute(f"SELECT count(*) FROM {table}")  # table names are ours
                out[f"rows_{table}"] = cur.fetchone()[0]
            cur.execute("SET statement_timeout = '300s'")
            t0 = time.perf_counter()
            try:
                cur.execute("SELECT count(*) FROM kpi_windows")
                out["kpi_windows_view_rows"] = cur.fetchone()[0]
                out["kpi_windows_view_count_s"] = round(time.perf_counter() - t0, 1)
            except psycopg2.errors.QueryCanceled:
                out["kpi_windows_view_count_s"] = "> 300"
        return out
    finally:
        conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 simulated days instead of 365")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to run (default: 1 2)")
    parser.add_argument("--days", type=int, help="simulated days (default 365, 30 with --quick)")
    parser.add_argument("--unsettled", action="store_true",
                        help="each worker count again with WARDSTREAM_KPI_SETTLE=0, in the same run")
    parser.add_argument("--split", action="store_true",
                        help="each worker as two processes: --role adt and --role kpis")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, workers=tuple(args.workers), days=args.days,
                         unsettled=args.unsettled, split=args.split), indent=2))
