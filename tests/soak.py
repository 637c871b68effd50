"""Chaos soak (``make soak``): workers and the sink on a private 3-broker cluster, under a seeded
schedule of SIGKILLs, must end with the outputs of an undisturbed run.

What it does, in order:

1. starts a private KRaft cluster (3 brokers on free ports, replication 3, ``min.insync.replicas``
   2; the shared broker on 9092 is never touched) and points this process and everything it
   starts at it;
2. simulates the input (2 hospitals of 300 beds, ``--days`` days) and runs it once undisturbed
   (``faults.baseline``: one worker, then the sink into a scratch database): the reference;
3. starts ``--workers`` workers and the sink (``wardstream sink``, a subprocess) on a fresh
   namespace and, for ``--minutes``, copies the same input into it in slices while a seeded
   schedule SIGKILLs a random worker (restarted on the same host, or on a new one: empty state
   directory) or broker (restarted), and with ``--pg-faults`` PostgreSQL (an immediate stop, as
   a crash, then a start), every 30-60 s; a worker or sink that dies on its own is restarted, as
   its supervisor would, and reported;
4. lets everything drain, stops it, and checks the drills' invariants (``tests/faults.py``):
   every first score and every final output equal the undisturbed run's, KPI windows and labels
   equal the independent oracle (``tests/stream_oracle.py``), one alert per encounter, every
   ADT message either applied or dead-lettered (produced = processed + DLQ), and the live
   sink's database equal to the baseline's.

It prints one line per fault and a table of the invariants, and exits 1 when one fails. Logs
(workers, sink, brokers) go to ``.wardstream/logs/soak-<UTC time>/``; the cluster's data there
is deleted after a passing run and kept after a failing one. PostgreSQL faults are opt-in: the
soak's database is a scratch one, but the server is the shared one of every other test.

    python tests/soak.py                          # 10 minutes of faults, 2 workers, seed 1
    python tests/soak.py --minutes 3 --seed 7 --workers 3 --pg-faults
    python tests/soak.py --plan --seed 7          # print the fault schedule only
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages beside the tests' helpers
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from producers.simulator import SimConfig  # noqa: E402
from stream.runner import StreamWorker, WorkerDied  # noqa: E402

from faults import (  # noqa: E402
    Outputs,
    RunResult,
    baseline,
    comparable_dump,
    group_members,
    new_namespace,
    read_outputs,
    read_topic,
    scratch_database,
    settle,
    sink_namespace,
    wait_until,
    worker_env,
)
from soak_checks import (  # noqa: E402
    BROKERS,
    Check,
    Fault,
    check_accounting,
    check_alerts,
    check_database,
    check_finals,
    check_first_scores,
    check_oracle,
    feed_times,
    footprint,
    footprint_table,
    plan_faults,
    slice_plan,
    table,
)

# ---------------------------------------------------------------------- the processes


def free_ports(n: int) -> list[int]:
    from test_stack_cluster import free_ports as pick

    return pick(n)


def log(t0: float, message: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)


@dataclass
class Fleet:
    """The soak's workers and its sink, each restartable, with what happened to them."""

    namespace: str
    db_url: str
    run_dir: Path
    workers: int
    sink_group: str = ""
    slots: dict[int, StreamWorker] = field(default_factory=dict)  # by worker number, from 1
    state_dirs: dict[int, Path] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    sink: subprocess.Popen | None = None
    sink_starts: int = 0
    sink_deaths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sink_group = f"{self.namespace}live-sink"

    def start_worker(self, i: int, new_host: bool = False) -> None:
        if new_host or i not in self.state_dirs:
            self.state_dirs[i] = self.run_dir / f"state-worker{i}-{self.starts[i] + 1}"
        self.starts[i] += 1
        env = worker_env(self.namespace, self.state_dirs[i])
        self.slots[i] = StreamWorker(env=env, log_path=self.run_dir / f"worker{i}-{self.starts[i]}.log").start()

    def start_sink(self) -> None:
        self.sink_starts += 1
        env = {**os.environ, "WARDSTREAM_NAMESPACE": self.namespace, "DATABASE_URL": self.db_url,
               "SINK_DATABASE_URL": ""}
        out = open(self.run_dir / f"sink-{self.sink_starts}.log", "ab")
        self.sink = subprocess.Popen([sys.executable, "-m", "wardstream.cli", "sink", "--group", self.sink_group],
                                     env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        out.close()

    def revive(self, t0: float) -> None:
        """Restart a worker or the sink that exited on its own (a supervisor's job); report it."""
        for i, w in list(self.slots.items()):
            if not w.alive():
                code = w.proc.returncode
                w.stop()
                self.crashes.append(f"worker {i} exited {code} ({w.log_path.name})")
                log(t0, f"worker {i} exited on its own with {code}; restarted (log {w.log_path})")
                self.start_worker(i)
        if self.sink is not None and self.sink.poll() is not None:
            self.sink_deaths.append(self.sink.returncode)
            log(t0, f"the sink exited on its own with {self.sink.returncode}; restarted")
            self.start_sink()

    def kill_worker(self, i: int) -> None:
        w = self.slots[i]
        if w.alive():
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait(30)
        w.stop()

    def any_worker(self) -> StreamWorker:
        return next(w for w in self.slots.values() if w.alive())

    def stop_workers(self) -> None:
        for w in self.slots.values():
            w.stop()

    def stop_sink(self) -> int | None:
        if self.sink is None:
            return None
        if self.sink.poll() is None:
            self.sink.send_signal(signal.SIGTERM)
            try:
                self.sink.wait(120)
            except subprocess.TimeoutExpired:
                self.sink.kill()
                self.sink.wait(10)
        return self.sink.returncode


def crash_postgres(down_s: float) -> None:
    """An immediate stop (the postmaster quits without a checkpoint, as in a crash), then a start."""
    from wardstream.stack.postgres import LocalPostgres

    pg = LocalPostgres()
    subprocess.run(["pg_ctlcluster", pg.version() or "", pg.cluster, "stop", "-m", "immediate"],
                   capture_output=True, text=True)
    time.sleep(down_s)
    pg.up()


# ---------------------------------------------------------------------- the soak


@dataclass
class Soak:
    minutes: float
    workers: int
    seed: int
    days: int
    pg_faults: bool
    run_dir: Path
    slices: int = 0
    footprint: str = ""  # the baseline's topics on disk, per ADT event

    @property
    def config(self) -> dict:
        return dict(days=self.days, beds=300, facilities=2, seed=self.seed, start=date(2025, 1, 1))

    def run(self, stack: ExitStack) -> list[Check]:
        """Cluster, reference run, fault phase, drain, checks; everything started is stopped by
        ``stack``."""
        from contracts.events import Topics
        from stream.runner import end_offsets
        from wardstream.stack.kafka import DEFAULT_HOME, LocalCluster

        t0 = time.monotonic()
        ports = free_ports(2 * BROKERS)
        cluster = LocalCluster(home=self.run_dir / "cluster", ports=ports[:BROKERS],
                               controller_ports=ports[BROKERS:], heap="384m", jar_home=DEFAULT_HOME)
        os.environ.update(cluster.env(), WARDSTREAM_NAMESPACE="", WARDSTREAM_BROKER_WAIT_S="90")
        stack.callback(lambda: print(cluster.down(), flush=True))
        log(t0, cluster.up(timeout=180))

        base = baseline(self.run_dir, **self.config)
        log(t0, f"baseline (undisturbed, 1 worker): {base.adt_messages} ADT events in {base.seconds:.0f} s, "
                f"messages {base.outputs.messages}")
        self.footprint = footprint_table(footprint(base.namespace, cluster.node(1).data), base.adt_messages)

        ns = new_namespace("soak")
        url = stack.enter_context(scratch_database())
        fleet = Fleet(ns, url, self.run_dir, self.workers)
        stack.callback(fleet.stop_sink)
        stack.callback(fleet.stop_workers)
        for i in range(1, self.workers + 1):
            fleet.start_worker(i)
        wait_until(lambda: group_members(ns) == self.workers, 180, f"{self.workers} workers in the group")
        fleet.start_sink()
        self._fault_phase(t0, base, fleet, cluster)

        cluster.up(timeout=180)
        fleet.revive(t0)
        log(t0, "fault phase over: every broker, worker and the sink up; draining")
        stall = self._drain(t0, fleet)
        fleet.stop_workers()
        sink_code = fleet.stop_sink()
        final = sink_namespace(ns, url, group=fleet.sink_group)
        log(t0, f"drained: live sink stopped ({sink_code}), its catch-up stored {final.messages} more messages")

        adt_end = sum(end_offsets([Topics(ns).adt]).values())
        return self._checks(base, ns, url, adt_end, stall, fleet, t0)

    def _fault_phase(self, t0: float, base: RunResult, fleet: Fleet, cluster) -> None:
        """``minutes`` of the seeded faults while the input is copied in, slice by slice; a
        worker or sink that exits on its own meanwhile is restarted."""
        from consumers.replay import copy_into_namespace, plan_replay

        seconds = self.minutes * 60
        faults = plan_faults(self.seed, seconds, self.workers, self.pg_faults)
        slices = slice_plan(plan_replay(base.namespace), self.slices or max(4, round(2 * self.minutes)))
        timeline = sorted([(t, 0, n, s) for n, (t, s) in enumerate(zip(feed_times(seconds, len(slices)), slices))]
                          + [(f.at, 1, n, f) for n, f in enumerate(faults)], key=lambda e: (e[0], e[1]))
        log(t0, f"fault phase: {seconds:.0f} s, {len(faults)} faults (seed {self.seed}), input in "
                f"{len(slices)} slices, {self.workers} workers + the sink on namespace {fleet.namespace}")
        phase = time.monotonic()
        copied = 0
        for at, kind, n, item in timeline:
            while time.monotonic() - phase < at:
                fleet.revive(t0)
                time.sleep(min(1.0, max(0.0, at - (time.monotonic() - phase))))
            if kind == 0:
                copied += copy_into_namespace(item, fleet.namespace, with_reference=n == 0, resume=n > 0).events
                log(t0, f"input slice {n + 1}/{len(slices)}: {copied} of {base.adt_messages} ADT events copied")
            else:
                self._fault(t0, n + 1, item, fleet, cluster)
        while time.monotonic() - phase < seconds:
            fleet.revive(t0)
            time.sleep(1)

    def _fault(self, t0: float, n: int, f: Fault, fleet: Fleet, cluster) -> None:
        started = time.monotonic()
        log(t0, f"fault {n}: {f.describe()}")
        try:
            if f.target == "worker":
                fleet.kill_worker(f.index)
                time.sleep(f.down_s)
                fleet.start_worker(f.index, new_host=f.new_host)
            elif f.target == "broker":
                node = cluster.node(f.index)
                node.kill()
                time.sleep(f.down_s)
                node.up(timeout=180)
            else:
                crash_postgres(f.down_s)
        except Exception as exc:  # reported; the drain brings everything back up
            log(t0, f"fault {n}: the restart failed: {exc!r}")
            return
        log(t0, f"fault {n}: back after {time.monotonic() - started:.1f} s")

    def _drain(self, t0: float, fleet: Fleet) -> str | None:
        """Wait until the workers' group has applied and committed everything (``faults.settle``),
        restarting a worker that dies meanwhile; what is stuck, or None. A drain that times out
        is reported the same way, so the checks still show what the outputs lack."""
        for _ in range(4):
            try:
                stall = settle(fleet.any_worker(), timeout=600)
                log(t0, f"workers caught up; stall: {stall}")
                return stall
            except TimeoutError as exc:
                log(t0, f"drain: {exc}")
                return str(exc)
            except (RuntimeError, WorkerDied):
                fleet.revive(t0)
        raise RuntimeError("workers kept dying while draining; see their logs")

    def _checks(self, base: RunResult, ns: str, url: str, adt_end: int, stall: str | None,
                fleet: Fleet, t0: float) -> list[Check]:
        out = read_outputs(ns)
        view = Compared(base, ns, out, SimConfig(**self.config))
        checks = [Check("input copied whole", adt_end == base.adt_messages,
                        f"{adt_end} of {base.adt_messages} ADT events")]
        for name, check in [("every first score identical", view.first_scores),
                            ("final outputs = undisturbed run", view.finals),
                            ("KPI windows and labels = oracle", view.oracle),
                            ("one alert per encounter", view.alerts),
                            ("produced = processed + DLQ", view.accounting),
                            ("live sink database = baseline's", lambda: view.database(url))]:
            try:
                checks.extend(check())
            except Exception as exc:  # one broken comparison must not hide the others
                checks.append(Check(name, False, f"could not compare: {type(exc).__name__}: {exc}"))
        checks.append(Check("workers caught up and committed", stall is None,
                            stall or "every ADT offset applied and committed"))
        checks.append(Check("the sink stayed up", not fleet.sink_deaths,
                            f"exited on its own {len(fleet.sink_deaths)} times {fleet.sink_deaths}"))
        checks.append(Check("workers that died on their own", None,
                            f"{len(fleet.crashes)} {fleet.crashes[:5]} (restarted, as a supervisor would)"))
        log(t0, "checks done")
        return checks


@dataclass
class Compared:
    """Reads what the invariants need from Kafka and PostgreSQL; one method per invariant."""

    base: RunResult
    namespace: str
    out: Outputs  # the soak's final outputs
    sim_config: SimConfig  # its input

    def first_scores(self) -> list[Check]:
        from contracts.events import Topics

        return [check_first_scores(_values(Topics(self.namespace).discharge_scores),
                                   _values(Topics(self.base.namespace).discharge_scores))]

    def finals(self) -> list[Check]:
        return [check_finals(self.base.outputs, self.out)]

    def oracle(self) -> list[Check]:
        from contracts.events import Topics
        from producers.simulator import Simulation

        dead = set(self.base.outputs.dlq)
        valid = [{**orjson.loads(r.value), "_partition": r.partition}
                 for r in read_topic(Topics(self.base.namespace).adt) if (r.partition, r.offset) not in dead]
        capacity = {p.provider_id: p.capacity for p in Simulation(self.sim_config).reference.providers}
        return check_oracle(valid, self.out, capacity)

    def alerts(self) -> list[Check]:
        from contracts.events import Topics

        return [check_alerts(_values(Topics(self.namespace).alerts), set(self.out.alerts),
                             set(self.base.outputs.alerts))]

    def accounting(self) -> list[Check]:
        from consumers.sink import source_offset
        from contracts.events import Topics
        from stream.runner import end_offsets

        t = Topics(self.namespace)
        accepted = [(r.partition, source_offset(r.headers, r.offset)) for r in read_topic(t.adt_accepted)]
        ends = {tp.partition: end for tp, end in end_offsets([t.adt]).items()}
        return [check_accounting(ends, accepted, set(self.out.dlq))]

    def database(self, url: str) -> list[Check]:
        return [check_database(self.base.dump, comparable_dump(url))]


def _values(topic: str) -> list[dict]:
    """Every message of ``topic``, decoded, per partition in offset order."""
    return [orjson.loads(r.value) for r in read_topic(topic)]


# ---------------------------------------------------------------------- the command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tests/soak.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the fault phase (default 10)")
    ap.add_argument("--workers", type=int, default=2, choices=range(1, 5), metavar="{1..4}",
                    help="stream workers (default 2; hospital.adt has 4 partitions)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the simulated input")
    ap.add_argument("--days", type=int, default=None,
                    help="simulated days of input (2 hospitals x 300 beds, ~205 events/day; "
                         "default max(45, 9 x minutes): labels need 30 days)")
    ap.add_argument("--pg-faults", action="store_true",
                    help="also crash and restart PostgreSQL: the SHARED server, so off by default")
    ap.add_argument("--plan", action="store_true", help="print the fault schedule and exit (starts nothing)")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error("--minutes must be > 0")
    args.days = args.days or max(45, round(9 * args.minutes))
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    faults = plan_faults(args.seed, args.minutes * 60, args.workers, args.pg_faults)
    print(f"soak: {args.minutes:g} min of faults, {args.workers} workers, seed {args.seed}, "
          f"{args.days} days x 2 hospitals of input, PostgreSQL faults {'on' if args.pg_faults else 'off'}")
    if args.plan:
        for n, f in enumerate(faults, 1):
            print(f"  {f.at:6.1f} s  fault {n}: {f.describe()}")
        return 0
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = ROOT / ".wardstream" / "logs" / f"soak-{stamp}-{uuid.uuid4().hex[:4]}"
    run_dir.mkdir(parents=True)
    print(f"logs: {run_dir}", flush=True)
    soak = Soak(args.minutes, args.workers, args.seed, args.days, args.pg_faults, run_dir)
    signal.signal(signal.SIGTERM, _terminate)  # a SIGTERM stops everything started, as Ctrl-C does
    checks: list[Check] = []
    error: BaseException | None = None
    try:
        with ExitStack() as stack:  # stops the sink, the workers, the cluster; drops the database
            checks = soak.run(stack)
    except BaseException as exc:  # noqa: BLE001 - reported as the soak's own failure, after cleanup
        error = exc
    if error is not None:
        checks.append(Check("soak ran to the end", False, f"{type(error).__name__}: {error}"))
    if soak.footprint:
        print(f"\nthe undisturbed run's topics on one broker's disk (as written, before compaction):\n"
              f"{soak.footprint}")
    print()
    print(table(checks))
    failed = any(c.ok is False for c in checks)
    if failed:
        print(f"\nFAILED: logs and the cluster's data kept in {run_dir}")
    else:
        shutil.rmtree(run_dir / "cluster", ignore_errors=True)
        for state in run_dir.glob("state-*"):
            shutil.rmtree(state, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
