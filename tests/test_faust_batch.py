"""stream.faust_batch.gathered on a real Faust stream (an agent's ``test_context``: Faust's own
``noack_take``, no broker): batches pass as Faust cuts them unless a backlog waits, then they are
joined up to the batch size, and what is held goes on when the backlog does not come. Beside it,
``JournalSends.send_now`` through the real broker, and the worker's garbage-collector tuning."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust
import pytest

from stream.faust_batch import gathered

MAX = 10


def _batches(parts: list[list[int]], waiting_past: Callable[[list], int], gather_s: float = 0.3) -> list[list[int]]:
    """Each part put on the agent's stream, 50 ms apart (Faust's ``within`` is 10 ms, so each
    part is one ``noack_take`` batch); the batches the agent got."""
    app = faust.App("gather-test", broker="kafka://127.0.0.1:9", store="memory://")
    topic = app.topic("numbers", value_type=int)
    got: list[list[int]] = []

    @app.agent(topic)
    async def agent(stream: faust.StreamT) -> None:
        async for events in gathered(stream, MAX, 0.01, waiting_past, gather_s):
            got.append([e.value for e in events])
            for e in events:
                await stream.ack(e)

    async def main() -> None:
        async with agent.test_context() as ctx:
            for part in parts:
                for v in part:
                    await ctx.put(v)
                await asyncio.sleep(0.05)
            await asyncio.sleep(gather_s + 0.2)

    asyncio.run(main())
    return got


def test_without_a_backlog_batches_pass_as_faust_cuts_them() -> None:
    assert _batches([[1, 2, 3], [4, 5], [6]], lambda held: 0) == [[1, 2, 3], [4, 5], [6]]


def test_a_backlog_joins_batches_up_to_the_batch_size() -> None:
    parts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11], [12]]
    assert _batches(parts, lambda held: 100) == [list(range(1, 12)), [12]]


def test_a_backlog_joins_only_while_enough_waits_to_fill_the_batch() -> None:
    # 8 waiting past 3 held fills a batch of 10; 3 past 5 held does not
    waiting = {3: 8, 5: 3}
    assert _batches([[1, 2, 3], [4, 5], [6]], lambda held: waiting.get(len(held), 0)) == [[1, 2, 3, 4, 5], [6]]


def test_what_is_held_goes_on_when_the_backlog_does_not_come() -> None:
    assert _batches([[1, 2, 3]], lambda held: 100) == [[1, 2, 3]]


@pytest.mark.e2e
def test_send_now_has_buffered_table_writes_sent_without_the_producers_linger(kafka_ns, tmp_path) -> None:
    """``JournalSends.send_now`` (after the ADT agent writes a batch's state): table writes wait
    in Faust's producer buffer, then in aiokafka for the linger (here 10 s); once Faust has
    handed them on, they are sent at once and acknowledged by the real broker well before it.
    (Cutting the linger before Faust handed them on would leave them lingering: the wait fails.)"""
    import time

    from contracts.events import Topics
    from stream.faust_batch import JournalSends
    from wardstream.config import settings
    from wardstream.kafka_io import ensure_topics

    name = Topics(kafka_ns).adt
    ensure_topics([name])
    app = faust.App("send-now-test", broker=f"kafka://{settings().kafka.bootstrap_servers}",
                    datadir=str(tmp_path), producer_linger=10.0)
    topic = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    sends = JournalSends(app)

    async def deliver() -> tuple[float, int]:
        await app.producer.start()
        try:  # the topic's metadata first (its first send waits for it, as a worker's did at its start)
            sends.sent.append(topic.send_soon(key=b"p0", value=b"w", partition=0))
            await sends.acked()  # (cuts the linger itself)
            sends.clear()
            # as a table's ``send_changelog`` queues its writes (JournalSends records them there)
            sends.sent += [topic.send_soon(key=b"p0", value=b"w%d" % i, partition=0) for i in range(200)]
            buffered = app.producer.buffer.size
            started = time.monotonic()
            await sends.send_now()
            await asyncio.wait_for(asyncio.gather(*sends.sent), timeout=8)  # (``acked`` cuts the linger itself)
            return time.monotonic() - started, buffered
        finally:
            await app.producer.stop()

    took, buffered = asyncio.run(deliver())
    assert buffered == 200 and took < 8


def test_the_gc_tuning_takes_the_workers_start_out_of_full_collections() -> None:
    """``stream.cli.tune_gc`` (once the worker started): a full collection walks only what was
    made since, not the ~270k objects of the worker's modules (a separate process: freezing
    changes the interpreter for good)."""
    import subprocess
    import sys

    script = (
        "import gc, stream.app, stream.cli\n"
        "before = len(gc.get_objects())\n"
        "stream.cli.tune_gc()\n"
        "print(before, len(gc.get_objects()), gc.get_threshold() == stream.cli.GC_THRESHOLDS)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    before, after, thresholds = out.split()
    assert int(before) > 100_000 and int(after) < int(before) / 20 and thresholds == "True"
