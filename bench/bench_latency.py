"""Alert latency: a discharge produced -> its alert committed in PostgreSQL / received by a webhook.

A running pipeline (``wardstream worker`` + ``wardstream sink`` + ``wardstream notify`` posting to a
local ``http.server``, fresh namespace and database) first learns on a warm-up period (so the
alert policy has labels) until the worker has caught up (KPI windows included), then a paced
producer sends the following events at a steady rate.
For every discharge the bench keeps the wall time its ``send()`` returned; it then observes:

* ``alerts`` rows: the commit time of the sink's transaction that wrote each one, read after the
  run from PostgreSQL (``pg_xact_commit_timestamp(xmin)``, with ``track_commit_timestamp`` on:
  :func:`commit_timestamps`), so the bench puts no load on the database while it measures;
* webhook POSTs received by the local server (the notifier reads ``hospital.alerts`` itself);
* ``discharge_scores`` rows the same way (every discharge, a larger sample of the same path).

Latency = observed - produced, per discharge that produced an alert (scores: per discharge).
Rates: a rising sweep from 50 to the 1,000 events/s of the issue (each after the worker caught up
with the one before); the result names the highest rate whose webhook p99 met the target
(p99 < 250 ms).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson
import psycopg2

from bench.bench_e2e import RESULTS, CpuMeter, Service, fresh_db, namespace, topics_ready
from producers.simulator import SimConfig, Simulation
from contracts.events import Topics, dump

class Hooks(http.server.ThreadingHTTPServer):
    """Records the receive time of each alert POST by its Idempotency-Key (= alert_id)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                now = time.time()  # the clock of PostgreSQL's commit timestamps
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key") or ""
                hooks.received.setdefault(key.removeprefix("alert-"), now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/alerts"


def commit_timestamps(url: str) -> None:
    """Make sure PostgreSQL records each transaction's commit time (``track_commit_timestamp``).

    The bench reads when each row was committed after the run, instead of polling for new rows
    while it runs: a poller every 20 ms re-scanned both tables and took up to half a core of
    PostgreSQL (bench/README.md "Session 6") on a machine where the worker is short of CPU.
    The local stack's server gets the setting here (a restart, before any service runs).
    """
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SHOW track_commit_timestamp")
        on = cur.fetchone()[0] == "on"
    conn.close()
    if on:
        return
    from wardstream.stack.postgres import LocalPostgres

    local = LocalPostgres()
    if not local.healthy() or os.geteuid() != 0:
        raise RuntimeError("the latency bench needs track_commit_timestamp = on in PostgreSQL")
    local.psql_admin("ALTER SYSTEM SET track_commit_timestamp = on")
    local.restart()


def committed_at(conn, since: datetime) -> dict[str, dict[str, float]]:
    """encounter_id -> commit time (epoch s) of its row, for ``alerts`` and ``discharge_scores``.

    The time of the row's current version: a copy upserted later would move it (the sink's
    upserts skip identical rows, so only a changed row would).
    """
    seen: dict[str, dict[str, float]] = {}
    with conn.cursor() as cur:
        for table in ("alerts", "discharge_scores"):
            cur.execute(f"SELECT encounter_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
                        f"FROM {table} WHERE discharged_at >= %s", (since,))
            seen[table] = dict(cur.fetchall())
    conn.commit()
    return seen


def _count_scores(conn, since: datetime | None = None) -> int:
    """``discharge_scores`` rows (of discharges at or after ``since``), in a fresh snapshot."""
    with conn.cursor() as cur:
        if since is None:
            cur.execute("SELECT count(*) FROM discharge_scores")
        else:
            cur.execute("SELECT count(*) FROM discharge_scores WHERE discharged_at >= %s", (since,))
        n = cur.fetchone()[0]
    conn.commit()
    return n


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def paced_send(producer, topic: str, items: list[tuple[bytes, bytes, str | None]], rate: float
               ) -> tuple[dict[str, float], float]:
    """Send ``items`` at ``rate``/s; returns (encounter_id -> send time of its discharge, epoch s;
    rate achieved)."""
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, (key, value, discharge_of) in enumerate(items):
        due = t0 + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(0.002, due - now))
        producer.send(topic, key, value)
        if discharge_of:
            sent[discharge_of] = time.time()
    producer.flush()
    if producer.errors:
        raise RuntimeError(f"{len(producer.errors)} events not acknowledged: {producer.errors[0]}")
    return sent, len(items) / (time.perf_counter() - t0)


