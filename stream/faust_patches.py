"""Workarounds for faust-streaming 0.15.3 bugs that lose or stall messages; applied by ``stream.app``.

All three were seen in the scale-out drill (tests/test_faults.py: input arriving while a second
worker joins, then that worker leaving). After a
rebalance Faust suspends the flow, clears its queues, restores the tables and seeks each stream
partition to its committed offset (``perform_seek`` -> ``seek_to_committed``), then resumes.

1. **Partitions never committed are not sought.** aiokafka's ``seek_to_committed`` only seeks
   when the committed offset is > 0, so such a partition keeps the fetch position it reached
   before the queues were cleared: the messages fetched meanwhile are never processed (a new
   worker began partition 1 at offset 288). The patch seeks them: to offset 0 if committed
   there, else to the partition's beginning.
2. **Records fetched before the seek are delivered after it.** A fetch in flight during the
   rebalance returns pre-seek records once the flow resumes. Faust takes the first such record
   as the partition's read offset (``_drain_messages``), counts the offsets in between as a
   "gap" (acked without processing), and then drops the re-fetched messages below it
   ("DROPPED MESSAGE ROFF"): messages lost, and the group's commits stuck at the one offset
   neither processed nor in the gap. The patch drops the records of a partition sought while
   the fetch was in flight and seeks it again to its target; a re-fetch can only repeat
   messages, which Faust's read offset and the agents' offset guards drop.

3. **Commits stuck behind the state.** In the two-worker drill the surviving worker's commits of
   three partitions stayed minutes behind a state that had applied every message (the state
   came from the changelogs; Faust delivered only the last message of each, which the agent
   skipped as a copy). Two things in Faust fit: it commits a partition only up to its first
   offset neither acked nor counted in a gap, and it records an offset as committed whatever
   its client did (``_commit_offsets`` updates ``_committed_offset`` even when the driver's
   ``_commit`` returned False on "already rebalanced" or left out a partition not assigned at
   that moment), then commits that partition only past the recorded offset. Messages the
   agents read back from Kafka themselves (:mod:`stream.continuity`) do not pass through Faust
   either. And in one run Faust's commits crawled, a dozen offsets per 30 s, behind a state
   already at the end. :class:`CommitWatch` compares the broker's committed offsets with each
   input's progress (the ADT flow's state; the KPI combiner's last acknowledged flush; the
   reference loader's last record) and commits a partition at it when it is behind at two
   looks in a row.

One for latency: Faust builds the worker's aiokafka consumer with ``fetch_max_wait_ms=1500``
fixed. aiokafka keeps one fetch in flight per broker, and leaves out of it every partition that
still has records the app has not taken. So while the ADT agent works through a batch, a fetch
can go out for the other partitions (KPI contributions, reference) only, and the broker holds it
up to 1.5 s when none of those get data: new ADT events wait that long (the worker trace is in
bench/README.md). :func:`_create_worker_consumer` sets the wait to ``WARDSTREAM_FETCH_MAX_WAIT_MS`` (default 100).
And :func:`send_lingering` has Faust's producer send what it holds for its linger at once: the
ADT agent waits for its batch journal's acknowledgement, so the linger was in every alert's time.

One for speed: aiokafka hashes every message key with a pure-Python murmur2 to pick its
partition (3% of the worker under a backlog, most of it for KPI windows whose keys recur at every
flush); :func:`_cache_murmur2` memoizes that pure function, the partitions stay the same.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import partitioner as aiokafka_partitioner
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

log = logging.getLogger(__name__)

_original_seek_to_committed = ThreadDelegateConsumer.seek_to_committed
_original_getmany = ThreadDelegateConsumer._getmany


class _Seeks:
    """Per consumer: how many seeks so far, and each stream partition's last seek target."""

    def __init__(self) -> None:
        self.epoch = 0
        self.targets: dict[TP, int] = {}


def _seeks(consumer: ThreadDelegateConsumer) -> _Seeks:
    seeks = consumer.__dict__.get("_wardstream_seeks")
    if seeks is None:
        seeks = consumer.__dict__["_wardstream_seeks"] = _Seeks()
    return seeks


FAR_BEHIND = 100  # offsets; a commit this far behind the state is logged at INFO


