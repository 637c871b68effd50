"""The Faust app: topics, tables and agents. Thin wiring; the logic lives in ``stream/domain``.

:func:`create_worker` builds the app from :class:`wardstream.config.Settings` (``wardstream
worker`` calls it at start; importing this module reads no setting and changes nothing):

* the app id and consumer group are ``{namespace}wardstream-stream``, so a replay into a fresh
  namespace (``WARDSTREAM_NAMESPACE=replay-1.``) starts from empty state with its own group,
  changelog topics (``{app id}-{table}-changelog``) and local RocksDB directory;
* the processing guarantee is ``at_least_once`` by default: the outputs are made effectively-once
  by the design (stream/README.md); Faust 0.15.3's ``exactly_once`` lost outputs on a SIGTERM stop;
* the KPI flush timer runs every ``KPI_FLUSH_SECONDS`` (wall clock decides only *when*, never a
  value); the other settings are in README.md's configuration table.

Every topic, table, agent and timer is declared in :class:`Pipeline` (``_topics_and_tables`` and
``_register``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from faust import streams as faust_streams
from faust.exceptions import NotReady, ProducerSendError
from faust.types import EventT
from faust.types.enums import ProcessingGuarantee
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from stream import adt_flow, faust_patches, health_monitor, kpi_tally
from stream.continuity import Refetch, StallWatch, missing
from contracts.events import ProviderRef, Topics, parse_reference
from stream.kpi_combiner import KpiCombiner
from stream.outputs import Batch, OutputProducer
from stream.staged import Staged
from wardstream.config import Settings, StreamSettings
from wardstream.kafka_io import group_offsets, key_partition, make_admin

log = logging.getLogger(__name__)


def app_id(namespace: str) -> str:
    """Faust app id = consumer group id, derived from the topic namespace."""
    return f"{namespace}wardstream-stream"


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


def rocksdb_options(t: StreamSettings) -> dict[str, int]:
    """Options of each table's RocksDB stores.

    Faust opens one RocksDB per table partition with 64 MiB x 3 write buffers and a 2 GiB block
    cache each: memtables then hold every overwritten version up to those sizes, so the worker's
    memory grew with the number of writes (events). Our tables are small (under 1 KB per patient
    on disk, bench/README.md "Worker memory"); these caps keep RSS flat as the writes pile up.
    (Given per table: in faust-streaming 0.15.3 the app-level ``rocksdb_options`` reaches no store.)
    """
    return {
        "write_buffer_size": t.rocksdb_write_buffer_kb << 10,
        "max_write_buffer_number": 2,
        "target_file_size_base": 8 << 20,
        "block_cache_size": t.rocksdb_block_cache_kb << 10,
    }


def create_app(s: Settings) -> faust.App:
    """The bare ``faust.App`` (no topics, tables or agents); creates its state directory."""
    ns = s.topic_namespace
    port = s.stream.web_port
    datadir = s.state_dir / "faust" / app_id(ns)
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id(ns),
        broker=[f"kafka://{h.strip()}" for h in s.kafka.bootstrap_servers.split(",") if h.strip()],
        broker_credentials=broker_credentials(s),
        # rocksdb:// uses the rocksdict driver here (python-rocksdb is not installed).
        store="rocksdb://",
        datadir=str(datadir),
        processing_guarantee=s.stream.processing_guarantee,
        topic_partitions=s.adt_partitions,
        topic_replication_factor=s.replication_factor,
        web_enabled=bool(port),
        web_port=port or 6066,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # Our tables hold small JSON dicts; keep Faust from holding huge buffers on 2 cores.
        stream_buffer_maxsize=s.stream.stream_buffer,
        # Faust's default linger of 0 sends a produce request for almost every output message
        # (20% of the worker's time in bench/README.md); 20 ms batches them. The ADT batch's
        # journal, which it waits for, is sent at once (Pipeline._journal_acked), and its outputs
        # go through a producer with a shorter linger (WARDSTREAM_EVENTS_LINGER).
        producer_linger=s.stream.producer_linger,
    )


def create_worker(s: Settings) -> faust.App:
    """The stream app, ready for ``faust.Worker``: Faust patched (:mod:`stream.faust_patches`),
    the state directory created, every topic, table, agent and timer registered."""
    faust_patches.apply(fetch_max_wait_ms=s.stream.fetch_max_wait_ms)
    app = create_app(s)
    Pipeline(app, s)
    return app


JSON = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")


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


def _bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


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


async def _acked(sent: list[asyncio.Future[Any]]) -> None:
    """Until Kafka acknowledged every send; raises the first failure. (Most are done by the
    time a batch ends: waiting on the rest only is cheaper than ``gather`` over them all.)"""
    pending = [f for f in sent if not f.done()]
    if pending:
        await asyncio.wait(pending)
    for f in sent:
        f.result()


async def _ack(stream: faust.StreamT, events: list[EventT]) -> None:
    """Acknowledge ``events`` to Faust (from ``noack_take``): their offsets may be committed."""
    for event in events:
        await stream.ack(event)


class _FaustBatch:
    """Outputs sent through Faust's producer (the transaction manager under exactly_once).

    The same call ``Topic.send`` ends in, without the layers our bytes do not need (codecs, a
    FutureMessage and the sensors per message: 10-17% of the worker in bench/README.md's
    profile). The interface of :class:`stream.outputs.Batch`.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.sent: list[asyncio.Future[Any]] = []
        self._producer: Any = None  # started at the first send

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
                   headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        if self._producer is None:
            self._producer = await self.app.maybe_start_producer()
        self.sent.append(await self._producer.send(topic, key, value, partition, None,
                                                   list(headers) or None))

    async def acked(self) -> None:
        await _acked(self.sent)


