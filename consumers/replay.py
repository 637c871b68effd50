"""``wardstream replay``: re-run part or all of ``hospital.adt`` through the pipeline.

Two modes (DESIGN.md "engineers replaying event topics"):

* **into a fresh namespace** (:func:`copy_into_namespace`): the selected ADT messages are copied,
  byte for byte, with the same keys, into the *same partition numbers* of ``NS + hospital.adt``, in
  offset order, so each partition of the copy is the same sequence as the source. The reference
  topic (provider capacity, beds) is copied whole. A worker started with ``WARDSTREAM_NAMESPACE=NS``
  then recomputes everything from empty state, in its own consumer group, changelogs and output
  topics; since every output is a pure function of the per-partition input (stream/README.md),
  replaying the whole topic gives the same outputs as the live run.
* **rebuild the database** (:func:`rebuild_db`): re-sink a namespace's topics into PostgreSQL from
  the beginning with a fresh consumer group (the live sink's group is left alone); the upserts make
  it idempotent, so it restores a lost or damaged database without duplicating anything.

Selection (:func:`plan_replay`): an offset range of one partition (``--partition P --from-offset A
--to-offset B``, both ends inclusive), or an event-time range (``--from T1 --to T2``, half-open
``[T1, T2)`` like the KPI windows). Record timestamps are the producer's wall clock, not event time,
so ``offsets_for_times`` cannot find event time: the plan scans ``occurred_at`` instead and selects,
per partition, the contiguous offsets from the first event at or after T1 to the last event before
T2. Messages in between are kept whatever they hold (a malformed one is replayed too, and lands in
the DLQ again), so a replay is the same sequence, never a filtered one. Note that a partial range
starts from empty patient state: events of stays admitted before T1 then go to the DLQ
(discharge without an admission); replay the whole topic to reproduce the live results.

Python API::

    plan = plan_replay("", start=datetime(2025, 3, 1, tzinfo=timezone.utc))
    print(plan.summary_rows())
    copy_into_namespace(plan, "replay-1.")
    stats = rebuild_db("replay-1.")
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from kafka import KafkaConsumer, TopicPartition

from contracts.events import Topics, format_ts
from wardstream.config import Settings, scoped_env, settings
from wardstream.kafka_io import (
    beginning_offsets_of,
    end_offsets_of,
    ensure_topics,
    make_consumer,
    make_producer,
)

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of messages just handled


class ReplayError(ValueError):
    """A replay that cannot run as asked (unknown topic, empty range, bad bounds); plain message."""


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``first..last`` (inclusive) of one partition, and what they hold."""

    partition: int
    first: int
    last: int
    events: int  # messages actually present (compaction / markers can leave offset gaps)
    first_event_at: datetime | None = None  # min / max occurred_at among the parsable messages
    last_event_at: datetime | None = None


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay would copy: the source topic and one range per partition with messages."""

    namespace: str
    topic: str
    partitions: int  # partition count of the source topic
    ranges: tuple[PartitionRange, ...] = field(default_factory=tuple)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.ranges)

    @property
    def first_event_at(self) -> datetime | None:
        times = [r.first_event_at for r in self.ranges if r.first_event_at]
        return min(times) if times else None

    @property
    def last_event_at(self) -> datetime | None:
        times = [r.last_event_at for r in self.ranges if r.last_event_at]
        return max(times) if times else None

    def summary_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(partition, first offset, last offset, events, event time span) per range, then the total."""
        rows = [(str(r.partition), str(r.first), str(r.last), str(r.events),
                 _span(r.first_event_at, r.last_event_at)) for r in self.ranges]
        rows.append(("all", "", "", str(self.events), _span(self.first_event_at, self.last_event_at)))
        return rows


def _span(a: datetime | None, b: datetime | None) -> str:
    return f"{format_ts(a)} .. {format_ts(b)}" if a and b else "-"


# ---------------------------------------------------------------------- Kafka reading


def _consumer(s: Settings) -> KafkaConsumer:
    return make_consumer(group_id=None, s=s, max_poll_records=2000)


def _partitions(consumer: KafkaConsumer, topic: str) -> list[int]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ReplayError(f"unknown topic {topic!r} (does the namespace exist? check --namespace)")
    return sorted(parts)


