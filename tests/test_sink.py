"""The sink stores exactly what was produced, idempotently, committing offsets after the write."""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter

import orjson
import psycopg2
import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from typer.testing import CliRunner

from consumers.fake import generate, produce
from consumers.sink import SinkStats, default_group, default_topics, run_sink
from consumers.state import dump_tables, table_counts
from stream.kpi_tally import Partial
from test_sink_support import reset_group, sink_db  # noqa: F401  (fixture)
from wardstream.cli import app
from wardstream.config import ConfigError, settings
from wardstream.kafka_io import GroupMember, admin_client, ensure_topics, group_offsets, make_consumer

pytestmark = pytest.mark.e2e


def _one(url: str, query: str):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    conn.close()
    return row


def test_tables_hold_exactly_the_produced_events(kafka_ns, sink_db) -> None:
    data = generate(patients=80, days=90, seed=11)
    produce(data, kafka_ns)
    stats = run_sink(once=True)

    adt = [ev for _, ev in data.adt]
    discharges = [ev for ev in adt if ev.event_type == "discharge"]
    assert stats.invalid == Counter({f"{kafka_ns}hospital.adt-accepted": len(data.invalid_adt)})
    assert stats.rejected == 0
    assert stats.stored == stats.messages - len(data.invalid_adt)
    counts = table_counts(sink_db)
    assert counts["adt_events"] == len(adt)
    assert counts["encounters"] == len({ev.encounter_id for ev in adt})
    assert counts["patients"] == len({ev.patient_id for ev in adt})
    assert counts["charges"] == len(discharges)
    assert counts["procedures"] == sum(len(d.procedure_codes) for d in discharges)
    assert counts["diagnoses"] == sum(len(ev.diagnosis_codes) for ev in adt if ev.event_type != "transfer")
    assert counts["discharge_scores"] == len(data.scores)
    assert counts["readmissions"] == len(data.labels)
    assert counts["alerts"] == len(data.alerts)
    assert counts["dead_letters"] == len(data.dlq)
    assert counts["providers"] == len([r for _, r in data.reference if r.kind == "provider"])

    total_cost, los = _one(sink_db, "SELECT sum(total_cost), sum(length_of_stay_days) FROM encounters")
    assert math.isclose(float(total_cost), sum(d.total_cost for d in discharges), rel_tol=1e-12)
    assert math.isclose(los, sum(d.length_of_stay_days for d in discharges), rel_tol=1e-9)
    assert math.isclose(float(_one(sink_db, "SELECT sum(amount) FROM charges")[0]),
                        sum(d.total_cost for d in discharges), rel_tol=1e-12)
    score_sum, high = _one(sink_db, "SELECT sum(score), count(*) FILTER (WHERE high_risk) FROM discharge_scores")
    assert math.isclose(score_sum, sum(s.score for _, s in data.scores), rel_tol=1e-9)
    assert high == sum(s.high_risk for _, s in data.scores)
    assert _one(sink_db, "SELECT count(*) FILTER (WHERE readmitted) FROM readmissions")[0] == \
        sum(lab.readmitted for _, lab in data.labels)

    # the current department of an encounter is that of its latest event
    latest = {}
    for ev in adt:
        latest[ev.encounter_id] = ev.department
    with psycopg2.connect(sink_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT encounter_id, department FROM encounters")
        assert dict(cur.fetchall()) == latest
        # hospital.kpi-partials: the last record per key is the stored row
        cur.execute("SELECT dimension, dimension_id, day::text, adt_partition, discharges_micro FROM kpi_partials")
        stored = {"|".join(map(str, r[:4])): r[4] for r in cur.fetchall()}
    conn.close()
    expected = {key: orjson.loads(raw)["micro"]["discharges"] for key, raw in data.kpis}
    assert stored == expected

    # offsets were committed: a second run of the same group finds nothing new
    again = run_sink(once=True)
    assert again.messages == 0 and table_counts(sink_db) == counts


class SinkGroup:
    """The sink's group in this test's namespace, its topics' partitions, and members of the
    group that read another topic (``elsewhere``), to hold the group in a rebalance."""

    def __init__(self, namespace: str) -> None:
        self.group, topics = default_group(), default_topics()
        self.elsewhere = f"{namespace}test.elsewhere"
        ensure_topics([self.elsewhere])
        self.admin = AdminClient({"bootstrap.servers": settings().kafka.bootstrap_servers})
        self.probe = make_consumer(group_id=None)
        self.tps = [TopicPartition(t, p) for t in topics for p in self.probe.partitions_for_topic(t)]

    def member(self) -> KafkaConsumer:
        """A member reading ``elsewhere``. Subscribed by pattern, its metadata holds every topic:
        as the group's leader it then assigns the sink its partitions when the sink joins (its
        metadata would lack the sink's topics if it were subscribed by name)."""
        consumer = make_consumer(group_id=self.group)
        consumer.subscribe(pattern=f"^{re.escape(self.elsewhere)}$")
        return consumer

    def described(self):
        return self.admin.describe_consumer_groups([self.group])[self.group].result(timeout=30)

    def ends(self) -> dict[TopicPartition, int]:
        """The end offsets of the sink's partitions that hold messages."""
        return {tp: end for tp, end in self.probe.end_offsets(self.tps).items() if end > 0}

    def committed(self) -> dict[TopicPartition, int]:
        """The group's committed offsets of the sink's topics."""
        with admin_client() as kadmin:
            return {tp: o for tp, o in group_offsets(kadmin, self.group).items() if tp.topic != self.elsewhere}


def test_a_commit_refused_by_a_rebalance_is_retried(kafka_ns, sink_db) -> None:
    """Commits refused while the sink's group rebalances are made once the rebalance is over.

    Two members of the sink's group read another topic: ``slow``, already in the group, and
    ``newcomer``, whose joining starts a rebalance while the sink's first batch waits on a table
    lock. ``slow`` does not poll, so the rebalance waits for it and kafka-python refuses the sink's
    next commits. The sink keeps its partitions and their positions through the rebalance, so
    it must commit those offsets afterwards instead of ending ``--once`` without them."""
    produce(generate(patients=30, days=30, seed=3), kafka_ns)
    g = SinkGroup(kafka_ns)

    def polled_until(member, state: ConsumerGroupState, assigned: int = 0) -> bool:
        """``member`` polled; the group is in ``state`` with ``assigned`` partitions or more."""
        member.poll(timeout_ms=200)
        described = g.described()
        return described.state == state and sum(
            len(m.assignment.topic_partitions) for m in described.members) >= assigned

    # kafka-python once left ``slow``, the group's leader, rejoining for good after the sink
    # joined (polled all the while): replaced after 10 s out of a stable group, as the sink's
    # own consumer is (GroupMember). It holds no offsets, so a new one changes nothing here.
    slow = GroupMember(g.member, settle_s=10, what="test's slow member", read="nothing")

    def kept(member: GroupMember) -> KafkaConsumer:
        if member.stuck():
            member.replace()
        return member.consumer

    newcomer = None
    _until(lambda: polled_until(kept(slow), ConsumerGroupState.STABLE), "the first member's assignment")
    blocker = psycopg2.connect(sink_db)  # holds every table: the sink's first write waits
    with blocker.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        cur.execute("LOCK TABLE " + ", ".join(t for (t,) in cur.fetchall()) + " IN ACCESS EXCLUSIVE MODE")
    refused = threading.Event()
    result: dict[str, SinkStats] = {}

    def sink() -> None:
        result["stats"] = run_sink(once=True, handle_signals=False, max_batch=60, linger_ms=0,
                                   on_batch=lambda st: st.commit_failures and refused.set())

    thread = threading.Thread(target=sink)
    thread.start()
    try:
        # every partition assigned: the sink's topics to the sink, elsewhere to slow
        every = len(g.tps) + len(g.probe.partitions_for_topic(g.elsewhere))
        _until(lambda: polled_until(kept(slow), ConsumerGroupState.STABLE, every) and _one(
            sink_db, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0] > 0,
            "the sink in the group, its first write waiting")
        newcomer = g.member()
        _until(lambda: polled_until(newcomer, ConsumerGroupState.PREPARING_REBALANCING),
               "the newcomer's rebalance")
        time.sleep(HEARTBEAT_S + 1)  # the sink learns of the rebalance from its next heartbeat
        blocker.rollback()
        assert refused.wait(60), "no commit of the sink was refused"

        def sink_done() -> bool:  # the two members rejoin: the rebalance ends
            kept(slow).poll(timeout_ms=100)
            newcomer.poll(timeout_ms=100)
            return not thread.is_alive()
        _until(sink_done, "the sink's end")
        ends = g.ends()
    finally:
        blocker.close()
        for consumer in (slow.consumer, newcomer, g.probe):
            if consumer is not None:
                consumer.close(autocommit=False)
    assert g.committed() == ends
    assert result["stats"].stored > 0


HEARTBEAT_S = 3  # kafka-python's heartbeat_interval_ms, which make_consumer leaves as it is


def test_a_consumer_out_of_a_stable_group_too_long_is_replaced(kafka_ns, sink_db, monkeypatch, caplog) -> None:
    """A sink whose consumer stays out of a stable group for WARDSTREAM_GROUP_SETTLE_S replaces
    it with a new one, which joins, and every message ends up stored once and committed.

    The group is held in a rebalance by members that do not poll (``slow``, as in the test
    above): a newcomer's joining starts the rebalance, and it waits for them. (What the
    replacement is for, kafka-python left rebalancing for good, cannot be caused on demand.)"""
    monkeypatch.setenv("WARDSTREAM_GROUP_SETTLE_S", "3")
    data = generate(patients=30, days=30, seed=4)
    produce(data, kafka_ns)
    g = SinkGroup(kafka_ns)
    ends = g.ends()

    def state() -> ConsumerGroupState:
        return g.described().state

    def polled(*members: KafkaConsumer) -> bool:  # members keep their place in the group by polling
        for consumer in members:
            consumer.poll(timeout_ms=100)
        return True

    def committed() -> bool:
        return g.committed() == ends

    slow = g.member()
    newcomers: list[KafkaConsumer] = []  # members that join the group, then stop polling
    _until(lambda: polled(slow) and state() == ConsumerGroupState.STABLE, "the first member's assignment")
    stop = threading.Event()
    result: dict[str, SinkStats] = {}
    thread = threading.Thread(target=lambda: result.update(stats=run_sink(handle_signals=False, stop=stop)))
    thread.start()
    try:
        _until(lambda: polled(slow) and committed(), "the sink's first commits")

        def held() -> bool:
            """Whether the sink replaced its consumer; while the group is stable, another member
            joins, and its rebalance waits for the members that do not poll now (``slow``, the
            earlier newcomers; a member's join may still complete in kafka-python's background)."""
            if any("out of a stable group" in r.getMessage() for r in caplog.records):
                return True
            if state() == ConsumerGroupState.STABLE:
                newcomers.append(g.member())
                _until(lambda: polled(newcomers[-1]) and state() == ConsumerGroupState.PREPARING_REBALANCING,
                       "the newcomer's rebalance")
            return False
        _until(held, "the sink replacing its consumer")
        more = generate(patients=10, days=10, seed=5)
        produce(more, kafka_ns)  # read by the new consumer
        ends = g.ends()
        _until(lambda: polled(slow, *newcomers) and committed(), "the new consumer's commits")  # the rebalance ends
    finally:
        stop.set()
        thread.join(60)
        for consumer in (slow, *newcomers, g.probe):
            consumer.close(autocommit=False)
    assert not thread.is_alive()
    assert result["stats"].group_replacements >= 1
    counts = table_counts(sink_db)
    assert counts["adt_events"] == len(data.adt) + len(more.adt)


def _until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_rerun_over_the_same_offsets_changes_nothing(kafka_ns, sink_db) -> None:
    data = generate(patients=50, days=70, seed=5)
    produce(data, kafka_ns)
    # small batches (keys span several transactions), none lingering
    first = run_sink(once=True, max_batch=37, linger_ms=0)
    assert first.stored > 0
    before = dump_tables(sink_db)
    reset_group(default_group(), default_topics())
    second = run_sink(once=True)  # one big batch this time, with the default linger
    assert second.messages == first.messages
    assert dump_tables(sink_db) == before


def test_linger_setting(monkeypatch) -> None:
    assert settings().sink_linger_ms == 20
    monkeypatch.setenv("WARDSTREAM_SINK_LINGER_MS", "75")
    assert settings().sink_linger_ms == 75
    for bad in ("soon", "-5", "2.5"):
        monkeypatch.setenv("WARDSTREAM_SINK_LINGER_MS", bad)
        with pytest.raises(ValueError, match=f"^WARDSTREAM_SINK_LINGER_MS='{bad}': must be an integer >= 0$"):
            settings()
    bad_cli = CliRunner().invoke(app, ["sink", "--once"])  # refused at the start (main: exit 2)
    assert isinstance(bad_cli.exception, ConfigError)
    assert str(bad_cli.exception) == "WARDSTREAM_SINK_LINGER_MS='2.5': must be an integer >= 0"


def test_fetch_linger_switches_between_flowing_and_idle() -> None:
    from types import SimpleNamespace

    from consumers.sink import FetchLinger

    config = {"fetch_min_bytes": 1, "fetch_max_wait_ms": 500}
    linger = FetchLinger(SimpleNamespace(_fetcher=SimpleNamespace(config=config)), linger_ms=20)
    linger.flowing(True)
    assert config == {"fetch_min_bytes": 64 * 1024, "fetch_max_wait_ms": 20}
    linger.flowing(False)
    assert config == {"fetch_min_bytes": 1, "fetch_max_wait_ms": 500}  # idle: as configured
    FetchLinger(SimpleNamespace(_fetcher=SimpleNamespace(config=config)), linger_ms=0).flowing(True)
    assert config["fetch_max_wait_ms"] == 500  # 0: never held
    FetchLinger(SimpleNamespace(), linger_ms=20).flowing(True)  # no fetcher to set: a no-op


def test_a_live_trickle_takes_one_transaction_per_linger(kafka_ns, sink_db) -> None:
    """Messages that arrive one at a time: while they flow, the broker holds each fetch for the
    linger, so the trickle is written in about one transaction per linger; with no linger, each
    arrival is its own transaction and offset commit. Both store every message. (This also
    shows that the setting still reaches kafka-python's fetcher: sink.FetchLinger.)"""
    import threading
    import time

    from contracts.events import Topics, dump
    from wardstream.kafka_io import ensure_topics, make_producer

    topic = Topics(kafka_ns).discharge_scores
    ensure_topics([topic])
    scores = generate(patients=40, days=40, seed=6).scores[:40]
    gap, linger_s = 0.04, 0.6  # the trickle lasts ~1.6 s
    producer = make_producer()
    batches, trickle_s = {}, {}
    try:
        for label, linger in (("none", 0), ("linger", linger_s)):
            out = {}
            sink = threading.Thread(target=lambda: out.update(stats=run_sink(
                topics=[topic], group=f"{kafka_ns}trickle-{label}", until_idle=5,
                linger_ms=int(linger * 1000), handle_signals=False)))
            sink.start()
            time.sleep(2.5)  # the sink has joined its group (it reads the earlier run's as one backlog)
            started = time.monotonic()
            for key, score in scores:
                producer.send(topic, key=key.encode(), value=dump(score))
                producer.flush()
                time.sleep(gap)
            trickle_s[label] = time.monotonic() - started
            sink.join(60)
            assert out["stats"].stored == out["stats"].messages >= len(scores)
            batches[label] = out["stats"].batches
    finally:
        producer.close()
    bound = int(trickle_s["linger"] / linger_s) + 3  # one per linger, the earlier run's backlog, the edges
    assert batches["linger"] <= bound < batches["none"], batches
    assert table_counts(sink_db)["discharge_scores"] == len({k for k, _ in scores})


def test_cli_sink_once_and_bad_options(kafka_ns, sink_db) -> None:
    data = generate(patients=10, days=30, seed=2)
    produce(data, kafka_ns, include_invalid=False)
    runner = CliRunner()
    bad = runner.invoke(app, ["sink", "--once", "--until-idle", "2"])
    assert bad.exit_code == 2 and "either --once or --until-idle" in bad.output
    unknown = runner.invoke(app, ["sink", "--once", "--topics", "nope"])
    assert unknown.exit_code == 2 and "unknown topics" in unknown.output
    ok = runner.invoke(app, ["sink", "--until-idle", "3"])
    assert ok.exit_code == 0, ok.output
    assert table_counts(sink_db)["adt_events"] == len(data.adt)
    assert settings().sink_database_url and "wardstream_sink" in settings().sink_database_url


def test_copy_values_and_auto_write_paths_give_identical_tables(fresh_db, monkeypatch) -> None:
    """The COPY+upsert path, the multi-row VALUES path and "auto" (the default: VALUES for a
    table with few rows in the batch, COPY for many; here both within one batch) store the same rows."""
    import uuid

    from consumers import tables
    from consumers.migrate import migrate
    from consumers.rows import Batch
    from consumers.tables import write_batch
    from wardstream.stack.postgres import LocalPostgres

    data = generate(patients=40, days=60, seed=9)
    batch = Batch()
    for offset, (_, m) in enumerate(data.adt + data.reference + data.scores + data.labels + data.alerts
                                    + data.kpis + data.dlq):
        kind = type(m).__name__
        if kind in ("AdmissionEvent", "DischargeEvent", "TransferEvent"):
            batch.add_adt(m, 0, offset)
        elif kind in ("ProviderRef", "FacilityRef"):
            batch.add_reference(m)
        elif kind == "bytes":
            batch.add_kpi_partials(Partial.parse_all(m))
        else:
            {"DischargeScore": batch.add_score, "ReadmissionLabel": batch.add_label, "Alert": batch.add_alert,
             "DeadLetter": batch.add_dead_letter}[kind](m, 0, offset)
    sizes = sorted(len(batch.rows(t)) for t in tables.TABLE_NAMES if batch.rows(t))
    monkeypatch.setattr(tables, "COPY_MIN_ROWS", sizes[len(sizes) // 2])
    assert sizes[0] < tables.COPY_MIN_ROWS <= sizes[-1]  # "auto" takes both paths in this batch
    pg = LocalPostgres()
    others = [f"wardstream_t{uuid.uuid4().hex[:10]}" for _ in range(2)]
    base = fresh_db.rsplit("/", 1)[0]
    try:
        dumps = []
        for url, method in ((fresh_db, "copy"), (f"{base}/{others[0]}", "values"), (f"{base}/{others[1]}", "auto")):
            if url != fresh_db:
                pg.psql_admin(f"CREATE DATABASE {url.rsplit('/', 1)[1]} OWNER wardstream")
            migrate(url)
            conn = psycopg2.connect(url)
            with conn, conn.cursor() as cur:
                write_batch(cur, batch, method=method)
                write_batch(cur, batch, method=method)  # twice in one transaction: still the same rows
            conn.close()
            dumps.append(dump_tables(url))
        assert dumps[0] == dumps[1] == dumps[2]
        assert len(dumps[0]["adt_events"]) == len(data.adt)
    finally:
        for name in others:
            pg.psql_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_awkward_but_valid_strings_are_stored_verbatim(kafka_ns, sink_db) -> None:
    """NUL (unstorable: replaced), empty strings, quotes, commas, newlines and backslashes."""
    from contracts.events import Alert, Topics, dump
    from wardstream.kafka_io import ensure_topics, make_producer

    data = generate(patients=3, days=20, seed=4)
    adm = next(ev for _, ev in data.adt if ev.event_type == "admission")
    odd = adm.model_copy(update={"patient": adm.patient.model_copy(update={
        "race": "a\x00b", "chronic_conditions": ["", 'say "x", y', "back\\slash", "line\nbreak"]})})
    from datetime import datetime, timezone
    alert = Alert(alert_id="alert-Z", encounter_id="Z", patient_id="PZ", facility_id="F01", department="",
                  attending_provider_id="D,1", discharged_at=datetime(2025, 1, 5, tzinfo=timezone.utc),
                  score=0.9, lace=12, threshold=0.3, reasons=["", "quote \" here", "{braces}"])
    t = Topics(kafka_ns)
    ensure_topics([t.adt_accepted, t.alerts])
    p = make_producer()
    p.send(t.adt_accepted, key=odd.patient_id.encode(), value=dump(odd))
    p.send(t.alerts, key=b"Z", value=dump(alert))
    p.flush()
    p.close()
    stats = run_sink(once=True)
    assert stats.rejected == 0 and stats.stored == 2
    race, chronic = _one(sink_db, "SELECT race, chronic_conditions FROM patients")
    assert race == "a\ufffdb"
    assert chronic == ["", 'say "x", y', "back\\slash", "line\nbreak"]
    assert _one(sink_db, "SELECT payload->'patient'->>'race' FROM adt_events")[0] == "a\ufffdb"
    dep, prov, reasons = _one(sink_db, "SELECT department, attending_provider_id, reasons FROM alerts")
    assert (dep, prov, reasons) == ("", "D,1", ["", "quote \" here", "{braces}"])


def test_sigterm_stops_cleanly_after_committing(kafka_ns, sink_db) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    data = generate(patients=20, days=30, seed=8)
    produce(data, kafka_ns, include_invalid=False)
    proc = subprocess.Popen([sys.executable, "-m", "wardstream.cli", "sink"], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while table_counts(sink_db)["adt_events"] < len(data.adt):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.3)
        time.sleep(1.0)  # let it commit its offsets
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert '"messages"' in out.decode()
    assert run_sink(once=True).messages == 0  # everything was committed before exiting
