"""Departments: KPI comparison, seasonality of admissions, efficiency of outcomes."""

from __future__ import annotations

from grafana.boards.common import (
    DEPARTMENT,
    FACILITY,
    IN_DEPARTMENT,
    IN_FACILITY,
    KPI_DISPLAY,
    MONTH_IN_RANGE,
    SETTLED_NOTE,
    barchart,
    kpi_overrides,
    kpi_series,
    latest_per,
    table,
    timeseries,
)
from grafana.model import Dashboard, Panel, Row

COMPARED = ("discharges", "readmission_rate", "avg_length_of_stay", "cost_per_patient",
            "high_risk_pct", "outcome_efficiency")
IN_DEPT_ID = " AND dimension_id IN ($department)"


def _latest_one(kpi: str) -> str:
    return latest_per("department", "30d", (kpi,), IN_DEPT_ID)


def board() -> Dashboard:
    d = KPI_DISPLAY
    items: list[Panel | Row] = [
        Row("Comparison: rolling 30 days as of the end of the time range"),
        table(
            "Departments side by side",
            latest_per("department", "30d", COMPARED, IN_DEPT_ID),
            "The latest 30-day window in the time range of each KPI, per department."
            + SETTLED_NOTE.replace("the value is", "readmission rate and outcome efficiency are"),
            h=9, overrides=kpi_overrides(COMPARED), core=True,
        ),
        barchart("Readmission rate by department", _latest_one("readmission_rate"), "department",
                 d["readmission_rate"].unit, 1, d["readmission_rate"].description + SETTLED_NOTE, w=8,
                 core=True),
        barchart("Average length of stay by department", _latest_one("avg_length_of_stay"), "department",
                 d["avg_length_of_stay"].unit, 2, d["avg_length_of_stay"].description, w=8, core=True),
        barchart("Cost per patient by department", _latest_one("cost_per_patient"), "department",
                 d["cost_per_patient"].unit, 0, d["cost_per_patient"].description, w=8, core=True),
        timeseries("Readmission rate by department (7-day rolling)",
                   kpi_series("readmission_rate", "7d", "department", "dimension_id", IN_DEPT_ID),
                   d["readmission_rate"].unit, 1, d["readmission_rate"].description, core=True),
        timeseries("Average length of stay by department (7-day rolling)",
                   kpi_series("avg_length_of_stay", "7d", "department", "dimension_id", IN_DEPT_ID),
                   d["avg_length_of_stay"].unit, 2, d["avg_length_of_stay"].description, core=True),
        Row("Seasonality"),
        timeseries(
            "Admissions by month",
            f"""
SELECT month AS "time", department AS metric, admissions
FROM v_admissions_monthly
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND {MONTH_IN_RANGE}
ORDER BY 1""",
            "none", 0, "Admissions per calendar month (UTC) by department.", bars=True, core=True,
        ),
        timeseries(
            "Monthly admissions vs the department's own monthly mean",
            f"""
SELECT month AS "time", department AS metric, pct_vs_mean
FROM v_admissions_monthly
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND {MONTH_IN_RANGE}
ORDER BY 1""",
            "percent", 0, "Peaks show as bars above 0: +15% means 15% above the department's mean month.",
            bars=True, core=True,
        ),
        timeseries(
            "Admissions per day by department",
            f"""
SELECT $__timeGroupAlias(window_start, 1d), dimension_id AS metric, sum(value) AS admissions
FROM kpi_windows
WHERE kpi = 'admissions' AND dimension = 'department' AND "window" = '1d'
  AND {IN_FACILITY} AND $__timeFilter(window_start){IN_DEPT_ID}
GROUP BY 1, 2
ORDER BY 1""",
            "none", 0, "Daily admissions from the stream (1-day windows).", w=24, stack=True, core=True,
        ),
        Row("Efficiency"),
        timeseries(
            "Outcome efficiency by department (monthly)",
            f"""
SELECT month AS "time", department AS metric, outcome_efficiency
FROM v_department_outcomes
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND {MONTH_IN_RANGE}
ORDER BY 1""",
            "none", 2, d["outcome_efficiency"].description, core=True,
        ),
        barchart("Outcome efficiency by department", _latest_one("outcome_efficiency"), "department",
                 "none", 2, d["outcome_efficiency"].description + " Rolling 30 days." + SETTLED_NOTE,
                 core=True),
        timeseries(
            "Department census and occupancy",
            f"""
SELECT $__timeGroupAlias(day, 1d), department AS metric, avg(occupancy_pct) AS occupancy
FROM v_census_daily
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(day)
GROUP BY 1, 2
ORDER BY 1""",
            "percent", 0, "Patients in a bed at the end of each UTC day / the department's beds.",
            w=24, core=True,
        ),
    ]
    return Dashboard(
        uid="wardstream-departments",
        title="Departments",
        description="Department comparison, seasonality and efficiency.",
        items=items,
        variables=[FACILITY, DEPARTMENT],
    )
