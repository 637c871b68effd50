"""Model health: the alert budget's PPV, NNE and recall beside LACE at the same alert share,
discrimination, calibration, equity by subgroup, and the drift checks of ``hospital.model-health``.

Figures come from the views of ``sql/migrations/V007__model_health_views.sql`` (discharges whose
30-day label is known): per calendar month, plotted at the month's start, and per 90-day window,
plotted at the window's end. ``$cohort`` picks every labelled discharge or only those the budget
policy scored (after the model's warm-up). A care team follows up a fixed share k of discharges,
so the questions are how many of those flagged are readmitted (PPV; NNE = flags per readmission
caught) and what LACE would have caught with the same number of flags.
"""

from __future__ import annotations

from grafana.boards.common import FACILITY, IN_FACILITY, MONTH_IN_RANGE, barchart, stat, table, timeseries
from grafana.model import Dashboard, Panel, Row, Threshold, Variable

COHORT = Variable(
    "cohort", "Discharges",
    "SELECT cohort FROM (VALUES ('all'), ('budget')) AS c(cohort) ORDER BY 1",
    multi=False, include_all=False,
)
IN_COHORT = "cohort = '$cohort'"

# Trailing 30-day windows ending at each UTC midnight of the range, over labelled discharges:
# exact AUC from average ranks (Mann-Whitney U, ties counted half).
ROLLING_AUC = f"""
WITH days AS (
    SELECT d AS day
    FROM generate_series(date_trunc('day', $__timeFrom()::timestamptz, 'UTC'),
                         $__timeTo()::timestamptz, interval '1 day') AS d
), w AS (
    SELECT days.day, l.score, l.lace, l.readmitted
    FROM days
    JOIN v_model_labelled l
      ON l.discharged_at > days.day - interval '30 days' AND l.discharged_at <= days.day
    WHERE l.{IN_FACILITY}
), ranked AS (
    SELECT day, readmitted,
           rank() OVER (PARTITION BY day ORDER BY score)
               + (count(*) OVER (PARTITION BY day, score) - 1) / 2.0 AS r_score,
           rank() OVER (PARTITION BY day ORDER BY lace)
               + (count(*) OVER (PARTITION BY day, lace) - 1) / 2.0 AS r_lace
    FROM w
), agg AS (
    SELECT day,
           count(*) FILTER (WHERE readmitted) AS positives,
           count(*) FILTER (WHERE NOT readmitted) AS negatives,
           sum(r_score) FILTER (WHERE readmitted) AS rank_sum_score,
           sum(r_lace) FILTER (WHERE readmitted) AS rank_sum_lace
    FROM ranked
    GROUP BY day
)
SELECT day AS "time",
       (rank_sum_score - positives * (positives + 1) / 2.0) / nullif(positives * negatives, 0) AS model_auc,
       (rank_sum_lace - positives * (positives + 1) / 2.0) / nullif(positives * negatives, 0) AS lace_auc
FROM agg
ORDER BY 1"""


def monthly(columns: str) -> str:
    """Figures of the whole facility per calendar month of discharge (the month's start)."""
    return f"""
SELECT month AS "time", {columns}
FROM model_health_monthly
WHERE {IN_FACILITY} AND {IN_COHORT} AND {MONTH_IN_RANGE}
ORDER BY 1"""


def rolling_90d(columns: str) -> str:
    """Figures of the whole facility per 90-day window (at its end: month ends, the last at the
    end of the day of the latest labelled discharge)."""
    return f"""
SELECT window_end AS "time", {columns}
FROM model_health_90d
WHERE {IN_FACILITY} AND {IN_COHORT} AND $__timeFilter(window_end)
ORDER BY 1"""


def with_reference_lines(panel: Panel, steps: list[Threshold]) -> Panel:
    """Draw the threshold steps as horizontal lines (Grafana's thresholds style) on a time series."""
    panel.thresholds = steps
    panel.custom["thresholdsStyle"] = {"mode": "line"}
    return panel


AT_ONE = [Threshold(None, "transparent"), Threshold(1, "green")]
AT_ZERO = [Threshold(None, "transparent"), Threshold(0, "green")]
PSI_LEVELS = [Threshold(None, "green"), Threshold(0.10, "orange"), Threshold(0.25, "red")]
AUC_COLOURS = [Threshold(None, "red"), Threshold(0.65, "orange"), Threshold(0.72, "green")]
BUDGET_NOTE = (" LACE: the same number of discharges flagged by the highest LACE, those tied at the "
               "cut counted pro rata, so its alert share equals the model's exactly.")

