"""The Kafka side of the listener: send one record and learn whether Kafka stored it.

An HL7 sender may forget a message once it has an AA, so the listener answers AA only after
:meth:`KafkaGate.send` returns, i.e. after the broker acknowledged the record (``acks=all``,
idempotent producer: librdkafka's retries never write it twice). When Kafka does not
acknowledge within ``ack_timeout`` seconds (``message.timeout.ms``: librdkafka gives the record
up, so it cannot land after the AE), :class:`KafkaUnavailable` is raised and the listener
answers AE, which makes the sender retry.

The gate starts without waiting for the broker, so the listener answers AE, not silence,
while Kafka is away; topics are created (``ensure_topics``) before the first send that finds
them unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as RdKafkaProducer

from wardstream.config import Settings
from wardstream.kafka_io import BrokerUnavailable, confluent_config, ensure_topics

log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    """Kafka did not acknowledge the record (the ACK is AE: the sender retries)."""


class KafkaGate:
    """``await send(topic, key, value)`` returns once Kafka stored the record."""

    def __init__(self, s: Settings, topics: list[str], ack_timeout: float = 10.0) -> None:
        self._settings = s
        self._topics = topics
        self._timeout = ack_timeout
        conf = dict(confluent_config(s))
        conf.update({
            "delivery.report.only.error": False,  # every record's report: it is the AA
            "linger.ms": 1,  # a sender waits for each ACK: do not hold its record
            "message.timeout.ms": max(1000, int(ack_timeout * 1000)),
        })
        self._producer = RdKafkaProducer(conf)
        self._topics_ready = False
        self._topics_lock = asyncio.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="mllp-kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def _ensure_topics(self) -> None:
        if self._topics_ready:
            return
        async with self._topics_lock:
            if self._topics_ready:
                return
            quick = self._settings.model_copy(update={"broker_wait_s": self._timeout})
            try:
                await asyncio.to_thread(ensure_topics, self._topics, quick)
            except (BrokerUnavailable, KafkaException, OSError) as exc:
                raise KafkaUnavailable(f"topics not checked: {type(exc).__name__}") from None
            self._topics_ready = True

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce and wait for the broker's acknowledgement; :class:`KafkaUnavailable` when
        it does not come."""
        await self._ensure_topics()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(err: KafkaError | None, _msg: Message) -> None:  # the poll thread
            loop.call_soon_threadsafe(_settle, done, err)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=report)
        except (BufferError, KafkaException) as exc:
            raise KafkaUnavailable(f"not queued: {type(exc).__name__}") from None
        try:
            # librdkafka reports within message.timeout.ms; the margin covers its own timer
            await asyncio.wait_for(asyncio.shield(done), self._timeout + 5)
        except asyncio.TimeoutError:
            raise KafkaUnavailable("no delivery report") from None

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` s), then stop the poll thread."""
        self._stop.set()
        self._poller.join()
        self._producer.flush(timeout)


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
    else:
        if err.fatal():
            log.error("Kafka producer failed: %s", err.name())
        done.set_exception(KafkaUnavailable(f"{err.name()}: {err.str()}"))
