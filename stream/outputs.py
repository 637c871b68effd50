"""The worker's output producer: librdkafka (confluent-kafka) under at_least_once.

Every ADT event makes ~18 output messages (KPI windows, mostly: bench/README.md), and aiokafka's
pure-Python send path (partitioner, accumulator, request encoding) cost ~30 us each, the largest
item of the worker's profile. librdkafka does the same work in C threads. The agents only need
to know when a batch's messages are all acknowledged, so a :class:`Batch` counts its delivery
reports instead of holding a future per message.

Delivery reports are served by :meth:`confluent_kafka.Producer.poll`, called on the event loop's
thread while a batch waits, so the callbacks run there too (no locking). The producer is
idempotent with acks=all (ordered per partition, no duplicates from its retries), and uses the
Java partitioner (murmur2), so a key lands on the partition aiokafka and kafka-python pick.

Under exactly_once the outputs must be part of Faust's transactions, so the app keeps sending
through Faust's producer there (``stream.output_lanes.FaustBatch``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from wardstream.config import Settings
from wardstream.kafka_io import confluent_config, confluent_producer

log = logging.getLogger(__name__)

POLL_SECONDS = 0.002  # how often a waiting batch serves delivery reports


class OutputProducer:
    """One librdkafka producer per worker; :meth:`batch` groups sends to wait on."""

    def __init__(self, s: Settings, *, linger_s: float, client_id: str = "wardstream-stream") -> None:
        self._p = confluent_producer({
            **confluent_config(s),
            "client.id": client_id,
            "linger.ms": int(linger_s * 1000),
            "delivery.report.only.error": False,  # a batch counts every report
            # bounded buffers: the agents wait on each batch, so little is ever queued
            "queue.buffering.max.messages": 100_000,
            "queue.buffering.max.kbytes": 65_536,
        }, s)

        self.produce = self._p.produce  # (topic, value, key, on_delivery=...): queue one message

    def batch(self) -> Batch:
        return Batch(self)

    def poll(self) -> None:
        """Serve the delivery reports that arrived (their callbacks run here)."""
        self._p.poll(0)

    def close(self, timeout: float = 10) -> int:
        """Deliver what is queued (up to ``timeout``); returns how many messages were left."""
        return self._p.flush(timeout)


class Batch:
    """Messages sent together; :meth:`acked` returns once Kafka acknowledged all of them."""

    def __init__(self, producer: OutputProducer) -> None:
        self._producer = producer
        self.pending = 0
        self.error: KafkaError | None = None

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        self.pending -= 1
        if err is not None and self.error is None:
            self.error = err

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
                   headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Queue one message (waits only while librdkafka's local queue is full); ``partition``
        None: the key's (murmur2)."""
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        if headers:
            extra["headers"] = list(headers)
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._delivered, **extra)
                break
            except BufferError:
                self._producer.poll()
                await asyncio.sleep(POLL_SECONDS)
        self.pending += 1

    async def acked(self) -> None:
        """Until every message of the batch is acknowledged; raises if Kafka refused one."""
        while self.pending > 0:
            self._producer.poll()
            if self.pending > 0:
                await asyncio.sleep(POLL_SECONDS)
        if self.error is not None:
            raise KafkaException(self.error)