TARGET_P99_MS = 250

# The sink without a batch linger: a transaction per fetch.
SINK_LINGER0 = {"WARDSTREAM_SINK_LINGER_MS": "0"}


def configs(quick: bool) -> list[tuple[str, dict[str, str], list[tuple[int, int]], bool]]:
    """(label, extra env of the worker, sink and notifier, [(events/s, seconds)], split): a sweep
    of rates, rising, up to the issue's 1,000/s, to find the highest rate this machine sustains
    within the target, with the default settings, with the worker's two sides in two processes
    (``split``: ``--role adt`` and ``--role kpis``) and with a sink that writes each fetch as its
    own batch (``WARDSTREAM_SINK_LINGER_MS=0``)."""
    if quick:
        return [("default", {}, [(50, 8), (1000, 3)], False)]
    rates = [(50, 20), (200, 10), (400, 10), (600, 10), (800, 10), (1000, 10)]
    return [("default", {}, rates, False), ("split", {}, rates, True), ("sink_linger0", SINK_LINGER0, rates, False)]


def sustained(out: dict[str, object], label: str) -> int | None:
    """The highest rate whose alert webhook p99 is within the target (None: none)."""
    key = re.compile(rf"{re.escape(label)}_r(\d+)_alert_webhook_p99_ms")
    ok = [int(m.group(1)) for k, v in out.items()
          if (m := key.fullmatch(k)) and v is not None and v < TARGET_P99_MS]
    return max(ok) if ok else None


def run(quick: bool = False) -> dict:
    warm_days = 20 if quick else 45
    logs = RESULTS / "logs" / "latency"
    logs.mkdir(parents=True, exist_ok=True)
    sim = Simulation(SimConfig(seed=11, days=365))
    items = [(e.key.encode(), orjson.dumps(e.event),
              e.event["encounter_id"] if e.event["event_type"] == "discharge" else None,
              e.event["occurred_at"]) for e in sim.stream()]
    warm_end = sim.config.start_epoch + warm_days * 86_400
    n_warm = sum(1 for it in items if datetime.fromisoformat(it[3]).timestamp() < warm_end)
    from bench.bench_e2e import default_guarantee

    out: dict[str, object] = {"warmup_days": warm_days, "warmup_events": n_warm,
                              "default_guarantee": default_guarantee()}
    for label, env, phases, split in configs(quick):
        try:
            out.update(measure(label, env, phases, sim, items, n_warm, logs, split=split))
        except (RuntimeError, TimeoutError) as exc:
            out[f"{label}_failed"] = str(exc)[:160]
        out[f"{label}_highest_rate_with_webhook_p99_under_{TARGET_P99_MS}ms"] = sustained(out, label)
    return out


