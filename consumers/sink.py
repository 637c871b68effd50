"""``wardstream sink``: the topics into PostgreSQL, batched, idempotent, commit after write.

Loop: poll a batch of messages -> decode with the contracts (invalid ones are counted and
logged by coordinates, never stored: fixing them is the stream's job, it sends them to the DLQ)
-> one transaction of multi-row upserts (:mod:`consumers.tables`) -> Kafka offsets committed only
after the database commit. A database outage makes the write retry with exponential backoff
(tenacity) without committing anything, so progress stops and resumes with nothing lost; a
crash between the two commits re-reads a few messages, which the upserts make harmless.
A message the database refuses for good (a constraint) is isolated, logged and skipped rather
than stalling the sink.
Data flows one way: the ADT facts come from ``hospital.adt-accepted``, the events the stream
applied (stored at their ``hospital.adt`` coordinates, :func:`add_accepted`), never from
``hospital.adt`` itself; a dead letter (``hospital.dlq``) is stored as such and removes nothing.

Python API (the demo and tests)::

    from consumers.sink import run_sink
    stats = run_sink(until_idle=5)        # stop after 5 s without new messages
    stats = run_sink(once=True)           # stop when caught up with the end of every partition
    print(stats.as_dict())
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from kafka.errors import KafkaError
from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, wait_exponential

from consumers.db import TRANSIENT_ERRORS, close_quietly, connect, libpq_url, sink_url
from consumers.rows import Batch
from consumers.tables import write_batch
from contracts.events import (
    Alert,
    DeadLetter,
    DischargeScore,
    ModelHealth,
    ReadmissionLabel,
    Topics,
    parse_adt,
    parse_reference,
)
from stream.kpi_tally import Partial
from wardstream.config import settings
from wardstream.kafka_io import GroupMember, end_offsets_of, ensure_topics, make_consumer, next_offsets

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    """What one run did (messages are Kafka messages, rows are upserted table rows)."""

    messages: int = 0
    stored: int = 0
    invalid: Counter = field(default_factory=Counter)  # topic -> messages failing the contract
    rejected: int = 0  # contract-valid messages the database refused (isolated and skipped)
    rows: Counter = field(default_factory=Counter)  # table -> rows upserted
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    db_retries: int = 0
    group_replacements: int = 0  # consumers replaced after staying out of a stable group
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages, "stored": self.stored, "invalid": dict(self.invalid),
            "rejected": self.rejected, "rows": dict(self.rows), "batches": self.batches,
            "commits": self.commits, "commit_failures": self.commit_failures,
            "db_retries": self.db_retries, "group_replacements": self.group_replacements,
            "elapsed_s": round(self.elapsed_s, 3),
        }


BROKER_RETRY_S = 1.0  # between polls while the broker does not answer


class _Outage:
    """Logs a broker outage once when it starts and once when it ends (not at every poll)."""

    def __init__(self) -> None:
        self.since: float | None = None

    def waiting(self, exc: KafkaError) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("broker unavailable (%s); polling again until it answers", type(exc).__name__)

    def over(self) -> None:
        if self.since is not None:
            log.warning("broker back after %.0fs", time.monotonic() - self.since)
            self.since = None


def default_topics(namespace: str | None = None) -> list[str]:
    """Every topic the sink stores (under the namespace of WARDSTREAM_NAMESPACE)."""
    t = Topics(settings().topic_namespace if namespace is None else namespace)
    return [t.adt_accepted, t.reference, t.discharge_scores, t.readmission_labels, t.alerts, t.kpi_partials,
            t.dlq, t.model_health]


def default_group(namespace: str | None = None) -> str:
    return f"{settings().topic_namespace if namespace is None else namespace}wardstream-sink"


Headers = Sequence[tuple[str, bytes]]
# (batch, value, partition, offset, headers): decodes one message into the batch
Adder = Callable[[Batch, bytes, int, int, Headers], None]

# Header of a hospital.adt-accepted message: its offset on hospital.adt, ASCII digits (the same
# name as stream.adt_flow.SOURCE_OFFSET, not imported: the sink does not load the stream's model).
SOURCE_OFFSET_HEADER = "source_offset"


def source_offset(headers: Headers, offset: int) -> int:
    """The ``source_offset`` header as an int; ``offset`` (the message's own) when it is missing.

    >>> source_offset([("source_offset", b"42")], 7), source_offset([], 7)
    (42, 7)
    """
    for name, value in headers or ():
        if name == SOURCE_OFFSET_HEADER:
            return int(value)  # not digits: ValueError, the message counts as invalid
    return offset


def add_accepted(batch: Batch, value: bytes, partition: int, offset: int, headers: Headers) -> None:
    """A ``hospital.adt-accepted`` message as the ADT facts of its event.

    The stream forwards each event it applied unchanged to the same partition number, with its
    ``hospital.adt`` offset in the ``source_offset`` header: the rows keep those ``hospital.adt``
    coordinates (``source_partition``, ``source_offset``, ``last_event_offset``), as the DLQ's
    ``source_*`` fields and replays name events. A message without the header (not sent by the
    stream, e.g. written by hand) is stored at its own offset on ``hospital.adt-accepted``.
    """
    batch.add_adt(parse_adt(value), partition, source_offset(headers, offset), value)


def _adders(namespace: str) -> dict[str, Adder]:
    """Topic name -> function decoding a message value into the batch (raises when invalid)."""
    t = Topics(namespace)
    return {
        t.adt_accepted: add_accepted,
        t.reference: lambda b, v, p, o, h: b.add_reference(parse_reference(v)),
        t.discharge_scores: lambda b, v, p, o, h: b.add_score(DischargeScore.model_validate_json(v), p, o, v),
        t.readmission_labels: lambda b, v, p, o, h: b.add_label(ReadmissionLabel.model_validate_json(v), p, o, v),
        t.alerts: lambda b, v, p, o, h: b.add_alert(Alert.model_validate_json(v), p, o, v),
        t.kpi_partials: lambda b, v, p, o, h: b.add_kpi_partials(Partial.parse_all(v)),
        t.dlq: lambda b, v, p, o, h: b.add_dead_letter(DeadLetter.model_validate_json(v), p, o, v),
        t.model_health: lambda b, v, p, o, h: b.add_health(ModelHealth.model_validate_json(v), p, o, v),
    }


@contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGTERM / SIGINT set ``stop`` (the loop finishes its batch, commits, and exits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, _frame):
        log.info("signal %s: stopping after the current batch", signum)
        stop.set()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class DatabaseWriter:
    """Writes batches in one transaction each, reconnecting and backing off on transient errors."""

    def __init__(self, url: str, should_stop: Callable[[], bool], stats: SinkStats,
                 backoff_max: float = 10.0, application_name: str = "wardstream-sink") -> None:
        self.url, self.should_stop, self.stats = url, should_stop, stats
        self.backoff_max, self.application_name = backoff_max, application_name
        self.conn = None

    def close(self) -> None:
        close_quietly(self.conn)
        self.conn = None

    def _once(self, batch: Batch) -> dict[str, int]:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.url, self.application_name)
        try:
            with self.conn.cursor() as cur:
                written = write_batch(cur, batch)
            self.conn.commit()
            return written
        except TRANSIENT_ERRORS:
            self.close()
            raise
        except psycopg2.Error:
            self.conn.rollback()
            raise

    def write(self, batch: Batch) -> dict[str, int]:
        """Write with retries until it succeeds or the run is asked to stop (then re-raises)."""
        def before_sleep(state) -> None:
            self.stats.db_retries += 1
            exc = state.outcome.exception()
            log.warning("database unavailable (%s), retry %d in %.1fs; offsets not committed",
                        type(exc).__name__, state.attempt_number, state.next_action.sleep)

        for attempt in Retrying(retry=retry_if_exception_type(TRANSIENT_ERRORS),
                                wait=wait_exponential(multiplier=0.2, max=self.backoff_max),
                                stop=lambda _state: self.should_stop(),
                                before_sleep=before_sleep, reraise=True):
            with attempt:
                return self._once(batch)
        raise AssertionError("unreachable")


def run_sink(*, topics: Iterable[str] | None = None, group: str | None = None,
             until_idle: float | None = None, once: bool = False, max_batch: int = 5000,
             poll_ms: int = 500, db_url: str | None = None, stop: threading.Event | None = None,
             on_batch: Callable[[SinkStats], None] | None = None,
             handle_signals: bool = True, linger_ms: int | None = None,
             namespace: str | None = None) -> SinkStats:
    """Run the sink until stopped (signal / ``stop``), caught up (``once``) or idle (``until_idle`` s).

    ``topics`` default to every output topic plus ``hospital.adt-accepted`` and
    ``hospital.reference`` of ``namespace`` (default: WARDSTREAM_NAMESPACE's); ``group`` defaults to
    ``<namespace>wardstream-sink``; ``db_url`` to SINK_DATABASE_URL (else DATABASE_URL). While
    messages flow, each fetch may wait ``linger_ms`` to fill a batch (default
    WARDSTREAM_SINK_LINGER_MS, else 20; 0: never): fewer, larger transactions on a live stream
    (:class:`FetchLinger`). Returns the run's :class:`SinkStats`.
    """
    s = settings()
    ns = s.topic_namespace if namespace is None else namespace
    topic_list = list(topics) if topics is not None else default_topics(ns)
    adders = _adders(ns)
    unknown = [t for t in topic_list if t not in adders]
    if unknown:
        raise ValueError(f"the sink does not know how to store topics {unknown}; "
                         f"known: {sorted(adders)}")
    stop = stop or threading.Event()
    halt = threading.Event()  # set on the way out: a writer still retrying gives up
    stats = SinkStats()
    started = time.monotonic()
    ensure_topics(topic_list, s)
    member = GroupMember(lambda: make_consumer(*topic_list, group_id=group or default_group(ns), s=s,
                                               max_poll_records=max_batch, max_poll_interval_ms=1_800_000),
                         s.group_settle_s, "sink", "stored messages")
    linger_ms = s.sink_linger_ms if linger_ms is None else linger_ms
    linger = FetchLinger(member.consumer, linger_ms)
    commits = member.commits
    writer = DatabaseWriter(libpq_url(db_url) if db_url else sink_url(),
                            lambda: stop.is_set() or halt.is_set(), stats)
    # One writer thread: batch N is written (the server works, psycopg2 releases the GIL) while
    # batch N+1 is fetched and decoded. Offsets of N are committed once N's transaction committed.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
    pending: list[tuple[Future, dict]] = []
    outage = _Outage()
    ctx = stop_on_signals(stop) if handle_signals else nullcontext()
    end_offsets: dict | None = None
    last_data = time.monotonic()

    def commit(offsets: dict | None = None) -> None:
        """Commit (a rebalance may refuse it: re-read messages are harmless, upserts absorb them)."""
        commits.commit(offsets)
        stats.commits, stats.commit_failures = commits.commits, commits.failures

    def settle() -> None:
        """Wait for the batch in flight; commit its offsets only if its transaction committed."""
        while pending:
            future, offsets = pending.pop()
            future.result()  # a writer error propagates: its offsets are never committed
            commit(offsets)
            if on_batch:
                on_batch(stats)

    try:
        with ctx:
            while not stop.is_set():
                if member.stuck():  # the batch in flight is written, then a new consumer reads
                    settle()        # on from the last committed offsets
                    linger = FetchLinger(member.replace(), linger_ms)
                    stats.group_replacements = member.replaced
                    end_offsets, last_data = None, time.monotonic()
                consumer = member.consumer
                try:
                    polled = consumer.poll(timeout_ms=50 if pending else poll_ms, max_records=max_batch)
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    outage.waiting(exc)  # a broker restarting: poll again, nothing is lost
                    stop.wait(BROKER_RETRY_S)
                    continue
                outage.over()
                records = [r for recs in polled.values() for r in recs]
                linger.flowing(bool(records))
                if records:
                    last_data = time.monotonic()
                    if once and end_offsets is None:
                        end_offsets = _end_offsets(consumer)
                    batch = Batch()
                    valid = _decode(records, adders, stats, batch)
                    settle()
                    pending.append((executor.submit(_write, batch, valid, adders, writer, stats),
                                    next_offsets(records)))
                    continue
                settle()
                commit()  # offsets a rebalance refused, if any: this poll may have completed it
                idle = time.monotonic() - last_data
                if until_idle is not None and idle >= until_idle:
                    break
                if once and commits.settled:
                    end_offsets = end_offsets or _end_offsets(consumer)
                    if end_offsets and _caught_up(consumer, end_offsets):
                        break
                    if idle >= max(5.0, until_idle or 0):  # no assignment / nothing to read
                        break
            settle()  # stopped by a signal: finish and commit the batch in flight
    except TRANSIENT_ERRORS:
        if not stop.is_set():
            raise
        log.info("stopped during a database outage; the last batch was not committed")
    finally:
        halt.set()
        executor.shutdown(wait=True)
        writer.close()
        member.consumer.close(autocommit=False)
        stats.elapsed_s = time.monotonic() - started
    log.info("sink finished: %s", stats.as_dict())
    return stats


class FetchLinger:
    """While messages flow, the broker holds each of the sink's fetches until 64 KiB are ready
    or ``linger_ms`` passed; while idle, Kafka's default (answer at the first byte, else after
    500 ms).

    Each fetch became a batch, a transaction and an offset commit, and a live stream comes a few
    messages per fetch: at 200 events/s the sink took 0.46 core and PostgreSQL 0.27-0.29; with
    this, 0.27 and 0.17-0.19 (bench/README.md, session 8). Fetches held always cost an idle
    sink 0.065 core (a fetch every 20 ms, against one per 500 ms), hence the switch back. Polling
    more often to fill a batch client-side spared PostgreSQL but not the sink.
    kafka-python has no public setting for a running consumer: this sets the two values its
    Fetcher reads for every fetch request, and does nothing where they are missing (the trickle
    test in tests/test_sink.py fails if the setting stops reaching the fetcher).
    """

    MIN_BYTES = 64 * 1024

    def __init__(self, consumer, linger_ms: int) -> None:
        config = getattr(getattr(consumer, "_fetcher", None), "config", None)
        usable = linger_ms > 0 and isinstance(config, dict) and \
            {"fetch_min_bytes", "fetch_max_wait_ms"} <= config.keys()
        self._config = config if usable else None
        self._modes = {False: (config["fetch_min_bytes"], config["fetch_max_wait_ms"]),
                       True: (self.MIN_BYTES, linger_ms)} if usable else {}
        self._flowing = False

    def flowing(self, flowing: bool) -> None:
        """Fetch as for a flowing stream (a poll returned messages) or an idle one."""
        if self._config is not None and flowing != self._flowing:
            self._config["fetch_min_bytes"], self._config["fetch_max_wait_ms"] = self._modes[flowing]
            self._flowing = flowing


def _decode(records, adders: dict[str, Adder], stats: SinkStats, batch: Batch) -> list:
    """Add every valid record to ``batch``; returns the valid records (for isolation on refusal)."""
    valid = []
    for r in records:
        stats.messages += 1
        try:
            adders[r.topic](batch, r.value, r.partition, r.offset, r.headers)
        except (ValidationError, ValueError, TypeError) as exc:
            stats.invalid[r.topic] += 1
            kind = exc.errors()[0]["type"] if isinstance(exc, ValidationError) and exc.errors() else type(exc).__name__
            log.warning("skipped contract-invalid message %s[%d]@%d (%s)", r.topic, r.partition, r.offset, kind)
            continue
        valid.append(r)
    return valid


def _write(batch: Batch, valid: list, adders: dict[str, Adder], writer: DatabaseWriter,
           stats: SinkStats) -> None:
    """Write one decoded batch (in the writer thread); isolate messages the database refuses."""
    if not batch.messages:
        stats.batches += 1
        return
    try:
        written = writer.write(batch)
        stats.stored += len(valid)
    except (psycopg2.DataError, psycopg2.IntegrityError):
        # A message the database refuses must not stall the stream: write them one by one.
        # (Other errors - a missing column, a missing grant - are deployment faults: they stop
        # the sink without committing, so nothing is skipped.)
        written = Counter()
        for r in valid:
            single = Batch()
            adders[r.topic](single, r.value, r.partition, r.offset, r.headers)
            try:
                written.update(writer.write(single))
                stats.stored += 1
            except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
                stats.rejected += 1
                log.error("database refused %s[%d]@%d (%s %s); skipped", r.topic, r.partition,
                          r.offset, exc.pgcode, getattr(exc.diag, "constraint_name", None))
    stats.batches += 1
    stats.rows.update(written)


def _end_offsets(consumer) -> dict | None:
    assignment = consumer.assignment()
    if not assignment:
        return None
    return end_offsets_of(consumer, assignment)


def _caught_up(consumer, end_offsets: dict) -> bool:
    try:
        return all(consumer.position(tp) >= end for tp, end in end_offsets.items())
    except (KafkaError, AssertionError, ValueError):  # partition no longer assigned (rebalance)
        return False
