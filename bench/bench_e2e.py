"""End-to-end throughput: ``hospital.adt`` -> worker(s) -> sink -> committed PostgreSQL rows.

The events of one simulated period are produced first into a fresh namespace's ``hospital.adt``
(with the reference data). Then, against the clock, the pipeline runs from a cold start until
caught up: ``wardstream worker`` (one, then two in the same consumer group) plus one
``wardstream sink``, into a fresh migrated database. "Caught up" = ``adt_events`` holds every
event and ``discharge_scores`` every discharge (both known from the simulation).

The ceiling is measured in the same run on the same topic: a bare kafka-python consumer with the
same ``read_committed`` settings that only decodes each message's JSON (best of 3). Target:
pipeline >= 0.5x (``pct_of_ceiling`` >= 50). Beside it, the same nothing done through the layers
under the worker (``bench/floors.py``): bare aiokafka, and a Faust app whose agent only decodes
(``faust_noop``), the most any Faust agent can reach here. ``after_first_score`` rates leave out the cold start
(Faust start-up, group join, table recovery) for comparison with the steady rate.

The helpers here (namespaces, fresh databases, subprocesses, RSS sampling) are shared by the
other end-to-end benches (``bench_latency``, ``bench_replay``, ``bench_memory``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.floors import DecodeClock, aiokafka_consume, faust_noop
from producers.simulator import SimConfig
from wardstream.config import REPO_ROOT, StreamSettings, scoped_env, settings

RESULTS = Path(__file__).resolve().parent / "results"

# -------------------------------------------------------------------------------- environment


def delete_namespace_topics(ns: str) -> None:
    """Best effort: cleanup must never hide the figures (or the error) of a run."""
    from wardstream.kafka_io import delete_namespace_topics as delete

    try:
        delete(ns)
    except Exception:  # noqa: BLE001
        pass


@contextmanager
def namespace(prefix: str = "bench") -> Iterator[str]:
    """A fresh topic namespace (+ its own state dir), deleted afterwards. Yields the namespace."""
    ns = f"{prefix}{uuid.uuid4().hex[:8]}."
    state = Path(tempfile.mkdtemp(prefix=f"wardstream-{ns}"))
    try:
        with scoped_env(WARDSTREAM_NAMESPACE=ns, WARDSTREAM_STATE_DIR=str(state)):
            yield ns
    finally:
        delete_namespace_topics(ns)
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def fresh_db() -> Iterator[str]:
    """A new migrated database; DATABASE_URL and SINK_DATABASE_URL point at it (owner role)."""
    from wardstream.stack.postgres import LocalPostgres

    with LocalPostgres().scratch_database("wardstream_bench_", migrate=True) as url:
        with scoped_env(DATABASE_URL=url, SINK_DATABASE_URL=url):
            yield url


def topics_ready(timeout: float = 30) -> None:
    """Create the namespace's topics and wait until the broker serves their partition metadata
    (a consumer that subscribes before that gets no partitions until its next metadata refresh)."""
    from contracts.events import Topics
    from wardstream.kafka_io import ensure_topics, make_consumer

    ensure_topics()
    t = Topics(settings().topic_namespace)
    names = [t.adt, t.reference, *t.outputs()]
    consumer = make_consumer(group_id=None)
    try:
        deadline = time.monotonic() + timeout
        while any(not consumer.partitions_for_topic(n) for n in names):
            if time.monotonic() > deadline:
                raise TimeoutError("topic metadata not available")
            time.sleep(0.5)
            consumer.close()
            consumer = make_consumer(group_id=None)
    finally:
        consumer.close()
    time.sleep(1)


def count_rows(conn, tables: tuple[str, ...]) -> dict[str, int]:
    with conn.cursor() as cur:
        out = {}
        for t in tables:
            cur.execute(f"SELECT count(*) FROM {t}")  # table names are ours, not input
            out[t] = cur.fetchone()[0]
    conn.commit()
    return out


# -------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Produced:
    events: int
    discharges: int
    admissions: int
    patients: int
    seconds: float


def produce_simulation(cfg: SimConfig) -> Produced:
    """Simulate ``cfg`` into the current namespace's hospital.adt (fastest client available)."""
    from producers.kafka_sink import simulate_to_kafka

    t0 = time.perf_counter()
    summary = simulate_to_kafka(cfg, progress=False)
    seconds = time.perf_counter() - t0
    by_type = summary.by_type
    # Patients: every new patient is admitted once at least; count distinct keys cheaply.
    return Produced(summary.events, by_type.get("discharge", 0), by_type.get("admission", 0),
                    count_patients(cfg), seconds)


