"""Run ``wardstream worker`` as a subprocess and wait until its output is complete.

For tests, ``make demo`` and replays::

    from stream.runner import StreamWorker

    with StreamWorker(log_path=tmp / "worker.log") as w:    # starts the worker (python -m stream.cli)
        ...produce events to Topics(ns).adt...
        w.wait_caught_up(timeout=600)                       # every input processed, KPIs flushed
    # leaving the block sends SIGTERM and waits for a clean stop

The namespace, broker and state directory come from the environment (``WARDSTREAM_NAMESPACE``
etc., inherited by the subprocess; pass ``env=`` to override). ``StreamWorker(split=True)`` runs
the two sides as two processes (``--role adt`` and ``--role kpis``, stream/README.md "Roles").
"Caught up" means:

1. the worker's consumer group (``{namespace}wardstream-stream``) has committed every
   ``hospital.adt`` and ``hospital.adt-merges`` offset, and the KPI side's (the same group, or
   ``{namespace}wardstream-kpis`` when split) every data offset of ``hospital.kpi-partials`` (the KPI
   combiner acknowledges a partial only once a flush of its windows is in Kafka, so its
   committed offset says the windows are out: progress travels through Kafka, not a file);
2. then nothing moved (end offsets of every output topic, the group's commits) for ``settle``
   seconds (the producer's last batches are out).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from contracts.events import Topics
from wardstream.config import REPO_ROOT
from wardstream.kafka_io import BrokerUnavailable, admin_client, end_offsets_of, group_offsets, make_consumer


def group_id(namespace: str, role: str = "all") -> str:
    """The worker's consumer group (= Faust app id); mirrors ``stream.faust_app.app_id``."""
    return f"{namespace}wardstream-{'kpis' if role == 'kpis' else 'stream'}"


class WorkerDied(RuntimeError):
    pass


