"""Kafka plumbing shared by producers, sinks, replay, the worker and tests.

Topic creation with sensible partition counts, and producer / consumer factories that apply
the security settings of :mod:`wardstream.config` and the delivery guarantees we rely on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.contracts import Topics
from wardstream.config import Settings, settings

log = logging.getLogger(__name__)


def topic_specs(s: Settings | None = None) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic with (partitions, config). ADT partitions bound the worker parallelism."""
    s = s or settings()
    t = Topics(s.topic_namespace)
    n = s.adt_partitions
    keep = {"retention.ms": "-1"}  # event topics are the system of record: replay needs them
    return {
        t.adt: (n, keep),
        t.reference: (1, {"cleanup.policy": "compact"}),
        t.kpi_contributions: (n, {}),
        t.discharge_scores: (n, keep),
        t.readmission_labels: (n, keep),
        t.alerts: (n, keep),
        t.kpis: (n, {}),
        t.dlq: (1, keep),
        # replace semantics: the last partial per key is all that is needed
        t.health_partials: (n, {"cleanup.policy": "compact"}),
        t.model_health: (n, keep),
    }


def make_admin(s: Settings | None = None) -> KafkaAdminClient:
    """A kafka-python admin client (the caller closes it; :func:`admin_client` for a block)."""
    return KafkaAdminClient(**(s or settings()).kafka.kafka_python_kwargs())


@contextmanager
def admin_client(s: Settings | None = None) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client, closed on exit."""
    admin = make_admin(s)
    try:
        yield admin
    finally:
        admin.close()


def group_offsets(admin: KafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    """A consumer group's committed offsets (partitions without a commit left out)."""
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def delete_namespace_topics(*namespaces: str, s: Settings | None = None) -> int:
    """Delete every topic of these namespaces (topic-name prefixes; the empty namespace, the
    DESIGN.md names, is never touched). Returns how many were deleted."""
    prefixes = tuple(ns for ns in namespaces if ns)
    if not prefixes:
        return 0
    with admin_client(s) as admin:
        doomed = sorted(t for t in admin.list_topics() if t.startswith(prefixes))
        for start in range(0, len(doomed), 200):
            admin.delete_topics(doomed[start:start + 200], timeout_ms=30000)
    return len(doomed)


def ensure_topics(names: Iterable[str] | None = None, s: Settings | None = None) -> None:
    """Create the wardstream topics that do not exist yet (idempotent)."""
    s = s or settings()
    specs = topic_specs(s)
    wanted = list(names) if names is not None else list(specs)
    with admin_client(s) as admin:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, specs.get(name, (s.adt_partitions, {}))[0], 1,
                     topic_configs=specs.get(name, (0, {}))[1])
            for name in wanted
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics: %s", ", ".join(t.name for t in new))


def make_producer(s: Settings | None = None, **overrides: object) -> KafkaProducer:
    """Idempotent producer (acks=all): a retry never duplicates a message in the log."""
    s = s or settings()
    kwargs: dict[str, object] = dict(
        s.kafka.kafka_python_kwargs(),
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type=None,
    )
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)


def confluent_config(s: Settings) -> dict[str, object]:
    """librdkafka settings equivalent to :func:`wardstream.kafka_io.make_producer`'s."""
    k = s.kafka
    conf: dict[str, object] = {
        "bootstrap.servers": k.bootstrap_servers,
        "security.protocol": k.security_protocol.lower(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "partitioner": "murmur2_random",  # the Java / kafka-python partition of a key
        "queue.buffering.max.messages": 500_000,
        "delivery.report.only.error": True,
    }
    if k.sasl_mechanism:
        conf.update({"sasl.mechanism": k.sasl_mechanism, "sasl.username": k.sasl_username,
                     "sasl.password": k.sasl_password})
    if k.ssl_cafile:
        conf["ssl.ca.location"] = k.ssl_cafile
    return conf


def make_consumer(*topics: str, group_id: str | None, s: Settings | None = None,
                  **overrides: object) -> KafkaConsumer:
    """Consumer reading committed data only, with manual commits (commit after the sink's write)."""
    s = s or settings()
    kwargs: dict[str, object] = dict(
        s.kafka.kafka_python_kwargs(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    kwargs.update(overrides)
    return KafkaConsumer(*topics, **kwargs)
