"""High-risk discharges: the live alert table with reasons, risk distribution, segments.

Care teams see ids, scores and the plain-word reasons only (minimum necessary data): no names,
no diagnoses beyond the segment counts.
"""

from __future__ import annotations

from grafana.boards.common import (
    DEPARTMENT,
    FACILITY,
    IN_DEPARTMENT,
    IN_FACILITY,
    KPI_DISPLAY,
    barchart,
    kpi_series,
    stat,
    table,
    timeseries,
    unit_override,
)
from grafana.model import Dashboard, Panel, Row, Threshold


def _segment(column: str, label: str) -> str:
    """Share of scored discharges flagged high-risk, and the observed 30-day readmission rate,
    per segment of discharges in the time range."""
    return f"""
SELECT {column} AS {label},
       count(*) FILTER (WHERE high_risk) AS high_risk_discharges,
       100.0 * count(*) FILTER (WHERE high_risk) / nullif(count(score), 0) AS flagged_pct,
       100.0 * count(*) FILTER (WHERE is_index AND readmitted)
           / nullif(count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL), 0) AS readmitted_pct
FROM v_discharges
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)
GROUP BY 1
ORDER BY 1"""


SEGMENT_OVERRIDES = [unit_override("flagged_pct", "percent", 1), unit_override("readmitted_pct", "percent", 1),
                     {"matcher": {"id": "byName", "options": "high_risk_discharges"},
                      "properties": [{"id": "custom.hideFrom", "value": {"viz": True, "legend": True,
                                                                          "tooltip": False}}]}]


