"""Keep the agents' input in line with their progress where Faust does not (Faust workarounds).

The ADT flow's state (``partition_state``: the last applied offset per partition of hospital.adt
and of hospital.adt-merges) is its one offset truth; the KPI combiner's is the last record a
flush acknowledged. Around rebalances, and after Faust restarts a crashed agent in-process,
faust-streaming 0.15.3 can skip messages, leave the group's commits behind that progress, or
stop delivering a partition (:mod:`stream.continuity`, :mod:`stream.faust_patches`). So:

* :meth:`PartitionWatch.in_line` reads the messages Faust skipped back from Kafka, ahead of the
  batch's later ones;
* the timer ``watch_partitions`` (every 5 s) commits a partition at its progress when the
  group's commit was behind it at two looks in a row (``faust_patches.CommitWatch``), and seeks
  an ADT partition to its state's next offset when the log has messages past the state and the
  agent took none for ``WARDSTREAM_STALL_SECONDS`` (``continuity.StallWatch``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import faust
from faust.types import EventT
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from stream import adt_flow, faust_patches
from stream.continuity import Item, Refetch, StallWatch, in_line
from wardstream.config import Settings
from wardstream.kafka_io import group_offsets, make_admin

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 15.0  # a watch step that takes longer is cut short and logged
REBALANCE_PATIENCE_S = 60.0


def written_offset(states: Mapping[str, Any], field: str = "offset") -> Callable[[int], int]:
    """A partition's last offset taken as the ``partition_state`` table holds it (-1: none);
    ``field``: ``"offset"`` for hospital.adt (applied, or set aside while a merge is in flight:
    ``AdtFlow.applied_offset``), ``"merge_offset"`` for hospital.adt-merges."""
    return lambda partition: adt_flow.taken_offset(states.get(adt_flow.partition_key(partition)), field)


class PartitionWatch:
    """The ADT topic's read-back and stall watch, and the commit watch of the agents' inputs."""

    def __init__(self, app: faust.App, s: Settings, topic: faust.TopicT,
                 done: Mapping[str, Callable[[int], int]]) -> None:
        """``done``: per input topic, a partition's last offset whose work is in Kafka (the ADT
        flow's written state, the KPI combiner's last acknowledged flush); ``topic`` (ADT) is
        one of them, the one the stall watch seeks."""
        self.app = app
        self.settings = s
        self.topic = topic
        self._done = done
        self._refetch = Refetch(s)
        self._commits = faust_patches.CommitWatch()
        self._stalls = StallWatch(after_s=s.stream.stall_seconds)
        self._rebalance_seen: float | None = None  # when a watch first found Faust rebalancing
        self._admin: KafkaAdminClient | None = None

    async def in_line(self, events: list[EventT], applied: Callable[[int], int]) -> list[Item]:
        """The batch's messages, each partition's continuing its state: where Faust skipped some,
        they are read back from Kafka and come first (:func:`stream.continuity.in_line`).
        ``applied`` reads the state (committed, or staged by this batch's earlier events)."""
        return await in_line(self._refetch, events, applied)

    async def read_back(self, partition: int, offsets: range, context: EventT) -> list[Item]:
        """The ADT messages ``offsets`` of ``partition`` from Kafka (those set aside while a
        merge was in flight: ``AdtFlow.read_backs``), to apply under ``context``."""
        records = await self._refetch.read(self.topic.get_topic_name(), partition, offsets)
        return [Item(context, partition, r.offset, r.key, r.value) for r in records]

    def moved(self, taken: list[Item]) -> None:
        """After a batch's state is written: its partitions moved (for the stall watch)."""
        now = time.monotonic()
        for item in taken:
            self._stalls.took(item.context.message.tp, now)

    async def watch_partitions(self) -> None:
        """Commit partitions whose Faust commit stays behind their progress (faust_patches, 3.);
        seek ADT partitions that have data past their state but get nothing (stream/continuity.py)."""
        consumer = self.app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in self._done]
        if not tps or self._rebalancing():
            return
        done = {tp: self._done[tp.topic](tp.partition) for tp in tps}
        adt = self.topic.get_topic_name()
        try:
            committed = await asyncio.wait_for(asyncio.to_thread(self._broker_commits, tps), WATCH_TIMEOUT_S)
            await asyncio.wait_for(self._commits.check(consumer, done, committed), WATCH_TIMEOUT_S)
            await asyncio.wait_for(self._unstall({tp: o for tp, o in done.items() if tp.topic == adt}),
                                   WATCH_TIMEOUT_S)
        except (KafkaError, asyncio.TimeoutError) as exc:  # look again at the next tick
            log.warning("partition watch cut short: %r (offsets done %s)", exc,
                        {f"{tp.topic}[{tp.partition}]": offset for tp, offset in done.items()})

    def forget(self) -> None:
        """After a rebalance: the partitions may have moved."""
        self._commits.forget()
        self._stalls.forget()

    def close(self) -> None:
        self._refetch.close()
        if self._admin is not None:
            self._admin.close()

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
