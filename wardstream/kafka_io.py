"""Kafka plumbing shared by producers, sinks, replay, the worker and tests.

Topic creation with sensible partition counts, and producer / consumer factories that apply
the security settings of :mod:`wardstream.config` and the delivery guarantees we rely on.

A broker that has just started answers metadata requests seconds before its group and
transaction coordinators do. :func:`broker_call` is the one place that treats those states as
a wait: every admin, group and producer call of the project goes through it (the factories and
look-ups here do so themselves), and it gives up after a limit with one readable line
(:class:`BrokerUnavailable`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException as RdKafkaException
from confluent_kafka import Producer as RdKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import MemberState, OffsetAndMetadata
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.partitioner.default import murmur2
from kafka.errors import (
    CommitFailedError,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NodeNotReadyError,
    NotCoordinatorError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from tenacity import RetryError, Retrying, retry_if_exception, stop_before_delay, wait_exponential

from contracts.events import Topics
from wardstream.config import Settings, settings

log = logging.getLogger(__name__)

T = TypeVar("T")

RDKAFKA_LOG = logging.getLogger("librdkafka")  # librdkafka's log lines (confluent_config's logger)
# A script that configures no logging (a bench, the soak) would print librdkafka's retries on
# stderr through logging's last resort; a command's setup_logging still gets them (propagation).
RDKAFKA_LOG.addHandler(logging.NullHandler())

BOOTSTRAP_MS = 5000  # one connection attempt of a kafka-python client; broker_call repeats it

# kafka-python errors of a broker that is starting, electing or moving a coordinator / leader
WAIT_ERRORS: tuple[type[BaseException], ...] = (
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotCoordinatorError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    NodeNotReadyError,
    KafkaConnectionError,
    KafkaTimeoutError,  # also "Unable to bootstrap": no broker answers yet
    RequestTimedOutError,
)
# librdkafka's (confluent-kafka) error names for the same states
WAIT_RDKAFKA_ERRORS = frozenset({
    "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS", "NOT_COORDINATOR",
    "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "_WAIT_COORD", "_TRANSPORT",
    "_ALL_BROKERS_DOWN", "_TIMED_OUT",
})


class BrokerUnavailable(RuntimeError):
    """Kafka stayed in a retriable state past the limit; ``str()`` is one line saying what was
    waited for, on which broker, and the last error."""


def is_wait(exc: BaseException) -> bool:
    """Whether ``exc`` is a broker state to wait out (True) rather than an error (False).

    >>> is_wait(CoordinatorLoadInProgressError()), is_wait(KafkaTimeoutError("Unable to bootstrap"))
    (True, True)
    >>> from kafka.errors import TopicAuthorizationFailedError
    >>> is_wait(TopicAuthorizationFailedError()), is_wait(ValueError("bad"))
    (False, False)
    """
    if isinstance(exc, WAIT_ERRORS):
        return True
    if isinstance(exc, RdKafkaException) and exc.args and isinstance(exc.args[0], RdKafkaError):
        return exc.args[0].name() in WAIT_RDKAFKA_ERRORS
    return False


def _error_line(exc: BaseException) -> str:
    """An exception as one short line (librdkafka's KafkaError by its name and text)."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, RdKafkaError):
        return f"{err.name()}: {err.str()}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text and type(exc).__name__ not in text else text or type(exc).__name__


def broker_call(what: str, fn: Callable[[], T], *, limit: float | None = None,
                s: Settings | None = None) -> T:
    """``fn()``, waiting with bounded backoff (0.2 s doubling to 3 s) while Kafka is in a
    retriable state (:func:`is_wait`); any other error is raised at once. Past ``limit``
    seconds (default ``Settings.broker_wait_s``, WARDSTREAM_BROKER_WAIT_S) raises
    :class:`BrokerUnavailable` naming what was waited for.
    """
    s = s or settings()
    limit = limit if limit is not None else s.broker_wait_s

    def note(state: Any) -> None:  # the first wait is news, the repeats are for the log file
        log.log(logging.INFO if state.attempt_number == 1 else logging.DEBUG,
                "waiting for Kafka (%s): %s", what, _error_line(state.outcome.exception()))

    retrying = Retrying(retry=retry_if_exception(is_wait), reraise=False,
                        wait=wait_exponential(multiplier=0.2, max=3), stop=stop_before_delay(limit),
                        before_sleep=note)
    try:
        return retrying(fn)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        if last is None:
            raise
        raise BrokerUnavailable(
            f"Kafka at {s.kafka.bootstrap_servers} not ready: waited {limit:g} s for {what} "
            f"(WARDSTREAM_BROKER_WAIT_S; last error: {_error_line(last)})") from None


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, positive, modulo): the
    one every client here picks (kafka-python, aiokafka, librdkafka with ``murmur2_random``).
    Memoized: the routes of a batch's KPI records and outputs repeat (facilities, departments,
    providers), and kafka-python's murmur2 is pure Python.

    >>> key_partition("F01", 4) == key_partition(b"F01", 4) < 4
    True
    """
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


def durability(s: Settings) -> dict[str, str]:
    """The config every topic of the project gets: ``min.insync.replicas`` from
    WARDSTREAM_MIN_INSYNC_REPLICAS (with acks=all, a write succeeds once that many copies have it;
    2 of 3 on a cluster keeps writes going with one broker down and loses none)."""
    return {"min.insync.replicas": str(s.min_insync_replicas)}


def topic_specs(s: Settings | None = None) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic with (partitions, config). ADT partitions bound the worker parallelism. Each is
    created with WARDSTREAM_REPLICATION_FACTOR copies (:func:`ensure_topics`) and the
    :func:`durability` config."""
    s = s or settings()
    specs = _topic_layout(s)
    return {name: (parts, {**durability(s), **config}) for name, (parts, config) in specs.items()}


