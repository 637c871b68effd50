"""Why stream/faust_patches.py watches commits (Faust's own ack bookkeeping, its
``Consumer._new_offset``, without a broker), the watch's rule, and stream/continuity.py's
read-back through the real broker. The drills in test_faults.py exercise both end to end."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from stream.continuity import Refetch, missing
from stream.faust_patches import CommitWatch
from wardstream.kafka_io import ensure_topics, make_producer

tp = TP("hospital.adt", 0)


class _Bookkeeping:
    """Faust's per-partition ack bookkeeping, with Faust's methods."""

    _new_offset = Consumer._new_offset

    def __init__(self, committed: int | None) -> None:
        self._committed_offset = {tp: committed}
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)  # none here
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)

    def ack(self, offset: int) -> None:
        self._acked[tp].append(offset)
        self._acked_index[tp].add(offset)


def test_commits_stay_stuck_when_faust_delivered_only_the_last_message() -> None:
    # the drill: committed 427, the state (from the changelogs) already at 763, Faust hands
    # over only 763, which the agent skips as a copy
    c = _Bookkeeping(committed=427)
    c.ack(763)
    assert c._new_offset(tp) is None  # Faust never commits past 427


def test_the_commit_watch_commits_a_partition_behind_its_state_at_two_looks() -> None:
    w = CommitWatch()
    assert w.due({tp: 427}, {tp: 763}) == {}  # the first look only notes it
    assert w.due({tp: 439}, {tp: 763}) == {tp: 764}  # still behind (Faust crawling): commit
    assert w.due({tp: 764}, {tp: 763}) == {}


def test_the_commit_watch_leaves_a_caught_up_commit_alone() -> None:
    w = CommitWatch()
    assert w.due({tp: 100}, {tp: 900}) == {} and w.due({tp: 901}, {tp: 900}) == {}
    assert w.due({tp: 901}, {tp: 950}) == {}  # behind once, not twice in a row
    w.forget()  # a rebalance: partitions may have moved
    assert w.due({tp: 5}, {tp: 9}) == {}


def test_the_commit_watch_commits_a_partition_faust_never_committed_but_not_an_empty_state() -> None:
    w = CommitWatch()
    assert w.due({}, {tp: 5}) == {} and w.due({}, {tp: 5}) == {tp: 6}
    w = CommitWatch()
    assert w.due({}, {tp: -1}) == {} and w.due({}, {tp: -1}) == {}


def test_missing_offsets() -> None:
    assert list(missing(offset=8, applied=4)) == [5, 6, 7]
    assert not missing(offset=5, applied=4) and not missing(offset=2, applied=4)


def _produce_values(topic: str, partition: int, count: int) -> None:
    """``v0`` .. ``v{count-1}`` (key ``k``) into one partition of ``topic``."""
    ensure_topics([topic])
    producer = make_producer()
    for i in range(count):
        producer.send(topic, key=b"k", value=f"v{i}".encode(), partition=partition)
    producer.flush()
    producer.close()


@pytest.mark.e2e
def test_refetch_reads_a_range_back_from_the_broker(kafka_ns) -> None:
    from contracts.events import Topics

    topic = Topics(kafka_ns).adt
    _produce_values(topic, partition=1, count=10)
    refetch = Refetch()
    try:
        got = asyncio.run(refetch.read(topic, 1, range(3, 7)))
        assert [(r.offset, r.key, r.value) for r in got] == [(i, b"k", f"v{i}".encode()) for i in range(3, 7)]
        assert asyncio.run(refetch.read(topic, 1, range(9, 9))) == []
        # the same consumer serves the next range, from its start
        assert [r.offset for r in asyncio.run(refetch.read(topic, 1, range(0, 2)))] == [0, 1]
    finally:
        refetch.close()


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class _Event:
    """What ``CommittedLine.take`` reads of a Faust event."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.message = _Message(topic, partition, offset)
        self.key, self.value = b"k", f"v{offset}".encode()


