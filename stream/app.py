"""The Faust app: topics, tables, agents and timers. Thin wiring; the logic lives elsewhere.

:func:`create_worker` builds the app from :class:`wardstream.config.Settings` (``wardstream
worker`` calls it at start; importing this module reads no setting and changes nothing): Faust
patched (:mod:`stream.faust_patches`), the bare app (:mod:`stream.faust_app`: app id, guarantee,
credentials, RocksDB caps), then :class:`Pipeline`, which declares every topic and table
(``_topics_and_tables``) and registers every agent and timer (``_register``):

* agents ``process_adt`` and ``process_merges`` (here): hospital.adt and hospital.adt-merges ->
  the ADT flow (:mod:`stream.adt_flow`) -> its outputs, then its state;
* agents ``combine_kpis``, ``load_reference`` and timer ``flush_kpis``: :mod:`stream.kpi_agent`;
* agent ``monitor_health`` (here): hospital.health-partials -> :mod:`stream.health_monitor`;
* timer ``watch_partitions`` and the read-back of skipped messages: :mod:`stream.partition_watch`.

A worker runs both sides by default; with ``WARDSTREAM_WORKER_ROLE`` (``wardstream worker
--role``) ``adt`` it runs the ADT agents only and ``kpis`` the KPI and health agents only, as a
Faust app of its own (stream/README.md "Roles"): the two sides then take a process, and a
core, each. Each side declares only its own tables.

Agent and timer names are ``stream.app.<function>`` wherever the function lives, so what Faust
and the worker's logs know them by does not depend on the module layout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import date
from functools import partial
from typing import Any

import faust
import mode
from faust.types import EventT

from contracts.events import Topics
from stream import adt_flow, faust_patches, health_monitor
from stream.continuity import Item
from stream.faust_app import JSON, create_app, rocksdb_options
from stream.faust_batch import JournalSends, ack, as_event, gathered, stopping, waiting
from stream.kpi_agent import KpiAgent, progress_header
from stream.output_lanes import OutputLanes
from stream.partition_watch import PartitionWatch, written_offset
from stream.staged import Staged
from wardstream.config import Settings
from wardstream.kafka_io import key_partition


def create_worker(s: Settings) -> faust.App:
    """The stream app, ready for ``faust.Worker``: Faust patched (:mod:`stream.faust_patches`),
    the state directory created, every topic, table, agent and timer registered."""
    faust_patches.apply(fetch_max_wait_ms=s.stream.fetch_max_wait_ms)
    app = create_app(s)
    Pipeline(app, s)
    return app


def _bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class Pipeline:
    """The worker's topics, tables, agents and timers on ``app``, and the state they share.

    Building it registers everything with the app: topics and tables in
    :meth:`_topics_and_tables`, agents, timers and signal handlers in :meth:`_register`.
    """

    def __init__(self, app: faust.App, s: Settings) -> None:
        self.app = app
        self.settings = s
        self.tuning = s.stream
        # what this worker runs (WARDSTREAM_WORKER_ROLE): the ADT side, the KPI side, or both
        self.adt_side, self.kpi_side = s.stream.role != "kpis", s.stream.role != "adt"
        self._topics_and_tables()
        self.outputs = OutputLanes(app, s)
        done: dict[str, Callable[[int], int]] = {}  # per input topic, a partition's last offset done
        if self.adt_side:
            self.journal = JournalSends(app, self.partition_state)  # only the ADT flow's commit writes it
            # the journaled tables' writes: in Kafka before the next batch's journal replaces this one's
            self.state_sends = JournalSends(app, self.patients, self.due, self.models, self.health, self.kpi)
            self._flow_lock = asyncio.Lock()  # one batch of the flow at a time (process_adt, process_merges)
            # hospital.adt partition -> the latest day of the KPI records its batches sent from here
            self._sent_days: dict[int, date] = {}
            self.flow = adt_flow.AdtFlow(source_topic=self.topics.adt, patients=self.patients,
                                         partitions=self.partition_state, due=self.due, models=self.models,
                                         alert_share=s.alert_share_for, health=self.health, kpi=self.kpi)
            done[self.topics.adt] = written_offset(self.partition_state)
            done[self.topics.adt_merges] = written_offset(self.partition_state, "merge_offset")
        if self.kpi_side:
            self.health_state = Staged(self.health_days)
            self.monitor = health_monitor.HealthMonitor(self.health_state)
            # the ADT side's backlog: asked here when it runs beside, else from the partials' headers
            progress = dict(behind=self.behind, sent_day=self._sent_day) if self.adt_side else {}
            self.kpis = KpiAgent(app, s, days=self.kpi_days, partials_topic=self.kpi_partials_topic,
                                 kpis_topic=self.topics.kpis, outputs=self.outputs, **progress)
            done[self.topics.kpi_partials] = self.kpis.flushed_offset
            done[self.topics.reference] = self.kpis.reference_offset
        self.watch = PartitionWatch(app, s, self.adt_topic, done=done)
        self._register()

    def _topics_and_tables(self) -> None:
        app, n = self.app, self.settings.adt_partitions
        self.topics = topics = Topics(self.settings.topic_namespace)

        def topic(name: str, partitions: int | None = n) -> faust.TopicT:
            return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=partitions)

        self.adt_topic = topic(topics.adt)
        self.merges_topic = topic(topics.adt_merges)
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
            adt_flow.MERGES: topics.adt_merges,
        }
        self.kpis_topic = topics.kpis
        options = rocksdb_options(self.tuning)

        def table(name: str, help: str, partitions: int = n) -> faust.Table:
            # a copy each: Faust's RocksDB store pops keys from the options it is given
            return app.Table(name, default=None, partitions=partitions, schema=JSON, help=help,
                             options=dict(options))

        if self.adt_side:  # each side's tables only in the app that runs it
            self.patients = table("patients", "PatientState by patient_id")
            self.partition_state = table("partition_state", "p{partition}: event-time watermark, last offset")
            self.due = table("due", "p{partition}:{day}: patients with a pending discharge due that day")
            self.models = table("models", "p{partition}: the partition's river model (bytes) and alert policy")
            self.kpi = table("kpi", "k{partition}|{day}|{shard}: the ADT partition's KPI day buckets")
            self.health = table("health", "h{partition}|{facility}|{day}: health aggregates; "
                                          "e{partition}|{facility}: error detector")
        if self.kpi_side:
            self.kpi_days = table("kpi_days", "d|{day}|{shard}: the latest KPI partial per dimension and "
                                              "ADT partition; cap|{provider_id}: capacity")
            self.health_days = table("health_days", "d|{facility}|{day}|{adt partition}: the last "
                                                    "health-partials record; f|{facility}: its days")

    def _register(self) -> None:
        """Every agent, timer and signal handler of the worker (of the sides it runs)."""
        app = self.app
        app.timer(interval=5.0, name="stream.app.watch_partitions")(self.watch.watch_partitions)
        app.on_before_shutdown.connect(self._close_outputs)
        # An agent that raises stops the worker (its supervisor starts a new one from the
        # changelogs). Faust's default restarts the agent in the process instead, but the crashed
        # agent's taken messages stay unacknowledged: the next rebalance waits for them until
        # the group drops the worker, which then still writes changelogs for partitions it no
        # longer owns (a chaos soak run lost KPI state that way).
        agent = partial(app.agent, concurrency=1, supervisor_strategy=mode.CrashingSupervisor)
        if self.adt_side:
            agent(self.adt_topic, name="stream.app.process_adt")(self.process_adt)
            agent(self.merges_topic, name="stream.app.process_merges")(self.process_merges)
        if self.kpi_side:
            kpis = self.kpis
            agent(self.kpi_partials_topic, name="stream.app.combine_kpis")(kpis.combine_kpis)
            agent(self.reference_topic, name="stream.app.load_reference")(kpis.load_reference)
            agent(self.health_partials_topic, name="stream.app.monitor_health")(self.monitor_health)
            app.timer(interval=self.tuning.kpi_flush_seconds, name="stream.app.flush_kpis")(kpis.flush_kpis)
        app.on_partitions_assigned.connect(self._on_assigned)

    def behind(self, taken_now: Mapping[int, int] | None = None) -> bool:
        """Whether more than a batch of hospital.adt messages waits past the flow's state on this
        worker's partitions, by the log ends its fetches last saw (then KPI flushes settle);
        ``taken_now``: the last offset per partition of a batch not yet in the state."""
        def taken(partition: int) -> int:
            if taken_now and partition in taken_now:
                return taken_now[partition]
            return adt_flow.taken_offset(self.partition_state.get(adt_flow.partition_key(partition)))

        return sum(waiting(self.app, self.topics.adt, taken).values()) > self.tuning.adt_batch

    def _sent_day(self) -> date | None:
        """The latest day of the KPI records this worker's ADT side sent."""
        return max(self._sent_days.values(), default=None)

    def _waiting_past(self, held: list[EventT]) -> int:
        """The hospital.adt messages past the last of ``held`` on each of their partitions."""
        last: dict[int, int] = {}
        for event in held:
            last[event.message.partition] = max(event.message.offset, last.get(event.message.partition, -1))
        return sum(waiting(self.app, self.topics.adt, last.get).values())

    async def _on_assigned(self, app: faust.App, assigned: Any, **kwargs: Any) -> None:
        # The tables are the truth after a rebalance: drop in-memory copies.
        if self.adt_side:
            self.flow.forget_cache()
            self._sent_days.clear()
        if self.kpi_side:
            self.kpis.on_assigned()
            self.monitor.forget()
        self.watch.forget()

    async def _close_outputs(self, app: faust.App, **kwargs: Any) -> None:
        self.watch.close()
        self.outputs.close()
        if self.kpi_side:
            self.kpis.close()

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
        await self._apply(stream, self.flow.applied_offset, self._adt_step, gather=True)

    def _adt_step(self, item: Item) -> list[adt_flow.Output]:
        return self.flow.process(item.value, item.partition, item.offset, key=item.key, commit=False)

    async def process_merges(self, stream: faust.StreamT) -> None:
        """hospital.adt-merges -> the later steps of patient merges (stream/domain/merges.py),
        through the same flow, state and batch protocol as :meth:`process_adt` (one at a time:
        both agents hold the flow's lock while a batch is staged)."""
        flow = self.flow
        await self._apply(stream, partial(flow.applied_offset, field="merge_offset"),
                          lambda item: flow.process_merge(item.value, item.partition, item.offset, commit=False))

    async def _apply(self, stream: faust.StreamT, applied: Callable[[int], int],
                     process: Callable[[Item], list[adt_flow.Output]], gather: bool = False) -> None:
        """The batch loop of both agents; ``gather``: join batches while hospital.adt has a
        backlog (:func:`stream.faust_batch.gathered`)."""
        n, t = self.settings.adt_partitions, self.tuning
        past = self._waiting_past if gather and t.adt_batch_gather > 0 else (lambda held: 0)
        async for events in gathered(stream, t.adt_batch, t.adt_batch_within, past, t.adt_batch_gather):
            async with self._flow_lock:
                contexts = await self._apply_batch(lambda: self.watch.in_line(events, applied), process, n)
                if contexts is None or not await self._apply_set_aside(contexts, n):
                    return
            await ack(stream, events)

    async def _apply_set_aside(self, contexts: dict[int, EventT], n: int) -> bool:
        """The ADT messages set aside while a merge was in flight, once the batch that landed it
        is committed (``AdtFlow.read_backs``): read back from Kafka and applied in order, in
        batches of at most an ADT batch's share of one partition (a batch's journal is one
        Kafka record per partition, at most 1 MB). A stop or crash in between loses nothing:
        the state's offset stays at the last one applied, so the ADT agent reads the rest back
        from Kafka at the partition's next message, or the stall watch seeks back to it after
        ``WARDSTREAM_STALL_SECONDS`` (stream/partition_watch.py). False: stopping."""
        step = max(1, self.tuning.adt_batch // n)
        for partition, offsets in self.flow.read_backs():
            for start in range(offsets.start, offsets.stop, step):
                chunk = range(start, min(start + step, offsets.stop))
                read = partial(self.watch.read_back, partition, chunk, contexts[partition])
                if await self._apply_batch(read, self._adt_step, n) is None:
                    return False
        return True

    async def _apply_batch(self, take: Callable[[], Awaitable[list[Item]]],
                           process: Callable[[Item], list[adt_flow.Output]], n: int
                           ) -> dict[int, EventT] | None:
        """One batch of :meth:`_apply` (the protocol: :meth:`process_adt`): the messages
        ``take`` gives, each through ``process``. Returns the event each partition's writes
        were filed under; None: stopping."""
        flow = self.flow
        last: dict[int, EventT] = {}
        try:
            batch = self.outputs.batch()
            taken = await take()

            async def send(outputs: list[adt_flow.Output]) -> None:
                for out in outputs:
                    await batch.send(self.out[out.topic], _bytes(out.key), out.value,
                                     out.partition if out.route is None else key_partition(out.route, n),
                                     out.headers)

            for item in taken:
                last[item.partition] = item.context
                with as_event(item.context):
                    outputs = process(item)
                await send(outputs)  # scores, alerts, labels, accepted events, merge hops, dead letters
            sent_days = flow.kpi_tally.staged_days()
            # a dimension's (a facility's) records to one partition, with this side's progress
            await send(self._with_progress(flow.partials(n), taken, sent_days))
            await batch.acked()  # every output acknowledged (raises if one failed)
            await self.state_sends.acked()  # the previous batch's state, before its journal is replaced
            self.state_sends.clear()
        except BaseException as exc:  # stopped or failed before the outputs were in: state as before
            flow.rollback()
            if stopping(self.app, exc):
                return None
            raise
        scope = lambda partition: as_event(last[partition])  # noqa: E731
        flow.commit_journal(scope)  # the batch is decided: a restart re-applies its journal
        try:
            await self.journal.acked()  # in Kafka before any write it journals (adt_flow.py)
        except BaseException as exc:
            flow.rollback()
            if stopping(self.app, exc):
                return None
            raise
        finally:
            self.journal.clear()
        flow.commit_state(scope)
        await self.state_sends.send_now()  # in flight while the next batch is processed
        self.watch.moved(taken)
        for partition, day in sent_days.items():
            self._sent_days[partition] = max(day, self._sent_days.get(partition, day))
        return last

    def _with_progress(self, outputs: list[adt_flow.Output], taken: list[Item],
                       staged_days: dict[int, date]) -> list[adt_flow.Output]:
        """The KPI partials among ``outputs`` with the ADT side's progress after the batch that
        ``taken`` is as a header, for a KPI side that runs in another process
        (:class:`stream.kpi_agent.AdtProgress`)."""
        adt = self.topics.adt
        taken_now = {item.partition: item.offset for item in taken if item.context.message.topic == adt}
        header = progress_header(self.behind(taken_now),
                                 max([*self._sent_days.values(), *staged_days.values()], default=None))
        return [replace(out, headers=(*out.headers, header)) if out.topic == adt_flow.KPI_PARTIALS else out
                for out in outputs]

    async def monitor_health(self, stream: faust.StreamT) -> None:
        """hospital.health-partials -> hospital.model-health (stream/health_monitor.py): a batch's
        records kept, the checks of the windows they touched sent and acknowledged, then the
        records written and acknowledged. Replace semantics: a batch delivered again after a
        crash changes nothing."""
        monitor, state = self.monitor, self.health_state
        async for events in stream.noack_take(self.tuning.adt_batch, within=self.tuning.kpi_batch_within):
            last = {event.message.partition: event for event in events}
            scope = lambda partition: as_event(last[partition])  # noqa: E731
            try:
                batch = self.outputs.batch("kpis")
                for event in events:
                    state.partition = event.message.partition
                    with as_event(event):
                        monitor.add(event.value)
                for key, value in health_monitor.messages(monitor.evaluate(scope)):
                    await batch.send(self.topics.model_health, key.encode(), value)
                await batch.acked()
            except BaseException as exc:
                state.rollback()
                monitor.forget()
                if stopping(self.app, exc):
                    return
                raise
            state.commit(scope)
            await ack(stream, events)
            await asyncio.sleep(0)
