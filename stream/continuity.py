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
import time
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from wardstream.config import Settings
from wardstream.kafka_io import make_consumer


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
