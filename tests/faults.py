"""Test harness for replay and fault drills: run the pipeline on one input, read back final states.

A *run* is: the ADT input of a namespace -> ``wardstream worker`` (a subprocess) -> output topics
-> the PostgreSQL sink into a fresh database. Faust may emit a message twice after a fault
(DESIGN.md pitfalls), so runs are compared by their **final state**: the last value per key of
every output topic, and the sink's tables (which upsert by the same keys). Columns holding the
Kafka coordinates of *output* messages are left out of the comparison (a duplicate shifts them);
the coordinates of ADT messages (``adt_events``, DLQ ``source_*``) are kept: a replay copies them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError
from psycopg2 import sql

from contracts.events import Topics
from wardstream.config import scoped_env, settings
from wardstream.kafka_io import BrokerUnavailable, broker_call, end_offsets_of, make_consumer
from wardstream.stack.postgres import LocalPostgres

log = logging.getLogger(__name__)

# Kafka coordinates of output messages: they differ when a fault makes Faust re-send a message.
OUTPUT_COORDINATES = frozenset({"dlq_partition", "dlq_offset"})
OUTPUT_TABLES_WITH_SOURCE = frozenset({"discharge_scores", "readmissions", "alerts", "kpi_windows"})
VOLATILE = frozenset({"updated_at", "ingested_at", "first_seen_at", "created_at"})


NAMESPACES: set[str] = set()  # made by this test session (its topics are deleted at the end)


def new_namespace(prefix: str = "f") -> str:
    ns = f"{prefix}{uuid.uuid4().hex[:10]}."
    NAMESPACES.add(ns)
    return ns


def worker_env(namespace: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a worker subprocess: its namespace, its own state dir, a quick KPI flush."""
    return {"WARDSTREAM_NAMESPACE": namespace, "WARDSTREAM_STATE_DIR": str(state_dir),
            "KPI_FLUSH_SECONDS": "1", **extra}


# ---------------------------------------------------------------------- reading topics


