"""Model health: rolling AUC, recall, precision and calibration of the online model against LACE.

Scores are predicted before the label is known; a label arrives at the readmission or 30 days
after discharge, so the last 30 days of a run are only partly labelled.
"""

from __future__ import annotations

from grafana.boards.common import FACILITY, IN_FACILITY, MONTH_IN_RANGE, barchart, stat, table, timeseries
from grafana.model import Dashboard, Panel, Row, Target, Threshold

# Trailing 30-day windows ending at each UTC midnight of the range, over labelled discharges:
# exact AUC from average ranks (Mann-Whitney U, ties counted half), like sql's model_metrics view.
ROLLING = f"""
WITH days AS (
    SELECT d AS day
    FROM generate_series(date_trunc('day', $__timeFrom()::timestamptz, 'UTC'),
                         $__timeTo()::timestamptz, interval '1 day') AS d
), w AS (
    SELECT days.day, l.score, l.lace, l.readmitted, l.high_risk
    FROM days
    JOIN v_model_labelled l
      ON l.discharged_at > days.day - interval '30 days' AND l.discharged_at <= days.day
    WHERE l.{IN_FACILITY}
), ranked AS (
    SELECT day, readmitted, high_risk,
           rank() OVER (PARTITION BY day ORDER BY score)
               + (count(*) OVER (PARTITION BY day, score) - 1) / 2.0 AS r_score,
           rank() OVER (PARTITION BY day ORDER BY lace)
               + (count(*) OVER (PARTITION BY day, lace) - 1) / 2.0 AS r_lace
    FROM w
), agg AS (
    SELECT day,
           count(*) AS labelled,
           count(*) FILTER (WHERE readmitted) AS positives,
           count(*) FILTER (WHERE NOT readmitted) AS negatives,
           sum(r_score) FILTER (WHERE readmitted) AS rank_sum_score,
           sum(r_lace) FILTER (WHERE readmitted) AS rank_sum_lace,
           count(*) FILTER (WHERE high_risk AND readmitted) AS true_positives,
           count(*) FILTER (WHERE high_risk) AS flagged
    FROM ranked
    GROUP BY day
)
SELECT day AS "time", {{columns}}
FROM agg
ORDER BY 1"""
MODEL_AUC = "(rank_sum_score - positives * (positives + 1) / 2.0) / nullif(positives * negatives, 0) AS model_auc"
LACE_AUC = "(rank_sum_lace - positives * (positives + 1) / 2.0) / nullif(positives * negatives, 0) AS lace_auc"
RECALL = "true_positives::double precision / nullif(positives, 0) AS recall"
PRECISION = "true_positives::double precision / nullif(flagged, 0) AS precision"
LABELLED = "labelled, positives"

AUC_COLOURS = [Threshold(None, "red"), Threshold(0.65, "orange"), Threshold(0.72, "green")]
RECALL_COLOURS = [Threshold(None, "red"), Threshold(0.8, "green")]


def rolling(columns: str) -> str:
    return ROLLING.replace("{columns}", columns)