def board() -> Dashboard:
    hr = KPI_DISPLAY["high_risk_pct"]
    items: list[Panel | Row] = [
        Row("Live alerts"),
        stat("Alerts in range", f"""
SELECT $__timeGroupAlias(discharged_at, 1d), count(*) AS alerts
FROM alerts
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)
GROUP BY 1
ORDER BY 1""", "none", 0, "High-risk discharge alerts in the time range (sparkline: per day).", core=True,
             calc="sum"),
        stat(hr.title, kpi_series("high_risk_pct", "30d"), hr.unit, hr.decimals,
             hr.description + " Rolling 30 days.", core=True),
        stat("Undelivered alerts in range", f"""
SELECT $__timeGroupAlias(a.discharged_at, 1d),
       count(*) FILTER (WHERE d.status IS DISTINCT FROM 'delivered') AS undelivered
FROM alerts a
LEFT JOIN alert_deliveries d ON d.encounter_id = a.encounter_id
                          AND d.discharged_at IN (a.discharged_at, '-infinity')
WHERE a.{IN_FACILITY} AND a.{IN_DEPARTMENT} AND $__timeFilter(a.discharged_at)
GROUP BY 1
ORDER BY 1""", "none", 0, "Alerts the notifier has not delivered (pending, failed or not yet seen).",
             thresholds=[Threshold(None, "green"), Threshold(1, "red")], calc="sum"),
        timeseries("Alerts per day by department", f"""
SELECT day AS "time", department AS metric, alerts
FROM v_alerts_daily
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(day)
ORDER BY 1""", "none", 0, "High-risk discharges per UTC day.", w=12, h=5, bars=True, stack=True, core=True),
        table("Alert feed (newest first)", f"""
SELECT a.discharged_at AS "time",
       a.encounter_id,
       a.patient_id,
       a.department,
       a.attending_provider_id AS provider,
       a.score,
       a.threshold,
       a.lace,
       array_to_string(a.reasons, '; ') AS reasons,
       coalesce(d.status, 'not seen') AS delivery
FROM alerts a
LEFT JOIN alert_deliveries d ON d.encounter_id = a.encounter_id
                          AND d.discharged_at IN (a.discharged_at, '-infinity')
WHERE a.{IN_FACILITY} AND a.{IN_DEPARTMENT} AND $__timeFilter(a.discharged_at)
ORDER BY a.discharged_at DESC, a.encounter_id
LIMIT 500""", "Every high-risk discharge in the range with the reasons the care team receives.",
              h=12, core=True,
              overrides=[unit_override("score", "percentunit", 0), unit_override("threshold", "percentunit", 0),
                         {"matcher": {"id": "byName", "options": "reasons"},
                          "properties": [{"id": "custom.width", "value": 600}]}]),
        Row("Risk distribution"),
        barchart("Predicted risk of scored discharges", f"""
SELECT to_char(floor(score * 20) / 20, 'FM0.00') AS score_from,
       count(*) FILTER (WHERE NOT high_risk) AS below_threshold,
       count(*) FILTER (WHERE high_risk) AS high_risk
FROM discharge_scores
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)
GROUP BY 1
ORDER BY 1""", "score_from", "none", 0, "Discharges by predicted 30-day readmission risk (bins of 0.05).",
                 horizontal=False, stack=True, core=True),
        barchart("LACE index of scored discharges", f"""
SELECT lpad(lace::text, 2, '0') AS lace,
       count(*) FILTER (WHERE NOT high_risk) AS below_threshold,
       count(*) FILTER (WHERE high_risk) AS high_risk
FROM discharge_scores
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)
GROUP BY lace
ORDER BY lace""", "lace", "none", 0, "LACE 0-19 (>= 10: high risk in the literature), split by the model's flag.",
                 horizontal=False, stack=True, core=True),
        timeseries("Alert threshold and mean score", f"""
SELECT $__timeGroupAlias(discharged_at, 1d), avg(threshold) AS threshold, avg(score) AS mean_score
FROM discharge_scores
WHERE {IN_FACILITY} AND {IN_DEPARTMENT} AND $__timeFilter(discharged_at)
GROUP BY 1
ORDER BY 1""", "percentunit", 0, "The alert policy's threshold (the rolling (1 - k) quantile of the facility's recent "
                   "scores: alert budget k) beside the mean score.",
                   w=24, core=True),
        Row("Segments: flagged share and observed readmission rate"),
        barchart("By age group", _segment("age_group", "age_group"), "age_group", "percent", 1,
                 "Discharges in range, by age at admission.", w=8, horizontal=False,
                 overrides=SEGMENT_OVERRIDES, core=True),
        barchart("By payer", _segment("payer", "payer"), "payer", "percent", 1,
                 "Discharges in range, by payer.", w=8, horizontal=False, overrides=SEGMENT_OVERRIDES, core=True),
        barchart("By chronic conditions",
                 _segment("CASE WHEN chronic_condition_count >= 3 THEN '3+' "
                          "ELSE coalesce(chronic_condition_count::text, 'unknown') END", "chronic_conditions"),
                 "chronic_conditions", "percent", 1, "Discharges in range, by number of chronic conditions.",
                 w=8, horizontal=False, overrides=SEGMENT_OVERRIDES, core=True),
        barchart("By primary diagnosis (10 most frequent)", f"""
WITH d AS (
    SELECT v.*, g.icd10_code
    FROM v_discharges v
    JOIN diagnoses g ON g.encounter_id = v.encounter_id AND g.coded_at = 'discharge' AND g.position = 0
    WHERE v.{IN_FACILITY} AND v.{IN_DEPARTMENT} AND $__timeFilter(v.discharged_at)
)
SELECT icd10_code AS primary_diagnosis,
       count(*) AS discharges,
       100.0 * count(*) FILTER (WHERE high_risk) / nullif(count(score), 0) AS flagged_pct,
       100.0 * count(*) FILTER (WHERE is_index AND readmitted)
           / nullif(count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL), 0) AS readmitted_pct
FROM d
GROUP BY icd10_code
ORDER BY discharges DESC, icd10_code
LIMIT 10""", "primary_diagnosis", "percent", 1, "ICD-10-CM primary diagnosis at discharge.", w=24,
                 overrides=[unit_override("flagged_pct", "percent", 1), unit_override("readmitted_pct", "percent", 1),
                            {"matcher": {"id": "byName", "options": "discharges"},
                             "properties": [{"id": "custom.hideFrom",
                                             "value": {"viz": True, "legend": True, "tooltip": False}}]}],
                 core=True),
    ]
    return Dashboard(
        uid="wardstream-high-risk",
        title="High-risk discharges",
        description="Live high-risk discharge alerts with reasons, risk distribution and segments.",
        items=items,
        variables=[FACILITY, DEPARTMENT],
    )
