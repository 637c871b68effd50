"""Pieces every board shares: template variables, KPI display settings, SQL snippets, panel options.

Panels read the stream's KPI windows from the view ``kpi_windows`` (computed from the stream's day
partials, ``sql/migrations/V008__kpi_partials.sql``) and
the analysis views of ``sql/migrations/V002__kpi_views.sql``; no panel recomputes a KPI formula.
A rolling KPI is plotted at its ``window_end`` (the value "as of" that instant).
"""

from __future__ import annotations

from dataclasses import dataclass

from grafana.model import Panel, Target, Threshold, Variable
from stream.domain.kpis import ALL_KPIS
from stream.domain.patient import READMISSION_WINDOW

# One hospital per board view (facility is single-valued); departments any subset (or All).
FACILITY = Variable("facility", "Facility", "SELECT facility_id FROM facilities ORDER BY 1",
                    multi=False, include_all=False)
DEPARTMENT = Variable(
    "department", "Department",
    "SELECT department FROM departments WHERE facility_id = '$facility' ORDER BY 1",
)

IN_FACILITY = "facility_id = '$facility'"


def of_facility(dimension: str) -> str:
    """The facility filter of a ``kpi_windows`` query: a facility's own rows by ``dimension_id``,
    which reaches the view's ``kpi_partials`` scan (its per-window ``facility_id`` does not)."""
    return "dimension_id = '$facility'" if dimension == "facility" else IN_FACILITY

IN_DEPARTMENT = "department IN ($department)"
# KPIs that need the 30-day readmission label: a window's value fills in as labels arrive (a
# readmission is known early, "not readmitted" only 30 days after discharge), so a recent window
# is biased. Headline values take the latest window whose labels are all known ("settled").
LABELLED_KPIS = ("readmission_rate", "outcome_efficiency", "model_recall", "model_precision")
SETTLED = f"window_end <= $__timeTo()::timestamptz - interval '{READMISSION_WINDOW.days} days'"
SETTLED_NOTE = (f" Labels take {READMISSION_WINDOW.days} days: the value is the window ending "
                f"{READMISSION_WINDOW.days} days before the end of the range, when every label is known.")

# Monthly views: a month is in the range when it overlaps it (a range may start mid-month).
MONTH_IN_RANGE = "month + interval '1 month' > $__timeFrom() AND month <= $__timeTo()"


@dataclass(frozen=True)
class KpiDisplay:
    title: str
    unit: str
    decimals: int
    description: str


KPI_DISPLAY: dict[str, KpiDisplay] = {
    "readmission_rate": KpiDisplay("Readmission rate", "percentunit", 1,
                                   "Readmitted index discharges / index discharges with a known 30-day label."),
    "avg_length_of_stay": KpiDisplay("Average length of stay", "suffix: d", 2,
                                     "Mean length of stay (days) of discharges."),
    "cost_per_patient": KpiDisplay("Cost per patient", "currencyUSD", 0,
                                   "Sum of total cost / distinct patients discharged."),
    "high_risk_pct": KpiDisplay("High-risk discharges", "percent", 1,
                                "Discharges scored at or above the alert threshold / discharges scored."),
    "provider_utilization": KpiDisplay("Provider utilization", "percentunit", 0,
                                       "Provider's average daily census / capacity (mean over providers)."),
    "outcome_efficiency": KpiDisplay("Outcome efficiency", "none", 2,
                                     "Good outcomes (alive, not readmitted in 30 days) per 100 patient-days."),
    "discharges": KpiDisplay("Discharges", "none", 0, "Discharges in the window."),
    "admissions": KpiDisplay("Admissions", "none", 0, "Admissions in the window."),
    "census": KpiDisplay("Census", "none", 0, "Patients in a bed at the end of the window."),
    "model_recall": KpiDisplay("Alert recall", "percentunit", 0,
                               "Readmitted discharges that were flagged high-risk."),
    "model_precision": KpiDisplay("Alert precision", "percentunit", 0,
                                  "Flagged discharges that were readmitted."),
}
assert set(KPI_DISPLAY) == set(ALL_KPIS), "every KPI of the stream needs display settings"

HEADLINE_KPIS = ("readmission_rate", "avg_length_of_stay", "cost_per_patient", "high_risk_pct",
                 "provider_utilization", "outcome_efficiency")


def kpi_series(kpi: str, window: str, dimension: str = "facility", metric: str | None = None,
               where: str = "", settled: bool = False) -> str:
    """A KPI's rolling values over time (long format: one series per ``metric``); ``settled``
    keeps only windows whose labels are all known (for label-dependent KPIs).

    ``provider_utilization`` at facility level is the mean over the facility's providers, the
    only level the KPI is defined at (DESIGN.md).
    """
    if kpi == "provider_utilization" and dimension == "facility":
        return f"""
SELECT window_end AS "time", avg(value) AS provider_utilization
FROM kpi_windows
WHERE kpi = 'provider_utilization' AND dimension = 'provider' AND "window" = '{window}'
  AND {IN_FACILITY} AND $__timeFilter(window_end){where}
GROUP BY 1
ORDER BY 1"""
    metric_sql = f"{metric} AS metric, " if metric else ""
    if settled and kpi in LABELLED_KPIS:
        where = f" AND {SETTLED}{where}"
    return f"""
SELECT window_end AS "time", {metric_sql}value AS {kpi}
FROM kpi_windows
WHERE kpi = '{kpi}' AND dimension = '{dimension}' AND "window" = '{window}'
  AND {of_facility(dimension)} AND $__timeFilter(window_end){where}
ORDER BY 1"""


