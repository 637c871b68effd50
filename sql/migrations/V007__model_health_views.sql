-- V007: model health per facility, beside LACE on the same discharges (issue 15, part 2).
-- Over discharges whose 30-day label is known (v_model_labelled), per facility, per calendar month
-- and per 90-day window (one ending at each month's end, the last at the end of the day of the
-- facility's latest labelled discharge): the alert flag's rate, PPV, NNE and recall (the budget's
-- flag: high_risk), exact AUROC, Brier and scaled Brier, observed / expected, and a logistic
-- recalibration (intercept and slope of y on logit(score), and the intercept with the slope fixed
-- at 1, "calibration-in-the-large"). Beside each, LACE at the SAME alert share: the top
-- `flagged` discharges by LACE, the discharges tied at the cut counted fractionally so the share
-- is exact. LACE has no probability: Brier, O/E and calibration are the model's only.
-- Cohorts: every labelled discharge ('all') and those the budget policy scored ('budget': after
-- the model's warm-up; policy is NULL on rows written before the budget existed). Subgroups for
-- equity: sex, race, payer and age band at admission, each within its facility.

-- ------------------------------------------------------------------ helpers

CREATE FUNCTION age_band(age integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN age IS NULL THEN 'unknown'
        WHEN age < 50 THEN '<50'
        WHEN age < 65 THEN '50-64'
        WHEN age < 80 THEN '65-79'
        ELSE '80+'
    END
$$;

-- Logistic recalibration of the labels on logit(score), by Newton-Raphson (= IRLS) from the
-- identity (intercept 0, slope 1), halving a step that lowers the likelihood. Scores are clamped
-- to [1e-6, 1 - 1e-6] before the logit. Returns {intercept, slope, calibration_in_the_large}
-- (the last: the intercept of logit P(y) = a + logit(score), slope fixed at 1); an element is
-- NULL when its fit is undefined (one class only, a constant score) or does not converge
-- (separable labels).
CREATE FUNCTION calibration_fit(scores double precision[], ys boolean[]) RETURNS double precision[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n        integer := coalesce(array_length(scores, 1), 0);
    x        double precision[];
    y        double precision[];
    pos      integer := 0;
    a        double precision := 0;
    b        double precision := 1;
    a_prev   double precision := 0;
    b_prev   double precision := 1;
    da       double precision := 0;
    db       double precision := 0;
    c        double precision := 0;
    dc       double precision;
    slope    double precision;
    inter    double precision;
    citl     double precision;
    ll       double precision;
    ll_prev  double precision := '-Infinity';
    eta      double precision;
    e        double precision;
    xi       double precision;
    mu       double precision;
    w        double precision;
    r        double precision;
    g0 double precision; g1 double precision;
    h00 double precision; h01 double precision; h11 double precision;
    det      double precision;
    halvings integer := 0;
    p        double precision;
BEGIN
    IF n = 0 OR array_length(ys, 1) IS DISTINCT FROM n THEN
        RETURN ARRAY[NULL, NULL, NULL]::double precision[];
    END IF;
    x := array_fill(0::double precision, ARRAY[n]);
    y := array_fill(0::double precision, ARRAY[n]);
    FOR i IN 1..n LOOP
        p := least(greatest(scores[i], 1e-6), 1 - 1e-6);
        x[i] := ln(p / (1 - p));
        IF ys[i] THEN
            y[i] := 1;
            pos := pos + 1;
        END IF;
    END LOOP;
    IF pos = 0 OR pos = n THEN
        RETURN ARRAY[NULL, NULL, NULL]::double precision[];
    END IF;

    -- intercept and slope
    FOR it IN 1..100 LOOP
        ll := 0; g0 := 0; g1 := 0; h00 := 0; h01 := 0; h11 := 0;
        FOR i IN 1..n LOOP
            xi := x[i];
            eta := least(greatest(a + b * xi, -30), 30);     -- exp() errors on under/overflow
            e := exp(eta);
            mu := e / (1 + e);
            ll := ll + y[i] * eta - ln(1 + e);
            r := y[i] - mu;
            w := mu * (1 - mu);
            g0 := g0 + r;
            g1 := g1 + r * xi;
            h00 := h00 + w;
            h01 := h01 + w * xi;
            h11 := h11 + w * xi * xi;
        END LOOP;
        IF ll < ll_prev - 1e-12 * abs(ll_prev) AND halvings < 30 THEN
            da := da / 2; db := db / 2;          -- overshoot: back to the last point, half the step
            a := a_prev + da; b := b_prev + db;
            halvings := halvings + 1;
            CONTINUE;
        END IF;
        halvings := 0;
        det := h00 * h11 - h01 * h01;
        EXIT WHEN det <= 1e-12 * greatest(h00 * h11, 1e-300);
        da := (h11 * g0 - h01 * g1) / det;
        db := (h00 * g1 - h01 * g0) / det;
        a_prev := a; b_prev := b; ll_prev := ll;
        a := a + da; b := b + db;
        IF abs(da) + abs(db) < 1e-10 THEN
            inter := a; slope := b;
            EXIT;
        END IF;
    END LOOP;

    -- calibration-in-the-large: offset logit(score), slope 1
    FOR it IN 1..100 LOOP
        g0 := 0; h00 := 0;
        FOR i IN 1..n LOOP
            e := exp(least(greatest(c + x[i], -30), 30));
            mu := e / (1 + e);
            g0 := g0 + y[i] - mu;
            h00 := h00 + mu * (1 - mu);
        END LOOP;
        EXIT WHEN h00 <= 0;
        dc := greatest(least(g0 / h00, 5), -5);      -- one-dimensional and concave: a capped step
        c := c + dc;
        IF abs(dc) < 1e-10 THEN
            citl := c;
            EXIT;
        END IF;
    END LOOP;
    RETURN ARRAY[inter, slope, citl];
END
$$;

-- ------------------------------------------------------------------ rows and periods

-- Labelled discharges with their policy and the encounter's demographics: sex and age at
-- admission, payer at discharge (else at admission), race as last known for the patient.
CREATE VIEW v_model_health_labelled AS
SELECT l.encounter_id,
       l.facility_id,
       l.department,
       l.discharged_at,
       l.day,
       l.month,
       l.score,
       l.lace,
       l.high_risk,
       l.readmitted,
       s.alert_share,
       s.policy,
       coalesce(e.sex, p.sex, 'unknown')                        AS sex,
       coalesce(p.race, 'unknown')                              AS race,
       coalesce(e.payer, e.payer_at_admission, 'unknown')       AS payer,
       e.age_at_admission                                       AS age,
       age_band(e.age_at_admission)                             AS age_band
FROM v_model_labelled l
JOIN discharge_scores s ON s.encounter_id = l.encounter_id
LEFT JOIN encounters e ON e.encounter_id = l.encounter_id
LEFT JOIN patients p ON p.patient_id = s.patient_id;

-- The periods of each facility: its calendar months (UTC) from the first to the last labelled
-- discharge, and a 90-day window [period_end - 90 days, period_end) ending at each of those
-- months' end, the last one at the end of the day of the facility's latest labelled discharge.
CREATE VIEW v_model_health_periods AS
WITH span AS (   -- UTC wall-clock timestamps: calendar arithmetic independent of the session's TimeZone
    SELECT facility_id,
           min(month) AT TIME ZONE 'UTC'                                                      AS first_month,
           date_trunc('month', max(discharged_at), 'UTC') AT TIME ZONE 'UTC'                  AS last_month,
           date_trunc('day', max(discharged_at), 'UTC') AT TIME ZONE 'UTC' + interval '1 day' AS last_end
    FROM v_model_labelled
    GROUP BY facility_id
), months AS (
    SELECT s.facility_id, m AS month_start, least(m + interval '1 month', s.last_end) AS window_end,
           m + interval '1 month' AS month_end
    FROM span s
    CROSS JOIN LATERAL generate_series(s.first_month, s.last_month, interval '1 month') AS m
)
SELECT facility_id, 'month'::text AS period,
       month_start AT TIME ZONE 'UTC' AS period_start, month_end AT TIME ZONE 'UTC' AS period_end
FROM months
UNION ALL
SELECT facility_id, '90d', (window_end - interval '90 days') AT TIME ZONE 'UTC', window_end AT TIME ZONE 'UTC'
FROM months;

-- One row per labelled discharge and group it counts in: period (its month, the 90-day windows
-- holding it), cohort ('all'; 'budget' when the budget policy scored it) and subgroup
-- (dimension 'facility' = the whole facility, or sex / race / payer / age_band).
CREATE VIEW v_model_health_rows AS
SELECT x.facility_id,
       p.period,
       p.period_start,
       p.period_end,
       c.cohort,
       g.dimension,
       g.subgroup,
       x.encounter_id,
       x.score,
       x.lace,
       x.high_risk,
       x.readmitted,
       x.alert_share,
       x.policy
FROM v_model_health_labelled x
JOIN v_model_health_periods p
  ON p.facility_id = x.facility_id AND x.discharged_at >= p.period_start AND x.discharged_at < p.period_end
CROSS JOIN LATERAL (VALUES ('all'::text), ('budget')) AS c(cohort)
CROSS JOIN LATERAL (VALUES ('facility'::text, 'all'::text), ('sex', x.sex), ('race', x.race),
                           ('payer', x.payer), ('age_band', x.age_band)) AS g(dimension, subgroup)
WHERE c.cohort = 'all' OR x.policy = 'budget';

-- ------------------------------------------------------------------ figures

-- Every figure per (facility, period, period_start, cohort, dimension, subgroup). Exact AUROC from
-- average ranks (Mann-Whitney U, ties counted 1/2). LACE at the model's alert share: a discharge
-- whose LACE level v holds n_v discharges, with `above` discharges of higher LACE in the group,
-- is flagged with weight clamp(flagged - above, 0, n_v) / n_v, so exactly `flagged` are flagged.
CREATE VIEW model_health_figures AS
WITH ranked AS (
    SELECT r.*,
           rank() OVER (PARTITION BY facility_id, period, period_start, period_end, cohort, dimension, subgroup
                        ORDER BY score)
               + (count(*) OVER (PARTITION BY facility_id, period, period_start, period_end, cohort, dimension,
                                              subgroup, score) - 1) / 2.0::double precision        AS r_score,
           rank() OVER (PARTITION BY facility_id, period, period_start, period_end, cohort, dimension, subgroup
                        ORDER BY lace) - 1                                                          AS lace_below,
           count(*) OVER (PARTITION BY facility_id, period, period_start, period_end, cohort, dimension,
                                       subgroup, lace)                                              AS lace_tied,
           count(*) OVER (PARTITION BY facility_id, period, period_start, period_end, cohort, dimension,
                                       subgroup)                                                    AS n_group,
           count(*) FILTER (WHERE high_risk)
               OVER (PARTITION BY facility_id, period, period_start, period_end, cohort, dimension,
                                  subgroup)                                                         AS flagged_group
    FROM v_model_health_rows r
), weighted AS (
    SELECT ranked.*,
           lace_below + 1 + (lace_tied - 1) / 2.0::double precision                                 AS r_lace,
           greatest(0, least(lace_tied, flagged_group - (n_group - lace_below - lace_tied)))::double precision
               / lace_tied                                                                          AS lace_flag
    FROM ranked
), agg AS (
    SELECT facility_id, period, period_start, period_end, cohort, dimension, subgroup,
           count(*)                                                   AS labelled,
           count(*) FILTER (WHERE readmitted)                         AS readmissions,
           count(*) FILTER (WHERE NOT readmitted)                     AS negatives,
           count(*) FILTER (WHERE high_risk)                          AS flagged,
           count(*) FILTER (WHERE high_risk AND readmitted)           AS true_positives,
           coalesce(sum(lace_flag) FILTER (WHERE readmitted), 0)      AS lace_true_positives,
           sum(r_score) FILTER (WHERE readmitted)                     AS rank_sum_score,
           sum(r_lace) FILTER (WHERE readmitted)                      AS rank_sum_lace,
           sum(score)                                                 AS expected,
           avg((score - readmitted::int) ^ 2)                         AS brier,
           avg(alert_share)                                           AS target_share,
           count(*) FILTER (WHERE policy = 'budget')                  AS policy_budget,
           count(*) FILTER (WHERE policy = 'lace_cold_start')         AS policy_lace_cold_start,
           calibration_fit(array_agg(score), array_agg(readmitted))   AS fit
    FROM weighted
    GROUP BY facility_id, period, period_start, period_end, cohort, dimension, subgroup
)
SELECT facility_id,
       period,
       period_start,
       period_end,
       cohort,
       dimension,
       subgroup,
       labelled,
       readmissions,
       readmissions::double precision / labelled                                          AS readmission_rate,
       flagged,
       flagged::double precision / labelled                                               AS alert_rate,
       target_share,
       policy_budget::double precision / labelled                                         AS budget_share,
       policy_lace_cold_start::double precision / labelled                                AS lace_cold_start_share,
       true_positives::double precision / nullif(flagged, 0)                              AS ppv,
       flagged::double precision / nullif(true_positives, 0)                              AS nne,
       true_positives::double precision / nullif(readmissions, 0)                         AS recall,
       (rank_sum_score - readmissions * (readmissions + 1) / 2.0::double precision)
           / nullif(readmissions * negatives, 0)                                          AS auroc,
       lace_true_positives / nullif(flagged, 0)                                           AS lace_ppv,
       flagged / nullif(lace_true_positives, 0)                                           AS lace_nne,
       lace_true_positives / nullif(readmissions, 0)                                      AS lace_recall,
       (rank_sum_lace - readmissions * (readmissions + 1) / 2.0::double precision)
           / nullif(readmissions * negatives, 0)                                          AS lace_auroc,
       brier,
       1 - brier / nullif(readmissions::double precision / labelled
                          * (1 - readmissions::double precision / labelled), 0)           AS scaled_brier,
       readmissions / nullif(expected, 0)                                                 AS observed_expected,
       fit[1]                                                                             AS calibration_intercept,
       fit[2]                                                                             AS calibration_slope,
       fit[3]                                                                             AS calibration_in_the_large
FROM agg;

-- The whole facility per month, and per 90-day window.
CREATE VIEW model_health_monthly AS
SELECT period_start AS month, period_end, facility_id, cohort,
       labelled, readmissions, readmission_rate, flagged, alert_rate, target_share, budget_share,
       lace_cold_start_share, ppv, nne, recall, auroc, lace_ppv, lace_nne, lace_recall, lace_auroc,
       brier, scaled_brier, observed_expected, calibration_intercept, calibration_slope,
       calibration_in_the_large
FROM model_health_figures
WHERE period = 'month' AND dimension = 'facility';

CREATE VIEW model_health_90d AS
SELECT period_start AS window_start, period_end AS window_end, facility_id, cohort,
       labelled, readmissions, readmission_rate, flagged, alert_rate, target_share, budget_share,
       lace_cold_start_share, ppv, nne, recall, auroc, lace_ppv, lace_nne, lace_recall, lace_auroc,
       brier, scaled_brier, observed_expected, calibration_intercept, calibration_slope,
       calibration_in_the_large
FROM model_health_figures
WHERE period = '90d' AND dimension = 'facility';

-- Equity: the figures of each subgroup beside its facility's (same period and cohort), with the
-- issue's warning rule: a subgroup with >= 100 readmissions whose recall at the budget is more
-- than 0.10 (absolute) off the facility's, or whose observed / expected is outside 0.8-1.25.
CREATE VIEW model_equity AS
SELECT s.facility_id,
       s.period,
       s.period_start,
       s.period_end,
       s.cohort,
       s.dimension,
       s.subgroup,
       s.labelled, s.readmissions, s.readmission_rate, s.flagged, s.alert_rate, s.ppv, s.nne, s.recall,
       s.auroc, s.lace_ppv, s.lace_nne, s.lace_recall, s.lace_auroc, s.brier, s.scaled_brier,
       s.observed_expected, s.calibration_intercept, s.calibration_slope, s.calibration_in_the_large,
       f.recall                                                   AS facility_recall,
       f.observed_expected                                        AS facility_observed_expected,
       s.recall - f.recall                                        AS recall_gap,
       s.readmissions >= 100
           AND (abs(s.recall - f.recall) > 0.10
                OR s.observed_expected NOT BETWEEN 0.8 AND 1.25)  AS warning
FROM model_health_figures s
JOIN model_health_figures f
  ON f.facility_id = s.facility_id AND f.period = s.period AND f.period_start = s.period_start
 AND f.period_end = s.period_end AND f.cohort = s.cohort AND f.dimension = 'facility'
WHERE s.dimension <> 'facility';

-- ------------------------------------------------------------------ alert share and policy mix

-- Every scored discharge (labels not needed): the share flagged against the facility's budget k
-- (the mean alert_share the policy worked with) and which policy scored them.
CREATE VIEW model_alert_share_daily AS
SELECT date_trunc('day', discharged_at, 'UTC')                                   AS day,
       facility_id,
       count(*)                                                                 AS scored,
       count(*) FILTER (WHERE high_risk)                                        AS flagged,
       count(*) FILTER (WHERE high_risk)::double precision / count(*)           AS alert_rate,
       avg(alert_share)                                                         AS target_share,
       count(*) FILTER (WHERE policy = 'budget')                                AS policy_budget,
       count(*) FILTER (WHERE policy = 'lace_cold_start')                       AS policy_lace_cold_start,
       count(*) FILTER (WHERE policy IS NULL)                                   AS policy_unknown
FROM discharge_scores
GROUP BY 1, 2;

-- Readable by Grafana's role through V003's default privileges; the functions too (EXECUTE is
-- checked against the user of a view).
GRANT EXECUTE ON FUNCTION age_band(integer), calibration_fit(double precision[], boolean[])
    TO wardstream_reader, wardstream_sink;
