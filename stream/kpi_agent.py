"""The worker's KPI side: agents ``combine_kpis`` and ``load_reference``, timer ``flush_kpis``.

hospital.kpi-partials (and provider capacity from hospital.reference, as one more partial) ->
:class:`stream.kpi_combiner.KpiCombiner` and its table ``kpi_days`` -> hospital.kpis.

One offset truth, Kafka's committed offset: the agent takes its records with ``noack_take`` and
acknowledges them only when a flush that covers them has been acknowledged by Kafka, so the
group's committed offset on hospital.kpi-partials says every window up to it is out. After a
crash or a rebalance the records past it are delivered again and their windows re-sent (replace
semantics: nothing counts twice). Faust waits, before a rebalance and before a stop, until
every message taken is acknowledged, so the timer flushes at once when the agent holds records
then. While the worker's ADT side or its combiner reads a backlog (a replay, a catch-up),
flushes settle: a window's KPI waits until it can no longer change in event time
(``KpiCombiner.flush_batches``), and the records behind what waits are acknowledged once it has
gone out. Whether the ADT side has a backlog comes from that side when it runs in the same
worker, else from the partials' ``wardstream-adt`` header (:class:`AdtProgress`). Wiring in
:class:`stream.app.Pipeline`; the flush's timing is stream/README.md's "KPI flushes" and
"Settling flushes in a backlog".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any, Generic, TypeVar

import faust
from faust.exceptions import NotReady, ProducerSendError
from faust.types import EventT

from contracts.events import ProviderRef, parse_reference
from stream import kpi_tally
from stream.continuity import CommittedLine, Item
from stream.faust_batch import ack, as_event, stopping, waiting
from stream.kpi_combiner import KpiCombiner
from stream.output_lanes import OutputLanes
from stream.staged import Staged
from wardstream.config import Settings
from wardstream.kafka_io import key_partition

log = logging.getLogger(__name__)
R = TypeVar("R")

FLUSH_DUTY = 0.25  # at most this share of the worker's time goes to timed KPI flushes
FLUSH_MAX_SKIP_S = 10.0  # the longest pause between two timed flushes (a flush that waited on a
# broker outage is long without having cost any CPU)
FLUSH_YIELD_EVERY = 100  # KPI messages sent between two yields to the event loop
# A yield is a sleep of WARDSTREAM_FLUSH_YIELD_S once the flush has run FLUSH_SLICE_S since the
# last one (else sleep(0)). With sleep(0) only, the flush was always ready to run again, and the
# ADT agent took no batch until a 0.2-0.7 s flush ended; sleeping at every yield made a backlog's
# flushes slower by the sum of the sleeps. The slice bounds that to ~10% of a flush.
FLUSH_SLICE_S = 0.01


ADT_HEADER = "wardstream-adt"  # on each hospital.kpi-partials bundle: b"{sender}|{behind 0/1}|{day}"
SENDER = f"{socket.gethostname()}:{os.getpid()}"  # this process, as the ADT side that sends
SENDER_EXPIRY_S = 30.0  # a sender heard from no longer for this long (gone) has no backlog


def progress_header(behind: bool, day: date | None) -> tuple[str, bytes]:
    """The ``wardstream-adt`` header of the partials a batch of this process's ADT side sends:
    whether that side has a backlog, and the latest day of the KPI records it has sent.

    >>> progress_header(True, date(2025, 3, 4))[1].split(b"|")[1:]
    [b'1', b'2025-03-04']
    """
    return ADT_HEADER, f"{SENDER}|{int(behind)}|{day.isoformat() if day else ''}".encode()


class AdtProgress:
    """The ADT side's progress as the partials' ``wardstream-adt`` headers report it, for a KPI
    side that runs in a process of its own (role ``kpis``): behind while any sender's latest
    header said so (a sender silent for ``SENDER_EXPIRY_S`` is left out: gone, or idle, and an
    idle side has no backlog), and the latest day any sender reported.

    >>> p = AdtProgress(clock=lambda: 0.0)
    >>> p.saw([progress_header(True, date(2025, 3, 4))]); p.behind(), p.sent_day()
    (True, datetime.date(2025, 3, 4))
    >>> p.saw({ADT_HEADER: progress_header(False, None)[1]}); p.behind(), p.sent_day()
    (False, datetime.date(2025, 3, 4))
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._senders: dict[bytes, tuple[bool, float]] = {}  # sender -> (behind, when heard)
        self._day: date | None = None

    def saw(self, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> None:
        """Take a partials message's headers (Faust gives a mapping or ``(key, value)`` pairs)."""
        pairs: Any = headers.items() if isinstance(headers, Mapping) else headers or ()
        for key, value in pairs:
            if key != ADT_HEADER or not value:
                continue
            sender, flag, day = value.split(b"|")
            self._senders[sender] = (flag == b"1", self._clock())
            if day:
                d = date.fromisoformat(day.decode())
                self._day = d if self._day is None else max(d, self._day)

    def behind(self) -> bool:
        now = self._clock()
        return any(flag and now - heard < SENDER_EXPIRY_S for flag, heard in self._senders.values())

    def sent_day(self) -> date | None:
        return self._day


class KpiAgent:
    """The combiner, its staged table ``kpi_days``, and the records it holds until a flush.

    ``behind`` says whether the ADT side has a backlog, ``sent_day`` the latest day of the KPI
    records it sent (then flushes settle: :meth:`_settling`): given by the worker when it runs
    the ADT side too, else read from the partials' headers (:class:`AdtProgress`).
    """

    def __init__(self, app: faust.App, s: Settings, *, days: faust.Table, partials_topic: faust.TopicT,
                 kpis_topic: str, outputs: OutputLanes, behind: Callable[[], bool] | None = None,
                 sent_day: Callable[[], date | None] | None = None) -> None:
        self.app = app
        self.settings = s
        self.tuning = s.stream
        self.partials_topic = partials_topic
        self.kpis_topic = kpis_topic
        self.outputs = outputs
        self.progress = AdtProgress() if behind is None or sent_day is None else None
        self.behind = behind or self.progress.behind  # type: ignore[union-attr]
        self.sent_day = sent_day or self.progress.sent_day  # type: ignore[union-attr]
        self.state = Staged(days)
        self.combiner = KpiCombiner(days=self.state, ready=lambda: app.tables.recovery.completed.is_set())
        # the records applied since the last flush began: acknowledged (so Kafka may commit them)
        # once a flush that covers them is acknowledged by Kafka
        self._stream: faust.StreamT | None = None
        self._unacked: list[EventT] = []
        self._held = HeldRecords[EventT]()  # records flushed while KPIs they changed were held
        self._flushed: dict[int, int] = {}  # partition -> the last record a flush acknowledged
        self._assignments = 0  # rebalances so far: a flush begun before one acknowledges nothing
        self._next_flush = 0.0
        self._lag = False  # the last answer of :meth:`_lagging`
        self._flush_lock = asyncio.Lock()  # one flush at a time: each acknowledges what it covered
        # each input continues from the group's commit: what Faust skips is read back
        self._partials_line = CommittedLine(app.conf.id, s)
        self._reference_line = CommittedLine(app.conf.id, s)

    async def combine_kpis(self, stream: faust.StreamT) -> None:
        """hospital.kpi-partials -> the combiner's table (flushed to hospital.kpis by the timer).

        A batch at a time, its table writes staged and written once per key at the end. The
        records are acknowledged only by the flush that covers them (:meth:`_flush`), so Kafka's
        committed offset is the combiner's progress: a restart delivers the rest again, and the
        combiner re-sends their windows (replace semantics: nothing counts twice).
        """
        combiner, state = self.combiner, self.state
        self._stream = stream
        async for events in stream.noack_take(self.tuning.adt_batch, within=self.tuning.kpi_batch_within):
            last = {event.message.partition: event for event in events}
            if self.progress is not None:
                for event in events:
                    self.progress.saw(event.headers)
            taken = await self._partials_line.take(events)
            try:
                for item in taken:
                    state.partition = item.partition
                    with as_event(item.context):
                        combiner.put(item.value, item.partition)
            except BaseException:
                state.rollback()
                combiner.forget_cache()  # its in-memory buckets hold the rolled-back records
                raise
            state.commit(lambda partition: as_event(last[partition]))
            self._partials_line.moved(taken)
            self._unacked.extend(events)
            # dirty (dimension, day) pairs after which the agent flushes at once: in a backlog (a
            # replay, a catch-up) simulated months pass between two timer ticks, and their buckets
            # could not leave memory before their windows went out (bench/README.md "Worker memory")
            if combiner.pending_days() > self.tuning.kpi_flush_pending_days:
                await self._flush(settle=self._settling())
            await asyncio.sleep(0)

    async def load_reference(self, stream: faust.StreamT) -> None:
        """hospital.reference -> provider capacity (provider_utilization's denominator), as one
        more record on hospital.kpi-partials, on the partition of the provider's records."""
        async for event in stream.events():
            taken = await self._reference_line.take([event])
            for item in taken:
                await self._send_capacity(item)
            self._reference_line.moved(taken)

    async def _send_capacity(self, item: Item) -> None:
        """A provider's capacity from its reference record, in Kafka before the record is
        acknowledged (else a record committed with its send lost leaves the provider's
        utilization without a denominator for good)."""
        try:
            record = parse_reference(item.value)
        except ValueError:
            log.warning("ignoring an invalid reference record at offset %s", item.offset)
            return
        if isinstance(record, ProviderRef):
            key, to, value = kpi_tally.capacity_partial(record.provider_id, record.facility_id, record.capacity)
            sent = await self.partials_topic.send(key=key.encode(), value=value,
                                                  partition=key_partition(to, self.settings.adt_partitions))
            await sent

    async def flush_kpis(self) -> None:
        """Emit the KPI windows whose inputs changed since the last flush.

        While a backlog is replayed every flush re-emits the same current windows; skipping
        ticks after a long flush (duty cycle) cuts that volume without changing any final value.
        Not while Faust rebalances or stops and the combiner holds records: Faust waits for
        every message taken to be acknowledged first, and the combiner acknowledges by a flush.
        """
        started = time.monotonic()
        urgent = (self.app.rebalancing or self.app.should_stop) and (self._unacked or self._held)
        if started < self._next_flush and not urgent:
            return
        await self._flush(settle=not urgent and self._settling())
        self._next_flush = started + min((time.monotonic() - started) / FLUSH_DUTY, FLUSH_MAX_SKIP_S)

    def _settling(self) -> bool:
        """Whether a flush now holds back the KPIs that may still change: while the worker is
        behind its ADT input or the combiner behind the ADT side (:meth:`_lagging`), and
        ``WARDSTREAM_KPI_SETTLE`` is on; else every KPI goes out live."""
        return self.tuning.kpi_settle and (self.behind() or self._lagging())

    def _lagging(self) -> bool:
        """Whether the combiner reads a backlog that this worker's ADT side may not see
        (:meth:`KpiCombiner.lagging`): the tail of a replay, when the ADT side is done and weeks
        of event time wait on hospital.kpi-partials, an input partition Faust reads weeks behind
        the others, or another worker's ADT partitions still behind. Flushes that went out live
        there re-sent each window at every flush crossing it. Faust delivers the partials in
        bursts up to seconds apart: after a flush interval with no record put, the last answer
        stands while partials wait (else that flush would send all that was held)."""
        if self.combiner.put_since_flush:
            self._lag = self.combiner.lagging(self.sent_day())
        elif self._lag:
            self._lag = self._partials_waiting()
        return self._lag

    def _partials_waiting(self) -> bool:
        """Whether a hospital.kpi-partials partition the agent takes from has messages past the
        last one it took, by the log ends its fetches last saw (Faust's public consumer API)."""
        def taken(partition: int) -> int | None:  # None: not taken from since the assignment
            return last if (last := self._partials_line.last_moved(partition)) >= 0 else None

        return any(n > 0 for n in waiting(self.app, self.partials_topic.get_topic_name(), taken).values())

    async def _flush(self, settle: bool = False) -> None:
        """Send the changed KPI windows; once Kafka has them all, and the table writes of the
        records they cover, acknowledge those records (so Kafka may commit them).

        Faust sends a table's changelog writes in the background and commits offsets without
        waiting for them, so a record committed before its ``kpi_days`` write is in Kafka would
        be lost to a SIGKILL: the next owner restores a table without it and never gets the
        record again. Flushing Faust's producer first closes that gap."""
        yield_s = self.tuning.flush_yield_s
        async with self._flush_lock:
            covered, self._unacked = self._unacked, []
            assignments = self._assignments
            # the dirty set of the records in ``covered``
            batches = self.combiner.flush_batches(settle=settle)
            if batches is None:  # its table is not recovered yet
                self._unacked[:0] = covered
                return
            # the frontier the flush settles at, before records put meanwhile move it
            frontier, release = self.combiner.frontier, self.combiner.release_day()
            try:
                sent = self.outputs.batch("kpis")
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
                await self.app.producer.flush()  # the covered records' table writes (above)
            except (NotReady, ProducerSendError) as exc:
                if not stopping(self.app, exc):  # the windows not sent are re-sent by the next worker
                    raise
                return
            if self._stream is not None and assignments == self._assignments:
                self._held.covered(covered, release)
                done = self._held.settled(frontier, settle)
                await ack(self._stream, done)  # (after a rebalance they come again)
                for event in done:
                    partition = event.message.partition
                    self._flushed[partition] = max(self._flushed.get(partition, -1), event.message.offset)
            elif covered:
                log.info("KPI flush of %d partials done across a rebalance: not acknowledged", len(covered))

    def flushed_offset(self, partition: int) -> int:
        """The last hospital.kpi-partials offset of ``partition`` whose windows are out (-1: none
        since the last assignment). The commit watch (stream/partition_watch.py) commits the
        group up to it where Faust's commit stays behind: Faust never commits past records the
        agent read back itself (:class:`stream.continuity.CommittedLine`)."""
        return self._flushed.get(partition, -1)

    def reference_offset(self, partition: int) -> int:
        """The last hospital.reference offset of ``partition`` whose capacity record is in Kafka
        (-1: none known); the commit watch commits the group up to it, as for the partials."""
        return self._reference_line.last_moved(partition)

    def on_assigned(self) -> None:
        """After a rebalance: the table is the truth (in-memory buckets dropped), and the records
        taken but not flushed are delivered again from the committed offsets."""
        self.combiner.forget_cache()
        self._partials_line.forget()
        self._reference_line.forget()
        if self._unacked or self._held:
            log.info("rebalance: %d partials taken but not flushed are delivered again",
                     len(self._unacked) + len(self._held))
        self._unacked.clear()
        self._held.clear()
        self._flushed.clear()
        self._assignments += 1

    def close(self) -> None:
        self._partials_line.close()
        self._reference_line.close()


class HeldRecords(Generic[R]):
    """Records a KPI flush covered, in taking order, with the frontier by which every KPI that
    flush held back has settled (``KpiCombiner.release_day``; None: nothing could be held)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[R, date | None]] = []

    def covered(self, records: list[R], release: date | None) -> None:
        self._waiting += [(r, release) for r in records]

    def settled(self, frontier: date | None, settle: bool) -> list[R]:
        """The records to acknowledge after a flush at ``frontier``: all, unless it settled
        (then those whose release day it reached: a prefix, as release days only grow)."""
        n = len(self._waiting)
        if settle:
            n = next((i for i, (_, day) in enumerate(self._waiting)
                      if day is not None and (frontier is None or day > frontier)), n)
        done, self._waiting = self._waiting[:n], self._waiting[n:]
        return [r for r, _ in done]

    def __len__(self) -> int:
        return len(self._waiting)

    def clear(self) -> None:
        self._waiting.clear()
