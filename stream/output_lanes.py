"""Where the agents' outputs go: one producer per lane, a batch of sends to wait on.

Under at_least_once each lane is a librdkafka producer (:mod:`stream.outputs`): "events" for the
ADT agent's outputs (its batch waits for their acknowledgements, so it lingers
WARDSTREAM_EVENTS_LINGER; librdkafka's requests are cheap), "kpis" for the KPI flush and the health
monitor (WARDSTREAM_PRODUCER_LINGER). A KPI flush queues thousands of windows at once, and scores
and alerts sent behind them on one producer would wait for all of them to be delivered; each
lane has its own queue and broker connection. Under exactly_once the outputs go through Faust's
producer, whose transactions must hold them (:class:`FaustBatch`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.types.enums import ProcessingGuarantee

from stream.outputs import Batch, OutputProducer
from wardstream.config import Settings

log = logging.getLogger(__name__)


async def acked(sent: list[asyncio.Future[Any]]) -> None:
    """Until Kafka acknowledged every send; raises the first failure. (Most are done by the
    time a batch ends: waiting on the rest only is cheaper than ``gather`` over them all.)"""
    pending = [f for f in sent if not f.done()]
    if pending:
        await asyncio.wait(pending)
    for f in sent:
        f.result()


class FaustBatch:
    """Outputs sent through Faust's producer (the transaction manager under exactly_once).

    The same call ``Topic.send`` ends in, without the layers our bytes do not need (codecs, a
    FutureMessage and the sensors per message: 10-17% of the worker in bench/README.md's
    profile). The interface of :class:`stream.outputs.Batch`.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.sent: list[asyncio.Future[Any]] = []
        self._producer: Any = None  # started at the first send

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
                   headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        if self._producer is None:
            self._producer = await self.app.maybe_start_producer()
        self.sent.append(await self._producer.send(topic, key, value, partition, None,
                                                   list(headers) or None))

    async def acked(self) -> None:
        await acked(self.sent)


class OutputLanes:
    """The worker's output producers by lane, made at their first batch."""

    def __init__(self, app: faust.App, s: Settings) -> None:
        self.app = app
        self.settings = s
        self._producers: dict[str, OutputProducer] = {}

    def batch(self, lane: str = "events") -> Batch | FaustBatch:
        """A batch of outputs on ``lane`` ("events" or "kpis")."""
        app = self.app
        if app.conf.processing_guarantee != ProcessingGuarantee.AT_LEAST_ONCE:
            return FaustBatch(app)
        if lane not in self._producers:
            linger = self.settings.stream.events_linger if lane == "events" else app.conf.producer_linger
            self._producers[lane] = OutputProducer(self.settings, linger_s=linger,
                                                   client_id=f"wardstream-stream-{lane}")
        return self._producers[lane].batch()

    def close(self) -> None:
        """Deliver what the producers hold (up to 5 s each); anything left is re-sent by the
        re-processing of its batch."""
        for producer in self._producers.values():
            left = producer.close(timeout=5)
            if left:
                log.warning("%s outputs not delivered at the stop; their batch is re-processed", left)
