"""Fault drills: each disturbed run must end in the same final state as the undisturbed run.

One input (``faults.FAULT_CONFIG``: 60 simulated days, 150 beds) is run once undisturbed (the
baseline, shared by the drills); each drill copies that input into a fresh namespace with
``wardstream replay`` (same keys, partitions and order), runs the worker with a fault in the middle
of the stream, sinks the outputs into a fresh database and compares: the last value per key of
scores, labels, alerts, KPI windows and the DLQ, and every table the sink fills.
Faust may re-send messages after a fault; the final states must not differ.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from faults import (
    baseline,
    diff_dumps,
    diff_finals,
    finish_run,
    group_members,
    new_namespace,
    settle,
    replay_copy,
    replay_rest,
    scratch_database,
    sink_namespace,
    comparable_dump,
    wait_mid_stream,
    wait_scores,
    wait_until,
    worker_env,
)
from contracts.events import Topics
from stream.runner import StreamWorker, committed_offsets, end_offsets, group_id
from wardstream.stack.kafka import LocalKafka
from wardstream.stack.postgres import LocalPostgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base(stack, tmp_path_factory):
    return baseline(tmp_path_factory.mktemp("baseline"))


def _assert_same(base, run, stall: str | None = None) -> None:
    """Same final outputs and tables as the baseline; then, separately, no stalled commits."""
    assert not diff_finals(base.outputs, run.outputs), diff_finals(base.outputs, run.outputs)
    assert not diff_dumps(base.dump, run.dump), diff_dumps(base.dump, run.dump)
    assert stall is None, f"final state identical, but the worker's consumer group is stuck: {stall}"


# Each drill copies this share of the input, faults the worker mid-way through it, then copies the
# rest: the fault always comes before the end of the input, however fast the worker is.
HEAD = 0.5

# The default guarantee (stream/README.md: Faust's exactly_once lost outputs on a clean stop here).
GUARANTEES = ["at_least_once"]



# New host: in 3 of 15 runs of session 4 an agent of the new worker was handed messages past its
# restored state (got offset 184 after 115), and its seek back was answered with nothing. Since
# session 6 the agent reads such messages back from Kafka itself (stream/continuity.py).
@pytest.mark.parametrize("guarantee,local_state", [
    ("at_least_once", "kept"),
    ("at_least_once", "lost"),
])
def test_worker_sigkill_mid_stream_then_restart(base, tmp_path, guarantee, local_state) -> None:
    """SIGKILL, then a new worker: on the same host (RocksDB kept) or a new one (state from changelogs)."""
    ns = new_namespace("kill")
    head = replay_copy(base.namespace, ns, HEAD)
    env = worker_env(ns, tmp_path / "state", WARDSTREAM_PROCESSING_GUARANTEE=guarantee)
    started = time.monotonic()
    first = StreamWorker(env=env, log_path=tmp_path / "worker-1.log").start()
    try:
        scores = wait_scores(first, base.outputs.messages["scores"] * HEAD // 3)
        at_fault = first.progress()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
    finally:
        first.stop()
    assert head + replay_rest(base.namespace, ns, HEAD) == base.adt_messages
    print(f"killed after {scores} scores, ADT lag {at_fault['adt_lag']} of {at_fault['adt_end']} copied so far")
    assert at_fault["adt_lag"] > 0  # uncommitted work in flight
    if local_state == "lost":
        env = worker_env(ns, tmp_path / "state-new-host", WARDSTREAM_PROCESSING_GUARANTEE=guarantee)
    with StreamWorker(env=env, log_path=tmp_path / "worker-2.log") as second:
        stall = settle(second)
    run = finish_run(ns, time.monotonic() - started, base.adt_messages)
    print(f"sigkill drill ({guarantee}, {local_state} local state): {run.seconds:.0f}s, "
          f"messages {run.outputs.messages} "
          f"(baseline {base.outputs.messages}); stall: {stall}")
    _assert_same(base, run, stall)


# the worker's inputs whose partitions the commit watch keeps committed (stream/partition_watch.py)
WATCHED_INPUTS = ["adt", "kpi_partials", "reference"]


@pytest.mark.parametrize("lost", WATCHED_INPUTS)
def test_the_group_commits_an_input_whose_faust_commits_never_reach_the_broker(base, tmp_path, lost) -> None:
    """Faust records a commit as done even when its client's commit failed or left the partition
    out (stream/faust_patches.py, 3.), and then commits that partition only past it: the group
    can stay behind at the end of the input. Here none of Faust's commits of one input reach the
    broker (tests/inject/sitecustomize.py): the worker's commit watch must commit it at the
    agent's progress, and the outputs must equal the baseline's."""
    ns = new_namespace("lost")
    replay_copy(base.namespace, ns)
    topic = getattr(Topics(ns), lost)
    env = worker_env(ns, tmp_path / "state", WARDSTREAM_TEST_LOSE_FAUST_COMMITS=topic,
                     PYTHONPATH=str(Path(__file__).parent / "inject"))
    started = time.monotonic()

    def committed_at_end() -> bool:
        committed = committed_offsets(group_id(ns))
        return all(committed.get(tp, 0) >= end for tp, end in end_offsets([topic]).items())

    with StreamWorker(env=env, log_path=tmp_path / "worker.log") as worker:
        worker.wait_caught_up(timeout=300)
        wait_until(committed_at_end, 60, f"the group committed at the end of {topic}")
    assert "fault injection: Faust's commits" in (tmp_path / "worker.log").read_text(errors="replace")
    _assert_same(base, finish_run(ns, time.monotonic() - started, base.adt_messages))


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_broker_restart_mid_stream(base, tmp_path, guarantee) -> None:
    """Broker down and up mid-stream. A worker that crashes meanwhile is restarted, as its supervisor
    does in production (docker-compose ``restart: unless-stopped``); each crash is reported. A
    sink runs through the outage too: it must wait for the broker, not exit, and its database
    must end equal to the baseline's."""
    ns = new_namespace("brk")
    head = replay_copy(base.namespace, ns, HEAD)
    kafka = LocalKafka()
    env = worker_env(ns, tmp_path / "state", WARDSTREAM_PROCESSING_GUARANTEE=guarantee)
    started = time.monotonic()
    crashes: list[int | None] = []
    with scratch_database() as live_url, LiveSink(ns, live_url) as sink:
        w = StreamWorker(env=env, log_path=tmp_path / "worker.log").start()
        _broker_drill(w, kafka, base, ns, head, env, tmp_path, crashes)
        sink.finish()
        live_dump = comparable_dump(live_url)
    run = finish_run(ns, time.monotonic() - started, base.adt_messages)
    print(f"broker drill ({guarantee}): {run.seconds:.0f}s, worker crashes {crashes}, "
          f"messages {run.outputs.messages} (baseline {base.outputs.messages}); "
          f"live sink: {sink.stats.as_dict() if sink.stats else None}")
    assert not diff_dumps(base.dump, live_dump), diff_dumps(base.dump, live_dump)
    _assert_same(base, run)


