"""Publish a simulation to Kafka: reference records first, then ADT events keyed by patient_id.

Python API (``make demo`` and the e2e tests call it)::

    from producers.kafka_sink import simulate_to_kafka
    summary = simulate_to_kafka(SimConfig(days=7), speed=0, progress=False, truth_out=Path("t.jsonl"))

Topics come from ``Topics(settings().topic_namespace)``; they are created when missing
(:func:`wardstream.kafka_io.ensure_topics`). A Ctrl-C stops the loop; everything already handed
to the producer is flushed before returning. A delivery failure raises after the flush.

Two clients, same guarantees (idempotent, acks=all, Java-compatible murmur2 partitioning of the
patient_id key, so each patient's events stay in order on one partition whichever client sent them):

* ``"kafka-python"``: :func:`wardstream.kafka_io.make_producer`. Pure Python: ~10k events/s here,
  the per-record cost of its accumulator.
* ``"confluent"``: confluent-kafka (librdkafka, C), ~10x faster; delivery reports only for errors
  (``delivery.report.only.error``), so the hot loop makes no Python callback per event.

``client="auto"`` (the default) picks confluent-kafka when it is installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
from rich.console import Console

from producers.hospital import Reference
from producers.runner import Summary, drive, write_truth
from producers.simulator import Emitted, SimConfig, Simulation
from contracts.events import Topics, dump
from wardstream.config import Settings, settings
from wardstream.kafka_io import confluent_config, confluent_producer, ensure_topics, make_producer


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge some events (the message says how many and the first error)."""


def publish_reference(sender: "Sender", reference: Reference, topic: str) -> int:
    """Facility and provider records, keyed by their id (the topic is compacted), flushed first."""
    n = 0
    for fac in reference.facilities:
        sender.send(topic, fac.facility_id.encode(), dump(fac))
        n += 1
    for prov in reference.providers:
        sender.send(topic, prov.provider_id.encode(), dump(prov))
        n += 1
    sender.flush()
    return n


CLIENTS = ("auto", "confluent", "kafka-python")


def have_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


class Sender:
    """``send(topic, key, value)`` + ``flush()`` + ``close()`` over either client; collects errors.

    ``linger_ms`` overrides the client's batching delay (the latency bench sends with 1 ms).
    """

    def __init__(self, client: str, s: Settings, linger_ms: int | None = None) -> None:
        if client == "auto":
            client = "confluent" if have_confluent() else "kafka-python"
        if client not in CLIENTS[1:]:
            raise ValueError(f"unknown Kafka client {client!r}; one of {', '.join(CLIENTS)}")
        self.client = client
        self.errors: list[object] = []
        if client == "confluent":
            def report(err: object, _msg: object) -> None:
                if err is not None:
                    self.errors.append(err)

            conf = {**confluent_config(s), "on_delivery": report}
            if linger_ms is not None:
                conf["linger.ms"] = linger_ms
            self._p = confluent_producer(conf, s)
            produce, poll = self._p.produce, self._p.poll

            def send(topic: str, key: bytes, value: bytes) -> None:
                while True:
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:  # local queue full: let librdkafka drain it
                        poll(0.05)
                poll(0)

            self.send = send
        else:
            self._p = make_producer(s) if linger_ms is None else make_producer(s, linger_ms=linger_ms)
            kp_send, failed = self._p.send, self.errors.append

            def send(topic: str, key: bytes, value: bytes) -> None:
                kp_send(topic, key=key, value=value).add_errback(failed)

            self.send = send

    def flush(self) -> None:
        if self.client == "confluent":
            left = self._p.flush(60)
            if left:
                self.errors.append(f"{left} messages still queued after 60 s")
        else:
            self._p.flush()

    def close(self) -> None:
        if self.client == "kafka-python":
            self._p.close()


def simulate_to_kafka(config: SimConfig, *, speed: float = 0.0, progress: bool = True,
                      truth_out: Path | None = None, stop: Callable[[], bool] | None = None,
                      s: Settings | None = None, console: Console | None = None,
                      client: str = "auto", live_from: float | None = None,
                      watch: Callable[[float], object] | None = None) -> Summary:
    """Run the simulation into ``Topics(namespace).adt``; returns the run's :class:`Summary`.

    ``live_from`` and ``watch``: see :func:`producers.runner.drive`."""
    s = s or settings()
    topics = Topics(s.topic_namespace)
    sim = Simulation(config)
    ensure_topics([topics.adt, topics.reference], s)
    sender = Sender(client, s)
    adt, send, dumps = topics.adt, sender.send, orjson.dumps

    def emit(item: Emitted) -> int:
        value = dumps(item.event)
        send(adt, item.key.encode(), value)
        return len(value)

    try:
        publish_reference(sender, sim.reference, topics.reference)
        started = time.perf_counter()
        summary = drive(sim, emit, speed=speed, progress=progress, stop=stop, console=console,
                        live_from=live_from, watch=watch,
                        destination=f"kafka {s.kafka.bootstrap_servers} topic {adt} ({sender.client})")
        sender.flush()  # the summary's rate counts acknowledged events, not queued ones
        summary.wall_seconds = time.perf_counter() - started
    finally:
        sender.flush()
        sender.close()
    if sender.errors:
        raise DeliveryError(f"{len(sender.errors)} events not acknowledged by Kafka; "
                            f"first: {sender.errors[0]!r}")
    if truth_out is not None:
        write_truth(sim, truth_out)
    return summary