def _topic_layout(s: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Each topic's partitions and its own config (retention, compaction)."""
    t = Topics(s.topic_namespace)
    n = s.adt_partitions
    keep = {"retention.ms": "-1"}  # event topics are the system of record: replay needs them
    return {
        t.adt: (n, keep),
        t.reference: (1, {"cleanup.policy": "compact"}),
        # bundles of partials (stream/kpi_tally.py): no key per record, so kept, not compacted
        t.kpi_partials: (n, {**keep, "cleanup.policy": "delete"}),
        t.adt_accepted: (n, keep),
        t.adt_merges: (n, keep),
        t.discharge_scores: (n, keep),
        t.readmission_labels: (n, keep),
        t.alerts: (n, keep),
        t.kpis: (n, {}),
        t.dlq: (1, keep),
        t.health_partials: (n, {"cleanup.policy": "compact"}),
        t.model_health: (n, keep),
    }


def make_admin(s: Settings | None = None) -> KafkaAdminClient:
    """A kafka-python admin client (the caller closes it; :func:`admin_client` for a block)."""
    s = s or settings()
    kwargs = dict(s.kafka.kafka_python_kwargs(), bootstrap_timeout_ms=BOOTSTRAP_MS)
    return broker_call("an admin connection", lambda: KafkaAdminClient(**kwargs), s=s)


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
    offsets = broker_call(f"the offsets of consumer group {group}",
                          lambda: admin.list_group_offsets({group: None})).get(group, {})
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def end_offsets_of(consumer: KafkaConsumer, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """``consumer.end_offsets``, waiting out partitions without a leader yet."""
    tps = list(tps)
    return broker_call("end offsets", lambda: consumer.end_offsets(tps))


def beginning_offsets_of(consumer: KafkaConsumer,
                         tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """``consumer.beginning_offsets``, waiting out partitions without a leader yet."""
    tps = list(tps)
    return broker_call("beginning offsets", lambda: consumer.beginning_offsets(tps))


def delete_namespace_topics(*namespaces: str, s: Settings | None = None) -> int:
    """Delete every topic of these namespaces (topic-name prefixes; the empty namespace, the
    DESIGN.md names, is never touched). Returns how many were deleted."""
    prefixes = tuple(ns for ns in namespaces if ns)
    if not prefixes:
        return 0
    with admin_client(s) as admin:
        doomed = sorted(t for t in broker_call("the topic list", admin.list_topics, s=s)
                        if t.startswith(prefixes))
        for start in range(0, len(doomed), 200):
            chunk = doomed[start:start + 200]
            broker_call("topic deletion", lambda: admin.delete_topics(chunk, timeout_ms=30000), s=s)
    return len(doomed)


def ensure_topics(names: Iterable[str] | None = None, s: Settings | None = None,
                  extra: Mapping[str, tuple[int, dict[str, str]]] | None = None) -> None:
    """Create the wardstream topics that do not exist yet (idempotent), with
    WARDSTREAM_REPLICATION_FACTOR copies; a name outside :func:`topic_specs` and ``extra`` (more
    topics' partitions and own config) gets the ADT partition count and the :func:`durability`
    config. An existing topic whose config differs from its spec gets the spec's values (a
    release may change one: ``hospital.kpi-partials`` went from compacted to kept). Returns once
    every partition of the topics asked for has a leader (on a cluster a topic just created is
    listed before it does, and a client that looks then sees it without partitions)."""
    s = s or settings()
    specs = {**topic_specs(s), **{n: (p, {**durability(s), **c}) for n, (p, c) in (extra or {}).items()}}
    wanted = list(names) if names is not None else list(specs)
    with admin_client(s) as admin:
        existing = set(broker_call("the topic list", admin.list_topics, s=s))
        _align_configs(admin, {n: specs[n][1] for n in wanted if n in existing and n in specs}, s)
        new = []
        for name in (n for n in wanted if n not in existing):
            partitions, config = specs.get(name) or (s.adt_partitions, durability(s))
            new.append(NewTopic(name, partitions, s.replication_factor, topic_configs=config))
        if new:
            try:
                broker_call("topic creation", lambda: admin.create_topics(new), s=s)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics: %s", ", ".join(t.name for t in new))
        _wait_leaders(admin, wanted, s)


def _wait_leaders(admin: KafkaAdminClient, names: list[str], s: Settings, timeout: float = 60) -> None:
    """Until every partition of ``names`` has a leader (retriable: raises BrokerUnavailable after
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        described = broker_call("the topic metadata", lambda: admin.describe_topics(names), s=s)
        waiting = [t["name"] for t in described
                   if t["error_code"] or not t["partitions"] or any(p["leader_id"] < 0 for p in t["partitions"])]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"topics without a leader after {timeout:.0f}s: {', '.join(waiting[:3])}")
        time.sleep(0.2)


def _align_configs(admin: KafkaAdminClient, wanted: dict[str, dict[str, str]], s: Settings) -> None:
    """Set each topic's config keys of ``wanted`` that hold another value on the broker."""
    if not wanted:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(config)) for name, config in wanted.items()]
    found = broker_call("the topic configs", lambda: admin.describe_configs(resources, config_filter="all"), s=s)
    changes = []
    for name, config in wanted.items():
        have = found.get("topic", {}).get(name, {})
        diff = {k: v for k, v in config.items() if have.get(k, {}).get("value") != v}
        if diff:
            changes.append(ConfigResource(ConfigResourceType.TOPIC, name, diff))
            log.info("topic %s: setting %s", name, ", ".join(f"{k}={v}" for k, v in diff.items()))
    if changes:
        result = broker_call("a topic config change", lambda: admin.alter_configs(changes), s=s)
        refused = {name: r for name, r in result.get("topic", {}).items() if r != "OK"}
        if refused:
            raise RuntimeError(f"Kafka refused the topic config of {', '.join(sorted(refused))}: "
                               f"{next(iter(refused.values()))}")


def make_producer(s: Settings | None = None, **overrides: object) -> KafkaProducer:
    """Idempotent producer (acks=all): a retry never duplicates a message in the log."""
    s = s or settings()
    kwargs: dict[str, object] = dict(
        s.kafka.kafka_python_kwargs(),
        bootstrap_timeout_ms=BOOTSTRAP_MS,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type=None,
    )
    kwargs.update(overrides)
    return broker_call("a producer connection", lambda: KafkaProducer(**kwargs), s=s)


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
    # librdkafka's own lines (e.g. "%4|GETPID|... Coordinator load in progress: retrying" while
    # a broker starts) go through Python logging, so they reach the log file, not the console
    conf["logger"] = RDKAFKA_LOG
    conf["error_cb"] = _rdkafka_error
    return conf


def _rdkafka_error(err: RdKafkaError) -> None:
    """librdkafka's client-level errors (its error_cb): it retries them itself (log file only)
    unless fatal (the project's error: the console shows it)."""
    if err.fatal():
        log.error("Kafka producer failed: %s: %s", err.name(), err.str())
    else:
        RDKAFKA_LOG.info("%s: %s", err.name(), err.str())


def confluent_producer(conf: dict[str, object], s: Settings | None = None) -> RdKafkaProducer:
    """A confluent-kafka Producer on ``conf``, returned once the broker answered its metadata
    request (waits like :func:`broker_call`). librdkafka then fetches the idempotence producer
    id itself, retrying while the transaction coordinator loads; messages queue meanwhile."""
    s = s or settings()
    producer = RdKafkaProducer(conf)

    def metadata() -> None:
        if not producer.list_topics(timeout=5).brokers:
            raise RdKafkaException(RdKafkaError(RdKafkaError._ALL_BROKERS_DOWN))

    broker_call("a producer connection (librdkafka)", metadata, s=s)
    return producer


def make_consumer(*topics: str, group_id: str | None, s: Settings | None = None,
                  **overrides: object) -> KafkaConsumer:
    """Consumer reading committed data only, with manual commits (commit after the sink's write),
    subscribed to ``topics`` (which must exist) once its metadata knows their partitions."""
    s = s or settings()
    kwargs: dict[str, object] = dict(
        s.kafka.kafka_python_kwargs(),
        bootstrap_timeout_ms=BOOTSTRAP_MS,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    kwargs.update(overrides)
    consumer = broker_call("a consumer connection", lambda: KafkaConsumer(**kwargs), s=s)
    if topics:
        _await_partitions(consumer, topics, s)
        consumer.subscribe(list(topics))
    return consumer


def next_offsets(records: Iterable[Any]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets to commit once ``records`` are handled: last offset + 1 per partition."""
    out: dict[TopicPartition, OffsetAndMetadata] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if tp not in out or r.offset + 1 > out[tp].offset:
            out[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
    return out


class OffsetCommits:
    """Commits a consumer's offsets, and again later those a rebalance refused.

    kafka-python keeps a partition's position when a rebalance leaves it with the same consumer,
    so the messages of a refused commit are not read again: without a retry their offsets stay
    uncommitted until the partition's next message, and a run that stops once caught up would
    leave them for the next run to re-read. Offsets of a partition given to another member are
    dropped: the new owner reads from the last committed offset.
    """

    def __init__(self, consumer: KafkaConsumer, what: str) -> None:
        self.consumer = consumer
        self.what = what  # the messages re-read if the commit never goes through, for the log
        self.pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self.commits = 0
        self.failures = 0
        self._refused = False  # the pending offsets were refused (warned once, then debug)

    @property
    def settled(self) -> bool:
        """Every offset handed to :meth:`commit` is committed (or its partition given away)."""
        return not self.pending

    def rebind(self, consumer: KafkaConsumer) -> None:
        """Commit through ``consumer`` from now on; the pending offsets are dropped (the new
        consumer reads from the last committed offsets)."""
        self.consumer = consumer
        self.pending = {}
        self._refused = False

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata] | None = None) -> bool:
        """Commit ``offsets`` with any still pending; False (logged) if the broker refused them."""
        self.pending.update(offsets or {})
        owned = self.consumer.assignment()
        self.pending = {tp: o for tp, o in self.pending.items() if tp in owned}
        if not self.pending:
            return True
        try:
            self.consumer.commit(self.pending)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance: retried after the next poll
            self.failures += 1
            (log.debug if self._refused else log.warning)(
                "offset commit failed (%s); retried after the next poll, else the %s are re-read",
                exc, self.what)
            self._refused = True
            return False
        if self._refused:
            log.info("offsets committed on a retry")
        self.commits += 1
        self.pending = {}
        self._refused = False
        return True


class GroupMember:
    """A group consumer that is replaced when it stays out of a stable group for ``settle_s``.

    kafka-python 3.0.12 once left the sink's consumer rebalancing for good (bench/README.md, the
    2-worker year): the broker removed it on heartbeat expiry within a minute of its joining, it
    never joined again, and it went on fetching its old partitions while every offset commit was
    refused, so a restart would have read everything again. Its membership is public
    (``KafkaConsumer.group_metadata().state``): a consumer that has not been STABLE for
    ``settle_s`` is :meth:`stuck`, and :meth:`replace` closes it (nothing committed) and makes a
    new one, which joins afresh. What was read since the last commit is read again (the sink's
    upserts and the notifier's delivery ledger absorb it). A rebalance that waits that long on
    another member (one that does not poll) also ends in a replacement, which costs a rejoin.
    """

    LEAVE_MS = 5000

    def __init__(self, make: Callable[[], KafkaConsumer], settle_s: float, what: str, read: str) -> None:
        self._make = make
        self.settle_s = settle_s
        self.what = what  # the client, for the log
        self.consumer = make()
        self.commits = OffsetCommits(self.consumer, read)  # ``read``: what it re-reads, for the log
        self.replaced = 0
        self._unsettled_since: float | None = None

    def stuck(self) -> bool:
        """Whether the consumer has been out of a stable group for ``settle_s`` (then the
        caller finishes what it holds and calls :meth:`replace`)."""
        meta = self.consumer.group_metadata()
        now = time.monotonic()
        if meta.state == MemberState.STABLE:
            self._unsettled_since = None
        elif self._unsettled_since is None:
            self._unsettled_since = now
        elif now - self._unsettled_since >= self.settle_s:
            log.warning("the %s's consumer has been out of a stable group for %.0f s (state %s, "
                        "generation %s): replacing it; what it read since its last commit is read again",
                        self.what, now - self._unsettled_since, meta.state.strip("<>"), meta.generation_id)
            return True
        return False

    def replace(self) -> KafkaConsumer:
        """Close the consumer (nothing committed) and make a new one, which joins afresh. The
        close waits at most ``LEAVE_MS`` for the broker to take the member out: behind a join the
        broker holds, the answer would wait out the request timeout; else the broker drops the
        member when its session expires. The offsets pending in :attr:`commits` are dropped."""
        self.consumer.close(autocommit=False, timeout_ms=self.LEAVE_MS)
        self.consumer = self._make()
        self.commits.rebind(self.consumer)
        self.replaced += 1
        self._unsettled_since = None
        return self.consumer


def _await_partitions(consumer: KafkaConsumer, topics: Iterable[str], s: Settings) -> None:
    """Until the consumer's metadata has every topic's partitions. A group joined before that
    is assigned no partition of a topic it does not know yet, and the rejoin that follows once
    the metadata comes stalled kafka-python 3.0.12 for good in one run (a sink on a cluster just
    started: no member left in the group, the consumer polling without an assignment)."""
    missing = list(topics)
    deadline = time.monotonic() + s.broker_wait_s
    while missing := [t for t in missing if not consumer.partitions_for_topic(t)]:
        if time.monotonic() > deadline:
            consumer.close(autocommit=False)
            raise BrokerUnavailable(f"no partitions known for {', '.join(missing)} after {s.broker_wait_s:.0f}s")
        time.sleep(0.2)
