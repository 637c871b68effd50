"""Catch messages that Faust skipped: an agent's input must continue right after its state.

Each agent's state records the last offset it applied per partition, so the next message it
takes must be that offset + 1 (or a copy at or below it, which the offset guards skip). Around
rebalances faust-streaming 0.15.3 can hand an agent a later message instead (records fetched
before a seek and delivered after it; see :mod:`stream.faust_patches`), and counts the offsets
in between as done. The agent then reads the messages it missed back from Kafka itself
(:class:`Refetch`) and applies them before the later one: nothing is skipped, even if the
group's commit already went past, and nothing depends on Faust delivering them again.

(Seeking the partition back and waiting for Faust to fetch the missing messages again is not
enough: in the two-worker drill Faust can answer such a seek with nothing, and the agent would
then drop every later message of the partition, waiting; bench/README.md, "Drill runs".)

A real gap (transaction markers, compaction) reads back as fewer messages than the range.

Faust can also deliver nothing more of a partition: in the two-worker drill a worker that took
over partitions sat still with its state 231 messages short of the log's end, and no later
message ever came to show the hole. :class:`StallWatch` finds such a partition (data past its
state, nothing taken for ``after_s``) so that the worker seeks it to its state again.

>>> missing(offset=5, applied=4)        # next in line
range(5, 5)
>>> missing(offset=3, applied=4)        # a copy: the offset guard skips it
range(5, 3)
>>> list(missing(offset=9, applied=4))  # 5..8 skipped: read them back first
[5, 6, 7, 8]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faust.types import EventT
from kafka import TopicPartition

from stream.faust_batch import as_event
from wardstream.config import Settings
from wardstream.kafka_io import beginning_offsets_of, broker_call, make_consumer

log = logging.getLogger(__name__)


def missing(offset: int, applied: int) -> range:
    """The offsets between a partition's state (``applied``) and the message at ``offset``."""
    return range(applied + 1, offset)


class StallWatch:
    """Partitions with messages past their state and nothing taken for ``after_s`` seconds.

    >>> w = StallWatch(after_s=30)
    >>> w.stalled("p0", applied=9, end=10, now=0)     # caught up (end = next offset)
    False
    >>> w.stalled("p1", applied=4, end=10, now=0), w.stalled("p1", applied=4, end=10, now=31)
    (False, True)
    >>> w.stalled("p1", applied=4, end=10, now=40)    # just sought: give it time again
    False
    >>> w.took("p1", now=50); w.stalled("p1", applied=6, end=10, now=70)
    False
    """

    def __init__(self, after_s: float = 30.0) -> None:
        self.after_s = after_s
        self._since: dict[Any, float] = {}  # partition -> when it last moved (or was caught up)

    def took(self, tp: Any, now: float) -> None:
        """The agent applied messages of ``tp``."""
        self._since[tp] = now

    def forget(self) -> None:
        self._since.clear()

    def stalled(self, tp: Any, applied: int, end: int, now: float) -> bool:
        """True (and the clock restarts) when ``tp`` has data past ``applied`` and sat still."""
        since = self._since.setdefault(tp, now)
        if applied + 1 >= end:
            self._since[tp] = now
            return False
        if now - since < self.after_s:
            return False
        self._since[tp] = now
        return True


@dataclass(frozen=True)
class Record:
    """A message read back from Kafka."""

    offset: int
    key: bytes | None
    value: bytes | None


class Refetch:
    """Reads a range of one partition straight from Kafka (committed data only), off the event loop.

    One plain consumer (kafka-python, no group: it commits nothing) per worker, made at the first
    use; ranges are read one at a time.
    """

    def __init__(self, s: Settings | None = None, timeout_s: float = 60.0) -> None:
        self._settings = s
        self._timeout_s = timeout_s
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def read(self, topic: str, partition: int, offsets: range) -> list[Record]:
        """The messages of ``topic`` / ``partition`` in ``offsets``, in order. Raises
        ``TimeoutError`` rather than return a short read (the worker crashes and restarts from its
        state: nothing lost)."""
        if not offsets:
            return []
        async with self._lock:
            return await asyncio.to_thread(self._read, topic, partition, offsets)

    def _read(self, topic: str, partition: int, offsets: range) -> list[Record]:
        if self._consumer is None:
            self._consumer = make_consumer(group_id=None, s=self._settings)
        consumer = self._consumer
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offsets.start)
        out: list[Record] = []
        deadline = time.monotonic() + self._timeout_s
        try:
            while True:
                for rec in consumer.poll(timeout_ms=500, max_records=2000).get(tp, []):
                    if rec.offset >= offsets.stop:
                        return out
                    if rec.offset >= offsets.start:
                        out.append(Record(rec.offset, rec.key, rec.value))
                # the message at offsets.stop exists (Faust delivered it): reading up to it ends
                if consumer.position(tp) >= offsets.stop:
                    return out
                if time.monotonic() > deadline:
                    raise TimeoutError(f"read {len(out)} of {topic}[{partition}] {offsets.start}.."
                                       f"{offsets.stop - 1} in {self._timeout_s:.0f}s")
        finally:
            consumer.unsubscribe()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


