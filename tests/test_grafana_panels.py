"""Every dashboard query runs on a real pipeline's database, as Grafana's read-only role.

End to end: a fresh database migrated by ``consumers.migrate``; the simulator publishes a few
simulated weeks to Kafka; the Faust worker turns them into scores, labels, alerts and KPIs; the
sink writes everything to PostgreSQL. Then each panel's SQL, variables and macros expanded like
Grafana does, runs as ``wardstream_reader`` and must return rows of the shape its panel needs.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import psycopg2
import pytest

from grafana.boards import all_dashboards
from grafana.run import QueryResult, reader_connection, resolve_variables, run_board, shape_problems
from wardstream.config import settings

pytestmark = pytest.mark.e2e

START = date(2025, 1, 1)
DAYS = 80  # > 30 days: labels complete (v_model_labelled) for the first 50, alerts among them
BEDS = 64  # the simulator's smallest hospital keeps the run short (~1,100 events)


@pytest.fixture()
def pipeline_db(fresh_db, kafka_ns, tmp_path, monkeypatch) -> str:
    """A fresh database filled by simulator -> Kafka -> Faust worker -> sink."""
    from consumers.migrate import migrate
    from consumers.sink import run_sink
    from producers.kafka_sink import simulate_to_kafka
    from producers.simulator import SimConfig
    from stream.runner import StreamWorker

    monkeypatch.setenv("WARDSTREAM_STATE_DIR", str(tmp_path / "state"))
    # One ADT partition, so one model: the small hospital's few labels reach a single model
    # (alerts come from the first days on, by LACE while the model warms up: stream/domain/policy.py).
    monkeypatch.setenv("WARDSTREAM_ADT_PARTITIONS", "1")
    migrate()
    summary = simulate_to_kafka(SimConfig(seed=7, start=START, days=DAYS, beds=BEDS), progress=False)
    assert summary.events > 0
    with StreamWorker(log_path=tmp_path / "worker.log", flush_seconds=1) as worker:
        worker.wait_caught_up(timeout=900)
    stats = run_sink(once=True, handle_signals=False)
    assert stats.stored > 0 and stats.rejected == 0, stats.as_dict()
    assert stats.rows["kpi_partials"] > 0 and stats.rows["alerts"] > 0, stats.as_dict()
    return fresh_db


def test_every_panel_runs_as_the_reader_and_has_the_right_shape(pipeline_db):
    start = datetime.combine(START, datetime.min.time(), tzinfo=timezone.utc)
    end = start + timedelta(days=DAYS)
    conn = reader_connection(pipeline_db, settings().reader_password)
    try:
        cur = conn.cursor()
        # the datasource's role can read but never write
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO alerts DEFAULT VALUES")

        failures: list[str] = []
        results: dict[str, QueryResult] = {}
        ran = 0
        for board in all_dashboards():
            variables = resolve_variables(cur, board, start, end)
            assert variables[0].current == "F01", "the facility variable lists the simulated hospital"
            for result in run_board(cur, board, start, end, variables):
                ran += 1
                results[f"{board.uid}/{result.panel.title}"] = result
                for problem in shape_problems(result):
                    failures.append(f"{board.title} / {result.panel.title}: {problem}")
        assert ran >= 60
        assert not failures, "\n".join(failures)

        # the stream's KPIs agree with the sink's tables: admissions per day sum to the admissions
        flow = results["wardstream-overview/Admissions and discharges per day"]
        streamed = sum(row[2] for row in flow.rows if row[1] == "admissions")
        cur.execute("SELECT count(*) FROM v_admissions WHERE admitted_at >= %s AND admitted_at < %s",
                    (start, end))
        assert streamed == cur.fetchone()[0] > 0

        def values(key: str) -> list[float]:
            r = results[key]
            return [float(v) for row in r.rows for c, v in zip(r.columns, row)
                    if c not in ("time", "metric") and v is not None]

        assert all(0 <= v <= 1 for v in values("wardstream-overview/Readmission rate"))
        assert all(0 <= v <= 100 for v in values("wardstream-overview/High-risk discharges"))
        assert all(0 <= v <= 60 for v in values("wardstream-overview/Average length of stay"))  # days
        assert all(0 <= v <= 1 for v in values("wardstream-model-health/Rolling AUC: model vs LACE"))
        feed = results["wardstream-high-risk/Alert feed (newest first)"]
        reasons = feed.columns.index("reasons")
        assert all(row[reasons] for row in feed.rows), "every alert carries its reasons"
        _assert_stream_kpis_equal_sql_views(cur)
    finally:
        conn.close()

    # the same check from the command line
    from typer.testing import CliRunner

    from wardstream.cli import app

    out = CliRunner().invoke(app, ["grafana", "check", "--from", START.isoformat(),
                                   "--to", (START + timedelta(days=DAYS)).isoformat()])
    assert out.exit_code == 0, out.output
    assert "Hospital overview" in out.output and "Model health" in out.output


def _assert_stream_kpis_equal_sql_views(cur) -> None:
    """Issue 4: the 1d KPI windows (hospital.kpi-partials -> kpi_partials -> the view kpi_windows)
    equal the SQL view kpi_daily, which recomputes every KPI from the sink's normalized tables."""
    cur.execute(
        """SELECT w.kpi, w.dimension, w.dimension_id, w.window_start, w.value, d.value
           FROM kpi_windows w
           JOIN kpi_daily d ON d.kpi = w.kpi AND d.dimension = w.dimension
                           AND d.dimension_id = w.dimension_id AND d.day = w.window_start
           WHERE w."window" = '1d'"""
    )
    rows = cur.fetchall()
    kpis = {r[0] for r in rows}
    assert {"admissions", "discharges", "avg_length_of_stay", "cost_per_patient", "readmission_rate",
            "high_risk_pct", "outcome_efficiency"} <= kpis, kpis
    differ = [r for r in rows if (r[4] is None) != (r[5] is None)
              or (r[4] is not None and abs(float(r[4]) - float(r[5])) > 1e-6 * max(1.0, abs(float(r[5]))))]
    assert not differ, f"{len(differ)} of {len(rows)} 1d windows differ, e.g. {differ[:3]}"