class StreamWorker:
    """One ``wardstream worker`` subprocess, or two with ``split`` (the ADT side, :attr:`proc`,
    and the KPI side, :attr:`kpis_proc`); a context manager that stops it with SIGTERM."""

    def __init__(self, env: Mapping[str, str] | None = None, log_path: Path | str | None = None,
                 loglevel: str = "info", flush_seconds: float | None = None,
                 cwd: Path | str | None = None, split: bool = False) -> None:
        self.env = {**os.environ, **(env or {})}
        # the code of the checkout that starts it, whatever the working directory (``cwd``)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")]))
        self.cwd = cwd
        if flush_seconds is not None:
            self.env["KPI_FLUSH_SECONDS"] = str(flush_seconds)
        self.flush_seconds = float(self.env.get("KPI_FLUSH_SECONDS") or 2)
        self.namespace = self.env.get("WARDSTREAM_NAMESPACE", "")
        self.log_path = Path(log_path) if log_path else None
        self.loglevel = loglevel
        self.split = split
        self.proc: subprocess.Popen[bytes] | None = None
        self.kpis_proc: subprocess.Popen[bytes] | None = None
        self._logs: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "StreamWorker":
        self.proc = self._start("adt" if self.split else "all", self.log_path)
        if self.split:
            kpis_log = self.log_path and self.log_path.with_name(f"{self.log_path.stem}-kpis{self.log_path.suffix}")
            self.kpis_proc = self._start("kpis", kpis_log)
        return self

    def _start(self, role: str, log_path: Path | None) -> subprocess.Popen[bytes]:
        # everything on the worker's console, which this runner writes to its own log file
        cmd = [sys.executable, "-m", "stream.cli", "-l", self.loglevel, "--log-file", "-", "--role", role]
        out: Any = subprocess.DEVNULL
        if log_path:
            out = open(log_path, "ab")
            self._logs.append(out)
        return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.proc, self.kpis_proc) if p is not None]

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (Faust stops cleanly: flushes, commits), then SIGKILL after ``timeout``;
        the ADT side's exit code (of a split worker, the first non-zero one)."""
        if self.proc is None:
            return None
        running = [p for p in self.procs if p.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for f in self._logs:
            f.close()
        self._logs.clear()
        return next((p.returncode for p in self.procs if p.returncode), self.proc.returncode)

    def committed(self) -> dict[TopicPartition, int]:
        """The committed offsets of the worker's groups (both sides' when split)."""
        committed = committed_offsets(group_id(self.namespace))
        if self.split:
            committed.update(committed_offsets(group_id(self.namespace, "kpis")))
        return committed

    def __enter__(self) -> "StreamWorker":
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ progress

    def progress(self) -> dict[str, int]:
        """Messages of hospital.adt and hospital.adt-merges not yet committed by the worker
        (``adt_lag``), etc."""
        topics = Topics(self.namespace)
        committed = self.committed()
        ends = end_offsets([topics.adt, topics.adt_merges])  # merges: their later hops
        adt_lag = sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())
        ends = {tp: end for tp, end in ends.items() if tp.topic == topics.adt}
        behind = {}
        for name, topic in (("kpi", topics.kpi_partials), ("health", topics.health_partials)):
            last = last_data_offsets(topic)
            behind[name] = sum(1 for tp, off in last.items() if committed.get(tp, 0) <= off)
        return {"adt_lag": adt_lag, "adt_end": sum(ends.values()),
                "kpi_partitions_behind": behind["kpi"],
                "health_partitions_behind": behind["health"]}

    def kpis_caught_up(self, progress: dict[str, int] | None = None) -> bool:
        """Every KPI partial so far is committed, i.e. its windows are out (see module doc)."""
        return (progress or self.progress())["kpi_partitions_behind"] == 0

    def health_caught_up(self, progress: dict[str, int] | None = None) -> bool:
        """The model-health monitor has applied every health partial so far."""
        return (progress or self.progress())["health_partitions_behind"] == 0

    def wait_caught_up(self, timeout: float = 600, settle: float | None = None,
                       poll: float = 1.0) -> dict[str, int]:
        """Block until every input is processed and the last KPI flush is out (see module doc).

        It does not wait for the model-health monitor (:meth:`health_caught_up`): that monitor
        keeps no offsets of its own, so the worker's commit watch cannot repair a commit that
        Faust leaves behind on its partitions, and the fault drills would wait on it.
        """
        settle = settle if settle is not None else 2.0
        topics = Topics(self.namespace)
        deadline = time.monotonic() + timeout
        stable_since: float | None = None
        last_snapshot: object = None
        while True:
            if not self.alive():
                raise WorkerDied(f"worker exited with {[p.returncode for p in self.procs]}; "
                                 f"log: {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not caught up after {timeout}s (log: {self.log_path})")
            try:
                p = self.progress()
                done = p["adt_lag"] == 0 and self.kpis_caught_up(p)
                snapshot = (sorted(end_offsets(topics.outputs() + [topics.kpi_partials]).items()),
                            sorted(committed_offsets(group_id(self.namespace)).items())) if done else None
            except (KafkaError, BrokerUnavailable):  # the broker restarting (fault tests): ask again
                last_snapshot, stable_since = None, None
                time.sleep(poll)
                continue
            if done:
                now = time.monotonic()
                if snapshot != last_snapshot:
                    last_snapshot, stable_since = snapshot, now
                elif stable_since is not None and now - stable_since >= settle:
                    return p
            else:
                last_snapshot, stable_since = None, None
            time.sleep(poll)


# ---------------------------------------------------------------------- Kafka look-ups


def committed_offsets(group: str) -> dict[TopicPartition, int]:
    with admin_client() as admin:
        return group_offsets(admin, group)


def end_offsets(topics: list[str]) -> dict[TopicPartition, int]:
    consumer = make_consumer(group_id=None)  # no group: offset look-ups only
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return dict(end_offsets_of(consumer, tps)) if tps else {}
    finally:
        consumer.close()


def last_data_offsets(topic: str, lookback: int = 20) -> dict[TopicPartition, int]:
    """Offset of the last data record per partition (-1 if none).

    Transactional producers leave commit markers after the data, so the end offset overshoots
    what a consumer can ever commit; read the tail to find the last real record.
    """
    consumer = make_consumer(group_id=None)  # no group: offset look-ups only
    try:
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        ends = end_offsets_of(consumer, tps)
        consumer.assign(tps)
        last = {tp: -1 for tp in tps}
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - lookback))
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    last[tp] = max(last[tp], r.offset)
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        return last
    finally:
        consumer.close()
