"""Hospital overview: the six headline KPIs as stats and 7-day trends, census and flow."""

from __future__ import annotations

from grafana.boards.common import (
    FACILITY,
    HEADLINE_KPIS,
    IN_FACILITY,
    of_facility,
    KPI_DISPLAY,
    LABELLED_KPIS,
    SETTLED_NOTE,
    kpi_series,
    stat,
    timeseries,
)
from grafana.model import Dashboard, Panel, Row, Target


def board() -> Dashboard:
    items: list[Panel | Row] = [Row("Headline KPIs: rolling 30 days as of the end of the time range")]
    for kpi in HEADLINE_KPIS:
        d = KPI_DISPLAY[kpi]
        note = SETTLED_NOTE if kpi in LABELLED_KPIS else ""
        items.append(stat(d.title, kpi_series(kpi, "30d", settled=True), d.unit, d.decimals,
                          f"{d.description} Rolling 30-day window; sparkline: its value over the range."
                          + note, core=True))
    items.append(Row("Trends: rolling 7 days"))
    for kpi in HEADLINE_KPIS:
        d = KPI_DISPLAY[kpi]
        note = " The last 30 days fill in as labels arrive." if kpi in LABELLED_KPIS else ""
        items.append(timeseries(f"{d.title} (7-day rolling)", kpi_series(kpi, "7d"), d.unit, d.decimals,
                                d.description + note, w=8, core=True))
    items += [
        Row("Census and patient flow"),
        timeseries(
            "Census (patients in a bed at the end of each day)",
            kpi_series("census", "1d"), "none", 0, KPI_DISPLAY["census"].description, w=8, core=True,
        ),
        timeseries(
            "Bed occupancy",
            f"""
SELECT $__timeGroupAlias(day, 1d), avg(occupancy_pct) AS occupancy
FROM v_bed_occupancy_daily
WHERE {IN_FACILITY} AND $__timeFilter(day)
GROUP BY 1
ORDER BY 1""",
            "percent", 1, "Census at the end of each UTC day / the facility's beds.", w=8, min=0, core=True,
        ),
        timeseries(
            "Admissions and discharges per day",
            f"""
SELECT $__timeGroupAlias(window_start, 1d), kpi AS metric, sum(value) AS value
FROM kpi_windows
WHERE kpi IN ('admissions', 'discharges') AND dimension = 'facility' AND "window" = '1d'
  AND {of_facility("facility")} AND $__timeFilter(window_start)
GROUP BY 1, 2
ORDER BY 1""",
            "none", 0, "Daily counts from the stream (1-day windows).", w=8, bars=True, core=True,
        ),
        timeseries(
            "Census by department",
            [Target(f"""
SELECT $__timeGroupAlias(day, 1d), department AS metric, sum(census) AS census
FROM v_census_daily
WHERE {IN_FACILITY} AND $__timeFilter(day)
GROUP BY 1, 2
ORDER BY 1""")],
            "none", 0, "Patients in a bed at the end of each UTC day, stacked by department.",
            w=24, stack=True, core=True,
        ),
    ]
    return Dashboard(
        uid="wardstream-overview",
        title="Hospital overview",
        description="Headline KPIs of one hospital from the stream (hospital.kpis), census and flow.",
        items=items,
        variables=[FACILITY],
    )