WATCH_TIMEOUT_S = 15.0  # a watch step that takes longer is cut short and logged
REBALANCE_PATIENCE_S = 60.0
JOURNAL_POLL_S = 0.001
FLUSH_DUTY = 0.25  # at most this share of the worker's time goes to timed KPI flushes
FLUSH_MAX_SKIP_S = 10.0  # the longest pause between two timed flushes (a flush that waited on a
# broker outage is long without having cost any CPU)
FLUSH_YIELD_EVERY = 100  # KPI messages sent between two yields to the event loop
# A yield is a sleep of WARDSTREAM_FLUSH_YIELD_S once the flush has run FLUSH_SLICE_S since the
# last one (else sleep(0)). With sleep(0) only, the flush was always ready to run again, and the
# ADT agent took no batch until a 0.2-0.7 s flush ended; sleeping at every yield made a backlog's
# flushes slower by the sum of the sleeps. The slice bounds that to ~10% of a flush.
FLUSH_SLICE_S = 0.01


class Pipeline:
    """The worker's topics, tables, agents and timers on ``app``, and the state they share.

    Building it registers everything with the app: topics and tables in
    :meth:`_topics_and_tables`, agents, timers and signal handlers in :meth:`_register`.
    """

    def __init__(self, app: faust.App, s: Settings) -> None:
        self.app = app
        self.settings = s
        self.tuning = s.stream
        self._topics_and_tables()
        self._journal_sends = _record_sends(self.partition_state)  # only the ADT flow's commit writes it
        self.flow = adt_flow.AdtFlow(source_topic=self.topics.adt, patients=self.patients,
                                     partitions=self.partition_state, due=self.due, models=self.models,
                                     alert_share=s.alert_share_for, health=self.health, kpi=self.kpi)
        self.health_state = Staged(self.health_days)
        self.monitor = health_monitor.HealthMonitor(self.health_state)
        self.kpi_state = Staged(self.kpi_days)
        self.combiner = KpiCombiner(days=self.kpi_state,
                                    ready=lambda: app.tables.recovery.completed.is_set())
        # the combiner's records applied since the last flush began: acknowledged (so Kafka may
        # commit them) once a flush that covers them is acknowledged by Kafka
        self._kpi_stream: faust.StreamT | None = None
        self._kpi_unacked: list[EventT] = []
        self._assignments = 0  # rebalances so far: a flush begun before one acknowledges nothing
        self._refetch = Refetch(s)
        self._commits = faust_patches.CommitWatch()
        self._stalls = StallWatch(after_s=self.tuning.stall_seconds)
        self._rebalance_seen: float | None = None  # when a watch first found Faust rebalancing
        self._admin: KafkaAdminClient | None = None
        # One librdkafka producer per lane: a KPI flush queues thousands of windows at once, and
        # scores and alerts sent behind them on one producer would wait for all of them to be
        # delivered. Each lane has its own queue and broker connection.
        self._output_producers: dict[str, OutputProducer] = {}
        self._next_flush = 0.0
        self._flush_lock = asyncio.Lock()  # one flush at a time: each acknowledges what it covered
        self._register()

    def _topics_and_tables(self) -> None:
        app, n = self.app, self.settings.adt_partitions
        self.topics = topics = Topics(self.settings.topic_namespace)

        def topic(name: str, partitions: int | None = n) -> faust.TopicT:
            return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=partitions)

        self.adt_topic = topic(topics.adt)
        self.kpi_partials_topic = topic(topics.kpi_partials)
        self.reference_topic = topic(topics.reference, partitions=1)
        self.health_partials_topic = topic(topics.health_partials)
        # the output topics by name (sent as bytes, stream/outputs.py); the topics are created by
        # wardstream.kafka_io.ensure_topics before the worker starts (stream/cli.py)
        self.out = {
            adt_flow.SCORES: topics.discharge_scores,
            adt_flow.ALERTS: topics.alerts,
            adt_flow.LABELS: topics.readmission_labels,
            adt_flow.ACCEPTED: topics.adt_accepted,
            adt_flow.DLQ: topics.dlq,
            adt_flow.MODEL_HEALTH: topics.model_health,
            adt_flow.HEALTH_PARTIALS: topics.health_partials,
            adt_flow.KPI_PARTIALS: topics.kpi_partials,
        }
        self.kpis_topic = topics.kpis
        options = rocksdb_options(self.tuning)

        def table(name: str, help: str, partitions: int = n) -> faust.Table:
            # a copy each: Faust's RocksDB store pops keys from the options it is given
            return app.Table(name, default=None, partitions=partitions, schema=JSON, help=help,
                             options=dict(options))

        self.patients = table("patients", "PatientState by patient_id")
        self.partition_state = table("partition_state", "p{partition}: event-time watermark, last offset")
        self.due = table("due", "p{partition}:{day}: patients with a pending discharge due that day")
        self.models = table("models", "p{partition}: the partition's river model (bytes) and alert policy")
        self.kpi = table("kpi", "k{partition}|dimension|id|day: the ADT partition's KPI day partial")
        self.kpi_days = table("kpi_days", "dimension|id|day: the latest KPI partial per ADT partition; "
                                          "cap|{provider_id}: capacity")
        self.health = table("health", "h{partition}|{facility}|{day}: health aggregates; "
                                      "e{partition}|{facility}: error detector")
        self.health_days = table("health_days", "d|{facility}|{day}|{adt partition}: the last "
                                                "health-partials record; f|{facility}: its days")

    def _register(self) -> None:
        """Every agent, timer and signal handler of the worker."""
        app = self.app
        app.timer(interval=5.0, name="stream.app.watch_partitions")(self.watch_partitions)
        app.on_before_shutdown.connect(self._close_outputs)
        app.agent(self.adt_topic, concurrency=1, name="stream.app.process_adt")(self.process_adt)
        app.agent(self.kpi_partials_topic, concurrency=1, name="stream.app.combine_kpis")(self.combine_kpis)
        app.agent(self.reference_topic, concurrency=1, name="stream.app.load_reference")(self.load_reference)
        app.agent(self.health_partials_topic, concurrency=1, name="stream.app.monitor_health")(self.monitor_health)
        app.timer(interval=self.tuning.kpi_flush_seconds, name="stream.app.flush_kpis")(self.flush_kpis)
        app.on_partitions_assigned.connect(self._on_assigned)

    # -- agents ------------------------------------------------------------------------------

    async def process_adt(self, stream: faust.StreamT) -> None:
        """hospital.adt -> scores, alerts, labels, accepted events, KPI and health partials, DLQ
        (stream/README.md).

        A batch at a time: process every message (state staged in memory), send the outputs,
        wait until Kafka acknowledged each of them, then write the state, and only then
        acknowledge the batch's messages to Faust (``noack_take``: Faust's ``take_events``
        acknowledges a batch even when its body raised). A crash anywhere leaves the tables at
        the previous batch, whose outputs are all in Kafka, so the offset guard never skips a
        message with lost outputs, and re-processing a message sends the same outputs again
        (their consumers upsert copies; partials replace).
        """
        flow, n = self.flow, self.settings.adt_partitions
        async for events in stream.noack_take(self.tuning.adt_batch, within=self.tuning.adt_batch_within):
            last: dict[int, EventT] = {}
            try:
                batch = self._outputs()
                taken = await self._in_line(events, flow.applied_offset)
                for item in taken:
                    last[item.partition] = item.context
                    with _as_event(item.context):
                        outputs = flow.process(item.value, item.partition, item.offset, key=item.key,
                                               commit=False)
                    for out in outputs:  # scores, alerts, labels, accepted events, dead letters
                        await batch.send(self.out[out.topic], _bytes(out.key), out.value,
                                         out.partition, out.headers)
                for out in flow.partials():  # a dimension's (a facility's) records to one partition
                    await batch.send(self.out[out.topic], _bytes(out.key), out.value,
                                     key_partition(out.route, n))
                await batch.acked()  # every output acknowledged (raises if one failed)
            except BaseException as exc:  # stopped or failed before the outputs were in: state as before
                flow.rollback()
                if self._stopping(exc):
                    return
                raise
            scope = lambda partition: _as_event(last[partition])  # noqa: E731
            flow.commit_journal(scope)  # the batch is decided: a restart re-applies its journal
            try:
                await self._journal_acked()  # in Kafka before any write it journals (adt_flow.py)
            except BaseException as exc:
                flow.rollback()
                if self._stopping(exc):
                    return
                raise
            finally:
                self._journal_sends.clear()
            flow.commit_state(scope)
            await _ack(stream, events)
            self._moved(taken)

    async def combine_kpis(self, stream: faust.StreamT) -> None:
        """hospital.kpi-partials -> the combiner's table (flushed to hospital.kpis by the timer).

        A batch at a time, its table writes staged and written once per key at the end. The
        records are acknowledged only by the flush that covers them (:meth:`_flush`), so Kafka's
        committed offset is the combiner's progress: a restart delivers the rest again, and the
        combiner re-sends their windows (replace semantics: nothing counts twice).
        """
        combiner, state = self.combiner, self.kpi_state
        self._kpi_stream = stream
        async for events in stream.noack_take(self.tuning.adt_batch, within=self.tuning.kpi_batch_within):
            last = {event.message.partition: event for event in events}
            try:
                for event in events:
                    state.partition = event.message.partition
                    with _as_event(event):
                        combiner.put(event.value)
            except BaseException:
                state.rollback()
                combiner.forget_cache()  # its in-memory buckets hold the rolled-back records
                raise
            state.commit(lambda partition: _as_event(last[partition]))
            self._kpi_unacked.extend(events)
            # dirty (dimension, day) pairs after which the agent flushes at once: in a backlog (a
            # replay, a catch-up) simulated months pass between two timer ticks, and their buckets
            # could not leave memory before their windows went out (bench/README.md "Worker memory")
            if combiner.pending_days() > self.tuning.kpi_flush_pending_days:
                await self._flush()
            await asyncio.sleep(0)

    async def load_reference(self, stream: faust.StreamT) -> None:
        """hospital.reference -> provider capacity (provider_utilization's denominator), as one
        more record on hospital.kpi-partials, on the partition of the provider's records."""
        async for event in stream.events():
            try:
                record = parse_reference(event.value)
            except ValueError:
                log.warning("ignoring an invalid reference record at offset %s", event.message.offset)
                continue
            if isinstance(record, ProviderRef):
                key, to, value = kpi_tally.capacity_partial(record.provider_id, record.facility_id,
                                                            record.capacity)
                await self.kpi_partials_topic.send(
                    key=key.encode(), value=value,
                    partition=key_partition(to, self.settings.adt_partitions))

    async def monitor_health(self, stream: faust.StreamT) -> None:
        """hospital.health-partials -> hospital.model-health (stream/health_monitor.py): a batch's
        records kept, the checks of the windows they touched sent and acknowledged, then the
        records written and acknowledged. Replace semantics: a batch delivered again after a
        crash changes nothing."""
        monitor, state = self.monitor, self.health_state
        async for events in stream.noack_take(self.tuning.adt_batch, within=self.tuning.kpi_batch_within):
            last = {event.message.partition: event for event in events}
            scope = lambda partition: _as_event(last[partition])  # noqa: E731
            try:
                batch = self._outputs("kpis")
                for event in events:
                    state.partition = event.message.partition
                    with _as_event(event):
                        monitor.add(event.value)
                for key, value in health_monitor.messages(monitor.evaluate(scope)):
                    await batch.send(self.topics.model_health, key.encode(), value)
                await batch.acked()
            except BaseException as exc:
                state.rollback()
                monitor.forget()
                if self._stopping(exc):
                    return
                raise
            state.commit(scope)
            await _ack(stream, events)
            await asyncio.sleep(0)

    # -- continuity ----------------------------------------------------------------------------

    async def _in_line(self, events: list[EventT], applied: Callable[[int], int]) -> list[Item]:
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
                records = await self._refetch.read(msg.topic, msg.partition, gap)
                # none: a real gap (transaction markers under exactly_once); else Faust skipped them
                log.log(logging.WARNING if records else logging.DEBUG,
                        "partition %s of %s: got offset %s after %s; read %d skipped messages back from Kafka",
                        msg.partition, msg.topic, msg.offset, done[msg.partition], len(records))
                out.extend(Item(event, msg.partition, r.offset, r.key, r.value) for r in records)
            out.append(Item(event, msg.partition, msg.offset, event.key, event.value))
            done[msg.partition] = max(done[msg.partition], msg.offset)
        return out

    def _moved(self, taken: list[Item]) -> None:
        """After a batch's state is written: its partitions moved (for the stall watch)."""
        now = time.monotonic()
        for item in taken:
            self._stalls.took(item.context.message.tp, now)

    async def watch_partitions(self) -> None:
        """Commit partitions whose Faust commit stays behind their state (faust_patches, 3.); seek
        partitions that have data past their state but get nothing (stream/continuity.py)."""
        consumer = self.app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic == self.adt_topic.get_topic_name()]
        if not tps or self._rebalancing():
            return
        applied = {tp: self._state_offset(tp) for tp in tps}
        try:
            committed = await asyncio.wait_for(asyncio.to_thread(self._broker_commits, tps), WATCH_TIMEOUT_S)
            await asyncio.wait_for(self._commits.check(consumer, applied, committed), WATCH_TIMEOUT_S)
            await asyncio.wait_for(self._unstall(applied), WATCH_TIMEOUT_S)
        except (KafkaError, asyncio.TimeoutError) as exc:  # look again at the next tick
            log.warning("partition watch cut short: %r (state offsets %s)", exc,
                        {f"{tp.topic}[{tp.partition}]": offset for tp, offset in applied.items()})

    def _rebalancing(self) -> bool:
        """Faust reports a rebalance; after a minute of it, the watches go on regardless (whether
        Faust's flag can stay set after a rebalance ended is not known; the stalls are real)."""
        if not self.app.rebalancing:
            self._rebalance_seen = None
            return False
        now = time.monotonic()
        if self._rebalance_seen is None:
            self._rebalance_seen = now
        if now - self._rebalance_seen < REBALANCE_PATIENCE_S:
            return True
        log.warning("Faust has reported a rebalance for %.0fs; watching the partitions anyway",
                    now - self._rebalance_seen)
        return False

    def _broker_commits(self, tps: list[Any]) -> dict[Any, int | None]:
        """The group's committed offsets of ``tps`` as the broker has them (blocking)."""
        if self._admin is None:
            self._admin = make_admin(self.settings)  # kept for the worker's life: a look every 5 s
        by = {(tp.topic, tp.partition): offset
              for tp, offset in group_offsets(self._admin, self.app.conf.id).items()}
        return {tp: by.get((tp.topic, tp.partition)) for tp in tps}

    def _state_offset(self, tp: Any) -> int:
        """The last offset the ADT flow's written state holds for ``tp`` (-1: none)."""
        entry = self.partition_state.get(adt_flow.partition_key(tp.partition))
        return int((entry or {"offset": -1})["offset"])

    async def _unstall(self, applied: dict[Any, int]) -> None:
        consumer = self.app.consumer
        ends = await consumer.highwaters(*applied)
        now = time.monotonic()
        for tp, offset in applied.items():
            if tp not in ends or not self._stalls.stalled(tp, offset, ends[tp], now):
                continue
            log.warning("partition %s of %s: state at offset %s, log end %s, nothing taken for %.0fs "
                        "(Faust's read offset %s); seeking it to %s", tp.partition, tp.topic, offset,
                        ends[tp], self._stalls.after_s, consumer._read_offset.get(tp), offset + 1)
            await consumer.seek_wait({tp: offset + 1})

    # -- outputs -------------------------------------------------------------------------------

    def _outputs(self, lane: str = "events") -> Batch | _FaustBatch:
        """A batch of outputs: librdkafka's producer of ``lane`` under at_least_once
        (stream/outputs.py), Faust's under exactly_once (its transactions must hold them).
        The ADT batch waits for its outputs' acknowledgements, so the "events" lane lingers
        WARDSTREAM_EVENTS_LINGER (librdkafka's requests are cheap); the KPI lane keeps
        WARDSTREAM_PRODUCER_LINGER."""
        app = self.app
        if app.conf.processing_guarantee != ProcessingGuarantee.AT_LEAST_ONCE:
            return _FaustBatch(app)
        if lane not in self._output_producers:
            linger = self.tuning.events_linger if lane == "events" else app.conf.producer_linger
            self._output_producers[lane] = OutputProducer(self.settings, linger_s=linger,
                                                          client_id=f"wardstream-stream-{lane}")
        return self._output_producers[lane].batch()

    async def _close_outputs(self, app: faust.App, **kwargs: Any) -> None:
        self._refetch.close()
        if self._admin is not None:
            self._admin.close()
        for producer in self._output_producers.values():  # anything left is re-sent by the re-processing
            left = producer.close(timeout=5)
            if left:
                log.warning("%s outputs not delivered at the stop; their batch is re-processed", left)

    async def _journal_acked(self) -> None:
        """Until the batch journal is acknowledged, having Faust's producer send it without its
        linger (``faust_patches.send_lingering``) as soon as it reaches the producer."""
        while pending := [f for f in self._journal_sends if not f.done()]:
            faust_patches.send_lingering(self.app.producer)
            await asyncio.wait(pending, timeout=JOURNAL_POLL_S)
        await _acked(self._journal_sends)

    def _stopping(self, exc: BaseException) -> bool:
        """A send cut off by the worker's own stop (the batch is re-processed after the restart)."""
        if isinstance(exc, (NotReady, ProducerSendError)) and self.app.should_stop:
            log.info("batch cut short by the stop; it is re-processed at the next start")
            return True
        return False

    # -- KPI flushes ---------------------------------------------------------------------------

    async def flush_kpis(self) -> None:
        """Emit the KPI windows whose inputs changed since the last flush.

        While a backlog is replayed every flush re-emits the same current windows; skipping
        ticks after a long flush (duty cycle) cuts that volume without changing any final value.
        Not while Faust rebalances or stops and the combiner holds records: Faust waits for
        every message taken to be acknowledged first, and the combiner acknowledges by a flush.
        """
        started = time.monotonic()
        urgent = (self.app.rebalancing or self.app.should_stop) and self._kpi_unacked
        if started < self._next_flush and not urgent:
            return
        await self._flush()
        self._next_flush = started + min((time.monotonic() - started) / FLUSH_DUTY, FLUSH_MAX_SKIP_S)

    async def _flush(self) -> None:
        """Send the changed KPI windows; once Kafka has them all, acknowledge the records they
        cover (so Kafka may commit them)."""
        yield_s = self.tuning.flush_yield_s
        async with self._flush_lock:
            covered, self._kpi_unacked = self._kpi_unacked, []
            assignments = self._assignments
            batches = self.combiner.flush_batches()  # the dirty set of the records in ``covered``
            if batches is None:  # its table is not recovered yet
                self._kpi_unacked[:0] = covered
                return
            try:
                sent = self._outputs("kpis")
                slice_start = time.monotonic()

                async def pause() -> None:  # the agents (and alerts) keep running meanwhile
                    nonlocal slice_start
                    if time.monotonic() - slice_start < FLUSH_SLICE_S:
                        await asyncio.sleep(0)
                    else:
                        await asyncio.sleep(yield_s)
                        slice_start = time.monotonic()

                for batch in batches:
                    for n, (key, value) in enumerate(batch, start=1):
                        await sent.send(self.kpis_topic, key.encode(), value)
                        if n % FLUSH_YIELD_EVERY == 0:
                            await pause()
                    await pause()  # and between dimensions
                await sent.acked()  # a window Kafka refused crashes the worker, not lost silently
            except (NotReady, ProducerSendError) as exc:
                if not self._stopping(exc):  # the windows not sent are re-sent by the next worker
                    raise
                return
            if self._kpi_stream is not None and assignments == self._assignments:
                await _ack(self._kpi_stream, covered)  # (after a rebalance they come again)
            elif covered:
                log.info("KPI flush of %d partials done across a rebalance: not acknowledged", len(covered))

    async def _on_assigned(self, app: faust.App, assigned: Any, **kwargs: Any) -> None:
        # The tables are the truth after a rebalance: drop in-memory copies.
        self.flow.forget_cache()
        self.combiner.forget_cache()
        if self._kpi_unacked:
            log.info("rebalance: %d partials taken but not flushed are delivered again", len(self._kpi_unacked))
        self._kpi_unacked.clear()  # delivered again from the committed offsets
        self._assignments += 1
        self.monitor.forget()
        self._commits.forget()
        self._stalls.forget()
