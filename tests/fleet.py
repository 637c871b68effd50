"""The processes of a multi-worker run (the cluster drills and the chaos soak) and the checks of
its end state.

:class:`Fleet` starts and restarts the stream workers, the live sink and the live notifier of one
namespace, each worker as on a host of its own (:meth:`Fleet.start_worker`: its own state
directory, home, temporary directory and working directory; nothing shared between workers but
Kafka). :func:`private_cluster` starts the three brokers they run against; :func:`finish` drains
the run, stops it and checks its end state against the undisturbed run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from faults import (
    Outputs,
    RunResult,
    comparable_dump,
    read_outputs,
    read_topic,
    settle,
    sink_namespace,
    worker_env,
)
from soak_checks import (
    BROKERS,
    Check,
    check_accounting,
    check_alerts,
    check_database,
    check_deliveries,
    check_finals,
    check_first_scores,
    check_oracle,
)
from stream.runner import StreamWorker, WorkerDied
from wardstream.config import scoped_env
from wardstream.stack.kafka import LocalCluster

ROOT = Path(__file__).resolve().parent.parent

Say = Callable[[str], None]


@dataclass
class Fleet:
    """The workers, the sink and the notifier of ``namespace``, each restartable, with what
    happened to them. ``hook_url`` empty: no notifier."""

    namespace: str
    db_url: str
    run_dir: Path
    workers: int
    hook_url: str = ""
    say: Say = print
    slots: dict[int, StreamWorker] = field(default_factory=dict)  # by worker number, from 1
    hosts: dict[int, Path] = field(default_factory=dict)  # each worker's current host directory
    starts: Counter = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    helpers: dict[str, subprocess.Popen] = field(default_factory=dict)  # "sink", "notifier"
    helper_starts: Counter = field(default_factory=Counter)
    helper_deaths: dict[str, list[int]] = field(default_factory=lambda: {"sink": [], "notifier": []})

    @property
    def sink_group(self) -> str:
        return f"{self.namespace}live-sink"

    def start_worker(self, i: int, new_host: bool = False) -> None:
        """Start worker ``i`` on its host (``new_host``: an empty one, so its state comes from the
        changelogs). A host is a directory with the worker's state, home and temporary
        directories, also its working directory: a worker that wrote anywhere else, or read
        another worker's files, would be found out by running on two real hosts."""
        if new_host or i not in self.hosts:
            self.hosts[i] = self.run_dir / f"host-{i}-{self.starts[i] + 1}"
        host = self.hosts[i]
        for sub in ("state", "home", "tmp"):
            (host / sub).mkdir(parents=True, exist_ok=True)
        self.starts[i] += 1
        env = worker_env(self.namespace, host / "state", HOME=str(host / "home"), TMPDIR=str(host / "tmp"))
        self.slots[i] = StreamWorker(env=env, log_path=host / f"worker{i}-{self.starts[i]}.log", cwd=host).start()

    def start_sink(self) -> None:
        self._start_helper("sink", ["sink", "--group", self.sink_group])

    def start_notifier(self) -> None:
        self._start_helper("notifier", ["notify", "--url", self.hook_url, "--group", f"{self.namespace}live-notifier"])

    def _start_helper(self, name: str, args: list[str]) -> None:
        self.helper_starts[name] += 1
        env = {**os.environ, "WARDSTREAM_NAMESPACE": self.namespace, "DATABASE_URL": self.db_url,
               "SINK_DATABASE_URL": ""}
        with open(self.run_dir / f"{name}-{self.helper_starts[name]}.log", "ab") as out:
            self.helpers[name] = subprocess.Popen([sys.executable, "-m", "wardstream.cli", *args], env=env,
                                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def revive(self) -> None:
        """Restart a worker, the sink or the notifier that exited on its own (a supervisor's
        job); report it."""
        for i, w in list(self.slots.items()):
            if not w.alive():
                code = w.proc.returncode
                w.stop()
                self.crashes.append(f"worker {i} exited {code} ({w.log_path.name})")
                self.say(f"worker {i} exited on its own with {code}; restarted (log {w.log_path})")
                self.start_worker(i)
        for name, proc in list(self.helpers.items()):
            if proc.poll() is not None:
                self.helper_deaths[name].append(proc.returncode)
                self.say(f"the {name} exited on its own with {proc.returncode}; restarted")
                self._start_helper(name, proc.args[3:])

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

    def stop_helper(self, name: str) -> int | None:
        """SIGTERM (the sink and the notifier commit what they stored), SIGKILL after 2 min."""
        proc = self.helpers.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def stop_all(self) -> None:
        self.stop_helper("notifier")
        self.stop_helper("sink")
        self.stop_workers()


@contextmanager
def private_cluster(home: Path, say: Say = print) -> Iterator[LocalCluster]:
    """A KRaft cluster of ``BROKERS`` brokers on free ports (replication 3, ``min.insync.replicas``
    2; the shared broker on 9092 is never touched), this process's environment pointed at it
    (so is everything it starts) until the block ends; then stopped."""
    cluster = LocalCluster.on_free_ports(home, BROKERS)
    with scoped_env(**cluster.env(), WARDSTREAM_NAMESPACE="", WARDSTREAM_BROKER_WAIT_S="90"):
        try:
            say(cluster.up(timeout=180))
            yield cluster
        finally:
            say(cluster.down())


def finish(fleet: Fleet, base: RunResult, sim_config, delivered: Callable[[], list[str]] | None = None) -> list[Check]:
    """Drain the run (every broker and process up), stop it, let a fresh sink store what the live
    one had not, and check the end state (:func:`final_checks`). ``delivered``: the alert ids
    the webhook acknowledged so far (None: no notifier)."""
    from contracts.events import Topics
    from stream.runner import end_offsets

    stall = drain(fleet)
    if delivered is not None:
        wait_deliveries(fleet, lambda: len(delivered()), len(base.outputs.alerts))
    fleet.stop_workers()
    codes = {name: fleet.stop_helper(name) for name in ("notifier", "sink")}
    final = sink_namespace(fleet.namespace, fleet.db_url, group=fleet.sink_group)
    fleet.say(f"drained: live sink and notifier stopped ({codes}), the sink's catch-up stored "
              f"{final.messages} more messages")
    adt_end = sum(end_offsets([Topics(fleet.namespace).adt]).values())
    return final_checks(base, fleet.namespace, fleet.db_url, adt_end, stall, fleet, sim_config,
                        None if delivered is None else delivered())


def drain(fleet: Fleet, timeout: float = 600) -> str | None:
    """Wait until the workers' group has applied and committed everything (``faults.settle``),
    restarting a worker that dies meanwhile; what is stuck, or None. A drain that times out is
    reported the same way, so the checks still show what the outputs lack."""
    for _ in range(4):
        try:
            stall = settle(fleet.any_worker(), timeout=timeout)
            fleet.say(f"workers caught up; stall: {stall}")
            return stall
        except TimeoutError as exc:
            fleet.say(f"drain: {exc}")
            return str(exc)
        except (RuntimeError, WorkerDied):
            fleet.revive()
    raise RuntimeError("workers kept dying while draining; see their logs")


def wait_deliveries(fleet: Fleet, delivered: Callable[[], int], want: int, timeout: float = 120) -> None:
    """Until the webhook has ``want`` deliveries, or nothing new came for 15 s (then the checks
    tell what is missing), restarting a notifier that died."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.revive()
        n = delivered()
        if n >= want:
            return
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 15:
            return
        time.sleep(0.5)


def final_checks(base: RunResult, ns: str, url: str, adt_end: int, stall: str | None, fleet: Fleet,
                 sim_config, delivered: Sequence[str] | None = None) -> list[Check]:
    """Every invariant of a finished run of ``ns`` against the undisturbed ``base``; one broken
    comparison is reported as such and does not hide the others. ``delivered``: the alert ids
    the webhook acknowledged, in order (None: no notifier ran)."""
    out = read_outputs(ns)
    view = Compared(base, ns, out, sim_config)
    checks = [Check("input copied whole", adt_end == base.adt_messages,
                    f"{adt_end} of {base.adt_messages} ADT events")]
    steps = [("every first score identical", view.first_scores),
             ("final outputs = undisturbed run", view.finals),
             ("KPI windows and labels = oracle", view.oracle),
             ("one alert per encounter", view.alerts),
             ("produced = processed + DLQ", view.accounting),
             ("live sink database = baseline's", lambda: view.database(url))]
    if delivered is not None:
        steps.append(("one webhook delivery per alert", lambda: [check_deliveries(delivered, set(out.alerts))]))
    for name, check in steps:
        try:
            checks.extend(check())
        except Exception as exc:  # noqa: BLE001 - reported as this check's failure
            checks.append(Check(name, False, f"could not compare: {type(exc).__name__}: {exc}"))
    checks.append(Check("workers caught up and committed", stall is None,
                        stall or "every ADT offset applied and committed"))
    for name, deaths in fleet.helper_deaths.items():
        if fleet.helper_starts[name]:
            checks.append(Check(f"the {name} stayed up", not deaths, f"exited on its own {len(deaths)} times {deaths}"))
    checks.append(Check("workers that died on their own", None,
                        f"{len(fleet.crashes)} {fleet.crashes[:5]} (restarted, as a supervisor would)"))
    return checks


@dataclass
class Compared:
    """Reads what the invariants need from Kafka and PostgreSQL; one method per invariant."""

    base: RunResult
    namespace: str
    out: Outputs  # the run's final outputs
    sim_config: object  # its input (producers.simulator.SimConfig)

    def first_scores(self) -> list[Check]:
        from contracts.events import Topics

        return [check_first_scores(values(Topics(self.namespace).discharge_scores),
                                   values(Topics(self.base.namespace).discharge_scores))]

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

        return [check_alerts(values(Topics(self.namespace).alerts), set(self.out.alerts),
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


def values(topic: str) -> list[dict]:
    """Every message of ``topic``, decoded, per partition in offset order."""
    return [orjson.loads(r.value) for r in read_topic(topic)]