@dataclass(frozen=True)
class Item:
    """A message for an agent: Faust's event, or one read back from Kafka because Faust skipped
    it; ``context`` is the event it goes with (same partition: tables file writes under it)."""

    context: EventT
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def in_line(refetch: "Refetch", events: list[EventT], applied: Callable[[int], int]) -> list[Item]:
    """``events`` (one agent's batch), each partition's continuing right after ``applied(p)``
    (the last offset its truth holds): where Faust skipped messages, they are read back from
    Kafka with ``refetch`` and come first. ``applied`` is read under the partition's first event
    (a table files reads under the current event's partition)."""
    out: list[Item] = []
    done: dict[int, int] = {}  # partition -> last offset taken in this batch
    for event in events:
        msg = event.message
        if msg.partition not in done:
            with as_event(event):
                done[msg.partition] = applied(msg.partition)
        if gap := missing(msg.offset, done[msg.partition]):
            records = await refetch.read(msg.topic, msg.partition, gap)
            # none: a real gap (transaction markers under exactly_once); else Faust skipped them
            log.log(logging.WARNING if records else logging.DEBUG,
                    "partition %s of %s: got offset %s after %s; read %d skipped messages back from Kafka",
                    msg.partition, msg.topic, msg.offset, done[msg.partition], len(records))
            out.extend(Item(event, msg.partition, r.offset, r.key, r.value) for r in records)
        out.append(Item(event, msg.partition, msg.offset, event.key, event.value))
        done[msg.partition] = max(done[msg.partition], msg.offset)
    return out


class CommittedLine:
    """The read-back for an agent whose offset truth is its group's committed offset (the KPI
    combiner, the reference loader): after an assignment each partition must continue from
    the commit, so a partition's first message is compared with the group's committed offset
    (or the log's start, before any commit), later ones with the last one taken.

    Faust can hand such an agent a later message than the next one too (a skipped capacity
    record left a provider without utilization for good in a cluster drill), and with no state
    of its own the agent would never notice.
    """

    def __init__(self, group: str, s: Settings | None = None) -> None:
        self.group = group
        self._settings = s
        self._refetch = Refetch(s)
        self._next: dict[int, int] = {}  # partition -> the next offset to take

    def forget(self) -> None:
        """After an assignment: every partition continues from its commit again."""
        self._next.clear()

    async def take(self, events: list[EventT]) -> list[Item]:
        """The batch's messages in line, skipped ones read back (:func:`in_line`)."""
        new = sorted({e.message.partition for e in events if e.message.partition not in self._next})
        if new:
            starts = await asyncio.to_thread(self._starts, events[0].message.topic, new)
            self._next.update(starts)
        return await in_line(self._refetch, events, lambda partition: self._next[partition] - 1)

    def moved(self, taken: list[Item]) -> None:
        """After the batch was applied."""
        for item in taken:
            self._next[item.partition] = max(self._next.get(item.partition, 0), item.offset + 1)

    def last_moved(self, partition: int) -> int:
        """The last offset of ``partition`` applied since the last assignment, or before it
        (its commit - 1); -1: none known."""
        return self._next.get(partition, 0) - 1

    def _starts(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """Where each partition continues: the group's commit, or the log's start. A consumer
        of the group (never joining it) made for the look-up and closed after it: one kept
        between rebalances held metadata from before a broker restart and timed out for 90 s
        on a running cluster (a chaos soak run)."""
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer = make_consumer(group_id=self.group, s=self._settings)
        try:
            beginning = beginning_offsets_of(consumer, tps)
            committed = broker_call("the group's committed offsets",
                                    lambda: {tp: consumer.committed(tp) for tp in tps}, s=self._settings)
        finally:
            consumer.close()
        return {tp.partition: max(committed[tp] or 0, beginning[tp]) for tp in tps}

    def close(self) -> None:
        self._refetch.close()