EQUITY = f"""
SELECT dimension, subgroup, labelled, readmissions, alert_rate, ppv, lace_ppv, recall, lace_recall,
       recall_gap, auroc, lace_auroc, observed_expected, calibration_slope, warning
FROM model_equity
WHERE {IN_FACILITY} AND period = '90d' AND {IN_COHORT}
  AND period_end = (SELECT max(period_end) FROM v_model_health_periods
                    WHERE {IN_FACILITY} AND period = '90d' AND $__timeFilter(period_end))
ORDER BY CASE dimension WHEN 'sex' THEN 1 WHEN 'age_band' THEN 2 WHEN 'race' THEN 3 ELSE 4 END, subgroup"""
PERCENT_COLUMNS = ("alert_rate", "ppv", "lace_ppv", "recall", "lace_recall", "recall_gap")


def _equity_overrides() -> list[dict]:
    def unit(name: str, value: str, decimals: int) -> dict:
        return {"matcher": {"id": "byName", "options": name},
                "properties": [{"id": "unit", "value": value}, {"id": "decimals", "value": decimals}]}

    return ([unit(c, "percentunit", 1) for c in PERCENT_COLUMNS]
            + [unit(c, "none", 3) for c in ("auroc", "lace_auroc", "observed_expected", "calibration_slope")])


