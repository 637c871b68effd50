"""The sink stores exactly what was produced, idempotently, committing offsets after the write."""

from __future__ import annotations

import math
from collections import Counter

import psycopg2
import pytest
from typer.testing import CliRunner

from consumers.fake import generate, produce
from consumers.sink import default_group, default_topics, run_sink
from consumers.state import dump_tables, table_counts
from test_sink_support import reset_group, sink_db  # noqa: F401  (fixture)
from wardstream.cli import app
from wardstream.config import settings

pytestmark = pytest.mark.e2e


def _one(url: str, query: str):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    conn.close()
    return row


def test_tables_hold_exactly_the_produced_events(kafka_ns, sink_db) -> None:
    data = generate(patients=80, days=90, seed=11)
    produce(data, kafka_ns)
    stats = run_sink(once=True)

    adt = [ev for _, ev in data.adt]
    discharges = [ev for ev in adt if ev.event_type == "discharge"]
    assert stats.invalid == Counter({f"{kafka_ns}hospital.adt": len(data.invalid_adt)})
    assert stats.rejected == 0
    assert stats.stored == stats.messages - len(data.invalid_adt)
    counts = table_counts(sink_db)
    assert counts["adt_events"] == len(adt)
    assert counts["encounters"] == len({ev.encounter_id for ev in adt})
    assert counts["patients"] == len({ev.patient_id for ev in adt})
    assert counts["charges"] == len(discharges)
    assert counts["procedures"] == sum(len(d.procedure_codes) for d in discharges)
    assert counts["diagnoses"] == sum(len(ev.diagnosis_codes) for ev in adt if ev.event_type != "transfer")
    assert counts["discharge_scores"] == len(data.scores)
    assert counts["readmissions"] == len(data.labels)
    assert counts["alerts"] == len(data.alerts)
    assert counts["dead_letters"] == len(data.dlq)
    assert counts["providers"] == len([r for _, r in data.reference if r.kind == "provider"])

    total_cost, los = _one(sink_db, "SELECT sum(total_cost), sum(length_of_stay_days) FROM encounters")
    assert math.isclose(float(total_cost), sum(d.total_cost for d in discharges), rel_tol=1e-12)
    assert math.isclose(los, sum(d.length_of_stay_days for d in discharges), rel_tol=1e-9)
    assert math.isclose(float(_one(sink_db, "SELECT sum(amount) FROM charges")[0]),
                        sum(d.total_cost for d in discharges), rel_tol=1e-12)
    score_sum, high = _one(sink_db, "SELECT sum(score), count(*) FILTER (WHERE high_risk) FROM discharge_scores")
    assert math.isclose(score_sum, sum(s.score for _, s in data.scores), rel_tol=1e-9)
    assert high == sum(s.high_risk for _, s in data.scores)
    assert _one(sink_db, "SELECT count(*) FILTER (WHERE readmitted) FROM readmissions")[0] == \
        sum(lab.readmitted for _, lab in data.labels)

    # the current department of an encounter is that of its latest event
    latest = {}
    for ev in adt:
        latest[ev.encounter_id] = ev.department
    with psycopg2.connect(sink_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT encounter_id, department FROM encounters")
        assert dict(cur.fetchall()) == latest
        # hospital.kpis: the last message per key is the stored value
        cur.execute('SELECT kpi, dimension, dimension_id, "window", window_start, value FROM kpi_windows')
        stored = {r[:5]: r[5] for r in cur.fetchall()}
    conn.close()
    expected = {}
    for _, k in data.kpis:
        expected[(k.kpi, k.dimension, k.dimension_id, k.window, k.window_start)] = k.value
    assert stored == expected

    # offsets were committed: a second run of the same group finds nothing new
    again = run_sink(once=True)
    assert again.messages == 0 and table_counts(sink_db) == counts


def test_rerun_over_the_same_offsets_changes_nothing(kafka_ns, sink_db) -> None:
    data = generate(patients=50, days=70, seed=5)
    produce(data, kafka_ns)
    first = run_sink(once=True, max_batch=37)  # small batches: keys span several transactions
    assert first.stored > 0
    before = dump_tables(sink_db)
    reset_group(default_group(), default_topics())
    second = run_sink(once=True)  # one big batch this time
    assert second.messages == first.messages
    assert dump_tables(sink_db) == before


def test_cli_sink_once_and_bad_options(kafka_ns, sink_db) -> None:
    data = generate(patients=10, days=30, seed=2)
    produce(data, kafka_ns, include_invalid=False)
    runner = CliRunner()
    bad = runner.invoke(app, ["sink", "--once", "--until-idle", "2"])
    assert bad.exit_code == 2 and "either --once or --until-idle" in bad.output
    unknown = runner.invoke(app, ["sink", "--once", "--topics", "nope"])
    assert unknown.exit_code == 2 and "unknown topics" in unknown.output
    ok = runner.invoke(app, ["sink", "--until-idle", "3"])
    assert ok.exit_code == 0, ok.output
    assert table_counts(sink_db)["adt_events"] == len(data.adt)
    assert settings().sink_database_url and "wardstream_sink" in settings().sink_database_url
