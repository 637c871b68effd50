"""The local three-broker cluster (``wardstream stack up --brokers 3``) keeps acknowledged writes
and keeps taking them with one broker killed; its configuration and the replication settings.

The e2e test starts its own cluster (free ports, a temporary directory, the jars of the shared
broker), so the shared broker on 9092 and PostgreSQL are never touched, and stops it after.
Topics come from :func:`wardstream.kafka_io.ensure_topics` with the cluster's environment
(replication 3, ``min.insync.replicas`` 2); the producer is the project's (acks=all).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from contracts.events import Topics
from wardstream.config import ConfigError, Settings, load_settings, settings
from wardstream.kafka_io import (admin_client, confluent_config, ensure_topics, group_offsets, make_consumer,
                                 make_producer, topic_specs)
from wardstream.stack.kafka import LocalCluster, LocalKafka

GROUP = "cluster-test"


@pytest.fixture()
def cluster(tmp_path, monkeypatch) -> Iterator[LocalCluster]:
    """A three-broker cluster of this test only, its environment set; stopped cleanly after."""
    cluster = LocalCluster.on_free_ports(tmp_path / "cluster")
    assert LocalKafka().bootstrap not in cluster.bootstrap.split(",")
    for name, value in cluster.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WARDSTREAM_NAMESPACE", "")
    monkeypatch.setenv("WARDSTREAM_BROKER_WAIT_S", "90")
    cluster.up()
    try:
        yield cluster
    finally:
        assert "Kafka cluster stopped" in cluster.down()
        assert not cluster.running() and cluster.registered() == set()


def partitions(s: Settings, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """Each partition's (leader, replicas, in-sync replicas) as the cluster's metadata has them
    (asked again while the broker asked is one that has just started and lacks the topic yet)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            meta = AdminClient({"bootstrap.servers": s.kafka.bootstrap_servers}).list_topics(topic, timeout=10)
            found = meta.topics[topic]
            if found.error is not None:
                raise KafkaException(found.error)
            return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs)) for p in found.partitions.values()}
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def produce(s: Settings, topic: str, values: list[str]) -> None:
    """Send with the project's producer (acks=all) and wait for every acknowledgement."""
    producer = make_producer(s)
    try:
        assert producer.config["acks"] in (-1, "all")
        futures = [producer.send(topic, key=f"P{i % 7}".encode(), value=v.encode()) for i, v in enumerate(values)]
        producer.flush(timeout=90)
        for future in futures:
            future.get(timeout=1)
    finally:
        producer.close()


def consume_committing(s: Settings, topic: str, count: int) -> list[str]:
    """Read ``count`` messages as consumer group GROUP and commit them."""
    consumer = make_consumer(topic, group_id=GROUP, s=s, consumer_timeout_ms=1000)
    values: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while len(values) < count and time.monotonic() < deadline:
            values += [m.value.decode() for m in consumer]
        consumer.commit()
    finally:
        consumer.close()
    return values


def test_cluster_nodes_form_one_replicated_quorum(tmp_path) -> None:
    """Each node's server.properties: its own id, ports and data, all three voters, replication 3
    with min.insync.replicas 2; the one-broker stack keeps 1 and the broker defaults."""
    cluster = LocalCluster(home=tmp_path, ports=[9192, 9194, 9196], controller_ports=[9193, 9195, 9197])
    assert cluster.bootstrap == "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196"
    assert cluster.env()["WARDSTREAM_MIN_INSYNC_REPLICAS"] == "2"
    props = [dict(line.split("=", 1) for line in node._write_properties().read_text().splitlines())
             for node in cluster.nodes]
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in props} == {
        "1@127.0.0.1:9193,2@127.0.0.1:9195,3@127.0.0.1:9197"}
    assert props[1]["listeners"] == "PLAINTEXT://127.0.0.1:9194,CONTROLLER://127.0.0.1:9195"
    assert props[2]["log.dirs"] == str(tmp_path / "broker-3" / "data")
    for key, value in [("offsets.topic.replication.factor", "3"), ("transaction.state.log.replication.factor", "3"),
                       ("transaction.state.log.min.isr", "2"), ("default.replication.factor", "3"),
                       ("min.insync.replicas", "2")]:
        assert {p[key] for p in props} == {value}, key

    single = LocalKafka(home=tmp_path / "single")._write_properties().read_text()
    assert "offsets.topic.replication.factor=1\n" in single and "transaction.state.log.min.isr=1\n" in single
    assert "controller.quorum.voters=1@127.0.0.1:9093\n" in single
    assert "default.replication.factor" not in single and "min.insync.replicas" not in single


