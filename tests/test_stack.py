"""The local stack answers for real: a round trip through Kafka and a query on PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from contracts.events import Topics
from wardstream.config import scoped_env, settings
from wardstream.kafka_io import BrokerUnavailable, ensure_topics, make_consumer, make_producer
from wardstream.stack.kafka import LocalKafka
from wardstream.stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e


def test_up_is_idempotent(stack) -> None:
    assert "already up" in LocalKafka().up() or LocalKafka().healthy()
    assert "up on" in LocalPostgres().up()


def test_kafka_round_trip(kafka_ns) -> None:
    topic = Topics(kafka_ns).adt
    ensure_topics([topic])
    producer = make_producer()
    for i in range(10):
        producer.send(topic, key=b"P1", value=f"m{i}".encode())
    producer.flush()
    producer.close()
    consumer = make_consumer(topic, group_id=None, consumer_timeout_ms=5000)
    values = [m.value.decode() for m in consumer]
    consumer.close()
    assert values == [f"m{i}" for i in range(10)]  # one key, one partition: order kept


def test_postgres_answers(fresh_db) -> None:
    engine = sa.create_engine(settings().sqlalchemy_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select current_database()")).scalar() == fresh_db.rsplit("/", 1)[1]
    engine.dispose()


def test_ensure_topics_gives_an_existing_topic_its_spec_config(kafka_ns) -> None:
    """A topic made by an older release (hospital.kpi-partials was compacted; it now holds
    bundles without a key per record) gets the config of today's spec."""
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    from wardstream.kafka_io import admin_client

    topic = Topics(kafka_ns).kpi_partials
    with admin_client() as admin:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    ensure_topics([topic])
    with admin_client() as admin:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, None)],
                                       config_filter="all")["topic"][topic]
    assert found["cleanup.policy"]["value"] == "delete" and found["retention.ms"]["value"] == "-1"


def test_worker_changelogs_exist_with_leaders_before_faust_starts(kafka_ns) -> None:
    """The worker creates its tables' changelog topics itself (compacted, one partition per
    source partition) and waits for their leaders: a changelog Faust creates at its start can be
    seen without partitions on a cluster, and the table's first write then raises."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from stream.app import create_worker
    from stream.faust_app import changelog_topics
    from wardstream.config import settings
    from wardstream.kafka_io import admin_client

    changelogs = changelog_topics(create_worker(settings()))
    assert {name.rsplit("-", 2)[-2] for name in changelogs} >= {"patients", "partition_state", "kpi_days"}
    ensure_topics(list(changelogs), extra=changelogs)
    with admin_client() as admin:
        described = {t["name"]: t for t in admin.describe_topics(list(changelogs))}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name, None)
                                          for name in changelogs], config_filter="all")["topic"]
    for name, (partitions, _) in changelogs.items():
        assert len(described[name]["partitions"]) == partitions
        assert all(p["leader_id"] >= 0 for p in described[name]["partitions"])
        assert configs[name]["cleanup.policy"]["value"] == "compact"


def test_a_group_consumer_knows_its_topics_partitions_before_it_joins(kafka_ns) -> None:
    """make_consumer subscribes once its metadata has every topic's partitions (reads a private
    kafka-python name, ``_client.cluster``: this fails if it changes), so the group's first
    assignment has them all: a join before that assigned nothing, and kafka-python 3.0.12
    stalled in the rejoin that followed (wardstream/kafka_io.py)."""
    t = Topics(kafka_ns)
    topics = [t.adt_accepted, t.discharge_scores, t.reference]
    ensure_topics(topics)
    consumer = make_consumer(*topics, group_id=f"{kafka_ns}g")
    try:
        n = settings().adt_partitions
        assert [consumer._client.cluster.partitions_for_topic(x) for x in topics] == [
            set(range(n)), set(range(n)), {0}]  # hospital.reference has one partition
        for _ in range(40):
            consumer.poll(timeout_ms=250)
            if consumer.assignment():
                break
        assert len(consumer.assignment()) == 2 * n + 1
    finally:
        consumer.close(autocommit=False)
    with pytest.raises(BrokerUnavailable, match="no partitions known"), scoped_env(WARDSTREAM_BROKER_WAIT_S="1"):
        make_consumer(f"{kafka_ns}never.created", group_id=f"{kafka_ns}g")