class LiveSink:
    """The real sink in a thread over ``namespace``'s topics into ``url`` while a drill runs."""

    def __init__(self, namespace: str, url: str) -> None:
        self.kwargs = dict(namespace=namespace, group=f"{namespace}live-sink", db_url=url,
                           handle_signals=False)
        self.stop = threading.Event()
        self.stats = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="live-sink", daemon=True)

    def _run(self) -> None:
        from consumers.sink import run_sink

        try:
            self.stats = run_sink(stop=self.stop, **self.kwargs)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def __enter__(self) -> "LiveSink":
        self.thread.start()
        return self

    def finish(self) -> None:
        """Stop the live sink (it must still be running), then let it catch up to the end."""
        from consumers.sink import run_sink

        assert self.thread.is_alive() and self.error is None, f"the live sink died: {self.error!r}"
        self.stop.set()
        self.thread.join(120)
        assert self.error is None, f"the live sink failed: {self.error!r}"
        run_sink(once=True, **self.kwargs)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def _broker_drill(w, kafka, base, ns, head, env, tmp_path, crashes) -> None:
    """Stop and start the shared broker while ``w`` is mid-stream; settle, restarting a crashed worker."""
    try:
        wait_mid_stream(w, 0.6)
        down_at = time.monotonic()
        try:
            kafka.down()
            time.sleep(2)
        finally:
            kafka.up()  # whatever happened, the shared broker is back before anything else
        outage = time.monotonic() - down_at
        assert head + replay_rest(base.namespace, ns, HEAD) == base.adt_messages
        while True:
            try:
                stall = settle(w)
                break
            except RuntimeError:
                if w.alive() or len(crashes) >= 3:
                    raise
                crashes.append(w.proc.returncode)
                w.stop()
                w = StreamWorker(env=env, log_path=tmp_path / f"worker-restart{len(crashes)}.log").start()
    finally:
        w.stop()
    print(f"broker back after {outage:.0f}s; stall: {stall}")
    assert stall is None, f"final state aside, the worker's consumer group is stuck: {stall}"


