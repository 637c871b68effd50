"""The Faust app: topics, tables and agents. Thin wiring; the logic lives in ``stream/domain``.

Run it with ``wardstream worker`` (or ``faust -A stream.app worker -l info``). Everything is
configured from the environment through :func:`wardstream.config.settings`, read at import:

* the app id and consumer group are ``{namespace}wardstream-stream``, so a replay into a fresh
  namespace (``WARDSTREAM_NAMESPACE=replay-1.``) starts from empty state with its own group,
  changelog topics (``{app id}-{table}-changelog``) and local RocksDB directory;
* ``WARDSTREAM_PROCESSING_GUARANTEE`` (``at_least_once`` by default, or ``exactly_once``): the
  outputs are made effectively-once by the design (stream/README.md "Determinism"); Faust
  0.15.3's exactly_once lost outputs on a SIGTERM stop here (see the README);
* ``KPI_FLUSH_SECONDS`` (default 2): how often dirty KPI windows are emitted (wall clock decides
  only *when*, never a value); ``WARDSTREAM_WEB_PORT`` turns on Faust's web view;
* ``WARDSTREAM_STALL_SECONDS`` (default 30): how long a partition may have messages past its
  state with none taken before the worker seeks it again (stream/continuity.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust import streams as faust_streams
from faust.exceptions import NotReady, ProducerSendError
from faust.types import EventT
from faust.types.enums import ProcessingGuarantee
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from stream import adt_flow, faust_patches
from stream.continuity import Refetch, StallWatch, missing
from stream.contracts import Topics
from stream.kpi_aggregator import KpiAggregator
from stream.outputs import Batch, OutputProducer
from stream.staged import Staged
from wardstream.config import Settings, settings
from wardstream.kafka_io import group_offsets, make_admin

log = logging.getLogger(__name__)

GUARANTEES = ("at_least_once", "exactly_once")


def app_id(namespace: str) -> str:
    """Faust app id = consumer group id, derived from the topic namespace."""
    return f"{namespace}wardstream-stream"


def processing_guarantee() -> str:
    value = os.environ.get("WARDSTREAM_PROCESSING_GUARANTEE", "at_least_once") or "at_least_once"
    if value not in GUARANTEES:
        raise ValueError(f"WARDSTREAM_PROCESSING_GUARANTEE must be one of {GUARANTEES}, got {value!r}")
    return value


def kpi_flush_seconds() -> float:
    value = float(os.environ.get("KPI_FLUSH_SECONDS", "2") or "2")
    if value <= 0:
        raise ValueError(f"KPI_FLUSH_SECONDS must be > 0, got {value}")
    return value


def broker_credentials(s: Settings) -> Any:
    """Faust credentials for KAFKA_SECURITY_PROTOCOL (None for PLAINTEXT)."""
    k = s.kafka
    proto = k.security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=k.ssl_cafile) if "SSL" in proto else None
    if proto.startswith("SASL"):
        if not (k.sasl_mechanism and k.sasl_username):
            raise ValueError(f"{proto} needs KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME")
        return faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password or "",
            mechanism=k.sasl_mechanism, ssl_context=context,
        )
    if proto == "SSL":
        return faust.SSLCredentials(context)
    raise ValueError(f"unknown KAFKA_SECURITY_PROTOCOL {k.security_protocol!r}")


# Faust opens one RocksDB per table partition with 64 MiB x 3 write buffers and a 2 GiB block
# cache each: memtables then hold every overwritten version up to those sizes, so the worker's
# memory grew with the number of writes (events). Our tables are small (under 1 KB per patient
# on disk, bench/README.md "Worker memory"); these caps keep RSS flat as the writes pile up.
# (Given per table: in faust-streaming 0.15.3 the app-level ``rocksdb_options`` reaches no store.)
ROCKSDB_OPTIONS = {
    "write_buffer_size": int(os.environ.get("WARDSTREAM_ROCKSDB_WRITE_BUFFER_KB", "2048")) << 10,
    "max_write_buffer_number": 2,
    "target_file_size_base": 8 << 20,
    "block_cache_size": int(os.environ.get("WARDSTREAM_ROCKSDB_BLOCK_CACHE_KB", "4096")) << 10,
}


def create_app(s: Settings | None = None) -> faust.App:
    s = s or settings()
    ns = s.topic_namespace
    port = os.environ.get("WARDSTREAM_WEB_PORT")
    datadir = s.state_dir / "faust" / app_id(ns)
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id(ns),
        broker=[f"kafka://{h.strip()}" for h in s.kafka.bootstrap_servers.split(",") if h.strip()],
        broker_credentials=broker_credentials(s),
        # rocksdb:// uses the rocksdict driver here (python-rocksdb is not installed).
        store="rocksdb://",
        datadir=str(datadir),
        processing_guarantee=processing_guarantee(),
        topic_partitions=s.adt_partitions,
        topic_replication_factor=1,
        web_enabled=bool(port),
        web_port=int(port) if port else 6066,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # Our tables hold small JSON dicts; keep Faust from holding huge buffers on 2 cores.
        stream_buffer_maxsize=int(os.environ.get("WARDSTREAM_STREAM_BUFFER", "4096")),
        # Faust's default linger of 0 sends a produce request for almost every output message
        # (20% of the worker's time in bench/README.md); 20 ms batches them. The ADT batch's
        # journal, which it waits for, is sent at once (_journal_acked), and its outputs go
        # through a producer with a shorter linger (EVENTS_LINGER_S).
        producer_linger=float(os.environ.get("WARDSTREAM_PRODUCER_LINGER", "0.02")),
    )


faust_patches.apply()
SETTINGS = settings()
TOPICS = Topics(SETTINGS.topic_namespace)
N = SETTINGS.adt_partitions

app = create_app(SETTINGS)


def _topic(name: str, partitions: int | None = N) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


adt_topic = _topic(TOPICS.adt)
contributions_topic = _topic(TOPICS.kpi_contributions)
reference_topic = _topic(TOPICS.reference, partitions=1)
# the output topics by name (sent as bytes, stream/outputs.py); the topics are created by
# wardstream.kafka_io.ensure_topics before the worker starts (stream/cli.py)
OUT = {
    adt_flow.SCORES: TOPICS.discharge_scores,
    adt_flow.ALERTS: TOPICS.alerts,
    adt_flow.LABELS: TOPICS.readmission_labels,
    adt_flow.CONTRIBUTIONS: TOPICS.kpi_contributions,
    adt_flow.DLQ: TOPICS.dlq,
}
KPIS = TOPICS.kpis


JSON = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")


def _table(name: str, help: str, partitions: int = N) -> faust.Table:
    # a copy each: Faust's RocksDB store pops keys from the options it is given
    return app.Table(name, default=None, partitions=partitions, schema=JSON, help=help,
                     options=dict(ROCKSDB_OPTIONS))


patients = _table("patients", "PatientState by patient_id")
partition_state = _table("partition_state", "p{partition}: event-time watermark, last offset")
due = _table("due", "p{partition}:{day}: patients with a pending discharge due that day")
models = _table("models", "p{partition}: the partition's river model (bytes) and alert policy")
kpi_days = _table("kpi_days", "dimension|id|day: the day bucket of KPI inputs")
kpi_meta = _table("kpi_meta", "q{partition}: last contribution offset, last flushed offset; "
                              "cap|{provider_id}: capacity")

def _record_sends(table: faust.Table) -> list[asyncio.Future[Any]]:
    """The changelog futures of ``table``'s writes, appended as Faust sends them (the table's own
    ``send_changelog`` drops them; the ADT agent waits on the journal's)."""
    sends: list[asyncio.Future[Any]] = []
    send_changelog = table.send_changelog

    def recording(*args: Any, **kwargs: Any) -> Any:
        fut = send_changelog(*args, **kwargs)
        sends.append(fut)
        return fut

    table.send_changelog = recording  # type: ignore[method-assign]
    return sends