@pytest.mark.parametrize(("env", "error"), [
    ({"WARDSTREAM_REPLICATION_FACTOR": "3", "WARDSTREAM_MIN_INSYNC_REPLICAS": "2"}, None),
    ({"WARDSTREAM_MIN_INSYNC_REPLICAS": "2"},
     "WARDSTREAM_MIN_INSYNC_REPLICAS='2': must be at most WARDSTREAM_REPLICATION_FACTOR (1)"),
    ({"WARDSTREAM_REPLICATION_FACTOR": "0"}, "WARDSTREAM_REPLICATION_FACTOR='0': must be an integer >= 1"),
])
def test_replication_settings(env, error, monkeypatch) -> None:
    monkeypatch.delenv("WARDSTREAM_REPLICATION_FACTOR", raising=False)
    monkeypatch.delenv("WARDSTREAM_MIN_INSYNC_REPLICAS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if error is None:
        s = load_settings()
        assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
        assert {cfg["min.insync.replicas"] for _, cfg in topic_specs(s).values()} == {"2"}
    else:
        with pytest.raises(ConfigError, match=re.escape(error)):
            load_settings()


@pytest.mark.e2e
def test_cluster_takes_acked_writes_with_a_broker_killed(cluster: LocalCluster) -> None:
    s = settings()
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    assert confluent_config(s)["acks"] == "all"
    status = cluster.status()
    assert all(f"Kafka broker {i}: up" in status for i in (1, 2, 3)), status

    topic = Topics("").adt
    ensure_topics([topic], s)
    wait_for(lambda: len(partitions(s, topic)) == s.adt_partitions, 30, "the new topic's metadata")
    layout = partitions(s, topic)
    assert all(replicas == isr == [1, 2, 3] for _, replicas, isr in layout.values()), layout
    resource = ConfigResource("topic", topic)
    rd_admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap_servers})
    found: dict = {}

    def described() -> bool:  # the broker asked may not know the new topic yet
        try:
            found.update(rd_admin.describe_configs([resource])[resource].result(timeout=10))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
        return bool(found)

    wait_for(described, 30, "the new topic's config on the broker asked")
    assert found["min.insync.replicas"].value == "2"

    first = [f"a{i}" for i in range(200)]
    produce(s, topic, first)

    victim = cluster.node(layout[0][0])  # the leader of partition 0
    assert "stopped" in victim.kill()
    survivors = sorted({1, 2, 3} - {victim.node_id})
    wait_for(lambda: all(isr == survivors for _, _, isr in partitions(s, topic).values()),
             60, f"broker {victim.node_id} to leave every ISR (2 in sync)")
    assert f"Kafka broker {victim.node_id}: down" in cluster.status()

    second = [f"b{i}" for i in range(200)]
    produce(s, topic, second)  # 2 in sync >= min.insync.replicas: acks=all still succeeds
    assert sorted(consume_committing(s, topic, 400)) == sorted(first + second)

    assert "up on" in victim.up()
    wait_for(lambda: all(isr == [1, 2, 3] for _, _, isr in partitions(s, topic).values()),
             90, f"broker {victim.node_id} to rejoin every ISR")
    assert cluster.healthy()

    # the group's commits, made with a broker down, are kept by the whole cluster
    with admin_client(s) as admin:
        committed = group_offsets(admin, GROUP)
    assert sum(committed.values()) == 400
