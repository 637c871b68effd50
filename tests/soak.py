"""Chaos soak (``make soak``): workers and the sink on a private 3-broker cluster, under a seeded
schedule of SIGKILLs, must end with the outputs of an undisturbed run.

What it does, in order:

1. starts a private KRaft cluster (3 brokers on free ports, replication 3, ``min.insync.replicas``
   2; the shared broker on 9092 is never touched) and points this process and everything it
   starts at it;
2. simulates the input (2 hospitals of 300 beds, ``--days`` days) and runs it once undisturbed
   (``faults.baseline``: one worker, then the sink into a scratch database): the reference;
3. starts ``--workers`` workers (``tests/fleet.py``: each as on a host of its own), the sink and
   the notifier (``wardstream sink`` / ``wardstream notify``, subprocesses; the notifier posts to
   a real HTTP server in this process) on a fresh namespace and, for ``--minutes``, copies the
   same input into it in slices while a seeded schedule SIGKILLs a random worker (restarted on
   the same host, or on a new one: empty state directory) or broker (restarted), and with
   ``--pg-faults`` PostgreSQL (an immediate stop, as a crash, then a start), every 30-60 s; a
   process that dies on its own is restarted, as its supervisor would, and reported;
4. lets everything drain, stops it, and checks the drills' invariants (``tests/fleet.py``):
   every first score and every final output equal the undisturbed run's, KPI windows and labels
   equal the independent oracle (``tests/stream_oracle.py``), one alert per encounter and one
   webhook delivery per alert, every ADT message either applied or dead-lettered (produced =
   processed + DLQ), and the live sink's database equal to the baseline's.

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
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages beside the tests' helpers
    sys.path.insert(0, str(ROOT))

from producers.simulator import SimConfig  # noqa: E402

from faults import RunResult, baseline, group_members, new_namespace, scratch_database, wait_until  # noqa: E402
from fleet import Fleet, finish, private_cluster  # noqa: E402
from soak_checks import (  # noqa: E402
    Check,
    Fault,
    feed_times,
    footprint,
    footprint_table,
    plan_faults,
    slice_plan,
    table,
)
from webhook import Webhook  # noqa: E402

# ---------------------------------------------------------------------- the processes


def log(t0: float, message: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)


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
        t0 = time.monotonic()
        say = lambda message: log(t0, message)  # noqa: E731
        cluster = stack.enter_context(private_cluster(self.run_dir / "cluster", say))

        base = baseline(self.run_dir, **self.config)
        say(f"baseline (undisturbed, 1 worker): {base.adt_messages} ADT events in {base.seconds:.0f} s, "
            f"messages {base.outputs.messages}")
        self.footprint = footprint_table(footprint(base.namespace, cluster.node(1).data), base.adt_messages)

        ns = new_namespace("soak")
        url = stack.enter_context(scratch_database())
        hook = stack.enter_context(Webhook())
        fleet = Fleet(ns, url, self.run_dir, self.workers, hook_url=hook.url, say=say)
        stack.callback(fleet.stop_all)
        for i in range(1, self.workers + 1):
            fleet.start_worker(i)
        wait_until(lambda: group_members(ns) == self.workers, 180, f"{self.workers} workers in the group")
        fleet.start_sink()
        fleet.start_notifier()
        self._fault_phase(t0, base, fleet, cluster)

        cluster.up(timeout=180)
        fleet.revive()
        say("fault phase over: every broker, worker, the sink and the notifier up; draining")
        checks = finish(fleet, base, SimConfig(**self.config), lambda: [d["key"] for d in hook.delivered])
        say("checks done")
        return checks

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
                fleet.revive()
                time.sleep(min(1.0, max(0.0, at - (time.monotonic() - phase))))
            if kind == 0:
                copied += copy_into_namespace(item, fleet.namespace, with_reference=n == 0, resume=n > 0).events
                log(t0, f"input slice {n + 1}/{len(slices)}: {copied} of {base.adt_messages} ADT events copied")
            else:
                self._fault(t0, n + 1, item, fleet, cluster)
        while time.monotonic() - phase < seconds:
            fleet.revive()
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
        for state in run_dir.glob("host-*/state"):
            shutil.rmtree(state, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