def board() -> Dashboard:
    items: list[Panel | Row] = [
        Row("At the alert budget, beside LACE at the same alert share (last 90 days as of the range end)"),
        stat("PPV at the budget", rolling_90d("ppv AS model, lace_ppv AS lace"), "percentunit", 1,
             "Flagged discharges that were readmitted within 30 days." + BUDGET_NOTE, w=6, core=True),
        stat("NNE (flags per readmission caught)", rolling_90d("nne AS model, lace_nne AS lace"), "none", 1,
             "Number needed to evaluate = 1 / PPV: follow-ups per readmitted patient reached.", w=6,
             core=True),
        stat("Recall at the budget", rolling_90d("recall AS model, lace_recall AS lace"), "percentunit", 1,
             "Readmissions among the flagged discharges / all readmissions. Bounded by the budget: "
             "at most k / readmission rate.", w=6, core=True),
        stat("AUROC", rolling_90d("auroc AS model, lace_auroc AS lace"), "none", 3,
             "Exact ROC AUC (ties counted 1/2) of the score and of LACE on the same discharges.", w=6,
             thresholds=AUC_COLOURS, core=True),
        timeseries("PPV at the budget vs LACE, per month", monthly("ppv AS model, lace_ppv AS lace"),
                   "percentunit", 1, "Per calendar month of discharge (labels known)." + BUDGET_NOTE,
                   w=8, min=0, core=True),
        timeseries("NNE vs LACE, per month", monthly("nne AS model, lace_nne AS lace"), "none", 1,
                   "Flags per readmission caught (1 / PPV); lower is better.", w=8, core=True),
        timeseries("Recall at the budget vs LACE, per month", monthly("recall AS model, lace_recall AS lace"),
                   "percentunit", 1, "Readmissions caught by the flags / readmissions." + BUDGET_NOTE,
                   w=8, min=0, core=True),
        timeseries("AUROC: model vs LACE, per month", monthly("auroc AS model, lace_auroc AS lace"), "none", 3,
                   "Exact ROC AUC per calendar month; 0.5 is chance.", w=8, min=0.4, max=1, core=True),
        timeseries("Rolling 90 days: PPV, recall, AUROC vs LACE",
                   rolling_90d("ppv, lace_ppv, recall, lace_recall, auroc, lace_auroc"), "none", 3,
                   "The same figures over the 90 days ending at each month's end (the last window ends "
                   "with the latest labelled discharge).", w=8, min=0, max=1, core=True),
        timeseries("Rolling AUC: model vs LACE", ROLLING_AUC, "none", 3,
                   "Trailing 30-day ROC AUC as of each day, over every labelled discharge.", w=8,
                   min=0.4, max=1, core=True),
        Row("Calibration (the model only: LACE gives no probability)"),
        with_reference_lines(timeseries(
            "Observed / expected and calibration slope (1 = calibrated)",
            monthly("observed_expected, calibration_slope"), "none", 2,
            "O/E = readmissions / sum of scores. Slope of the logistic recalibration of the label on "
            "logit(score), fitted in PostgreSQL: < 1 means too extreme scores, > 1 too timid.",
            w=8, core=True), AT_ONE),
        with_reference_lines(timeseries(
            "Calibration intercepts (0 = calibrated)",
            monthly("calibration_in_the_large, calibration_intercept"), "none", 2,
            "calibration_in_the_large: the intercept with the slope fixed at 1 (> 0: risk under-"
            "estimated on average); calibration_intercept: the intercept of the joint fit beside the slope.",
            w=8, core=True), AT_ZERO),
        timeseries("Brier and scaled Brier, per month", monthly("brier, scaled_brier"), "none", 3,
                   "Brier = mean squared error of the score; scaled = 1 - Brier / (p (1 - p)), p the "
                   "readmission rate: 0 is no better than the rate for everyone.", w=8, core=True),
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
        Row("Alert budget: share flagged and policy"),
        timeseries("Alert share vs the facility's budget k", f"""
SELECT $__timeGroupAlias(day, 7d),
       sum(flagged)::double precision / sum(scored) AS alert_share,
       avg(target_share) AS budget_k
FROM model_alert_share_daily
WHERE {IN_FACILITY} AND $__timeFilter(day)
GROUP BY 1
ORDER BY 1""", "percentunit", 1, "Share of scored discharges flagged per week (labels not needed) "
                   "against the alert_share k the policy worked with (WARDSTREAM_ALERT_SHARE(S)).",
                   w=8, min=0, core=True),
        timeseries("Policy mix per week", f"""
SELECT $__timeGroupAlias(day, 7d),
       sum(policy_budget) AS budget,
       sum(policy_lace_cold_start) AS lace_cold_start,
       sum(policy_unknown) AS before_the_budget
FROM model_alert_share_daily
WHERE {IN_FACILITY} AND $__timeFilter(day)
GROUP BY 1
ORDER BY 1""", "none", 0, "Scored discharges by the policy that flagged them: the budget's score "
                   "quantile, LACE >= 10 capped at k while the model warms up, or none recorded "
                   "(scores written before the budget existed).", w=8, bars=True, stack=True, core=True),
        timeseries("Alerts per day", f"""
SELECT $__timeGroupAlias(day, 1d), sum(alerts) AS alerts
FROM v_alerts_daily
WHERE {IN_FACILITY} AND $__timeFilter(day)
GROUP BY 1
ORDER BY 1""", "none", 0, "High-risk discharge alerts per UTC day.", w=8, bars=True, core=True),
        Row("Equity: subgroups of the facility over the last 90 days as of the range end"),
        table("Figures by sex, age band, race and payer", EQUITY,
              "Each subgroup at its own alert share (LACE: the same number of flags within the subgroup). "
              "warning: >= 100 readmissions and recall more than 0.10 off the facility's "
              "(recall_gap), or observed / expected outside 0.8-1.25.",
              h=12, overrides=_equity_overrides(), core=True),
        Row("Drift and warnings (hospital.model-health)"),
        with_reference_lines(timeseries("PSI of the score and of the top features", f"""
SELECT window_end AS "time", "check" || ' ' || subject AS metric, value
FROM model_health
WHERE "check" IN ('psi_score', 'psi_feature') AND {IN_FACILITY} AND $__timeFilter(window_end)
ORDER BY 1""", "none", 3, "Population stability index between consecutive 28-day windows "
                              "(>= 500 discharges each): watch at 0.10, act at 0.25.", w=12),
                             PSI_LEVELS),
        table("Current warnings", f"""
WITH latest AS (
    SELECT DISTINCT ON ("check", subject) "check", subject, level, value, watch_at, act_at, n,
           window_start, window_end, message
    FROM model_health
    WHERE {IN_FACILITY} AND $__timeFilter(window_end)
    ORDER BY "check", subject, window_end DESC
)
SELECT level, "check", subject, value, watch_at, act_at, n, window_start, window_end, message
FROM latest
WHERE level <> 'ok'
ORDER BY CASE level WHEN 'act' THEN 0 ELSE 1 END, window_end DESC""",
              "The latest state of each check (as of the range end) that is not ok.", w=12),
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
LIMIT 50""", "Which model versions scored the discharges in the range.", w=24, h=6, core=True),
    ]
    return Dashboard(
        uid="wardstream-model-health",
        title="Model health",
        description="PPV, NNE and recall at the alert budget beside LACE, discrimination, calibration, "
                    "equity and drift.",
        items=items,
        variables=[FACILITY, COHORT],
    )