def scan(consumer: KafkaConsumer, tp: TopicPartition, start: int, end: int,
         progress: Progress | None = None, idle_timeout: float = 30.0) -> Iterator:
    """Yield the records of ``tp`` with ``start <= offset < end``, in offset order."""
    if start >= end:
        return
    consumer.assign([tp])
    consumer.seek(tp, start)
    last_move = time.monotonic()
    while consumer.position(tp) < end:
        batch = consumer.poll(timeout_ms=500).get(tp, [])
        if not batch:
            if time.monotonic() - last_move > idle_timeout:
                raise ReplayError(f"{tp.topic}[{tp.partition}] stalled at offset {consumer.position(tp)} "
                                  f"before {end}: is the broker up?")
            continue
        last_move = time.monotonic()
        n = 0
        for r in batch:
            if r.offset >= end:
                break
            n += 1
            yield r
        if progress and n:
            progress(n)
        if batch[-1].offset >= end - 1:
            return


def occurred_at(value: bytes | None) -> datetime | None:
    """``occurred_at`` of a raw ADT message, or None when it is not a JSON event with one.

    >>> occurred_at(b'{"occurred_at": "2025-01-02T03:04:05Z"}').isoformat()
    '2025-01-02T03:04:05+00:00'
    >>> occurred_at(b'not json') is None
    True
    """
    try:
        data = orjson.loads(value or b"")
        ts = datetime.fromisoformat(str(data["occurred_at"]).replace("Z", "+00:00"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return ts if ts.tzinfo is not None else None


# ---------------------------------------------------------------------- planning


def plan_replay(namespace: str | None = None, *, start: datetime | None = None, end: datetime | None = None,
                partition: int | None = None, from_offset: int | None = None, to_offset: int | None = None,
                s: Settings | None = None, progress: Progress | None = None) -> ReplayPlan:
    """Select what to replay from ``{namespace}hospital.adt`` (whole topic when no bound is given).

    Offsets: ``partition`` with optional ``from_offset`` / ``to_offset`` (inclusive; default the
    partition's first / last message). Event time: ``start`` (inclusive) and / or ``end``
    (exclusive), timezone-aware. Raises :class:`ReplayError` for an unknown topic, bounds in the
    wrong order, offsets outside the partition or a range holding no message.
    """
    s = s or settings()
    ns = s.topic_namespace if namespace is None else namespace
    topic = Topics(ns).adt
    by_offset = partition is not None or from_offset is not None or to_offset is not None
    by_time = start is not None or end is not None
    if by_offset and by_time:
        raise ReplayError("choose an offset range (--partition/--from-offset/--to-offset) "
                          "or an event-time range (--from/--to), not both")
    if (from_offset is not None or to_offset is not None) and partition is None:
        raise ReplayError("--from-offset / --to-offset need --partition")
    for name, ts in (("--from", start), ("--to", end)):
        if ts is not None and ts.tzinfo is None:
            raise ReplayError(f"{name} must carry a timezone (e.g. 2025-03-01T00:00:00Z)")
    if start is not None and end is not None and start >= end:
        raise ReplayError(f"--from {format_ts(start)} is not before --to {format_ts(end)}")
    if from_offset is not None and to_offset is not None and from_offset > to_offset:
        raise ReplayError(f"--from-offset {from_offset} is after --to-offset {to_offset}")

    consumer = _consumer(s)
    try:
        parts = _partitions(consumer, topic)
        tps = {p: TopicPartition(topic, p) for p in parts}
        begins = beginning_offsets_of(consumer, list(tps.values()))
        ends = end_offsets_of(consumer, list(tps.values()))
        if partition is not None:
            if partition not in tps:
                raise ReplayError(f"{topic} has partitions {parts[0]}..{parts[-1]}, not {partition}")
            tp = tps[partition]
            lo, hi = begins[tp], ends[tp] - 1
            a = lo if from_offset is None else from_offset
            b = hi if to_offset is None else to_offset
            if hi < lo:
                raise ReplayError(f"{topic}[{partition}] is empty: nothing to replay")
            if a < lo or b > hi:
                raise ReplayError(f"{topic}[{partition}] holds offsets {lo}..{hi}; "
                                  f"asked for {a}..{b}")
            selected = [_describe(consumer, tp, a, b + 1, progress)]
        else:
            selected = [_select_by_time(consumer, tps[p], begins[tps[p]], ends[tps[p]], start, end, progress)
                        for p in parts]
    finally:
        consumer.close()
    ranges = tuple(r for r in selected if r is not None and r.events > 0)
    if not ranges:
        what = (f"event time [{_fmt(start)}, {_fmt(end)})" if by_time else "the selected offsets")
        raise ReplayError(f"empty range: no message of {topic} in {what}")
    return ReplayPlan(namespace=ns, topic=topic, partitions=len(parts), ranges=ranges)


def _fmt(ts: datetime | None) -> str:
    return format_ts(ts) if ts else "…"


def _describe(consumer: KafkaConsumer, tp: TopicPartition, start: int, end: int,
              progress: Progress | None) -> PartitionRange | None:
    """Count the messages of [start, end) and their event-time span."""
    n, first, last, lo, hi = 0, None, None, None, None
    for r in scan(consumer, tp, start, end, progress):
        n += 1
        first = r.offset if first is None else first
        last = r.offset
        ts = occurred_at(r.value)
        if ts is not None:
            lo = ts if lo is None or ts < lo else lo
            hi = ts if hi is None or ts > hi else hi
    if n == 0:
        return None
    return PartitionRange(tp.partition, first, last, n, lo, hi)


def _select_by_time(consumer: KafkaConsumer, tp: TopicPartition, begin: int, end_offset: int,
                    start: datetime | None, end: datetime | None,
                    progress: Progress | None) -> PartitionRange | None:
    """The contiguous offsets from the first event >= start to the last event < end (one scan)."""
    first = last = None
    for r in scan(consumer, tp, begin, end_offset, progress):
        ts = occurred_at(r.value)
        if ts is None:
            continue
        if (start is None or ts >= start) and (end is None or ts < end):
            first = r.offset if first is None else first
            last = r.offset
    if first is None:
        return None
    return _describe(consumer, tp, first, last + 1, None)


# ---------------------------------------------------------------------- mode (a): copy


@dataclass
class CopyResult:
    namespace: str
    topic: str
    events: int = 0
    reference: int = 0
    seconds: float = 0.0


def copy_into_namespace(plan: ReplayPlan, target_namespace: str, *, s: Settings | None = None,
                        progress: Progress | None = None, with_reference: bool = True,
                        resume: bool = False) -> CopyResult:
    """Copy the plan's messages into ``{target_namespace}hospital.adt`` (same keys, partitions, order).

    The target must be a fresh namespace: its ADT topic must not exist or be empty, so that the
    worker there starts from nothing. The target ADT topic gets the source's partition count.
    ``resume=True`` appends to a target that an earlier copy of the preceding offsets filled (a
    copy in stages: the fault drills produce the rest of the input after the fault).
    """
    s = s or settings()
    if target_namespace == plan.namespace:
        raise ReplayError("the target namespace must differ from the source namespace")
    target = Topics(target_namespace)
    source_ref = Topics(plan.namespace).reference
    ts = s.model_copy(update={"topic_namespace": target_namespace, "adt_partitions": plan.partitions})
    started = time.monotonic()
    consumer = _consumer(s)
    try:
        existing = consumer.partitions_for_topic(target.adt)
        if existing:
            tps = [TopicPartition(target.adt, p) for p in existing]
            ends = end_offsets_of(consumer, tps)
            if any(ends[tp] > 0 for tp in tps) and not resume:
                raise ReplayError(f"{target.adt} already holds messages: choose a fresh --into-namespace")
            if len(existing) != plan.partitions:
                raise ReplayError(f"{target.adt} exists with {len(existing)} partitions, "
                                  f"the source has {plan.partitions}")
        ensure_topics(None, ts)
        producer = make_producer(s, max_in_flight_requests_per_connection=1)
        result = CopyResult(target_namespace, target.adt)
        errors: list[BaseException] = []
        try:
            for rng in plan.ranges:
                tp = TopicPartition(plan.topic, rng.partition)
                for r in scan(consumer, tp, rng.first, rng.last + 1, progress):
                    producer.send(target.adt, key=r.key, value=r.value, partition=rng.partition,
                                  timestamp_ms=r.timestamp).add_errback(errors.append)
                    result.events += 1
            if with_reference and consumer.partitions_for_topic(source_ref):
                for p in sorted(consumer.partitions_for_topic(source_ref)):
                    rtp = TopicPartition(source_ref, p)
                    b, e = beginning_offsets_of(consumer, [rtp])[rtp], end_offsets_of(consumer, [rtp])[rtp]
                    for r in scan(consumer, rtp, b, e):
                        producer.send(target.reference, key=r.key, value=r.value,
                                      partition=p).add_errback(errors.append)
                        result.reference += 1
            producer.flush()
        finally:
            producer.close()
        if errors:
            raise ReplayError(f"{len(errors)} messages not acknowledged by Kafka; first: {errors[0]!r}")
    finally:
        consumer.close()
    result.seconds = time.monotonic() - started
    log.info("replayed %d events (+%d reference records) into %s", result.events, result.reference,
             target.adt)
    return result


# ---------------------------------------------------------------------- mode (b): rebuild the DB


def rebuild_db(namespace: str | None = None, *, group: str | None = None, migrate_first: bool = True,
               on_batch: Callable | None = None, max_batch: int = 5000):
    """Re-sink every topic of ``namespace`` from the beginning into the database (idempotent upserts).

    Uses a fresh consumer group by default (``{ns}wardstream-sink-rebuild-<random>``), so the live
    sink's committed offsets stay untouched; pass ``group`` to reuse one. Applies pending migrations
    first (a no-op on an up-to-date database), so an empty database is rebuilt from scratch.
    Returns the sink's :class:`consumers.sink.SinkStats`.
    """
    from consumers.sink import default_topics, run_sink

    s = settings()
    ns = s.topic_namespace if namespace is None else namespace
    consumer = _consumer(s)
    try:
        _partitions(consumer, Topics(ns).adt)  # an unknown namespace is an error, not an empty rebuild
    finally:
        consumer.close()
    if migrate_first:
        from consumers.migrate import migrate

        migrate()
    group = group or f"{ns}wardstream-sink-rebuild-{uuid.uuid4().hex[:8]}"
    with scoped_env(WARDSTREAM_NAMESPACE=ns):  # run_sink reads the namespace from the settings
        return run_sink(topics=default_topics(ns), group=group, once=True, max_batch=max_batch,
                        on_batch=on_batch, handle_signals=False)


def total_messages(topics: list[str], s: Settings | None = None) -> int:
    """Messages currently in ``topics`` (end - beginning offsets): the rebuild's progress total."""
    s = s or settings()
    consumer = _consumer(s)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        if not tps:
            return 0
        b, e = beginning_offsets_of(consumer, tps), end_offsets_of(consumer, tps)
        return sum(e[tp] - b[tp] for tp in tps)
    finally:
        consumer.close()


# ---------------------------------------------------------------------- CLI


def _parse_time(value: str | None, name: str) -> datetime | None:
    import typer

    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 datetime: {value!r}", param_hint=name) from exc
    if ts.tzinfo is None:
        from datetime import timezone

        ts = ts.replace(tzinfo=timezone.utc)  # a naive datetime means UTC (event time is UTC)
    return ts


def register(app) -> None:
    """Add ``wardstream replay`` to the CLI (called by :func:`consumers.cli.register`)."""
    import typer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    @app.command("replay")
    def replay_cmd(
        start: str | None = typer.Option(
            None, "--from", metavar="DATETIME",
            help="Event-time start (inclusive), ISO-8601; naive means UTC. Found by scanning occurred_at."),
        end: str | None = typer.Option(
            None, "--to", metavar="DATETIME", help="Event-time end (exclusive), ISO-8601."),
        partition: int | None = typer.Option(
            None, "--partition", min=0, help="Replay offsets of this partition of hospital.adt only."),
        from_offset: int | None = typer.Option(None, "--from-offset", min=0, help="First offset (inclusive)."),
        to_offset: int | None = typer.Option(None, "--to-offset", min=0, help="Last offset (inclusive)."),
        into_namespace: str | None = typer.Option(
            None, "--into-namespace", metavar="NS",
            help="Copy the selection into NS + 'hospital.adt' (same keys, partitions, order; the reference "
                 "topic too). Then run `WARDSTREAM_NAMESPACE=NS wardstream worker` to recompute it all."),
        rebuild_db: bool = typer.Option(
            False, "--rebuild-db",
            help="Re-sink every topic of the namespace into DATABASE_URL from the beginning (fresh consumer "
                 "group, idempotent upserts; migrations applied first)."),
        namespace: str | None = typer.Option(
            None, "--namespace", "-n",
            help="Source namespace. Default: WARDSTREAM_NAMESPACE (empty = hospital.*)."),
        group: str | None = typer.Option(
            None, "--group", help="--rebuild-db: consumer group to use. Default: a fresh one."),
        dry_run: bool = typer.Option(
            False, "--dry-run",
            help="Print what would be replayed (partitions, offsets, events, time span); do nothing."),
    ) -> None:
        """Re-run a time range, an offset range or all of hospital.adt through the pipeline.

        Either copy it into a fresh namespace (--into-namespace) for a worker to recompute and compare, or rebuild the PostgreSQL tables from a namespace's topics (--rebuild-db).

        Without a range the whole topic is replayed, which reproduces the live results. A partial range starts from empty patient state: stays admitted before it end in the DLQ.
        """
        console = Console(stderr=True)
        if into_namespace is not None and rebuild_db:
            raise typer.BadParameter("choose --into-namespace or --rebuild-db, not both",
                                     param_hint="--rebuild-db")
        if into_namespace is None and not rebuild_db:
            raise typer.BadParameter("say where to replay: --into-namespace NS or --rebuild-db",
                                     param_hint="--into-namespace")
        if into_namespace is not None and not into_namespace.strip():
            raise typer.BadParameter("give a non-empty namespace, e.g. 'replay-1.'", param_hint="--into-namespace")
        t0, t1 = _parse_time(start, "--from"), _parse_time(end, "--to")
        s = settings()
        ns = s.topic_namespace if namespace is None else namespace

        if rebuild_db:
            if any(v is not None for v in (t0, t1, partition, from_offset, to_offset)):
                raise typer.BadParameter("--rebuild-db re-sinks whole topics; drop the range options",
                                         param_hint="--rebuild-db")
            from consumers.sink import default_topics

            topics = default_topics(ns)
            try:
                total = total_messages(topics, s)
                plan = plan_replay(ns, s=s)
            except ReplayError as exc:
                raise typer.BadParameter(str(exc)) from exc
            if dry_run:
                console.print(f"would re-sink {total:,} messages of {len(topics)} topics of namespace "
                              f"{ns or '(default)'} into the database; {plan.events:,} ADT events, event time "
                              f"{_span(plan.first_event_at, plan.last_event_at)}")
                return
            with Progress(TextColumn("rebuild db"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as bar:
                task = bar.add_task("sink", total=total)
                stats = rebuild_db_fn(ns, group=group, on_batch=lambda st: bar.update(task, completed=st.messages))
            import json

            typer.echo(json.dumps(stats.as_dict(), indent=2))
            return

        try:
            with Progress(TextColumn("scanning {task.fields[topic]}"), BarColumn(), MofNCompleteColumn(),
                          console=console, transient=True) as bar:
                task = bar.add_task("scan", total=total_messages([Topics(ns).adt], s), topic=Topics(ns).adt)
                plan = plan_replay(ns, start=t0, end=t1, partition=partition, from_offset=from_offset,
                                   to_offset=to_offset, s=s, progress=lambda n: bar.advance(task, n))
        except ReplayError as exc:
            raise typer.BadParameter(str(exc)) from exc
        table = Table("partition", "first offset", "last offset", "events", "event time",
                      title=f"{'would replay' if dry_run else 'replaying'} {plan.topic} -> "
                            f"{Topics(into_namespace or '').adt}")
        for row in plan.summary_rows():
            table.add_row(*row)
        console.print(table)
        if dry_run:
            return
        try:
            with Progress(TextColumn("copy"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as bar:
                task = bar.add_task("copy", total=plan.events)
                result = copy_into_namespace(plan, into_namespace or "", s=s,
                                             progress=lambda n: bar.advance(task, n))
        except ReplayError as exc:
            raise typer.BadParameter(str(exc)) from exc
        console.print(f"copied {result.events:,} events and {result.reference} reference records into "
                      f"namespace {into_namespace!r} in {result.seconds:.1f} s; now run "
                      f"WARDSTREAM_NAMESPACE={into_namespace} wardstream worker")


rebuild_db_fn = rebuild_db  # the CLI option of the same name shadows the function inside replay_cmd
