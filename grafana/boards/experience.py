"""Patient experience: survey satisfaction by department and month."""

from __future__ import annotations

from grafana.boards.common import (
    DEPARTMENT,
    FACILITY,
    IN_DEPARTMENT,
    IN_FACILITY,
    MONTH_IN_RANGE,
    barchart,
    stat,
    table,
    timeseries,
)
from grafana.model import Dashboard, Panel, Row, Threshold

SCORE_COLOURS = [Threshold(None, "red"), Threshold(60, "orange"), Threshold(75, "green")]
IN_RANGE = f"{IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)"


def board() -> Dashboard:
    items: list[Panel | Row] = [
        Row("Satisfaction (0-100, survey answers only)"),
        stat("Mean satisfaction", f"""
SELECT $__timeGroupAlias(discharged_at, 1d), avg(satisfaction_score) AS mean_satisfaction
FROM v_discharges
WHERE {IN_RANGE} AND satisfaction_score IS NOT NULL
GROUP BY 1
ORDER BY 1""", "none", 1, "Mean of the daily means over the time range (sparkline: per day).", w=12, h=4,
             thresholds=SCORE_COLOURS, core=True, calc="mean"),
        stat("Survey response rate", f"""
SELECT $__timeGroupAlias(discharged_at, 1d),
       count(satisfaction_score)::double precision / count(*) AS response_rate
FROM v_discharges
WHERE {IN_RANGE}
GROUP BY 1
ORDER BY 1""", "percentunit", 0, "Discharged patients who answered the survey: mean of the daily rates.",
             w=12, h=4, core=True, calc="mean"),
        timeseries("Mean satisfaction by department (monthly)", f"""
SELECT month AS "time", department AS metric, mean_satisfaction
FROM v_satisfaction_monthly
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND {MONTH_IN_RANGE} AND responses > 0
ORDER BY 1""", "none", 1, "Survey answers of patients discharged in each calendar month.", h=10, core=True),
        barchart("Mean satisfaction by department", f"""
SELECT department, avg(satisfaction_score) AS mean_satisfaction, count(satisfaction_score) AS responses
FROM v_discharges
WHERE {IN_RANGE} AND satisfaction_score IS NOT NULL
GROUP BY department
ORDER BY mean_satisfaction""", "department", "none", 1, "Discharges in the range with a survey answer.",
                 h=10, thresholds=SCORE_COLOURS, core=True),
        table("Department x month", f"""
SELECT to_char(month, 'YYYY-MM') AS month, department, round(mean_satisfaction::numeric, 1) AS mean_satisfaction
FROM v_satisfaction_monthly
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND {MONTH_IN_RANGE} AND responses > 0
ORDER BY 1, 2""", "Mean satisfaction per department (rows) and month (columns).", h=10,
              transformations=[{"id": "groupingToMatrix", "options": {
                  "columnField": "month", "rowField": "department", "valueField": "mean_satisfaction",
                  "emptyValue": "null"}}],
              core=True),
        timeseries("Mean satisfaction per day by department", f"""
SELECT $__timeGroupAlias(discharged_at, 1d), department AS metric,
       avg(satisfaction_score) AS mean_satisfaction
FROM v_discharges
WHERE {IN_RANGE} AND satisfaction_score IS NOT NULL
GROUP BY 1, 2
ORDER BY 1""", "none", 1, "Survey answers of the patients discharged each UTC day.", w=24, core=True),
    ]
    return Dashboard(
        uid="wardstream-experience",
        title="Patient experience",
        description="Patient satisfaction by department and month.",
        items=items,
        variables=[FACILITY, DEPARTMENT],
    )
