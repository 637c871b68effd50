"""Providers: workload (census, discharges), utilization against capacity, outcomes."""

from __future__ import annotations

from grafana.boards.common import (
    DEPARTMENT,
    FACILITY,
    IN_DEPARTMENT,
    IN_FACILITY,
    KPI_DISPLAY,
    SETTLED,
    SETTLED_NOTE,
    barchart,
    kpi_overrides,
    settled_clause,
    table,
    timeseries,
)
from grafana.model import Dashboard, Panel, Row, Threshold

SHOWN = ("census", "discharges", "provider_utilization", "readmission_rate", "avg_length_of_stay",
         "outcome_efficiency", "high_risk_pct")
# Providers of the selected departments (reference data: department and capacity).
OF_DEPARTMENTS = f"SELECT provider_id FROM providers WHERE {IN_FACILITY} AND {IN_DEPARTMENT}"


def _latest_by_provider(kpis: tuple[str, ...]) -> str:
    cols = ",\n       ".join(f"max(l.value) FILTER (WHERE l.kpi = '{k}') AS {k}" for k in kpis)
    names = ", ".join(f"'{k}'" for k in kpis)
    return f"""
WITH latest AS (
    SELECT DISTINCT ON (kpi, dimension_id) kpi, dimension_id, value
    FROM kpi_windows
    WHERE dimension = 'provider' AND "window" = '30d' AND kpi IN ({names})
      AND {IN_FACILITY} AND $__timeFilter(window_end)
      AND dimension_id IN ({OF_DEPARTMENTS}){settled_clause(kpis)}
    ORDER BY kpi, dimension_id, window_end DESC
)
SELECT l.dimension_id AS provider, p.department, p.capacity,
       {cols}
FROM latest l
LEFT JOIN providers p ON p.provider_id = l.dimension_id
GROUP BY l.dimension_id, p.department, p.capacity
ORDER BY provider_utilization DESC NULLS LAST, provider"""


def board() -> Dashboard:
    d = KPI_DISPLAY
    util = d["provider_utilization"]
    util_colours = [Threshold(None, "green"), Threshold(0.85, "orange"), Threshold(1.0, "red")]
    items: list[Panel | Row] = [
        Row("Workload and utilization"),
        table(
            "Providers: rolling 30 days as of the end of the time range",
            _latest_by_provider(SHOWN),
            "Each provider's latest 30-day window in the time range; capacity from reference data."
            + SETTLED_NOTE.replace("the value is", "readmission rate and outcome efficiency are"),
            h=10, overrides=kpi_overrides(SHOWN), core=True,
        ),
        barchart(
            "Utilization by provider",
            f"""
SELECT DISTINCT ON (dimension_id) dimension_id AS provider, value AS provider_utilization
FROM kpi_windows
WHERE kpi = 'provider_utilization' AND dimension = 'provider' AND "window" = '30d'
  AND {IN_FACILITY} AND $__timeFilter(window_end) AND dimension_id IN ({OF_DEPARTMENTS})
ORDER BY dimension_id, window_end DESC""",
            "provider", util.unit, 0, util.description + " Above 100%: more patients than capacity.",
            h=12, thresholds=util_colours, core=True,
        ),
        timeseries(
            "Mean provider utilization by department",
            f"""
SELECT $__timeGroupAlias(day, 1d), department AS metric, avg(utilization) AS utilization
FROM v_provider_utilization_daily
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(day)
GROUP BY 1, 2
ORDER BY 1""",
            util.unit, 0, "Census at the end of each UTC day / capacity, averaged over the department's "
            "providers.", h=12, core=True,
        ),
        timeseries(
            "Patients per provider (end-of-day census, mean by department)",
            f"""
SELECT $__timeGroupAlias(day, 1d), department AS metric, avg(census) AS patients
FROM v_provider_utilization_daily
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(day)
GROUP BY 1, 2
ORDER BY 1""",
            "none", 1, "Workload: patients in the provider's care at the end of each day.", core=True,
        ),
        timeseries(
            "Discharges per provider per day (mean by department)",
            f"""
SELECT $__timeGroupAlias(k.window_start, 1d), p.department AS metric, avg(k.value) AS discharges
FROM kpi_windows k
JOIN providers p ON p.provider_id = k.dimension_id
WHERE k.kpi = 'discharges' AND k.dimension = 'provider' AND k."window" = '1d'
  AND k.{IN_FACILITY} AND p.{IN_DEPARTMENT} AND $__timeFilter(k.window_start)
GROUP BY 1, 2
ORDER BY 1""",
            "none", 2, "Mean over the providers who discharged that day (1-day windows of the stream).",
            core=True,
        ),
        Row("Outcomes"),
        barchart(
            "Readmission rate by provider",
            f"""
SELECT DISTINCT ON (dimension_id) dimension_id AS provider, value AS readmission_rate
FROM kpi_windows
WHERE kpi = 'readmission_rate' AND dimension = 'provider' AND "window" = '30d'
  AND {IN_FACILITY} AND $__timeFilter(window_end) AND dimension_id IN ({OF_DEPARTMENTS})
  AND {SETTLED}
ORDER BY dimension_id, window_end DESC""",
            "provider", d["readmission_rate"].unit, 1, d["readmission_rate"].description + " Rolling 30 days." + SETTLED_NOTE,
            h=12, core=True,
        ),
        barchart(
            "Outcome efficiency by provider",
            f"""
SELECT DISTINCT ON (dimension_id) dimension_id AS provider, value AS outcome_efficiency
FROM kpi_windows
WHERE kpi = 'outcome_efficiency' AND dimension = 'provider' AND "window" = '30d'
  AND {IN_FACILITY} AND $__timeFilter(window_end) AND dimension_id IN ({OF_DEPARTMENTS})
  AND {SETTLED}
ORDER BY dimension_id, window_end DESC""",
            "provider", "none", 2, d["outcome_efficiency"].description + " Rolling 30 days." + SETTLED_NOTE,
            h=12, core=True,
        ),
    ]
    return Dashboard(
        uid="wardstream-providers",
        title="Providers",
        description="Provider workload, utilization against capacity, and outcomes.",
        items=items,
        variables=[FACILITY, DEPARTMENT],
    )
