"""Workarounds for faust-streaming 0.15.3 bugs that lose or stall messages; applied by ``stream.app``.

1 and 2 were seen in the scale-out drill (tests/test_faults.py: input arriving while a second
worker joins, then that worker leaving), 3 in the SIGKILL drill's new host. After a
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

3. **A seek back is answered with nothing.** Faust drops every fetched message below the
   partition's read offset (the last one it handed to the stream, ``_drain_messages``). The
   consumer's ``seek_wait`` sets that offset to the seek target, but records fetched before the
   seek and delivered after it raise it again, and then the messages fetched again are all
   dropped. So when an agent finds messages skipped and seeks back (:mod:`stream.continuity`),
   it can stall: the new-host SIGKILL drill did (got offset 361 after 263, sought 264, nothing
   more for six minutes), and so did the two-worker drill. :func:`rewind` pins the read offset
   at the seek target: later offsets are not recorded until :func:`settle`, called when the
   agent takes its next message of that partition (the target itself, or the first one after
   a real gap). Messages delivered twice meanwhile are dropped by the agent's offset guard.

One for speed: aiokafka hashes every message key with a pure-Python murmur2 to pick its
partition (3% of the worker under a backlog, most of it for KPI windows whose keys recur at every
flush); :func:`_cache_murmur2` memoizes that pure function, the partitions stay the same.

And one for ``Stream.take_events``, which the agents use: it acks every event of a batch when
the agent moves on, also when the agent's batch failed or was cancelled by a stop (its state
rolled back), so the restart would skip those events. :func:`hold` marks such events: their
ack is dropped, and Kafka delivers them again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import partitioner as aiokafka_partitioner
from faust.streams import Stream
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.types import TP, EventT

log = logging.getLogger(__name__)

_original_consumer_init = Consumer.__init__
_original_seek_to_committed = ThreadDelegateConsumer.seek_to_committed
_original_getmany = ThreadDelegateConsumer._getmany
_original_ack = Stream.ack
_held: set[Any] = set()  # messages whose next ack is dropped (their batch was rolled back)


def hold(events: list[EventT]) -> None:
    """Never ack these events (an agent rolled back their batch): they are delivered again."""
    _held.update(event.message for event in events)


async def _ack(self: Stream, event: EventT) -> bool:
    if event.message in _held:
        _held.discard(event.message)
        return False
    return await _original_ack(self, event)


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


class _ReadOffsets(dict):  # type: ignore[type-arg]
    """``Consumer._read_offset`` (TP -> offset or None), whose offset an agent can pin (3.).

    While a partition is pinned at ``target``, Faust's writes of later offsets are ignored, so
    every message from ``target`` on gets through; :func:`settle` (or a rebalance) unpins it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rewound: dict[TP, int] = {}

    def __missing__(self, tp: TP) -> None:  # Faust's defaultdict(lambda: None)
        return None

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        target = self.rewound.get(tp)
        if target is not None and offset is not None and offset > target:
            return  # until the agent has its target back, nothing may raise the floor
        super().__setitem__(tp, offset)

    def update(self, *args: Any, **kwargs: Any) -> None:  # a rebalance seeks every partition
        for tp in dict(*args, **kwargs):
            self.rewound.pop(tp, None)
        super().update(*args, **kwargs)

    def pop(self, tp: TP, *default: Any) -> Any:  # a revoked partition
        self.rewound.pop(tp, None)
        return super().pop(tp, *default)


def rewind(consumer: Consumer, tp: TP, offset: int) -> None:
    """Before ``seek_wait({tp: offset})``: let every message from ``offset`` on through until
    :func:`settle` (set first, so that no re-fetched record can reach Faust's drainer before it)."""
    read = consumer._read_offset
    if isinstance(read, _ReadOffsets):
        dict.__setitem__(read, tp, offset)
        read.rewound[tp] = offset


def settle(consumer: Consumer, tp: TP) -> None:
    """The agent took a message of ``tp`` in line: a rewind there is done."""
    read = consumer._read_offset
    if isinstance(read, _ReadOffsets) and read.rewound:
        read.rewound.pop(tp, None)


def _consumer_init(self: Consumer, *args: Any, **kwargs: Any) -> None:
    _original_consumer_init(self, *args, **kwargs)
    self._read_offset = _ReadOffsets()


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


def _cache_murmur2() -> None:
    if not hasattr(aiokafka_partitioner.murmur2, "cache_info"):
        aiokafka_partitioner.murmur2 = functools.lru_cache(maxsize=1 << 16)(aiokafka_partitioner.murmur2)


def apply() -> None:
    """Install the patches (idempotent)."""
    _cache_murmur2()
    if Consumer.__init__ is not _consumer_init:
        Consumer.__init__ = _consumer_init  # type: ignore[method-assign]
    ThreadDelegateConsumer.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]
    Stream.ack = _ack  # type: ignore[method-assign]
