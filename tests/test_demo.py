"""`make demo` (= `wardstream demo`): the whole pipeline on the real broker and database, and its summary."""

from __future__ import annotations

import io
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
from rich.console import Console

from producers.simulator import SimConfig, Simulation
from wardstream.demo import run_demo

pytestmark = pytest.mark.e2e


def test_demo_streams_the_period_and_summarizes_it(fresh_db, kafka_ns, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("WARDSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("WARDSTREAM_NAMESPACE", kafka_ns)  # restored afterwards (the demo sets its own)
    days = 45
    events = [e.event for e in Simulation(SimConfig(seed=3, start=date(2025, 1, 1), days=days, beds=64)).stream()]
    kinds = Counter(e["event_type"] for e in events)
    last_end = max(datetime.fromisoformat(e["occurred_at"]) for e in events).date() + timedelta(days=1)
    out = io.StringIO()
    snap = run_demo(history_days=days - 15, days=15, speed=0, seed=3, beds=64,
                    console=Console(file=out, width=120))

    assert snap.produced == sum(kinds.values()) == snap.rows["adt_events"]
    assert snap.rows["discharge_scores"] == kinds["discharge"]
    assert snap.rows["dead_letters"] == 0 and snap.rows["kpi_partials"] > 0
    # outcome KPIs come from the window whose labels are all known, the others from the latest
    rate, rate_end = snap.kpis["readmission_rate"]
    los, los_end = snap.kpis["avg_length_of_stay"]
    assert los_end == last_end.isoformat()
    assert rate_end == f"{last_end - timedelta(days=30)} (labels complete)"
    assert 0 < rate < 0.5 and los > 0
    assert "wardstream demo" in out.getvalue() and "labels complete" in out.getvalue()
    # the summary says which discharges the model health covers: 90 days of known labels
    assert snap.model["labelled"] > 0 and snap.model_span.startswith("discharged ")
    assert "model health at the alert budget" in out.getvalue() and "NNE" in out.getvalue()