_journal_sends = _record_sends(partition_state)  # only the ADT flow's commit writes this table
flow = adt_flow.AdtFlow(source_topic=TOPICS.adt, patients=patients, partitions=partition_state,
                        due=due, models=models)
kpi_state = (Staged(kpi_days), Staged(kpi_meta))
aggregator = KpiAggregator(days=kpi_state[0], meta=kpi_state[1], capacity={},
                           ready=lambda: app.tables.recovery.completed.is_set())


def _bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


ADT_BATCH = int(os.environ.get("WARDSTREAM_ADT_BATCH", "500"))
# how long an agent waits for a batch to fill: a backlog fills it at once; at a steady rate this
# is a wait every event pays (50 ms until session 7)
ADT_BATCH_WITHIN = float(os.environ.get("WARDSTREAM_ADT_BATCH_WITHIN", "0.01"))
# the KPI aggregator writes each bucket a batch touched once per batch, and nothing waits on it
# but the flush (every KPI_FLUSH_SECONDS): it takes its time to fill a batch
KPI_BATCH_WITHIN = float(os.environ.get("WARDSTREAM_KPI_BATCH_WITHIN", "0.2"))
# KPI contributions per hospital.kpi-contributions message (adt_flow.bundle); 1 sends each alone
CONTRIBUTION_BUNDLE = max(1, int(os.environ.get("WARDSTREAM_CONTRIBUTION_BUNDLE", "200")))
# "librdkafka" (stream/outputs.py) or "faust" (Faust's producer, as under exactly_once): the
# outputs' producer under at_least_once; the benches compare the two in one run
OUTPUT_PRODUCERS = ("librdkafka", "faust")
OUTPUT_PRODUCER = os.environ.get("WARDSTREAM_OUTPUT_PRODUCER", "librdkafka") or "librdkafka"
if OUTPUT_PRODUCER not in OUTPUT_PRODUCERS:
    raise ValueError(f"WARDSTREAM_OUTPUT_PRODUCER must be one of {OUTPUT_PRODUCERS}, got {OUTPUT_PRODUCER!r}")