def settled_clause(kpis: tuple[str, ...]) -> str:
    labelled = [k for k in kpis if k in LABELLED_KPIS]
    if not labelled:
        return ""
    names = ", ".join(f"'{k}'" for k in labelled)
    return f"\n      AND (kpi NOT IN ({names}) OR {SETTLED})"


def latest_per(dimension: str, window: str, kpis: tuple[str, ...], where: str = "") -> str:
    """The latest ``window`` value in the time range of each KPI, one row per dimension id
    (settled windows for the label-dependent KPIs)."""
    cols = ",\n       ".join(f"max(value) FILTER (WHERE kpi = '{k}') AS {k}" for k in kpis)
    names = ", ".join(f"'{k}'" for k in kpis)
    return f"""
WITH latest AS (
    SELECT DISTINCT ON (kpi, dimension_id) kpi, dimension_id, value
    FROM kpi_windows
    WHERE dimension = '{dimension}' AND "window" = '{window}' AND kpi IN ({names})
      AND {of_facility(dimension)} AND $__timeFilter(window_end){where}{settled_clause(kpis)}
    ORDER BY kpi, dimension_id, window_end DESC
)
SELECT dimension_id AS {dimension},
       {cols}
FROM latest
GROUP BY dimension_id
ORDER BY dimension_id"""


# --------------------------------------------------------------------------- panel shapes

LEGEND = {"displayMode": "list", "placement": "bottom", "showLegend": True}
TOOLTIP = {"mode": "multi", "sort": "desc"}


def stat(title: str, sql: str, unit: str, decimals: int | None = None, description: str = "",
         w: int = 4, h: int = 5, thresholds: list[Threshold] | None = None, core: bool = False,
         calc: str = "lastNotNull") -> Panel:
    """A big number reduced from the query's series (``calc``: Grafana's reducer, e.g. the last
    value or the sum over the range), with the series as a sparkline."""
    return Panel(
        title, "stat", [Target(sql)], w=w, h=h, unit=unit, decimals=decimals, description=description,
        thresholds=thresholds or [Threshold(None, "blue")], core=core,
        options={
            "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
            "orientation": "auto", "textMode": "auto", "wideLayout": True,
        },
    )


def timeseries(title: str, targets: list[Target] | str, unit: str = "none", decimals: int | None = None,
               description: str = "", w: int = 12, h: int = 8, bars: bool = False, stack: bool = False,
               min: float | None = None, max: float | None = None, core: bool = False,
               overrides: list[dict] | None = None) -> Panel:
    if isinstance(targets, str):
        targets = [Target(targets)]
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 2,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": True,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisSoftMin": 0,
    }
    return Panel(title, "timeseries", targets, w=w, h=h, unit=unit, decimals=decimals, min=min, max=max,
                 description=description, custom=custom, core=core, overrides=overrides or [],
                 options={"legend": LEGEND, "tooltip": TOOLTIP})


def table(title: str, sql: str, description: str = "", w: int = 24, h: int = 10,
          overrides: list[dict] | None = None, core: bool = False,
          transformations: list[dict] | None = None) -> Panel:
    return Panel(title, "table", [Target(sql, format="table")], w=w, h=h, description=description,
                 core=core, overrides=overrides or [], transformations=transformations or [],
                 options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}})


def barchart(title: str, sql: str, x: str | None, unit: str = "none", decimals: int | None = None,
             description: str = "", w: int = 12, h: int = 8, horizontal: bool = True,
             stack: bool = False, core: bool = False, transformations: list[dict] | None = None,
             thresholds: list[Threshold] | None = None, overrides: list[dict] | None = None) -> Panel:
    return Panel(
        title, "barchart", [Target(sql, format="table")], w=w, h=h, unit=unit, decimals=decimals,
        description=description, core=core, thresholds=thresholds, overrides=overrides or [],
        transformations=transformations or [],
        custom={"fillOpacity": 80, "lineWidth": 1, "gradientMode": "none"},
        options={**({"xField": x} if x else {}),  # None: Grafana takes the first text field
                 "orientation": "horizontal" if horizontal else "vertical",
                 "showValue": "auto", "stacking": "normal" if stack else "none", "groupWidth": 0.7,
                 "barWidth": 0.9, "legend": LEGEND, "tooltip": {"mode": "single", "sort": "none"}},
    )


def piechart(title: str, sql: str, unit: str = "none", description: str = "", w: int = 8,
             h: int = 8, core: bool = False) -> Panel:
    return Panel(
        title, "piechart", [Target(sql, format="table")], w=w, h=h, unit=unit, description=description,
        core=core,
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
                 "pieType": "donut", "displayLabels": ["percent"],
                 "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                            "values": ["value", "percent"]},
                 "tooltip": {"mode": "single", "sort": "none"}},
    )


def unit_override(field: str, unit: str, decimals: int | None = None) -> dict:
    """Give one column its own unit (tables mixing KPIs)."""
    props = [{"id": "unit", "value": unit}]
    if decimals is not None:
        props.append({"id": "decimals", "value": decimals})
    return {"matcher": {"id": "byName", "options": field}, "properties": props}


def kpi_overrides(kpis: tuple[str, ...]) -> list[dict]:
    return [unit_override(k, KPI_DISPLAY[k].unit, KPI_DISPLAY[k].decimals) for k in kpis]