def test_postgres_restart_mid_sink(base) -> None:
    pg = LocalPostgres()
    restarted = threading.Event()

    def on_batch(stats) -> None:
        if stats.batches == 3 and not restarted.is_set():
            restarted.set()
            pg.restart()

    with scratch_database() as url:
        try:
            # batches of 500: the restart after the third is mid-way through the ~5,400 messages
            stats = sink_namespace(base.namespace, url, max_batch=500, on_batch=on_batch)
        finally:
            if not pg.healthy():
                pg.up()
        assert restarted.is_set(), stats.as_dict()
        assert stats.db_retries >= 1 and stats.rejected == 0
        dump = comparable_dump(url)
    assert not diff_dumps(base.dump, dump), diff_dumps(base.dump, dump)


# Faust's rebalance has bitten this drill several ways (stream/faust_patches.py, the capacity
# route, stream/continuity.py), each fixed in turn. From session 3 to 6 a failure was reported
# as XFAIL. Since the agents read skipped messages back from Kafka and the commit and stall
# watches act on what Faust leaves behind, it passed 5 of 5 runs and a fresh-clone CI run
# (README "Known gaps"), with both remedies seen at work in the worker logs: a plain test again.
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_two_workers_share_partitions_and_one_leaves(base, tmp_path, guarantee) -> None:
    _scale_out_drill(base, tmp_path, guarantee)


def _scale_out_drill(base, tmp_path, guarantee: str) -> None:
    ns = new_namespace("scale")
    started = time.monotonic()
    one = StreamWorker(env=worker_env(ns, tmp_path / "state-1", WARDSTREAM_PROCESSING_GUARANTEE=guarantee),
                       log_path=tmp_path / "worker-1.log").start()
    two = StreamWorker(env=worker_env(ns, tmp_path / "state-2", WARDSTREAM_PROCESSING_GUARANTEE=guarantee),
                       log_path=tmp_path / "worker-2.log").start()
    try:
        # Both in the group before any input arrives, so both work on it.
        wait_until(lambda: group_members(ns) == 2, 120, "two members in the worker group")
        head = replay_copy(base.namespace, ns, HEAD)
        wait_mid_stream(one, 0.6)
        assert two.alive()
        code = two.stop(timeout=60)  # SIGTERM: it leaves the group, its partitions move to `one`
        assert head + replay_rest(base.namespace, ns, HEAD) == base.adt_messages
        left = time.monotonic() - started
        stall = settle(one)
    finally:
        two.stop()
        one.stop()
    run = finish_run(ns, time.monotonic() - started, base.adt_messages)
    print(f"scale-out drill ({guarantee}): {run.seconds:.0f}s (worker 2 left after {left:.0f}s, exit {code}), "
          f"messages {run.outputs.messages} (baseline {base.outputs.messages}); stall: {stall}")
    _assert_same(base, run, stall)