def read_topic(topic: str) -> list[Any]:
    """Every record of ``topic`` (committed only), per partition in offset order."""
    consumer = make_consumer(group_id=None, s=settings())
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        ends = end_offsets_of(consumer, tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        idle = 0
        while any(consumer.position(tp) < ends[tp] for tp in tps) and idle < 60:
            polled = consumer.poll(timeout_ms=500)
            idle = 0 if polled else idle + 1
            for recs in polled.values():
                out.extend(recs)
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@dataclass
class Outputs:
    """Final state of the output topics (last value per key) and how many messages it took."""

    scores: dict[str, dict]
    labels: dict[str, dict]
    alerts: dict[str, dict]
    kpis: dict[tuple, dict]
    dlq: dict[tuple[int, int], dict]
    messages: dict[str, int]

    def finals(self) -> dict[str, dict]:
        return {"scores": self.scores, "labels": self.labels, "alerts": self.alerts,
                "kpis": self.kpis, "dlq": self.dlq}


def read_outputs(namespace: str) -> Outputs:
    t = Topics(namespace)

    def last(topic: str, key) -> tuple[dict, int]:
        recs = read_topic(topic)
        final: dict = {}
        for r in recs:  # per partition in offset order; a key lives on one partition
            v = orjson.loads(r.value)
            final[key(v)] = v
        return final, len(recs)

    scores, n1 = last(t.discharge_scores, lambda v: v["encounter_id"])
    labels, n2 = last(t.readmission_labels, lambda v: v["encounter_id"])
    alerts, n3 = last(t.alerts, lambda v: v["alert_id"])
    kpis, n4 = last(t.kpis, lambda v: (v["kpi"], v["dimension"], v["dimension_id"], v["window"],
                                       v["window_start"]))
    dlq, n5 = last(t.dlq, lambda v: (v["source_partition"], v["source_offset"]))
    return Outputs(scores, labels, alerts, kpis, dlq,
                   {"scores": n1, "labels": n2, "alerts": n3, "kpis": n4, "dlq": n5})


def diff_finals(expected: Outputs, actual: Outputs, limit: int = 5) -> list[str]:
    """Human-readable differences between two final states (empty = identical)."""
    problems: list[str] = []
    for name, want in expected.finals().items():
        got = actual.finals()[name]
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        changed = [k for k in want if k in got and got[k] != want[k]]
        if missing or extra or changed:
            problems.append(f"{name}: {len(missing)} missing {missing[:limit]}, {len(extra)} extra "
                            f"{extra[:limit]}, {len(changed)} changed "
                            f"{[(k, want[k], got[k]) for k in changed[:2]]}")
    return problems


# ---------------------------------------------------------------------- the database


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new migrated database (URL), dropped afterwards."""
    with scoped_env(SINK_DATABASE_URL=None), LocalPostgres().scratch_database("wardstream_f", migrate=True) as url:
        yield url


def sink_namespace(namespace: str, url: str, **kwargs: Any):
    """Run the real sink over every topic of ``namespace`` into ``url`` until caught up."""
    from consumers.sink import run_sink

    kwargs.setdefault("group", f"{namespace}wardstream-sink-{uuid.uuid4().hex[:6]}")  # from the start
    with scoped_env(WARDSTREAM_NAMESPACE=namespace, DATABASE_URL=url, SINK_DATABASE_URL=None):
        return run_sink(once=True, handle_signals=False, **kwargs)


def comparable_dump(url: str) -> dict[str, list[tuple]]:
    """Every table, sorted, without wall-clock columns and output-message coordinates."""
    from consumers.db import close_quietly, connect
    from consumers.tables import TABLE_NAMES

    conn = connect(url, "wardstream-test")
    out: dict[str, list[tuple]] = {}
    try:
        with conn.cursor() as cur:
            for t in TABLE_NAMES:
                cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                            "AND table_name = %s ORDER BY ordinal_position", (t,))
                skip = VOLATILE | OUTPUT_COORDINATES
                if t in OUTPUT_TABLES_WITH_SOURCE:
                    skip = skip | {"source_partition", "source_offset"}
                cols = [c for (c,) in cur.fetchall() if c not in skip]
                cur.execute(sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols),
                    sql.Identifier(t)))
                out[t] = sorted(cur.fetchall(), key=lambda r: tuple("" if v is None else v for v in r))
    finally:
        close_quietly(conn)
    return out


def diff_dumps(expected: dict[str, list[tuple]], actual: dict[str, list[tuple]], limit: int = 3) -> list[str]:
    problems = []
    for t, rows in expected.items():
        got = actual.get(t, [])
        if rows != got:
            a, b = set(rows), set(got)
            problems.append(f"{t}: {len(rows)} vs {len(got)} rows; only expected {sorted(a - b)[:limit]}; "
                            f"only actual {sorted(b - a)[:limit]}")
    return problems


# ---------------------------------------------------------------------- a whole run


@dataclass
class RunResult:
    namespace: str
    outputs: Outputs
    dump: dict[str, list[tuple]]
    seconds: float
    adt_messages: int


FAULT_CONFIG = dict(days=60, beds=150, seed=7)  # ~2k events: each fault drill stays within minutes
_BASELINE: dict[tuple, RunResult] = {}


def produce_input(namespace: str, **config: Any) -> int:
    """Simulate into ``namespace`` (ADT + reference); returns the number of ADT events."""
    from producers.kafka_sink import simulate_to_kafka
    from producers.simulator import SimConfig

    with scoped_env(WARDSTREAM_NAMESPACE=namespace):
        return simulate_to_kafka(SimConfig(**config), progress=False).events


def replay_copy(source: str, target: str, share: float = 1.0) -> int:
    """``wardstream replay --into-namespace`` of the first ``share`` of each source partition.

    A drill copies part of its input, faults the worker mid-stream, then copies the rest with
    :func:`replay_rest`: the fault is then before the end of the input whatever the worker's speed.
    """
    from consumers.replay import copy_into_namespace

    return copy_into_namespace(_split(source, share)[0], target).events


def replay_rest(source: str, target: str, share: float) -> int:
    """Append what ``replay_copy(source, target, share)`` left out (the rest of each partition)."""
    from consumers.replay import copy_into_namespace

    return copy_into_namespace(_split(source, share)[1], target, with_reference=False, resume=True).events


def _split(source: str, share: float):
    """The whole-topic replay plan of ``source``, cut into (head, rest) at ``share`` of each partition."""
    from dataclasses import replace

    from consumers.replay import plan_replay

    plan = plan_replay(source)
    head, rest = [], []
    for r in plan.ranges:
        k = round(r.events * share)
        if k > 0:
            head.append(replace(r, last=r.first + k - 1, events=k))
        if k < r.events:
            rest.append(replace(r, first=r.first + k, events=r.events - k))
    return replace(plan, ranges=tuple(head)), replace(plan, ranges=tuple(rest))


def finish_run(namespace: str, seconds: float, adt_messages: int) -> RunResult:
    """Read the final outputs of a finished worker and sink them into a scratch database."""
    outputs = read_outputs(namespace)
    with scratch_database() as url:
        stats = sink_namespace(namespace, url)
        assert stats.rejected == 0, stats.as_dict()
        dump = comparable_dump(url)
    return RunResult(namespace, outputs, dump, seconds, adt_messages)


def baseline(tmp_root: Path, **config: Any) -> RunResult:
    """The undisturbed run of ``config`` (memoized for the session: every drill compares with it)."""
    import time

    from stream.runner import StreamWorker

    key = tuple(sorted((config or FAULT_CONFIG).items()))
    if key not in _BASELINE:
        ns = new_namespace("base")
        n = produce_input(ns, **(config or FAULT_CONFIG))
        started = time.monotonic()
        with StreamWorker(env=worker_env(ns, tmp_root / f"state-{ns}"),
                          log_path=tmp_root / f"worker-{ns}log") as w:
            w.wait_caught_up(timeout=400)
        _BASELINE[key] = finish_run(ns, time.monotonic() - started, n)
    return _BASELINE[key]


# ---------------------------------------------------------------------- driving a worker


def group_members(namespace: str) -> int:
    """Members of the worker's consumer group right now (0 when it has none / is rebalancing)."""
    from stream.runner import group_id
    from wardstream.kafka_io import admin_client

    with admin_client() as admin:
        info = broker_call("the worker's group",
                           lambda: admin.describe_groups([group_id(namespace)]))[group_id(namespace)]
        return len(info["members"]) if info["group_state"] == "Stable" else 0


def wait_until(check, timeout: float, what: str, poll: float = 0.3):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_mid_stream(worker, fraction: float, timeout: float = 300) -> dict[str, int]:
    """Block until the worker committed ``fraction`` of hospital.adt; returns its progress then."""
    def far_enough():
        if not worker.alive():
            raise RuntimeError("worker died before the fault")
        try:
            p = worker.progress()
        except (KafkaError, BrokerUnavailable):  # the coordinator may move while the broker restarts
            return None
        done = p["adt_end"] - p["adt_lag"]
        return p if p["adt_end"] and done >= fraction * p["adt_end"] else None

    return wait_until(far_enough, timeout, f"{fraction:.0%} of hospital.adt committed")


def wait_scores(worker, count: int, timeout: float = 300) -> int:
    """Block until the worker has sent ``count`` discharge scores: it is then mid-way through its
    input whatever its commit cadence (a commit can cover the whole input at once)."""
    from stream.runner import end_offsets

    topic = Topics(worker.namespace).discharge_scores

    def sent():
        if not worker.alive():
            raise RuntimeError("worker died before the fault")
        n = sum(end_offsets([topic]).values())
        return n if n >= count else None

    return wait_until(sent, timeout, f"{count} discharge scores sent", poll=0.05)


def applied_offsets(namespace: str) -> dict[int, int]:
    """Per ADT partition, the last offset the worker's state says it applied (its changelog)."""
    from stream.runner import group_id

    applied: dict[int, int] = {}
    for r in read_topic(f"{group_id(namespace)}-partition_state-changelog"):
        if r.value:
            key = orjson.loads(r.key)
            applied[int(key[1:])] = int(orjson.loads(r.value)["offset"])
    return applied


def stuck_commits(namespace: str, committed: dict) -> dict[str, str]:
    """The worker's inputs whose group commit is behind: ``committed/end`` per ADT and merges
    partition, ``committed/last record`` per KPI partials partition."""
    from stream.runner import end_offsets, last_data_offsets

    topics = Topics(namespace)
    behind = {f"{tp.topic}[{tp.partition}]": f"{committed.get(tp, 0)}/{end}"
              for tp, end in end_offsets([topics.adt, topics.adt_merges]).items()
              if committed.get(tp, 0) < end}
    behind.update({f"{tp.topic}[{tp.partition}]": f"{committed.get(tp, 0)}/{last}"
                   for tp, last in last_data_offsets(topics.kpi_partials).items()
                   if committed.get(tp, 0) <= last})
    return behind


def settle(worker, timeout: float = 420, stall_after: float = 30) -> str | None:
    """Wait until the worker caught up (returns None), or detect stuck commits (returns a description).

    Stuck = the worker's own state says every ADT message is applied and the outputs stopped
    moving, yet its consumer group has not committed all its input (ADT, merges, KPI partials):
    the outputs can then be complete, which the drill checks, while the stall is reported as a
    failure of its own.
    """
    import time

    from stream.runner import committed_offsets, end_offsets, group_id

    topics = Topics(worker.namespace)
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"worker exited with {worker.proc.returncode}; log {worker.log_path}")
        try:
            p = worker.progress()
            if p["adt_lag"] == 0 and p["kpi_partitions_behind"] == 0:
                worker.wait_caught_up(timeout=max(30.0, deadline - time.monotonic()))
                return None
            snap = (sorted(end_offsets(topics.outputs() + [topics.kpi_partials]).items()),
                    sorted(committed_offsets(group_id(worker.namespace)).items()))
        except (KafkaError, BrokerUnavailable) as exc:  # e.g. a broker restart longer than the wait
            log.info("look-up failed (%s); retrying", exc)
            time.sleep(1)
            continue
        if snap != last:
            last, since = snap, time.monotonic()
        elif time.monotonic() - since >= stall_after:
            ends = {tp.partition: end for tp, end in end_offsets([topics.adt]).items()}
            applied = applied_offsets(worker.namespace)
            if all(applied.get(part, -1) >= end - 1 for part, end in ends.items()):
                return (f"every ADT message applied (state) and outputs idle for {stall_after:.0f}s, "
                        f"but commits stuck: {stuck_commits(worker.namespace, dict(snap[1]))}")
        time.sleep(1)
    raise TimeoutError(f"worker neither caught up nor stuck after {timeout}s: {worker.progress()}")
