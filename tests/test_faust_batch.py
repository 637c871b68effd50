"""stream.faust_batch.gathered on a real Faust stream (an agent's ``test_context``: Faust's own
``noack_take``, no broker): batches pass as Faust cuts them unless a backlog waits, then they are
joined up to the batch size, and what is held goes on when the backlog does not come."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust

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
