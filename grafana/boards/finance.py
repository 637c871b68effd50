"""Finance and insurance: revenue per patient, readmission cost Pareto, payer mix."""

from __future__ import annotations

from grafana.boards.common import (
    DEPARTMENT,
    FACILITY,
    IN_DEPARTMENT,
    IN_FACILITY,
    KPI_DISPLAY,
    MONTH_IN_RANGE,
    barchart,
    kpi_series,
    piechart,
    stat,
    table,
    timeseries,
    unit_override,
)
from grafana.model import Dashboard, Panel, Row

# Revenue = the billed total_cost of discharges (charges table / v_discharges.total_cost).
DISCHARGES_IN_RANGE = f"{IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)"


def board() -> Dashboard:
    cpp = KPI_DISPLAY["cost_per_patient"]
    items: list[Panel | Row] = [
        Row("Revenue"),
        stat(cpp.title, kpi_series("cost_per_patient", "30d"), cpp.unit, cpp.decimals,
             cpp.description + " Rolling 30 days.", core=True),
        stat("Revenue in range", f"""
SELECT $__timeGroupAlias(charged_at, 1d), sum(amount) AS revenue
FROM charges
WHERE cancelled_by IS NULL AND {DISCHARGES_IN_RANGE.replace('discharged_at', 'charged_at')}
GROUP BY 1
ORDER BY 1""", "currencyUSD", 0, "Billed total cost of the discharges in the time range, without cancelled "
             "discharges (sparkline: per day).", core=True, calc="sum"),
        timeseries("Cost per patient (7-day rolling)", kpi_series("cost_per_patient", "7d"), cpp.unit, 0,
                   cpp.description, w=16, h=5, core=True),
        barchart("Revenue per patient by department", f"""
SELECT department,
       sum(total_cost) / nullif(count(DISTINCT patient_id), 0) AS revenue_per_patient
FROM v_discharges
WHERE {DISCHARGES_IN_RANGE}
GROUP BY department
ORDER BY revenue_per_patient DESC""", "department", "currencyUSD", 0,
                 "Billed total cost / distinct patients discharged in the range.", core=True),
        barchart("Revenue per patient by department and age group", f"""
SELECT department, age_group,
       sum(total_cost) / nullif(count(DISTINCT patient_id), 0) AS revenue_per_patient
FROM v_discharges
WHERE {DISCHARGES_IN_RANGE}
GROUP BY department, age_group
ORDER BY department, age_group""", None, "currencyUSD", 0,
                 "Age at admission; one bar per age group (rows pivoted by Grafana: departments x "
                 "age groups).",
                 transformations=[{"id": "groupingToMatrix", "options": {
                     "columnField": "age_group", "rowField": "department",
                     "valueField": "revenue_per_patient", "emptyValue": "null"}}],
                 core=True),
        Row("Readmission cost"),
        barchart("Readmission cost Pareto", f"""
WITH costs AS (
    SELECT e.patient_id, sum(e.total_cost)::double precision AS cost
    FROM readmissions r
    JOIN encounters e ON e.encounter_id = r.readmission_encounter_id
    WHERE r.readmitted AND e.{IN_FACILITY} AND $__timeFilter(e.discharged_at)
    GROUP BY e.patient_id
), ranked AS (
    SELECT 100.0 * row_number() OVER w / count(*) OVER () AS patient_pct,
           100.0 * sum(cost) OVER w / nullif(sum(cost) OVER (), 0) AS cumulative_cost_pct
    FROM costs
    WINDOW w AS (ORDER BY cost DESC, patient_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT 'top ' || lpad((ceil(patient_pct / 5) * 5)::int::text, 3, ' ') || '%' AS patients,
       max(cumulative_cost_pct) AS share_of_readmission_cost
FROM ranked
GROUP BY ceil(patient_pct / 5)
ORDER BY ceil(patient_pct / 5)""", "patients", "percent", 0,
                 "Readmitted patients ranked by the cost of their readmissions discharged in the range: "
                 "the share of all readmission cost the top x% carry.", horizontal=False, core=True),
        table("Costliest readmitted patients", f"""
SELECT e.patient_id,
       count(*) AS readmissions,
       sum(e.total_cost)::double precision AS readmission_cost,
       max(e.discharged_at) AS last_readmission
FROM readmissions r
JOIN encounters e ON e.encounter_id = r.readmission_encounter_id
WHERE r.readmitted AND e.{IN_FACILITY} AND $__timeFilter(e.discharged_at)
GROUP BY e.patient_id
ORDER BY readmission_cost DESC, e.patient_id
LIMIT 20""", "Readmission encounters discharged in the range, per patient (ids only).", w=12, h=8,
              overrides=[unit_override("readmission_cost", "currencyUSD", 0)], core=True),
        Row("Insurance"),
        piechart("Payer mix", f"""
SELECT payer, count(*) AS discharges
FROM v_discharges
WHERE {DISCHARGES_IN_RANGE}
GROUP BY payer
ORDER BY payer""", "none", "Discharges in the range by payer.", core=True),
        timeseries("Payer mix by month", f"""
SELECT month AS "time", payer AS metric, share_pct
FROM v_payer_mix
WHERE {IN_FACILITY} AND {MONTH_IN_RANGE}
ORDER BY 1""", "percent", 1, "Share of discharges per calendar month (all departments).", w=8,
                   bars=True, stack=True, max=100, core=True),
        barchart("Revenue per patient by payer", f"""
SELECT payer,
       sum(total_cost) / nullif(count(DISTINCT patient_id), 0) AS revenue_per_patient,
       sum(total_cost) AS revenue
FROM v_discharges
WHERE {DISCHARGES_IN_RANGE}
GROUP BY payer
ORDER BY payer""", "payer", "currencyUSD", 0, "Billed total cost / distinct patients, by payer.", w=8,
                 overrides=[{"matcher": {"id": "byName", "options": "revenue"},
                             "properties": [{"id": "custom.hideFrom",
                                             "value": {"viz": True, "legend": True, "tooltip": False}}]}],
                 core=True),
    ]
    return Dashboard(
        uid="wardstream-finance",
        title="Finance and insurance",
        description="Revenue per patient, readmission cost concentration and payer mix.",
        items=items,
        variables=[FACILITY, DEPARTMENT],
    )
