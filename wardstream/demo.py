"""``wardstream demo``: a simulated period through the whole pipeline, with a live view.

simulator -> hospital.adt -> Faust worker (subprocess) -> output topics -> sink + notifier -> PostgreSQL.
The run has two parts. First the *history* (``--history-days``, default 180) streams at full speed
with a progress bar: the online model learns from the labels as they become known, and the alert
budget leaves its LACE cold start. Then the *live* part (``--days``) streams at ``--speed``
simulated seconds per wall second, as a hospital would, with the view refreshing every second
(events/s, worker lag, headline KPIs, alerts delivered). The summary shows model health at the
alert budget beside LACE at the same share, over the latest 90 days of discharges whose 30-day
label is known, and says which days those are. Each run uses a fresh topic namespace, so it never
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
from typing import Any

import psycopg2
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
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
    model: dict[str, Any] = field(default_factory=dict)  # model health at the budget (HEALTH)
    model_span: str = ""  # the discharges the model health covers
    deliveries: int = 0


# Model health at the alert budget, beside LACE flagging the same share (V007's views): the latest
# 90-day window of labelled discharges, discharges scored by the budget policy first (after the
# model's warm-up), all discharges when there are none yet.
HEALTH = ("labelled", "readmissions", "target_share", "alert_rate", "ppv", "lace_ppv", "nne",
          "lace_nne", "recall", "lace_recall", "auroc", "lace_auroc", "observed_expected")
HEALTH_SQL = f"""
    SELECT cohort, window_start, window_end, {", ".join(HEALTH)}
    FROM model_health_90d
    WHERE facility_id = (SELECT min(facility_id) FROM discharge_scores)
      AND cohort = ANY(%s) AND labelled > 0
    ORDER BY window_end DESC, cohort = 'budget' DESC
    LIMIT 1"""


def _health_snapshot(cur: Any, snap: Snapshot) -> None:
    """Fill ``snap.model`` / ``snap.model_span`` from the model-health views."""
    for cohorts in (["budget"], ["all"]):
        cur.execute(HEALTH_SQL, (cohorts,))
        row = cur.fetchone()
        if row:
            cohort, start, end = row[:3]
            snap.model = dict(zip(HEALTH, row[3:]))
            policy = "budget policy" if cohort == "budget" else "all policies (no budget-policy labels yet)"
            snap.model_span = f"discharged {str(start)[:10]} to {str(end)[:10]} (exclusive), {policy}"
            return


def _db_snapshot(snap: Snapshot, health: bool = False) -> None:
    """Row counts and headline KPIs; with ``health``, the model-health figures too (seconds)."""
    conn = psycopg2.connect(settings().database_url)
    try:
        with conn.cursor() as cur:
            for table in ("adt_events", "discharge_scores", "readmissions", "alerts", "kpi_partials",
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
            if health:
                _health_snapshot(cur, snap)
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
    model = Table(title="model health at the alert budget, beside LACE flagging the same share",
                  show_edge=False)
    model.add_column("metric")
    model.add_column("model", justify="right")
    model.add_column("LACE", justify="right")
    model.caption = snap.model_span or "no labelled discharges yet"
    m = snap.model
    model.add_row("labelled discharges (readmitted)",
                  f"{_fmt(m.get('labelled'), 0)} ({_fmt(m.get('readmissions'), 0)})", "")
    model.add_row("alert share (target k)", f"{_fmt(m.get('alert_rate'))} ({_fmt(m.get('target_share'), 2)})",
                  "same share")
    for label, key, digits in (("PPV (precision)", "ppv", 3), ("NNE = 1 / PPV", "nne", 1),
                               ("recall", "recall", 3), ("AUROC", "auroc", 3)):
        model.add_row(label, _fmt(m.get(key), digits), _fmt(m.get("lace_" + key), digits))
    model.add_row("observed / expected", _fmt(m.get("observed_expected")), "")
    return Group(Panel(flow, title="wardstream demo"), kpis, model)


def run_demo(days: int = 14, seed: int = 42, beds: int = 300, speed: float = 14_400.0,
             start: date = date(2025, 1, 1), console: Console | None = None,
             history_days: int = 180) -> Snapshot:
    """Run the whole pipeline once; returns the final snapshot (also printed).

    ``history_days`` from ``start`` stream at full speed, then ``days`` more at ``speed``
    simulated seconds per wall second (0: everything at full speed).
    """
    from consumers.migrate import migrate
    from consumers.notify import run_notifier
    from consumers.sink import run_sink
    from producers.kafka_sink import simulate_to_kafka
    from producers.simulator import SimConfig
    from contracts.events import Topics
    from stream.runner import StreamWorker, committed_offsets, end_offsets, group_id
    from wardstream.kafka_io import BrokerUnavailable, ensure_topics
    from wardstream.stack.kafka import LocalKafka
    from wardstream.stack.postgres import LocalPostgres

    console = console or Console()
    config = SimConfig(seed=seed, start=start, days=history_days + days, beds=beds)
    config.validate()
    live_from = config.start_epoch + history_days * 86_400
    given = settings()  # a bad setting stops the demo here, before the stack starts
    if "bootstrap_servers" not in given.kafka.model_fields_set:  # no broker given: the local stack
        console.print(LocalKafka().up())
    pg = LocalPostgres()
    console.print(pg.up())
    if "database_url" not in given.model_fields_set:
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

    sim_now = [config.start_epoch]  # simulated time of the latest event sent

    def simulate() -> None:
        simulate_to_kafka(config, speed=speed, progress=False, stop=stop.is_set,
                          live_from=live_from, watch=lambda t: sim_now.__setitem__(0, t))
        sim_done.set()

    history = Progress(TextColumn("history at full speed: worker"), BarColumn(),
                       TextColumn("{task.completed:,} of {task.total:,} events"), TimeElapsedColumn(),
                       console=console)
    history_task = history.add_task("history", total=1)
    history_total: int | None = None  # events up to live_from, known once the simulator passes it

    sim_thread = guarded(simulate)
    last_processed, last_t, rate = 0, time.monotonic(), 0.0
    quiet_since: float | None = None
    last_rows: dict[str, int] = {}
    ticks = 0
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
                try:  # model health costs seconds on a long history: every 15 ticks
                    _db_snapshot(snap, health=ticks % 15 == 14)
                except psycopg2.Error:
                    pass  # the sink may not have created rows yet; the next tick retries
                ticks += 1
                in_history = sim_now[0] < live_from and not sim_done.is_set()
                if not in_history and history_total is None:
                    history_total = snap.produced
                if history_total is None or processed < history_total:
                    phase = "history: full speed (the model learns; labels become known)"
                elif not sim_done.is_set():
                    phase = f"live: {speed / 3600:g} simulated hours per second" if speed else "live: full speed"
                else:
                    phase = "draining"
                history.update(history_task, completed=min(processed, history_total or processed),
                               total=max(history_total or snap.produced, 1))
                live.update(Group(history, _view(snap, rate, phase,
                                                 len(receiver.received) if receiver else 0)))
                if not worker.alive():
                    raise RuntimeError(f"the worker stopped; see {logs / 'demo-worker.log'}")
                # Done: everything produced, the worker caught up (its KPI windows too: a flush
                # can come seconds after the last event), and the sink/notifier quiet.
                if (sim_done.is_set() and snap.worker_lag == 0 and snap.rows == last_rows
                        and worker.kpis_caught_up(p := worker.progress()) and worker.health_caught_up(p)):
                    quiet_since = quiet_since or now
                    if now - quiet_since >= max(8.0, 3 * given.stream.kpi_flush_seconds):
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
        if isinstance(errors[0], BrokerUnavailable):
            raise errors[0]  # one line for the CLI: what was waited for, on which broker
        raise RuntimeError(f"the demo stopped on an error: {errors[0]!r}") from errors[0]
    _db_snapshot(snap, health=True)
    console.print(_view(snap, 0.0, "done", len(receiver.received) if receiver else snap.deliveries))
    console.print(
        "\n[bold]Next[/]: dashboards — `docker compose up -d` then http://localhost:3000 "
        "(Grafana, provisioned from grafana/); or query PostgreSQL directly:\n"
        f"  psql {settings().database_url} -c 'SELECT * FROM model_health_monthly'\n"
        f"  psql {settings().database_url} -c 'SELECT * FROM v_kpi_summary'\n"
        f"Kafka topics of this run are under the namespace {namespace!r} (e.g. {topics.alerts})."
    )
    return snap


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        history_days: int = typer.Option(
            180, min=0, help="Simulated days streamed first at full speed, so the model has learned "
            "and the 30-day labels are known when the live part starts."),
        days: int = typer.Option(14, min=1, help="Simulated days streamed live after the history."),
        speed: float = typer.Option(
            14_400.0, min=0, help="Live part: simulated seconds per wall second (14400: four hours a "
            "second; 0: as fast as possible)."),
        seed: int = typer.Option(42, help="Simulator seed (same seed, same events)."),
        beds: int = typer.Option(300, help="Beds of the simulated hospital."),
        start: datetime = typer.Option("2025-01-01", formats=["%Y-%m-%d"], help="First simulated day (UTC)."),
    ) -> None:
        """Stream a simulated history at full speed, then a live period, through the whole pipeline, with a live view and a summary of KPIs and model health at the alert budget."""
        run_demo(days=days, seed=seed, beds=beds, speed=speed, start=start.date(),
                 history_days=history_days)