def count_patients(cfg: SimConfig) -> int:
    from producers.simulator import Simulation

    return len({item.key for item in Simulation(cfg).stream()})


# -------------------------------------------------------------------------------- processes


class Service:
    """``python -m wardstream.cli <args>`` as a subprocess (sink, notifier), stopped with SIGTERM."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None, log: Path | None = None) -> None:
        self.args, self.env, self.log = args, {**os.environ, **(env or {})}, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Service":
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "wardstream.cli", *self.args], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RssSampler(threading.Thread):
    """Peak resident set size of a process tree (the process + its children), sampled."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0
        self.last = 0
        self._halt = threading.Event()

    def sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            rss = self.sample()
            if rss:
                self.last = rss
                self.peak = max(self.peak, rss)
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class CpuMeter:
    """CPU time of the pipeline's processes over a phase: which one the two cores went to.

    ``roots`` names process trees by pid (None: skipped; this process counts alone, without the
    services it started); ``postgres`` adds every PostgreSQL server process. :meth:`cores` = CPU
    seconds per component / wall seconds since the start.
    """

    def __init__(self, roots: Mapping[str, int | None], postgres: bool = True) -> None:
        self.roots = {name: pid for name, pid in roots.items() if pid}
        self.postgres = postgres
        self.start()

    def _cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                procs = [root] if pid == os.getpid() else [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            out[name] = sum(_cpu_seconds(p) for p in procs)
        if self.postgres:
            out["postgres"] = sum(_cpu_seconds(p) for p in psutil.process_iter(["name"])
                                  if p.info["name"] and p.info["name"].startswith("postgres"))
        return out

    def start(self) -> None:
        self._t0, self._cpu0 = time.monotonic(), self._cpu()

    def cores(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self._t0)
        now = self._cpu()
        return {name: round((now[name] - self._cpu0.get(name, 0.0)) / wall, 2) for name in now}


def _cpu_seconds(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


def mib(n: int) -> float:
    return round(n / 2**20, 1)


# -------------------------------------------------------------------------------- ceiling


def bare_consume(topic: str, expected: int) -> float:
    """Seconds for a bare kafka-python consumer (read_committed) to read and JSON-decode ``topic``."""
    from kafka import TopicPartition

    from wardstream.kafka_io import make_consumer

    consumer = make_consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        clock = DecodeClock("bare consumer", expected)
        while not clock.take(consumer.poll(timeout_ms=1000)):
            pass
        return clock.seconds
    finally:
        consumer.close()


def layer_floors(topic: str, events: int, ceiling: float) -> dict[str, float]:
    """The layers under the worker doing the ceiling's nothing (``bench/floors.py``), best of 3."""
    aiokafka_s = min(aiokafka_consume(topic, events) for _ in range(3))
    faust = min((faust_noop(topic, events) for _ in range(3)), key=lambda r: r["after_first_s"])
    faust_rate = events / faust["after_first_s"]
    return {
        "aiokafka_events_per_s": round(events / aiokafka_s),
        "faust_noop_events_per_s": round(faust_rate),
        "faust_noop_events_per_s_from_start": round(events / faust["from_start_s"]),
        "faust_noop_pct_of_ceiling": round(100 * faust_rate / ceiling, 1),
    }


# -------------------------------------------------------------------------------- pipeline


def wait_rows(conn, want: dict[str, int], timeout: float, alive=lambda: True, poll: float = 0.5,
              stall: float = 60.0) -> tuple[float, float | None]:
    """Poll until every table holds ``want`` rows; (seconds until then, seconds to the first score).

    Raises when a process died, after ``timeout``, or when no count moved for ``stall`` seconds.
    """
    t0 = time.perf_counter()
    first = None
    last_counts, moved = None, t0
    while True:
        counts = count_rows(conn, tuple(want))
        now = time.perf_counter()
        if first is None and counts.get("discharge_scores", 0) > 0:
            first = now - t0
        if all(counts[t] >= n for t, n in want.items()):
            return now - t0, first
        if counts != last_counts:
            last_counts, moved = counts, now
        if now - t0 > timeout or now - moved > stall:
            raise TimeoutError(f"not caught up after {now - t0:.0f}s ({now - moved:.0f}s without "
                               f"progress): {counts} of {want}")
        if not alive():
            raise RuntimeError(f"a pipeline process died: {counts} of {want}")
        time.sleep(poll)


def run_pipeline(produced: Produced, url: str, workers: int, logs: Path, timeout: float,
                 env: Mapping[str, str] | None = None, label: str = "") -> dict:
    """Cold-start ``workers`` workers (extra ``env``) + one sink; time until every row is committed."""
    import psycopg2

    from stream.runner import StreamWorker

    state = Path(os.environ["WARDSTREAM_STATE_DIR"])
    conn = psycopg2.connect(url)
    for i in range(workers):
        (logs / f"{label}worker{i}.log").unlink(missing_ok=True)
    (logs / f"{label}sink.log").unlink(missing_ok=True)
    ws = [StreamWorker(env={**(env or {}), "WARDSTREAM_STATE_DIR": str(state / f"w{i}")},
                       log_path=logs / f"{label}worker{i}.log", loglevel="warning") for i in range(workers)]
    t0 = time.perf_counter()
    samplers = []
    try:
        for w in ws:
            w.start()
            samplers.append(RssSampler(w.proc.pid))
            samplers[-1].start()
        with Service("sink", log=logs / f"{label}sink.log") as sink:
            def alive() -> bool:
                return all(w.alive() for w in ws) and sink.proc.poll() is None
            want = {"adt_events": produced.events, "discharge_scores": produced.discharges}
            done, first = wait_rows(conn, want, timeout, alive)
        seconds = time.perf_counter() - t0
    finally:
        for w in ws:
            w.stop()
        for s in samplers:
            s.stop()
        conn.close()
    return {
        "seconds": seconds,
        "first_score_s": first,
        "events_per_s": produced.events / seconds,
        "events_per_s_after_first_score": produced.events / max(1e-9, seconds - (first or 0)),
        "peak_rss_mib": [mib(s.peak) for s in samplers],
    }


# (label, workers, extra worker env): the code's defaults, then what the profile points at (README).
VARIANTS: list[tuple[str, int, dict[str, str]]] = [
    ("1w", 1, {}),
    ("2w", 2, {}),
    ("1w_linger50ms", 1, {"WARDSTREAM_PRODUCER_LINGER": "0.05"}),
    ("2w_exactly_once", 2, {"WARDSTREAM_PROCESSING_GUARANTEE": "exactly_once"}),
]


def default_guarantee() -> str:
    """The worker's processing guarantee when WARDSTREAM_PROCESSING_GUARANTEE is unset (for the table)."""
    return str(StreamSettings.model_fields["processing_guarantee"].default)


def run(quick: bool = False, variants: list[str] | None = None) -> dict:
    from contracts.events import Topics

    days = 14 if quick else 60
    cfg = SimConfig(seed=7, days=days)
    logs = RESULTS / "logs" / "e2e"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {"sim_days": days, "sim_beds": cfg.beds}
    for key, workers, env in VARIANTS:
        if variants and key not in variants:
            continue
        # Fresh namespace per run: its own hospital.adt copy, worker group, changelogs, outputs.
        with namespace(f"be2e{workers}w") as ns:
            produced = produce_simulation(cfg)
            if "ceiling_events_per_s" not in out:
                out.update(events=produced.events, discharges=produced.discharges,
                           patients=produced.patients)
                ceiling_s = min(bare_consume(Topics(ns).adt, produced.events) for _ in range(3))
                out["ceiling_events_per_s"] = round(produced.events / ceiling_s)
                out.update(layer_floors(Topics(ns).adt, produced.events, out["ceiling_events_per_s"]))
                out["default_guarantee"] = default_guarantee()
            with fresh_db() as url:
                try:
                    r = run_pipeline(produced, url, workers, logs, timeout=900, env=env,
                                     label=f"{key}-")
                except (TimeoutError, RuntimeError) as exc:
                    out[f"pipeline_{key}_failed"] = str(exc)[:160]
                    continue
        out[f"pipeline_{key}_s"] = round(r["seconds"], 1)
        out[f"pipeline_{key}_first_score_s"] = round(r["first_score_s"] or 0, 1)
        out[f"pipeline_{key}_events_per_s"] = round(r["events_per_s"])
        out[f"pipeline_{key}_events_per_s_after_first_score"] = round(r["events_per_s_after_first_score"])
        out[f"pipeline_{key}_pct_of_ceiling"] = round(100 * r["events_per_s"] / out["ceiling_events_per_s"], 2)
        out[f"pipeline_{key}_after_first_score_pct_of_faust_noop"] = round(
            100 * r["events_per_s_after_first_score"] / out["faust_noop_events_per_s"], 1)
        out[f"worker_peak_rss_mib_{key}"] = ", ".join(str(x) for x in r["peak_rss_mib"])
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, variants=[a for a in sys.argv[1:] if not a.startswith("-")]), indent=2))
