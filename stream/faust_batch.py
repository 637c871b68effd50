"""What an agent's batch needs from Faust beyond ``Stream.noack_take``.

The agents take a batch (``noack_take``), process it against staged tables, send and wait for
their outputs, write the state, then acknowledge the batch (stream/README.md). Faust's own helpers
assume one event at a time, so:

* :func:`as_event` files a table's reads and writes under a given event's partition (a Faust
  workaround: the private context variable ``faust.streams._current_event``);
* :class:`JournalSends` collects the changelog futures of a table's writes and waits for them
  with the producer's linger cut short (a Faust workaround: it wraps the table's
  ``send_changelog``, and :func:`stream.faust_patches.send_lingering` reaches into aiokafka);
* :func:`gathered` joins ``noack_take``'s batches while a backlog waits (its ``within`` is
  fixed when it starts, and short for latency);
* :func:`ack` acknowledges the taken events, :func:`stopping` tells a send cut off by the
  worker's own stop from a failure.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import faust
from faust import streams as faust_streams
from faust.exceptions import NotReady, ProducerSendError
from faust.types import EventT

from stream import faust_patches

log = logging.getLogger(__name__)

JOURNAL_POLL_S = 0.001
SEND_NOW_S = 0.1  # the longest :meth:`JournalSends.send_now` waits for Faust's producer buffer
# Faust's buffer task takes a message off its queue, then needs 3 turns of the event loop to hand
# it to aiokafka (faust-streaming 0.15.3; tests/test_faust_batch.py fails when it needs more)
HANDOVER_STEPS = 5


@contextmanager
def as_event(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event: a table files reads and writes under its partition.

    ``noack_take`` hands the agent a batch, outside Faust's per-event context, so the agent
    sets it itself (a private context variable of faust.streams, stable since Faust 1.0).
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


async def ack(stream: faust.StreamT, events: list[EventT]) -> None:
    """Acknowledge ``events`` to Faust (from ``noack_take``): their offsets may be committed."""
    for event in events:
        await stream.ack(event)


async def gathered(stream: faust.StreamT, max_: int, within: float,
                   waiting_past: Callable[[list[EventT]], int], gather_s: float
                   ) -> AsyncIterator[list[EventT]]:
    """``stream.noack_take(max_, within)``'s batches, joined while the log already holds enough
    to fill ``max_`` (``waiting_past(held)``: the messages past those held), until they hold
    ``max_`` or more (under ``2 * max_``); a joined batch is handed on at most ``gather_s``
    after its first part came.

    Faust moves a message into the batch in ~60-80 us of the event loop, so in a backlog a 10 ms
    ``within`` gives batches of ~100 messages, and each batch has costs of its own (journal,
    state and partial writes, acknowledgements). A longer ``within`` would add its wait to every
    message of a live stream; here only a backlog waits, and it has the messages to fill the
    batch at once.
    """
    takes = stream.noack_take(max_, within=within).__aiter__()
    held: list[EventT] = []
    nxt: asyncio.Future[list[EventT]] | None = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(takes.__anext__())
            done, _ = await asyncio.wait({nxt}, timeout=gather_s if held else None)
            if not done:  # the backlog did not come in time: hand on what is held
                yield held
                held = []
                continue
            try:
                held += nxt.result()
            except StopAsyncIteration:
                break
            finally:
                nxt = None
            if len(held) >= max_ or waiting_past(held) < max_ - len(held):
                yield held
                held = []
        if held:
            yield held
    finally:
        if nxt is not None:
            nxt.cancel()


def waiting(app: faust.App, topic: str, taken: Callable[[int], int | None]) -> dict[int, int]:
    """Per partition of ``topic`` assigned to this worker, the messages past ``taken(partition)``
    (the last offset its agent took; None: leave the partition out), by the log ends its
    fetches last saw (Faust's public ``consumer.highwater``)."""
    consumer, out = app.consumer, {}
    for tp in consumer.assignment():
        if tp.topic != topic or (last := taken(tp.partition)) is None:
            continue
        try:
            end = consumer.highwater(tp)
        except AssertionError:  # no longer assigned (a rebalance began)
            continue
        if end is not None:
            out[tp.partition] = end - 1 - last
    return out


def stopping(app: faust.App, exc: BaseException) -> bool:
    """A send cut off by the worker's own stop (the batch is re-processed after the restart)."""
    if isinstance(exc, (NotReady, ProducerSendError)) and app.should_stop:
        log.info("batch cut short by the stop; it is re-processed at the next start")
        return True
    return False


class JournalSends:
    """The changelog futures of ``tables``' writes, appended as Faust sends them (a table's own
    ``send_changelog`` drops them; the ADT agent waits on its batch journal's, and on the
    journaled writes of the previous batch)."""

    def __init__(self, app: faust.App, *tables: faust.Table) -> None:
        self.app = app
        self.sent: list[asyncio.Future[Any]] = []
        for table in tables:
            table.send_changelog = self._recording(table.send_changelog)  # type: ignore[method-assign]

    def _recording(self, send_changelog: Any) -> Any:
        def recording(*args: Any, **kwargs: Any) -> Any:
            fut = send_changelog(*args, **kwargs)
            self.sent.append(fut)
            return fut

        return recording

    async def acked(self) -> None:
        """Until every recorded send is acknowledged (raises the first failure), having Faust's
        producer send them without its linger (``faust_patches.send_lingering``) as soon as they
        reach it."""
        while pending := [f for f in self.sent if not f.done()]:
            # one future for all: a poll then costs the same for 10 sends or 1,000 (asyncio.wait
            # over the list itself added and removed a callback per send at every poll)
            everything = asyncio.gather(*pending, return_exceptions=True)
            while not everything.done():
                faust_patches.send_lingering(self.app.producer)
                await asyncio.wait((everything,), timeout=JOURNAL_POLL_S)
        for f in self.sent:
            f.result()

    async def send_now(self) -> None:
        """Have the recorded sends leave now: wait until Faust's producer buffer has handed them
        to aiokafka, then send the batches holding them without their linger.

        The ADT agent calls it after writing a batch's state. Its next batch runs without
        yielding to the event loop for the most part, so Faust's buffer would otherwise hand
        the writes on only when that batch waits for its outputs, and the wait for the writes
        (:meth:`acked`, before the next journal) would hold their whole round trip. At most
        ``SEND_NOW_S``: a producer that cannot send (a broker away) is waited for there."""
        buffer, loop = self.app.producer.buffer, asyncio.get_running_loop()
        deadline = loop.time() + SEND_NOW_S
        while buffer.size and loop.time() < deadline:
            await asyncio.sleep(0)
        for _ in range(HANDOVER_STEPS):  # the buffer's task hands its last message to aiokafka
            await asyncio.sleep(0)
        faust_patches.send_lingering(self.app.producer)

    def clear(self) -> None:
        self.sent.clear()