def measure(label: str, env: dict[str, str], phases: list[tuple[int, int]], sim: Simulation,
            items: list, n_warm: int, logs: Path, split: bool = False) -> dict[str, object]:
    """One pipeline (worker, sink, notifier, each with ``env``; ``split``: the worker's two sides
    in two processes): warm-up, then each paced phase."""
    from stream.runner import StreamWorker
    from producers.kafka_sink import Sender
    from wardstream.config import settings
    from wardstream.stack.kafka import LocalKafka

    out: dict[str, object] = {}
    for name in ("worker", "sink", "notify"):
        (logs / f"{label}-{name}.log").unlink(missing_ok=True)
    with namespace("blat") as ns, fresh_db() as url:
        commit_timestamps(url)
        t = Topics(ns)
        topics_ready()
        # librdkafka, as the simulator sends: a pure-Python producer took a third of a core at
        # 1,000 events/s, CPU the pipeline under test needs on this 2-core machine
        producer = Sender("confluent", settings(), linger_ms=1)
        for ref in (*sim.reference.facilities, *sim.reference.providers):
            key = getattr(ref, "provider_id", None) or ref.facility_id
            producer.send(t.reference, key.encode(), dump(ref))
        hooks = Hooks()
        threading.Thread(target=hooks.serve_forever, daemon=True).start()
        conn = psycopg2.connect(url)
        try:
            with StreamWorker(env=env, log_path=logs / f"{label}-worker.log", loglevel="warning",
                              split=split) as worker, \
                    Service("sink", env=env, log=logs / f"{label}-sink.log") as sink, \
                    Service("notify", "--url", hooks.url, "--backoff", "0.05", env=env,
                            log=logs / f"{label}-notify.log") as notify:
                for key, value, _, _ in items[:n_warm]:
                    producer.send(t.adt, key, value)
                producer.flush()
                _wait_scores(conn, worker, sum(1 for it in items[:n_warm] if it[2]), 900)
                # and the warm-up's KPI windows out: the paced phase measures a steady worker, not
                # one still flushing 45 days of backlog
                worker.wait_caught_up(timeout=900)
                pos = n_warm
                for rate, seconds in phases:
                    batch = items[pos:pos + int(rate * seconds)]
                    pos += len(batch)
                    since = datetime.fromisoformat(batch[0][3])
                    kpis_side = {"worker_kpis": worker.kpis_proc.pid} if worker.kpis_proc else {}
                    cpu = CpuMeter({"worker": worker.proc.pid, **kpis_side, "sink": sink.proc.pid,
                                    "notify": notify.proc.pid, "kafka": LocalKafka().pid(), "bench": os.getpid()})
                    sent, achieved = paced_send(producer, t.adt, [b[:3] for b in batch], rate)
                    out[f"{label}_r{rate}_cores_used_while_sending"] = cpu.cores()
                    deadline = time.monotonic() + 600
                    while _count_scores(conn, since) < len(sent) and time.monotonic() < deadline:
                        if not worker.alive():
                            raise RuntimeError("worker died")
                        time.sleep(0.5)
                    time.sleep(3)  # the last alerts / webhooks after the last score
                    out.update(_figures(f"{label}_r{rate}", achieved, sent, committed_at(conn, since),
                                        hooks.received))
                    worker.wait_caught_up(timeout=900)  # the next rate starts on a steady worker
        finally:
            hooks.shutdown()
            conn.close()
            producer.close()
    return out


def _wait_scores(conn, worker, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        n = _count_scores(conn)
        if n >= expected:
            return
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"warm-up not done: {n}/{expected} scores")
        time.sleep(1)


def _figures(label: str, achieved: float, sent: dict[str, float], seen: dict[str, dict[str, float]],
             hooks: dict[str, float]) -> dict[str, object]:
    ms = 1000.0
    alert_db = [(seen["alerts"][e] - t) * ms for e, t in sent.items() if e in seen["alerts"]]
    alert_hook = [(hooks[e] - t) * ms for e, t in sent.items() if e in hooks]
    scores = [(seen["discharge_scores"][e] - t) * ms for e, t in sent.items() if e in seen["discharge_scores"]]
    f: dict[str, object] = {f"{label}_achieved_events_per_s": round(achieved),
                            f"{label}_discharges": len(sent), f"{label}_alerts": len(alert_db),
                            f"{label}_webhooks": len(alert_hook)}
    for name, values in (("alert_db", alert_db), ("alert_webhook", alert_hook), ("score_db", scores)):
        for q in (50, 99):
            v = pct(values, q)
            f[f"{label}_{name}_p{q}_ms"] = None if v is None else round(v)
    return f


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
