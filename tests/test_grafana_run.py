"""The shape check flags what a Grafana panel could not draw (so the e2e panel test can fail)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from grafana.model import Dashboard, Panel, Target
from grafana.run import QueryResult, shape_problems

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2025, 1, 2, tzinfo=timezone.utc)


def result(columns, rows, kind="timeseries", fmt="time_series", core=True, options=None) -> QueryResult:
    panel = Panel("p", kind, [Target("SELECT 1", format=fmt)], core=core, options=options or {})
    return QueryResult(Dashboard("d", "D", [panel]), panel, panel.targets[0], "SELECT 1", columns, rows)


def test_good_time_series_pass():
    assert shape_problems(result(["time", "value"], [(T0, 1.5), (T1, Decimal("2"))])) == []
    assert shape_problems(result(["time", "metric", "v"], [(86400, "A", 1), (86400, "B", None)])) == []


def test_time_series_problems():
    assert shape_problems(result(["day", "value"], [(T0, 1)])) == ["no time column in ['day', 'value']"]
    assert "rows are not sorted by time" in shape_problems(result(["time", "v"], [(T1, 1), (T0, 2)]))
    assert "value column v is not numeric" in shape_problems(result(["time", "v"], [(T0, "x")]))
    assert "metric column is not text" in shape_problems(result(["time", "metric", "v"], [(T0, 3, 1)]))
    assert "no value column" in shape_problems(result(["time", "metric"], [(T0, "a")]))
    assert any("neither" in p for p in shape_problems(result(["time", "v"], [("monday", 1)])))


def test_core_panels_must_have_numbers():
    assert shape_problems(result(["time", "v"], [])) == ["no rows (a core panel must show data)"]
    assert shape_problems(result(["time", "v"], [(T0, None)])) == ["only empty values"]
    assert shape_problems(result(["time", "v"], [], core=False)) == []


def test_bar_charts_need_their_x_field_and_a_number():
    bar = dict(kind="barchart", fmt="table", options={"xField": "department"})
    assert shape_problems(result(["department", "rate"], [("Surgery", 0.1)], **bar)) == []
    assert shape_problems(result(["dept", "rate"], [("Surgery", 0.1)], **bar)) == [
        "bar chart x field 'department' not in ['dept', 'rate']"]
    assert shape_problems(result(["department", "label"], [("Surgery", "x")], **bar)) == [
        "no numeric column to draw", "only empty values"]
    # a table may hold anything
    assert shape_problems(result(["a", "b"], [("x", "y")], kind="table", fmt="table", core=False)) == []