@pytest.mark.e2e
def test_committed_line_reads_back_what_faust_skipped_after_the_groups_commit(kafka_ns) -> None:
    """An agent whose truth is its group's commit (the KPI combiner, the reference loader):
    the first message after an assignment continues the commit, later ones the last taken."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from contracts.events import Topics
    from stream.continuity import CommittedLine
    from wardstream.kafka_io import make_consumer

    topic, group = Topics(kafka_ns).kpi_partials, f"{kafka_ns}line-test"
    _produce_values(topic, partition=2, count=8)
    line = CommittedLine(group)

    def take(offset: int) -> list[tuple[int, bytes]]:
        async def run() -> list:
            taken = await line.take([_Event(topic, 2, offset)])
            line.moved(taken)
            return taken
        return [(item.offset, item.value) for item in asyncio.run(run())]

    try:
        assert take(2) == [(0, b"v0"), (1, b"v1"), (2, b"v2")]  # no commit yet: from the log's start
        assert take(3) == [(3, b"v3")]
        assert take(6) == [(4, b"v4"), (5, b"v5"), (6, b"v6")]  # 4 and 5 skipped by Faust: read back
        committer = make_consumer(group_id=group)
        committer.commit({TopicPartition(topic, 2): OffsetAndMetadata(5, "", -1)})
        committer.close()
        line.forget()  # a rebalance: Faust delivers from the commit again
        assert take(5) == [(5, b"v5")]
        line.forget()
        assert take(7) == [(5, b"v5"), (6, b"v6"), (7, b"v7")]
    finally:
        line.close()


def test_the_worker_consumer_waits_at_most_fetch_max_wait_ms_for_a_fetch(tmp_path) -> None:
    """Faust fixes the broker's wait for a fetch at 1.5 s; aiokafka keeps one fetch in flight and
    leaves out partitions with records not yet taken, so new ADT events could wait that long
    behind a fetch of the other partitions (faust_patches docstring). The patch shortens it."""
    import faust
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream import faust_patches

    faust_patches.apply()
    app = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:9092", datadir=str(tmp_path))
    thread = app.consumer._thread
    assert isinstance(thread, AIOKafkaConsumerThread)

    async def waits() -> tuple[int, int]:  # aiokafka builds its consumer in a running loop (no I/O yet)
        return (faust_patches._original_create_worker_consumer(thread, app.transport)._fetch_max_wait_ms,
                thread._create_worker_consumer(app.transport)._fetch_max_wait_ms)

    assert asyncio.run(waits()) == (1500, faust_patches.FETCH_MAX_WAIT_MS)
    assert faust_patches.FETCH_MAX_WAIT_MS == 100  # the default (WARDSTREAM_FETCH_MAX_WAIT_MS unset)


@pytest.mark.e2e
def test_send_lingering_delivers_before_the_linger_expires(kafka_ns) -> None:
    """The ADT agent waits for its journal's acknowledgement: ``send_lingering`` has Faust's
    aiokafka producer send what it holds for its linger at once (here a 10 s linger; the
    message is acknowledged in well under that, through the real broker)."""
    import time
    from types import SimpleNamespace

    from aiokafka import AIOKafkaProducer

    from contracts.events import Topics
    from stream.faust_patches import send_lingering
    from wardstream.config import settings

    topic = Topics(kafka_ns).adt
    ensure_topics([topic])

    async def deliver() -> tuple[float, bool]:
        producer = AIOKafkaProducer(bootstrap_servers=settings().kafka.bootstrap_servers, linger_ms=10_000)
        await producer.start()
        try:
            held = await producer.send(topic, b"journal", key=b"p0")  # queued, lingering
            await asyncio.sleep(0.5)
            lingered = not held.done()  # without the patch it would wait the whole 10 s
            started = time.monotonic()
            send_lingering(SimpleNamespace(_producer=producer))  # Faust's Producer holds it here
            await asyncio.wait_for(held, timeout=8)
            return time.monotonic() - started, lingered
        finally:
            await producer.stop()

    took, lingered = asyncio.run(deliver())
    assert lingered and took < 8
    send_lingering(SimpleNamespace(_producer=None))  # before the producer starts: nothing to do


# Every private name of faust-streaming / aiokafka the worker reads, calls or replaces, with where
# (README.md "Faust workarounds" lists them): an upgrade that renames one fails here, not silently.
PRIVATE_NAMES = [
    ("faust.streams", "_current_event", "stream.faust_batch.as_event: a batch's table writes under its event"),
    ("faust.transport.consumer", "ThreadDelegateConsumer._getmany", "faust_patches: fetches overlapping a seek"),
    ("faust.transport.consumer", "ThreadDelegateConsumer.seek_to_committed", "faust_patches: never-committed partitions"),
    ("faust.transport.consumer", "Consumer._commit", "faust_patches.CommitWatch"),
    ("faust.transport.consumer", "Consumer._committed_offset", "faust_patches.CommitWatch (set in __init__)"),
    ("faust.transport.consumer", "Consumer._read_offset", "stream.partition_watch: the stall watch's log line (set in __init__)"),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread._create_worker_consumer",
     "faust_patches: the fetch wait"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer._fetch_max_wait_ms", "faust_patches: the fetch wait (set in __init__)"),
    ("aiokafka.partitioner", "murmur2", "faust_patches: memoized"),
    ("aiokafka.producer.producer", "AIOKafkaProducer._message_accumulator", "faust_patches.send_lingering (set in __init__)"),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator._batches", "faust_patches.send_lingering (set in __init__)"),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator._waiter_future", "faust_patches.send_lingering (set in __init__)"),
    ("aiokafka.producer.message_accumulator", "MessageBatch._builder", "faust_patches.send_lingering (set in __init__)"),
]


@pytest.mark.parametrize("module,name,where", PRIVATE_NAMES, ids=[f"{m}:{n}" for m, n, _ in PRIVATE_NAMES])
def test_every_private_name_the_worker_uses_still_exists(module: str, name: str, where: str) -> None:
    import importlib
    import inspect

    obj = importlib.import_module(module)
    *owners, attr = name.split(".")
    for owner in owners:
        obj = getattr(obj, owner)
    if hasattr(obj, attr):
        return
    # an instance attribute: assigned in the class's __init__ (or a method it calls)
    source = inspect.getsource(obj)
    assert f"self.{attr} =" in source or f"self.{attr}:" in source, f"{module}.{name} is gone ({where})"