def board() -> Dashboard:
    items: list[Panel | Row] = [
        Row("Discrimination and alert quality: trailing 30 days, as of each day"),
        stat("Model AUC", rolling(MODEL_AUC), "none", 3,
             "Exact ROC AUC of the model's score over the discharges labelled in the trailing 30 days.",
             w=6, thresholds=AUC_COLOURS, core=True),
        stat("LACE AUC", rolling(LACE_AUC), "none", 3,
             "The same discharges ranked by the LACE index (van Walraven 2010 reports 0.684).",
             w=6, thresholds=AUC_COLOURS, core=True),
        stat("Recall of alerts", rolling(RECALL), "percentunit", 0,
             "Readmitted discharges that were flagged high-risk (the policy targets >= 80%).",
             w=6, thresholds=RECALL_COLOURS, core=True),
        stat("Precision of alerts", rolling(PRECISION), "percentunit", 0,
             "Flagged discharges that were readmitted.", w=6, core=True),
        timeseries("Rolling AUC: model vs LACE", rolling(f"{MODEL_AUC}, {LACE_AUC}"), "none", 3,
                   "Trailing 30-day ROC AUC; 0.5 is chance.", min=0.4, max=1, core=True),
        timeseries("Rolling recall and precision", rolling(f"{RECALL}, {PRECISION}"), "percentunit", 0,
                   "Of the alert flag (score >= threshold) over the trailing 30 days.", min=0, max=1, core=True),
        timeseries("Alert recall and precision from the stream (rolling 30 days)", f"""
SELECT window_end AS "time", kpi AS metric, value
FROM kpi_windows
WHERE kpi IN ('model_recall', 'model_precision') AND dimension = 'facility' AND "window" = '30d'
  AND {IN_FACILITY} AND $__timeFilter(window_end)
ORDER BY 1""", "percentunit", 0, "The worker's own model_recall / model_precision KPIs (hospital.kpis), "
                   "windows by day of discharge; they fill in as labels arrive.", min=0, max=1, core=True),
        timeseries("Labelled discharges in the trailing 30 days", rolling(LABELLED), "none", 0,
                   "Labels arrive at the readmission, or 30 days after discharge.", core=True),
        timeseries("Monthly AUC, recall, precision", [Target(f"""
SELECT month AS "time", auc, lace_auc, recall, precision
FROM model_metrics
WHERE {MONTH_IN_RANGE}
ORDER BY 1""")], "none", 3, "Per calendar month of discharge (all facilities).", bars=True, core=True),
        timeseries("Alerts per day", f"""
SELECT $__timeGroupAlias(day, 1d), sum(alerts) AS alerts
FROM v_alerts_daily
WHERE {IN_FACILITY} AND $__timeFilter(day)
GROUP BY 1
ORDER BY 1""", "none", 0, "High-risk discharge alerts per UTC day.", bars=True, core=True),
        Row("Calibration: discharges in the range with a known label"),
        barchart("Calibration by score decile", f"""
WITH d AS (
    SELECT score, readmitted, ntile(10) OVER (ORDER BY score, encounter_id) AS decile
    FROM v_model_labelled
    WHERE {IN_FACILITY} AND $__timeFilter(discharged_at)
)
SELECT lpad(decile::text, 2, '0') AS decile,
       avg(score) AS predicted,
       avg(readmitted::int)::double precision AS observed
FROM d
GROUP BY decile
ORDER BY decile""", "decile", "percentunit", 0,
                 "Mean predicted risk vs observed 30-day readmission rate per score decile: a "
                 "calibrated model has equal bars.", horizontal=False, core=True),
        barchart("Calibration against LACE bands", f"""
SELECT CASE WHEN lace < 5 THEN '0-4' WHEN lace < 10 THEN '5-9' WHEN lace < 15 THEN '10-14' ELSE '15-19' END
           AS lace_band,
       avg(score) AS mean_model_score,
       avg(readmitted::int)::double precision AS observed,
       count(*) AS labelled
FROM v_model_labelled
WHERE {IN_FACILITY} AND $__timeFilter(discharged_at)
GROUP BY 1
ORDER BY min(lace)""", "lace_band", "percentunit", 0,
                 "Observed readmission rate and the model's mean score per LACE band (>= 10: high risk).",
                 horizontal=False, overrides=[{"matcher": {"id": "byName", "options": "labelled"},
                                               "properties": [{"id": "custom.hideFrom", "value": {
                                                   "viz": True, "legend": True, "tooltip": False}}]}],
                 core=True),
        table("Model versions", f"""
SELECT model_version,
       count(*) AS scored,
       min(discharged_at) AS first_scored,
       max(discharged_at) AS last_scored,
       avg(score) AS mean_score,
       avg(threshold) AS mean_threshold
FROM discharge_scores
WHERE {IN_FACILITY} AND $__timeFilter(discharged_at)
GROUP BY model_version
ORDER BY last_scored DESC
LIMIT 50""", "Which model versions scored the discharges in the range.", w=24, h=8, core=True),
    ]
    return Dashboard(
        uid="wardstream-model-health",
        title="Model health",
        description="Rolling discrimination, alert recall and precision, and calibration vs LACE.",
        items=items,
        variables=[FACILITY],
    )
