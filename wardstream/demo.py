"""``wardstream demo``: one simulated period through the whole pipeline, with a live view.

simulator -> hospital.adt -> Faust worker (subprocess) -> output topics -> sink + notifier -> PostgreSQL.
The view refreshes every second (events/s, worker lag, headline KPIs, alerts, model AUC vs LACE) and
the run ends with a summary and where to look next. Each run uses a fresh topic namespace, so it never
mixes with an earlier run's Kafka state. On the local stack it writes into a fresh database
``wardstream_demo`` (dropped and re-created each run); with DATABASE_URL set, into that database
(the same seed writes the same ids: upserts, nothing doubled).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from stream.domain.kpis import needs_labels
from wardstream.config import REPO_ROOT, settings

DEMO_DATABASE = "wardstream_demo"
HEADLINE = ("readmission_rate", "avg_length_of_stay", "cost_per_patient", "high_risk_pct",
            "provider_utilization", "outcome_efficiency", "census")


class WebhookReceiver:
    """A local stand-in for the care team's chat webhook (a real HTTP server on 127.0.0.1)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # keep the terminal clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Snapshot:
    """What the live view shows; read from Kafka offsets and PostgreSQL."""

    produced: int = 0
    worker_lag: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    kpis: dict[str, tuple[float | None, str]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    model_span: str = ""  # first to last discharge the model health covers
    deliveries: int = 0


def _db_snapshot(snap: Snapshot) -> None:
    conn = psycopg2.connect(settings().database_url)
    try:
        with conn.cursor() as cur:
            for table in ("adt_events", "discharge_scores", "readmissions", "alerts", "kpi_windows",
                          "dead_letters"):
                cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
                snap.rows[table] = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM alert_deliveries WHERE status = 'delivered'")
            snap.deliveries = cur.fetchone()[0]
            labelled = [k for k in HEADLINE if needs_labels(k)]
            cur.execute(
                # The trailing window that ends at the next day boundary after the latest event
                # (later windows exist too: a day belongs to the 30 windows ending after it); for
                # outcome KPIs the one ending 30 days earlier, whose labels are all known (in the
                # last 30 days only the readmissions are known yet, so the rate would read ~1).
                """SELECT DISTINCT ON (kpi) kpi, value, window_end FROM kpi_windows
                   WHERE dimension = 'facility' AND "window" = '30d'
                     AND window_end <= (SELECT date_trunc('day', max(occurred_at)) + interval '1 day'
                                        FROM adt_events)
                                       - CASE WHEN kpi = ANY(%s) THEN interval '30 days'
                                              ELSE interval '0 days' END
                   ORDER BY kpi, window_end DESC""",
                (labelled,),
            )
            snap.kpis = {k: (v, str(end)[:10] + (" (labels complete)" if k in labelled else ""))
                         for k, v, end in cur.fetchall()}
            # Utilization is a provider KPI (census / capacity): show the providers' mean.
            cur.execute(
                """SELECT avg(value), max(window_end) FROM kpi_windows
                   WHERE kpi = 'provider_utilization' AND dimension = 'provider' AND "window" = '30d'
                     AND window_end = (SELECT date_trunc('day', max(occurred_at)) + interval '1 day'
                                       FROM adt_events)"""
            )
            util, end = cur.fetchone()
            if util is not None:
                snap.kpis["provider_utilization"] = (util, f"{str(end)[:10]} (mean of providers)")
            cur.execute("SELECT labelled, auc, lace_auc, recall, precision, alerts_per_day "
                        "FROM model_metrics_overall")
            row = cur.fetchone()
            if row:
                snap.model = dict(zip(("labelled", "auc", "lace_auc", "recall", "precision",
                                       "alerts_per_day"), row))
                # which discharges those are: the ones whose 30-day label window closed (V005)
                cur.execute("SELECT min(discharged_at), max(discharged_at) FROM v_model_labelled")
                first, last = cur.fetchone()
                if first is not None:
                    snap.model_span = f"{str(first)[:10]} to {str(last)[:10]}"
    finally:
        conn.close()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f"{value:,}"
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _view(snap: Snapshot, rate: float, phase: str, webhook_count: int) -> Group:
    flow = Table.grid(padding=(0, 2))
    flow.add_row("phase", phase)
    flow.add_row("events produced", _fmt(snap.produced))
    flow.add_row("worker lag (events)", _fmt(snap.worker_lag))
    flow.add_row("worker events/s", f"{rate:,.0f}")
    for table, n in snap.rows.items():
        flow.add_row(f"rows in {table}", _fmt(n))
    flow.add_row("alerts delivered (webhook)", f"{_fmt(snap.deliveries)} ({webhook_count} received)")
    kpis = Table(title="facility, trailing 30 days", show_edge=False)
    kpis.add_column("KPI")
    kpis.add_column("value", justify="right")
    kpis.add_column("window end")
    for name in HEADLINE:
        value, end = snap.kpis.get(name, (None, ""))
        kpis.add_row(name, _fmt(value, 2), end)
    # only discharges whose 30-day label window closed (V005): on a short run, the model's first
    # weeks, while it still learns (bench_model gives the figures of a year)
    model = Table(title="model health (30-day labels complete)", show_edge=False)
    model.add_column("metric")
    model.add_column("value", justify="right")
    model.add_row("discharged", snap.model_span or "-")
    for key in ("labelled", "auc", "lace_auc", "recall", "precision", "alerts_per_day"):
        model.add_row(key, _fmt(snap.model.get(key), 3 if key != "labelled" else 0))
    return Group(Panel(flow, title="wardstream demo"), kpis, model)


def run_demo(days: int = 60, seed: int = 42, beds: int = 300, speed: float = 0.0,
             start: date = date(2025, 1, 1), console: Console | None = None) -> Snapshot:
    """Run the whole pipeline once; returns the final snapshot (also printed)."""
    from consumers.migrate import migrate
    from consumers.notify import run_notifier
    from consumers.sink import run_sink
    from producers.kafka_sink import simulate_to_kafka
    from producers.simulator import SimConfig
    from stream.contracts import Topics
    from stream.runner import StreamWorker, committed_offsets, end_offsets, group_id
    from wardstream.kafka_io import ensure_topics
    from wardstream.stack.kafka import LocalKafka
    from wardstream.stack.postgres import LocalPostgres

    console = console or Console()
    config = SimConfig(seed=seed, start=start, days=days, beds=beds)
    config.validate()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        console.print(LocalKafka().up())
    pg = LocalPostgres()
    console.print(pg.up())
    if not os.environ.get("DATABASE_URL"):
        # A fresh database per demo run on the local stack: a run with other options but the same
        # seed reuses the simulator's ids, and its rows must not merge with the previous run's.
        pg.psql_admin(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        pg.psql_admin(f"CREATE DATABASE {DEMO_DATABASE} OWNER wardstream")
        os.environ["DATABASE_URL"] = settings().database_url.rsplit("/", 1)[0] + "/" + DEMO_DATABASE
    result = migrate()
    console.print(f"database migrated ({len(result.applied)} new, {len(result.already_applied)} applied before)")

    namespace = f"demo{datetime.now(timezone.utc):%Y%m%d%H%M%S}."
    os.environ["WARDSTREAM_NAMESPACE"] = namespace
    topics = Topics(namespace)
    ensure_topics()
    receiver = None
    webhook = settings().alert_webhook_url
    if not webhook:
        receiver = WebhookReceiver()
        webhook = receiver.url
    logs = REPO_ROOT / ".wardstream" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    console.print(f"namespace {namespace!r}; worker log {logs / 'demo-worker.log'}")

    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(fn, *args, **kwargs) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # surfaced in the summary, and stops the demo
                errors.append(exc)
                stop.set()
        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    snap = Snapshot()
    worker = StreamWorker(log_path=logs / "demo-worker.log").start()
    sim_done = threading.Event()
    threads = [
        guarded(run_sink, stop=stop, handle_signals=False),
        guarded(run_notifier, url=webhook, stop=stop, handle_signals=False),
    ]

    def simulate() -> None:
        simulate_to_kafka(config, speed=speed, progress=False, stop=stop.is_set)
        sim_done.set()

    sim_thread = guarded(simulate)
    last_processed, last_t, rate = 0, time.monotonic(), 0.0
    quiet_since: float | None = None
    last_rows: dict[str, int] = {}
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while not stop.is_set():
                ends = end_offsets([topics.adt])
                committed = committed_offsets(group_id(namespace))
                snap.produced = sum(ends.values())
                processed = sum(min(committed.get(tp, 0), end) for tp, end in ends.items())
                snap.worker_lag = snap.produced - processed
                now = time.monotonic()
                rate = 0.7 * rate + 0.3 * (processed - last_processed) / max(now - last_t, 1e-3)
                last_processed, last_t = processed, now
                try:
                    _db_snapshot(snap)
                except psycopg2.Error:
                    pass  # the sink may not have created rows yet; the next tick retries
                phase = "simulating" if not sim_done.is_set() else "draining"
                live.update(_view(snap, rate, phase, len(receiver.received) if receiver else 0))
                if not worker.alive():
                    raise RuntimeError(f"the worker stopped; see {logs / 'demo-worker.log'}")
                # Done: everything produced, the worker caught up (its KPI windows too: a flush
                # can come seconds after the last event), and the sink/notifier quiet.
                if (sim_done.is_set() and snap.worker_lag == 0 and snap.rows == last_rows
                        and worker.kpis_caught_up()):
                    quiet_since = quiet_since or now
                    if now - quiet_since >= max(8.0, 3 * float(os.environ.get("KPI_FLUSH_SECONDS", 2))):
                        break
                else:
                    quiet_since = None
                last_rows = dict(snap.rows)
                time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping cleanly (everything sent is flushed)[/]")
    finally:
        stop.set()
        sim_thread.join(timeout=60)
        for thread in threads:
            thread.join(timeout=60)
        worker.stop()
        if receiver:
            receiver.close()
    if errors:
        raise RuntimeError(f"the demo stopped on an error: {errors[0]!r}") from errors[0]
    _db_snapshot(snap)
    console.print(_view(snap, 0.0, "done", len(receiver.received) if receiver else snap.deliveries))
    console.print(
        "\n[bold]Next[/]: dashboards — `docker compose up -d` then http://localhost:3000 "
        "(Grafana, provisioned from grafana/); or query PostgreSQL directly:\n"
        f"  psql {settings().database_url} -c 'SELECT * FROM model_metrics_overall'\n"
        f"  psql {settings().database_url} -c 'SELECT * FROM v_kpi_summary'\n"
        f"Kafka topics of this run are under the namespace {namespace!r} (e.g. {topics.alerts})."
    )
    return snap


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        days: int = typer.Option(60, min=1, help="Simulated days to stream."),
        seed: int = typer.Option(42, help="Simulator seed (same seed, same events)."),
        beds: int = typer.Option(300, help="Beds of the simulated hospital."),
        speed: float = typer.Option(0.0, min=0, help="Simulated seconds per wall second; 0 = as fast as possible."),
        start: datetime = typer.Option("2025-01-01", formats=["%Y-%m-%d"], help="First simulated day (UTC)."),
    ) -> None:
        """Stream a simulated period through the whole pipeline with a live view, then a summary."""
        run_demo(days=days, seed=seed, beds=beds, speed=speed, start=start.date())
