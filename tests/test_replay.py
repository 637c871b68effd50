"""``wardstream replay``: selection, dry run, clear errors, exact copies, identical recomputation."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from consumers.replay import ReplayError, occurred_at, plan_replay
from faults import (
    baseline,
    diff_dumps,
    diff_finals,
    finish_run,
    new_namespace,
    produce_input,
    read_topic,
    scratch_database,
    worker_env,
)
from contracts.events import Topics
from wardstream.cli import app
from wardstream.config import scoped_env

runner = CliRunner()


def _text(result) -> str:
    """The command's output as one line of words (rich wraps and boxes error messages)."""
    return " ".join(result.output.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


def _utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def test_occurred_at_reads_event_time_or_none() -> None:
    assert occurred_at(b'{"occurred_at": "2025-03-01T10:00:00Z"}') == _utc(2025, 3, 1, 10)
    for bad in (b"", b"\xff\xfe", b"[]", b'{"occurred_at": 5}', b'{"occurred_at": "2025-03-01T10:00:00"}', None):
        assert occurred_at(bad) is None


def test_cli_requires_a_destination() -> None:
    r = runner.invoke(app, ["replay", "--dry-run"])
    assert r.exit_code == 2 and "--into-namespace NS or --rebuild-db" in _text(r)
    r = runner.invoke(app, ["replay", "--into-namespace", "x.", "--rebuild-db"])
    assert r.exit_code == 2 and "not both" in _text(r)
    r = runner.invoke(app, ["replay", "--into-namespace", "x.", "--from", "yesterday"])
    assert r.exit_code == 2 and "ISO-8601" in _text(r)


@pytest.fixture(scope="module")
def source(stack) -> str:
    """A 10-day simulation in its own namespace (module-wide: the selection tests only read it)."""
    ns = new_namespace("rsrc")
    produce_input(ns, days=10, beds=150, seed=5)
    return ns


def _by_partition(topic: str) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in read_topic(topic):
        out.setdefault(r.partition, []).append(r)
    return out


@pytest.mark.e2e
def test_clear_errors(source) -> None:
    cases = [
        (["--namespace", "nosuch-ns."], "unknown topic"),
        (["--from", "2025-01-05", "--to", "2025-01-02"], "is not before"),
        (["--from", "2031-01-01"], "empty range"),
        (["--partition", "0", "--from-offset", "9", "--to-offset", "3"], "after --to-offset"),
        (["--partition", "0", "--from-offset", "0", "--to-offset", "10000000"], "holds offsets"),
        (["--partition", "9"], "partitions 0..3"),
        (["--from-offset", "3"], "need --partition"),
        (["--partition", "0", "--from", "2025-01-02"], "not both"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["replay", "--namespace", source, "--into-namespace", "never.", *args])
        assert r.exit_code == 2, (args, r.output)
        assert message in _text(r), (args, r.output)
    r = runner.invoke(app, ["replay", "--namespace", "nosuch-ns.", "--rebuild-db", "--dry-run"])
    assert r.exit_code == 2 and "unknown topic" in _text(r)


@pytest.mark.e2e
def test_dry_run_reports_and_does_nothing(source) -> None:
    target = new_namespace("rdry")
    r = runner.invoke(app, ["replay", "--namespace", source, "--into-namespace", target, "--dry-run",
                            "--from", "2025-01-03T00:00:00Z", "--to", "2025-01-05T00:00:00Z"])
    assert r.exit_code == 0, r.output
    plan = plan_replay(source, start=_utc(2025, 1, 3), end=_utc(2025, 1, 5))
    text = _text(r)
    assert re.search(rf"all\W+{plan.events}\b", text), text
    for rng in plan.ranges:
        assert str(rng.first) in text and str(rng.last) in text
    assert "2025-01-03T" in text and "2025-01-04T" in text
    assert not read_topic(Topics(target).adt)  # nothing copied
    from wardstream.kafka_io import admin_client

    with admin_client() as admin:
        assert not [t for t in admin.list_topics() if t.startswith(target)]


@pytest.mark.e2e
def test_time_range_copy_is_the_same_contiguous_sequence(source) -> None:
    start, end = _utc(2025, 1, 3, 12), _utc(2025, 1, 6)
    target = new_namespace("rtime")
    r = runner.invoke(app, ["replay", "--namespace", source, "--into-namespace", target,
                            "--from", "2025-01-03T12:00:00Z", "--to", "2025-01-06T00:00:00+00:00"])
    assert r.exit_code == 0, r.output
    src = _by_partition(Topics(source).adt)
    dst = _by_partition(Topics(target).adt)
    assert set(dst) <= set(src) and dst
    for p, records in src.items():
        inside = [i for i, rec in enumerate(records) if start <= occurred_at(rec.value) < end]
        want = records[inside[0]: inside[-1] + 1] if inside else []
        got = dst.get(p, [])
        assert [(x.key, x.value) for x in got] == [(x.key, x.value) for x in want], p
        assert [x.offset for x in got] == list(range(len(got)))  # a fresh topic, in order
    # the reference topic (provider capacity) comes along, so KPIs can be recomputed
    assert len(read_topic(Topics(target).reference)) == len(read_topic(Topics(source).reference)) > 0
    # a replay never writes into a namespace that already holds events
    again = runner.invoke(app, ["replay", "--namespace", source, "--into-namespace", target])
    assert again.exit_code == 2 and "already holds messages" in _text(again)


@pytest.mark.e2e
def test_offset_range_copy(source) -> None:
    target = new_namespace("roff")
    r = runner.invoke(app, ["replay", "--namespace", source, "--into-namespace", target,
                            "--partition", "2", "--from-offset", "5", "--to-offset", "24"])
    assert r.exit_code == 0, r.output
    src = _by_partition(Topics(source).adt)[2][5:25]
    dst = _by_partition(Topics(target).adt)
    assert list(dst) == [2]
    assert [(x.key, x.value, x.timestamp) for x in dst[2]] == [(x.key, x.value, x.timestamp) for x in src]


@pytest.mark.e2e
def test_whole_topic_replay_recomputes_the_live_run(stack, tmp_path_factory, tmp_path) -> None:
    """Replaying everything into a fresh namespace gives the same outputs and tables as live."""
    from stream.runner import StreamWorker

    live = baseline(tmp_path_factory.mktemp("baseline"))
    target = new_namespace("rall")
    r = runner.invoke(app, ["replay", "--namespace", live.namespace, "--into-namespace", target])
    assert r.exit_code == 0, r.output
    with StreamWorker(env=worker_env(target, tmp_path / "state"), log_path=tmp_path / "worker.log") as w:
        w.wait_caught_up(timeout=400)
    replayed = finish_run(target, 0.0, live.adt_messages)
    assert len(replayed.outputs.scores) == len(live.outputs.scores) > 100
    assert not diff_finals(live.outputs, replayed.outputs), diff_finals(live.outputs, replayed.outputs)
    assert not diff_dumps(live.dump, replayed.dump), diff_dumps(live.dump, replayed.dump)


@pytest.mark.e2e
def test_rebuild_db_restores_the_tables(stack, tmp_path_factory) -> None:
    """`replay --rebuild-db` into an empty database gives the live sink's tables; twice changes nothing."""
    from consumers.state import dump_tables
    from faults import comparable_dump, sink_namespace

    live = baseline(tmp_path_factory.mktemp("baseline"))
    with scratch_database() as url:
        # what the live sink stores
        sink_namespace(live.namespace, url)
        expected = dump_tables(url)
        assert comparable_dump(url) == live.dump
    with scratch_database() as url:
        with scoped_env(DATABASE_URL=url, SINK_DATABASE_URL=None):
            dry = runner.invoke(app, ["replay", "--namespace", live.namespace, "--rebuild-db", "--dry-run"])
            assert dry.exit_code == 0, dry.output
            assert "would re-sink" in _text(dry)
            assert all(not rows for rows in dump_tables(url).values())  # the dry run wrote nothing
            for _ in range(2):
                r = runner.invoke(app, ["replay", "--namespace", live.namespace, "--rebuild-db"])
                assert r.exit_code == 0, r.output
                assert dump_tables(url) == expected