@contextmanager
def _as_event(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event: a table files reads and writes under its partition.

    ``take_events`` hands the agent a batch, outside Faust's per-event context, so the agent
    sets it itself (a private context variable of faust.streams, stable since Faust 1.0).
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


@dataclass(frozen=True)
class Item:
    """A message for an agent: Faust's event, or one read back from Kafka because Faust skipped
    it; ``context`` is the event it goes with (same partition: tables file writes under it)."""

    context: EventT
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


_refetch = Refetch()


async def _in_line(events: list[EventT], applied: Callable[[int], int]) -> list[Item]:
    """The batch's messages, each partition's continuing its state: where Faust skipped some,
    they are read back from Kafka and come first (stream/continuity.py). ``applied`` reads the
    state (committed, or staged by this batch's earlier events)."""
    out: list[Item] = []
    done: dict[int, int] = {}  # partition -> last offset taken in this batch
    for event in events:
        msg = event.message
        if msg.partition not in done:
            with _as_event(event):
                done[msg.partition] = applied(msg.partition)
        if gap := missing(msg.offset, done[msg.partition]):
            records = await _refetch.read(msg.topic, msg.partition, gap)
            # none: a real gap (transaction markers under exactly_once); else Faust skipped them
            log.log(logging.WARNING if records else logging.DEBUG,
                    "partition %s of %s: got offset %s after %s; read %d skipped messages back from Kafka",
                    msg.partition, msg.topic, msg.offset, done[msg.partition], len(records))
            out.extend(Item(event, msg.partition, r.offset, r.key, r.value) for r in records)
        out.append(Item(event, msg.partition, msg.offset, event.key, event.value))
        done[msg.partition] = max(done[msg.partition], msg.offset)
    return out


_commits = faust_patches.CommitWatch()
_stalls = StallWatch(after_s=float(os.environ.get("WARDSTREAM_STALL_SECONDS", "30")))
WATCH_TIMEOUT_S = 15.0  # a watch step that takes longer is cut short and logged
_rebalance_seen: float | None = None  # when a watch first found Faust rebalancing
REBALANCE_PATIENCE_S = 60.0


def _moved(taken: list[Item]) -> None:
    """After a batch's state is written: its partitions moved (for the stall watch)."""
    now = time.monotonic()
    for item in taken:
        _stalls.took(item.context.message.tp, now)


@app.timer(interval=5.0)
async def watch_partitions() -> None:
    """Commit partitions whose Faust commit stays behind their state (faust_patches, 3.); seek
    partitions that have data past their state but get nothing (stream/continuity.py)."""
    consumer = app.consumer
    inputs = (adt_topic.get_topic_name(), contributions_topic.get_topic_name())
    tps = [tp for tp in consumer.assignment() if tp.topic in inputs]
    if not tps or _rebalancing():
        return
    applied = {tp: _state_offset(tp) for tp in tps}
    try:
        committed = await asyncio.wait_for(asyncio.to_thread(_broker_commits, tps), WATCH_TIMEOUT_S)
        await asyncio.wait_for(_commits.check(consumer, applied, committed), WATCH_TIMEOUT_S)
        await asyncio.wait_for(_unstall(applied), WATCH_TIMEOUT_S)
    except (KafkaError, asyncio.TimeoutError) as exc:  # look again at the next tick
        log.warning("partition watch cut short: %r (state offsets %s)", exc,
                    {f"{tp.topic}[{tp.partition}]": offset for tp, offset in applied.items()})


def _rebalancing() -> bool:
    """Faust reports a rebalance; after a minute of it, the watches go on regardless (whether
    Faust's flag can stay set after a rebalance ended is not known; the stalls are real)."""
    global _rebalance_seen
    if not app.rebalancing:
        _rebalance_seen = None
        return False
    now = time.monotonic()
    if _rebalance_seen is None:
        _rebalance_seen = now
    if now - _rebalance_seen < REBALANCE_PATIENCE_S:
        return True
    log.warning("Faust has reported a rebalance for %.0fs; watching the partitions anyway",
                now - _rebalance_seen)
    return False


_admin: KafkaAdminClient | None = None


def _broker_commits(tps: list[Any]) -> dict[Any, int | None]:
    """The group's committed offsets of ``tps`` as the broker has them (blocking)."""
    global _admin
    if _admin is None:
        _admin = make_admin(SETTINGS)  # kept for the worker's life: a look every 5 s
    by = {(tp.topic, tp.partition): offset for tp, offset in group_offsets(_admin, app.conf.id).items()}
    return {tp: by.get((tp.topic, tp.partition)) for tp in tps}


def _state_offset(tp: Any) -> int:
    """The last offset an agent's written state holds for ``tp`` (-1: none)."""
    if tp.topic == adt_topic.get_topic_name():
        entry = partition_state.get(adt_flow.partition_key(tp.partition))
    else:
        entry = kpi_meta.get(f"q{tp.partition}")
    return int((entry or {"offset": -1})["offset"])


async def _unstall(applied: dict[Any, int]) -> None:
    consumer = app.consumer
    ends = await consumer.highwaters(*applied)
    now = time.monotonic()
    for tp, offset in applied.items():
        if tp not in ends or not _stalls.stalled(tp, offset, ends[tp], now):
            continue
        log.warning("partition %s of %s: state at offset %s, log end %s, nothing taken for %.0fs "
                    "(Faust's read offset %s); seeking it to %s", tp.partition, tp.topic, offset,
                    ends[tp], _stalls.after_s, consumer._read_offset.get(tp), offset + 1)
        await consumer.seek_wait({tp: offset + 1})


class _FaustBatch:
    """Outputs sent through Faust's producer (the transaction manager under exactly_once).

    The same call ``Topic.send`` ends in, without the layers our bytes do not need (codecs, a
    FutureMessage and the sensors per message: 10-17% of the worker in bench/README.md's
    profile). The interface of :class:`stream.outputs.Batch`.
    """

    def __init__(self) -> None:
        self.sent: list[asyncio.Future[Any]] = []
        self._producer: Any = None  # started at the first send

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._producer is None:
            self._producer = await app.maybe_start_producer()
        self.sent.append(await self._producer.send(topic, key, value, None, None, None))

    async def acked(self) -> None:
        await _acked(self.sent)


# One librdkafka producer per lane: a KPI flush queues thousands of windows at once, and scores
# and alerts sent behind them on the same producer waited for all of them to be delivered (a
# worker trace at 400 events/s: ADT batches 0.3-0.6 s late after each flush; bench/README.md,
# session 7). Each lane has its own queue and broker connection.
_output_producers: dict[str, OutputProducer] = {}
# The ADT batch waits for its outputs' acknowledgements: their linger counts in every alert's
# latency, and librdkafka's requests are cheap (C). The KPI lane keeps WARDSTREAM_PRODUCER_LINGER.
EVENTS_LINGER_S = float(os.environ.get("WARDSTREAM_EVENTS_LINGER", "0.001"))


def _outputs(lane: str = "events") -> Batch | _FaustBatch:
    """A batch of outputs: librdkafka's producer of ``lane`` under at_least_once
    (stream/outputs.py), Faust's under exactly_once (its transactions must hold them)."""
    if app.conf.processing_guarantee != ProcessingGuarantee.AT_LEAST_ONCE or OUTPUT_PRODUCER == "faust":
        return _FaustBatch()
    if lane not in _output_producers:
        linger = EVENTS_LINGER_S if lane == "events" else app.conf.producer_linger
        _output_producers[lane] = OutputProducer(SETTINGS, linger_s=linger,
                                                 client_id=f"wardstream-stream-{lane}")
    return _output_producers[lane].batch()


@app.on_before_shutdown.connect
async def _close_outputs(app: faust.App, **kwargs: Any) -> None:
    _refetch.close()
    if _admin is not None:
        _admin.close()
    for producer in _output_producers.values():  # anything left is re-sent by the re-processing
        left = producer.close(timeout=5)
        if left:
            log.warning("%s outputs not delivered at the stop; their batch is re-processed", left)


async def _journal_acked() -> None:
    """Until the batch journal is acknowledged, having Faust's producer send it without its
    linger (``faust_patches.send_lingering``) as soon as it reaches the producer."""
    while JOURNAL_SEND_NOW and (pending := [f for f in _journal_sends if not f.done()]):
        faust_patches.send_lingering(app.producer)
        await asyncio.wait(pending, timeout=JOURNAL_POLL_S)
    await _acked(_journal_sends)


JOURNAL_POLL_S = 0.001
JOURNAL_SEND_NOW = os.environ.get("WARDSTREAM_JOURNAL_SEND_NOW", "1") != "0"  # 0: session 6's wait


async def _acked(sent: list[asyncio.Future[Any]]) -> None:
    """Until Kafka acknowledged every send; raises the first failure. (Most are done by the
    time a batch ends: waiting on the rest only is cheaper than ``gather`` over them all.)"""
    pending = [f for f in sent if not f.done()]
    if pending:
        await asyncio.wait(pending)
    for f in sent:
        f.result()


def _stopping(exc: BaseException) -> bool:
    """A send cut off by the worker's own stop (the batch is re-processed after the restart)."""
    if isinstance(exc, (NotReady, ProducerSendError)) and app.should_stop:
        log.info("batch cut short by the stop; it is re-processed at the next start")
        return True
    return False


@app.agent(adt_topic, concurrency=1)
async def process_adt(stream: faust.StreamT) -> None:
    """hospital.adt -> scores, alerts, labels, KPI contributions, DLQ (stream/README.md).

    A batch at a time: process every message (state staged in memory), send the outputs, wait
    until Kafka acknowledged each of them, then write the state; Faust acks the batch's offsets
    after that. A crash anywhere leaves the tables at the previous batch, whose outputs are all
    in Kafka, so the offset guard never skips a message with lost outputs, and re-processing a
    message sends the same outputs again (their consumers drop or upsert copies).
    """
    async for events in stream.take_events(ADT_BATCH, within=ADT_BATCH_WITHIN):
        last: dict[int, EventT] = {}
        try:
            batch = _outputs()
            contributions: list[adt_flow.Output] = []  # sent bundled, after the batch
            taken = await _in_line(events, flow.applied_offset)
            for item in taken:
                last[item.partition] = item.context
                with _as_event(item.context):
                    outputs = flow.process(item.value, item.partition, item.offset, key=item.key,
                                           commit=False)
                for out in outputs:
                    if out.topic == adt_flow.CONTRIBUTIONS:
                        contributions.append(out)
                    else:  # scores, alerts, labels, dead letters go out at once
                        await batch.send(OUT[out.topic], _bytes(out.key), out.value)
            for out in adt_flow.bundle(contributions, CONTRIBUTION_BUNDLE):
                await batch.send(OUT[out.topic], _bytes(out.key), out.value)
            await batch.acked()  # every output acknowledged (raises if one failed)
        except BaseException as exc:  # stopped or failed before the outputs were in: state as before
            flow.rollback()
            faust_patches.hold(events)
            if _stopping(exc):
                return
            raise
        scope = lambda partition: _as_event(last[partition])  # noqa: E731
        flow.commit_journal(scope)  # the batch is decided: a restart re-applies its journal
        try:
            await _journal_acked()  # in Kafka before any write it journals (adt_flow.py)
        except BaseException as exc:
            flow.rollback()
            if _stopping(exc):
                return
            raise
        finally:
            _journal_sends.clear()
        flow.commit_state(scope)
        _moved(taken)


@app.agent(contributions_topic, concurrency=1)
async def aggregate_kpis(stream: faust.StreamT) -> None:
    """hospital.kpi-contributions -> day buckets (flushed to hospital.kpis by the timer).

    A batch at a time, its table writes staged and written once per key at the end (a bucket
    changes many times in a batch); a crash before that re-delivers the batch, and the buckets'
    source marks drop the contributions already added.
    """
    async for events in stream.take_events(ADT_BATCH, within=KPI_BATCH_WITHIN):
        last: dict[int, EventT] = {}
        try:
            taken = await _in_line(events, aggregator.applied_offset)
            for item in taken:
                last[item.partition] = item.context
                for table in kpi_state:
                    table.partition = item.partition
                with _as_event(item.context):
                    aggregator.add(item.value, item.partition, item.offset)
        except BaseException:
            for table in kpi_state:
                table.rollback()
            aggregator.forget_cache()  # its in-memory buckets hold the rolled-back adds
            faust_patches.hold(events)
            raise
        for table in kpi_state:
            table.commit(lambda partition: _as_event(last[partition]))
        _moved(taken)
        if aggregator.pending_days() > FLUSH_PENDING_DAYS:
            await _flush()
        await asyncio.sleep(0)


@app.agent(reference_topic, concurrency=1)
async def load_reference(stream: faust.StreamT) -> None:
    """hospital.reference -> provider capacity (provider_utilization's denominator), forwarded to
    the KPI aggregator partition that holds the provider (``KpiAggregator.capacity_record``)."""
    async for event in stream.events():
        forward = KpiAggregator.capacity_record(event.value)
        if forward is not None:
            await contributions_topic.send(key=forward[0].encode(), value=forward[1])


FLUSH_DUTY = 0.25  # at most this share of the worker's time goes to timed KPI flushes
FLUSH_YIELD_EVERY = 100  # KPI messages sent between two yields to the event loop
# A yield is a sleep of FLUSH_YIELD_S once the flush has run FLUSH_SLICE_S since the last one
# (else sleep(0)). With sleep(0) only, the flush was always ready to run again, and the ADT
# agent took no batch until a 0.2-0.7 s flush ended; sleeping at every yield made a backlog's
# flushes slower by the sum of the sleeps. The slice bounds that to ~10% of a flush.
FLUSH_YIELD_S = float(os.environ.get("WARDSTREAM_FLUSH_YIELD_S", "0.001"))
FLUSH_SLICE_S = 0.01
# dirty (dimension, day) pairs after which the agent flushes at once: in a backlog (a replay, a
# catch-up) simulated months pass between two timer ticks, and their buckets could not leave
# memory before their windows went out (bench/README.md "Worker memory")
FLUSH_PENDING_DAYS = int(os.environ.get("WARDSTREAM_KPI_FLUSH_PENDING_DAYS", "2000"))
_next_flush = 0.0
_flush_lock = asyncio.Lock()  # one flush at a time: each marks what it covered when it is done


@app.timer(interval=kpi_flush_seconds())
async def flush_kpis() -> None:
    """Emit the KPI windows whose inputs changed since the last flush.

    While a backlog is replayed every flush re-emits the same current windows; skipping ticks
    after a long flush (duty cycle) cuts that volume without changing any final value.
    """
    global _next_flush
    started = time.monotonic()
    if started < _next_flush:
        return
    await _flush()
    _next_flush = started + (time.monotonic() - started) / FLUSH_DUTY


async def _flush() -> None:
    """Send the changed KPI windows; once Kafka has them all, record the offsets they cover."""
    async with _flush_lock:
        try:
            sent = _outputs("kpis")
            slice_start = time.monotonic()

            async def pause() -> None:  # the agents (and alerts) keep running meanwhile
                nonlocal slice_start
                if time.monotonic() - slice_start < FLUSH_SLICE_S:
                    await asyncio.sleep(0)
                else:
                    await asyncio.sleep(FLUSH_YIELD_S)
                    slice_start = time.monotonic()

            for batch in aggregator.flush_batches():
                if app.should_stop:  # not marked covered: the next worker sends these windows
                    return
                for n, (key, value) in enumerate(batch, start=1):
                    await sent.send(KPIS, key.encode(), value)
                    if n % FLUSH_YIELD_EVERY == 0:
                        await pause()
                await pause()  # and between dimensions
            await sent.acked()  # a window Kafka refused crashes the worker, not lost silently
        except (NotReady, ProducerSendError) as exc:
            if not _stopping(exc):  # the windows not sent are re-sent by the next worker
                raise
            return
        aggregator.delivered()
        _write_status({"covered": aggregator.covered()})


STATUS_PATH = Path(app.conf.datadir) / "kpi-flush.json"
_last_status: dict[str, Any] = {}


def _write_status(status: dict[str, Any]) -> None:
    """Which contribution offsets the KPI flushes have covered (read by stream.runner)."""
    global _last_status
    if status == _last_status:
        return
    tmp = STATUS_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    tmp.replace(STATUS_PATH)
    _last_status = status


@app.on_partitions_assigned.connect
async def _on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
    # The tables are the truth after a rebalance: drop in-memory copies.
    flow.forget_cache()
    aggregator.forget_cache()
    _commits.forget()
    _stalls.forget()