class CommitWatch:
    """Commits a partition itself when Faust's commit stays behind the agent's progress (3.).

    A timer calls :meth:`check` with the last offset of each partition whose work is in Kafka
    (for the ADT flow, its written state). A partition whose committed offset was below that at
    two looks in a row is committed at that offset + 1 (in the two-worker drill Faust's own
    commits crawled, a dozen offsets per 30 s, behind a state at the end of the log). Every
    offset it commits is done by construction, so a look that comes while Faust is merely behind costs a commit request,
    nothing else. Not under exactly_once (commits go through transactions).

    >>> w = CommitWatch(); tp = TP("t", 0)
    >>> w.due({tp: 427}, {tp: 763}), w.due({tp: 439}, {tp: 763})  # behind at two looks
    ({}, {TP(topic='t', partition=0): 764})
    >>> w.due({tp: 764}, {tp: 763})                               # caught up
    {}
    """

    def __init__(self) -> None:
        self._behind: set[TP] = set()  # partitions behind their progress at the previous look

    def forget(self) -> None:
        """After a rebalance: the partitions may have moved."""
        self._behind.clear()

    def due(self, committed: Mapping[TP, int | None], applied: Mapping[TP, int]) -> dict[TP, int]:
        """The offsets to commit now, given the committed offsets (next offset to read) and the
        last offsets done."""
        behind = {tp for tp, offset in applied.items()
                  if offset >= 0 and (committed.get(tp) is None or committed[tp] <= offset)}
        out = {tp: applied[tp] + 1 for tp in behind & self._behind}
        self._behind = behind
        return out

    async def check(self, consumer: Consumer, applied: Mapping[TP, int],
                    committed: Mapping[TP, int | None]) -> None:
        """``committed``: the group's offsets as the broker has them (Faust's own record can be
        ahead of them, see 3.)."""
        if consumer.in_transaction:
            return
        assignment = consumer.assignment()
        due = {tp: o for tp, o in self.due(committed, applied).items() if tp in assignment}
        if not due:
            return
        far = max((o - (committed.get(tp) or 0) for tp, o in due.items()), default=0) >= FAR_BEHIND
        log.log(logging.INFO if far else logging.DEBUG,  # a backlog keeps Faust a little behind
                "commits behind the agents' progress, committing (committed, last done + 1): %s",
                {f"{tp.topic}[{tp.partition}]": (committed.get(tp), offset) for tp, offset in due.items()})
        if await consumer._commit(due):
            consumer._committed_offset.update(due)
        else:
            log.warning("the broker refused the commit of %d partitions behind their progress "
                        "(the group rebalanced since); trying again at the next look", len(due))


async def _seek_to_committed(self: ThreadDelegateConsumer) -> Mapping[TP, int]:
    committed = await _original_seek_to_committed(self)
    changelogs = self.app.tables.changelog_topics  # positioned by the table recovery, not here
    streams = {tp: offset for tp, offset in committed.items() if tp.topic not in changelogs}
    unsought = [tp for tp, offset in streams.items() if not offset]  # None or 0
    targets = dict(streams)
    if unsought:
        earliest = await self.earliest_offsets(*unsought)
        targets.update({tp: streams[tp] if streams[tp] is not None else earliest[tp] for tp in unsought})
        await self.seek_wait({tp: targets[tp] for tp in unsought})
        log.info("sought %d partitions without a committed position", len(unsought))
    seeks = _seeks(self)
    seeks.epoch += 1
    seeks.targets.update(targets)
    return committed


async def _getmany(self: ThreadDelegateConsumer, active_partitions: Any, timeout: float) -> Any:
    seeks = _seeks(self)
    epoch = seeks.epoch
    records = await _original_getmany(self, active_partitions, timeout)
    if records and seeks.epoch != epoch:
        stale = {tp: seeks.targets[tp] for tp in list(records) if tp in seeks.targets}
        for tp in stale:
            del records[tp]
        if stale:
            await self.seek_wait(stale)  # in the consumer's thread
            log.info("dropped a fetch that overlapped a seek (%d partitions); fetching again", len(stale))
    return records


FETCH_MAX_WAIT_MS = 100  # set by apply() (WARDSTREAM_FETCH_MAX_WAIT_MS)
_original_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    """Faust's worker consumer, with the broker's wait for a fetch cut to ``FETCH_MAX_WAIT_MS``."""
    consumer = _original_create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its Fetcher
    return consumer


def send_lingering(producer: Any) -> None:
    """Have Faust's aiokafka producer send the batches it holds for their linger now.

    The ADT agent waits for its batch journal's acknowledgement before it writes the batch's
    state, so the journal's linger was in every alert's latency. Whatever lingers at that
    moment goes out with the journal; changelog writes made at other times (the batch's state,
    after the journal) keep their linger, and batching. The same steps as aiokafka's own
    ``MessageAccumulator.flush_for_commit``, without waiting. A no-op when the producer is not
    started (or aiokafka's internals moved: then the journal just waits its linger).
    """
    accumulator = getattr(getattr(producer, "_producer", None), "_message_accumulator", None)
    batches = getattr(accumulator, "_batches", None)
    if not batches:
        return
    for queue in batches.values():
        for batch in queue:
            batch._builder.close()
    waiter = accumulator._waiter_future
    if not waiter.done():
        waiter.set_result(None)


def _cache_murmur2() -> None:
    if not hasattr(aiokafka_partitioner.murmur2, "cache_info"):
        aiokafka_partitioner.murmur2 = functools.lru_cache(maxsize=1 << 16)(aiokafka_partitioner.murmur2)


def apply(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Install the patches (idempotent); the worker's fetches wait at most ``fetch_max_wait_ms``."""
    global FETCH_MAX_WAIT_MS
    FETCH_MAX_WAIT_MS = fetch_max_wait_ms
    _cache_murmur2()
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    ThreadDelegateConsumer.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]
