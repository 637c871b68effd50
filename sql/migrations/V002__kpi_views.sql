-- V002: KPI and analysis views (DESIGN.md "KPIs"). Every view exposes a UTC timestamp column
-- (day / month / discharged_at / admitted_at) so Grafana panels can apply $__timeFilter to it.
-- Day and month buckets are UTC; windows are half-open [start, end).

-- ------------------------------------------------------------------ helpers

-- Dashboard queries are short: JIT compilation (PostgreSQL's default above a cost estimate that
-- generate_series-based views easily reach) costs more than it saves. Per database, owner only.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the database owner: jit left as configured';
END
$$;

CREATE FUNCTION age_group(age integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN age IS NULL THEN 'unknown'
        WHEN age < 18 THEN '0-17'
        WHEN age < 45 THEN '18-44'
        WHEN age < 65 THEN '45-64'
        ELSE '65+'
    END
$$;

-- ------------------------------------------------------------------ facts

-- One row per discharge, with its label (null while unknown) and its score.
CREATE VIEW v_discharges AS
SELECT e.encounter_id,
       e.patient_id,
       e.facility_id,
       e.department,
       e.attending_provider_id,
       e.admitted_at,
       e.discharged_at,
       date_trunc('day', e.discharged_at, 'UTC')   AS day,
       date_trunc('month', e.discharged_at, 'UTC') AS month,
       e.length_of_stay_days,
       e.discharge_disposition,
       e.payer,
       e.total_cost::double precision              AS total_cost,
       e.satisfaction_score,
       e.admission_type,
       e.age_at_admission                          AS age,
       age_group(e.age_at_admission)               AS age_group,
       e.sex,
       e.chronic_condition_count,
       e.discharge_disposition <> 'expired'        AS is_index,
       r.readmitted,
       r.readmission_encounter_id,
       r.known_at                                  AS label_known_at,
       s.score,
       s.lace,
       s.threshold,
       s.high_risk,
       s.model_version
FROM encounters e
LEFT JOIN readmissions r ON r.encounter_id = e.encounter_id
LEFT JOIN discharge_scores s ON s.encounter_id = e.encounter_id
WHERE e.discharged_at IS NOT NULL;

-- One row per admission event (department and attending as admitted).
CREATE VIEW v_admissions AS
SELECT a.encounter_id,
       a.patient_id,
       a.facility_id,
       a.department,
       a.attending_provider_id,
       a.occurred_at                               AS admitted_at,
       date_trunc('day', a.occurred_at, 'UTC')     AS day,
       date_trunc('month', a.occurred_at, 'UTC')   AS month,
       e.admission_type,
       e.admit_source,
       e.age_at_admission                          AS age,
       age_group(e.age_at_admission)               AS age_group,
       e.payer_at_admission                        AS payer
FROM adt_events a
JOIN encounters e ON e.encounter_id = a.encounter_id
WHERE a.event_type = 'admission';

-- Bed segments: a patient occupies (department, attending) from an admission/transfer until the
-- next event of the encounter (to_ts NULL while still in the bed).
CREATE VIEW v_bed_segments AS
SELECT encounter_id, patient_id, facility_id, department, attending_provider_id, from_ts, to_ts
FROM (
    SELECT a.encounter_id, a.patient_id, a.facility_id, a.department, a.attending_provider_id,
           a.event_type,
           a.occurred_at AS from_ts,
           lead(a.occurred_at) OVER (
               PARTITION BY a.encounter_id
               ORDER BY a.occurred_at,
                        CASE a.event_type WHEN 'admission' THEN 0 WHEN 'transfer' THEN 1 ELSE 2 END,
                        a.source_partition, a.source_offset) AS to_ts
    FROM adt_events a
) s
WHERE event_type <> 'discharge';

-- Census per department at the end of each UTC day (= patients in a bed at window_end:
-- from_ts < window_end AND (to_ts IS NULL OR to_ts >= window_end)), as a running sum of deltas.
CREATE VIEW v_census_daily AS
WITH daily AS (
    SELECT s.facility_id, s.department, date_trunc('day', x.ts, 'UTC') AS day, sum(x.delta) AS delta
    FROM v_bed_segments s
    CROSS JOIN LATERAL (VALUES (s.from_ts, 1), (s.to_ts, -1)) AS x(ts, delta)
    WHERE x.ts IS NOT NULL
    GROUP BY 1, 2, 3
), span AS (
    SELECT min(day) AS first_day, max(day) AS last_day FROM daily
), grid AS (
    SELECT u.facility_id, u.department, d.day
    FROM (SELECT DISTINCT facility_id, department FROM daily) u
    CROSS JOIN span
    CROSS JOIN LATERAL generate_series(span.first_day, span.last_day, interval '1 day') AS d(day)
), census AS (
    SELECT g.day, g.facility_id, g.department,
           sum(coalesce(d.delta, 0)) OVER (PARTITION BY g.facility_id, g.department ORDER BY g.day)::integer AS census
    FROM grid g LEFT JOIN daily d USING (facility_id, department, day)
)
SELECT c.day,
       c.day + interval '1 day'                                  AS window_end,
       c.facility_id,
       c.department,
       c.census,
       dep.beds,
       100.0::double precision * c.census / nullif(dep.beds, 0)   AS occupancy_pct
FROM census c
LEFT JOIN departments dep USING (facility_id, department);

-- Bed occupancy of each facility at the end of each UTC day.
CREATE VIEW v_bed_occupancy_daily AS
SELECT c.day,
       c.window_end,
       c.facility_id,
       sum(c.census)::integer                        AS census,
       f.beds,
       100.0::double precision * sum(c.census) / nullif(f.beds, 0)     AS occupancy_pct
FROM v_census_daily c
LEFT JOIN facilities f USING (facility_id)
GROUP BY c.day, c.window_end, c.facility_id, f.beds;

-- Census of each provider at the end of each UTC day, and utilization = census / capacity.
CREATE VIEW v_provider_utilization_daily AS
WITH daily AS (
    SELECT s.facility_id, s.attending_provider_id AS provider_id, date_trunc('day', x.ts, 'UTC') AS day,
           sum(x.delta) AS delta
    FROM v_bed_segments s
    CROSS JOIN LATERAL (VALUES (s.from_ts, 1), (s.to_ts, -1)) AS x(ts, delta)
    WHERE x.ts IS NOT NULL
    GROUP BY 1, 2, 3
), span AS (
    SELECT min(day) AS first_day, max(day) AS last_day FROM daily
), grid AS (
    SELECT u.facility_id, u.provider_id, d.day
    FROM (SELECT DISTINCT facility_id, provider_id FROM daily) u
    CROSS JOIN span
    CROSS JOIN LATERAL generate_series(span.first_day, span.last_day, interval '1 day') AS d(day)
), census AS (
    SELECT g.day, g.facility_id, g.provider_id,
           sum(coalesce(d.delta, 0)) OVER (PARTITION BY g.facility_id, g.provider_id ORDER BY g.day)::integer AS census
    FROM grid g LEFT JOIN daily d USING (facility_id, provider_id, day)
)
SELECT c.day,
       c.day + interval '1 day'              AS window_end,
       c.facility_id,
       c.provider_id,
       p.department,
       c.census,
       p.capacity,
       c.census::double precision / nullif(p.capacity, 0) AS utilization
FROM census c
LEFT JOIN providers p ON p.provider_id = c.provider_id;

-- ------------------------------------------------------------------ KPIs, 1d windows, long format
-- Same names, dimensions and formulas as hospital.kpis (DESIGN.md), recomputed from the tables.
-- Counts have numerator = count, denominator = 1.

CREATE VIEW kpi_daily AS
WITH d AS (
    SELECT v.*, dim.dimension, dim.dimension_id
    FROM v_discharges v
    CROSS JOIN LATERAL (VALUES ('facility', v.facility_id),
                               ('department', v.department),
                               ('provider', v.attending_provider_id)) AS dim(dimension, dimension_id)
), a AS (
    SELECT v.*, dim.dimension, dim.dimension_id
    FROM v_admissions v
    CROSS JOIN LATERAL (VALUES ('facility', v.facility_id),
                               ('department', v.department),
                               ('provider', v.attending_provider_id)) AS dim(dimension, dimension_id)
), s AS (
    SELECT ds.*, date_trunc('day', ds.discharged_at, 'UTC') AS day, dim.dimension, dim.dimension_id
    FROM discharge_scores ds
    CROSS JOIN LATERAL (VALUES ('facility', ds.facility_id),
                               ('department', ds.department),
                               ('provider', ds.attending_provider_id)) AS dim(dimension, dimension_id)
), parts AS (
    SELECT day, facility_id, dimension, dimension_id, 'discharges' AS kpi,
           count(*)::double precision AS numerator, 1::double precision AS denominator
    FROM d GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, dimension, dimension_id, 'admissions', count(*), 1
    FROM a GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, dimension, dimension_id, 'avg_length_of_stay',
           sum(length_of_stay_days), count(*)
    FROM d GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, dimension, dimension_id, 'cost_per_patient',
           sum(total_cost), count(DISTINCT patient_id)
    FROM d GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, dimension, dimension_id, 'readmission_rate',
           count(*) FILTER (WHERE readmitted), count(*)
    FROM d WHERE is_index AND readmitted IS NOT NULL GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, dimension, dimension_id, 'outcome_efficiency',
           count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false),
           sum(length_of_stay_days)
    FROM d GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, dimension, dimension_id, 'high_risk_pct',
           count(*) FILTER (WHERE high_risk), count(*)
    FROM s GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT day, facility_id, 'facility', facility_id, 'census', sum(census), 1
    FROM v_census_daily GROUP BY 1, 2
    UNION ALL
    SELECT day, facility_id, 'department', department, 'census', census, 1
    FROM v_census_daily
    UNION ALL
    SELECT day, facility_id, 'provider', provider_id, 'census', census, 1
    FROM v_provider_utilization_daily
    UNION ALL
    SELECT day, facility_id, 'provider', provider_id, 'provider_utilization', census, capacity
    FROM v_provider_utilization_daily WHERE capacity IS NOT NULL
)
SELECT day,
       day + interval '1 day' AS window_end,
       facility_id,
       dimension,
       dimension_id,
       kpi,
       CASE
           WHEN kpi IN ('high_risk_pct', 'outcome_efficiency') THEN 100.0::double precision * numerator / nullif(denominator, 0)
           ELSE numerator / nullif(denominator, 0)
       END AS value,
       numerator,
       denominator
FROM parts;

-- Whole-period headline KPIs per facility (stat panels; for a time range use v_discharges).
CREATE VIEW v_kpi_summary AS
SELECT facility_id,
       min(discharged_at)                                                          AS first_discharge_at,
       max(discharged_at)                                                          AS last_discharge_at,
       count(*)                                                                    AS discharges,
       count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL)                 AS index_discharges_known,
       count(*) FILTER (WHERE is_index AND readmitted)::double precision
           / nullif(count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL), 0) AS readmission_rate,
       avg(length_of_stay_days)                                                    AS avg_length_of_stay,
       sum(total_cost) / nullif(count(DISTINCT patient_id), 0)                     AS cost_per_patient,
       100.0::double precision * count(*) FILTER (WHERE high_risk) / nullif(count(score), 0)         AS high_risk_pct,
       100.0::double precision * count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false)
           / nullif(sum(length_of_stay_days), 0)                                   AS outcome_efficiency
FROM v_discharges
GROUP BY facility_id;

-- ------------------------------------------------------------------ analyses of the source reports

-- Department outcome efficiency (and the KPIs beside it) by month.
CREATE VIEW v_department_outcomes AS
SELECT month,
       facility_id,
       department,
       count(*)                                                                    AS discharges,
       count(DISTINCT patient_id)                                                  AS patients,
       count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL)                 AS index_discharges_known,
       count(*) FILTER (WHERE is_index AND readmitted)                             AS readmitted,
       count(*) FILTER (WHERE is_index AND readmitted)::double precision
           / nullif(count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL), 0) AS readmission_rate,
       avg(length_of_stay_days)                                                    AS avg_length_of_stay,
       sum(total_cost) / nullif(count(DISTINCT patient_id), 0)                     AS cost_per_patient,
       count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false) AS good_outcomes,
       sum(length_of_stay_days)                                                    AS patient_days,
       100.0::double precision * count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false)
           / nullif(sum(length_of_stay_days), 0)                                   AS outcome_efficiency
FROM v_discharges
GROUP BY month, facility_id, department;

-- Revenue (total_cost billed) per distinct patient by department and age group at admission.
CREATE VIEW v_revenue_per_patient AS
SELECT month,
       facility_id,
       department,
       age_group,
       count(*)                                          AS discharges,
       count(DISTINCT patient_id)                        AS patients,
       sum(total_cost)                                   AS revenue,
       sum(total_cost) / nullif(count(DISTINCT patient_id), 0) AS revenue_per_patient
FROM v_discharges
GROUP BY month, facility_id, department, age_group;

-- Payer mix of discharges per month (share_pct sums to 100 per facility and month).
CREATE VIEW v_payer_mix AS
SELECT month,
       facility_id,
       payer,
       count(*) AS discharges,
       100.0::double precision * count(*) / sum(count(*)) OVER (PARTITION BY month, facility_id) AS share_pct
FROM v_discharges
GROUP BY month, facility_id, payer;

-- Mean satisfaction (survey answers only; null scores are not answers) by department and month.
CREATE VIEW v_satisfaction_monthly AS
SELECT month,
       facility_id,
       department,
       count(satisfaction_score) AS responses,
       count(*)                  AS discharges,
       avg(satisfaction_score)   AS mean_satisfaction
FROM v_discharges
GROUP BY month, facility_id, department;

-- Admissions by department and month (seasonality): pct_vs_mean compares a month with the
-- department's own mean over the months present.
CREATE VIEW v_admissions_monthly AS
WITH m AS (
    SELECT month, facility_id, department, count(*) AS admissions
    FROM v_admissions GROUP BY 1, 2, 3
)
SELECT month,
       facility_id,
       department,
       admissions,
       (avg(admissions) OVER (PARTITION BY facility_id, department))::double precision AS department_monthly_mean,
       100.0::double precision * (admissions / (avg(admissions) OVER (PARTITION BY facility_id, department))::double precision - 1) AS pct_vs_mean
FROM m;

-- Adults (18+) discharged alive with diabetes (E11.9 coded at admission or discharge):
-- readmitted = a non-elective admission of the same patient within 60 days after discharge;
-- known = readmitted, or the data reach discharge + 60 days.
CREATE VIEW v_diabetes_readmission_60d AS
WITH horizon AS (SELECT max(occurred_at) AS data_until FROM adt_events)
SELECT d.encounter_id,
       d.patient_id,
       d.facility_id,
       d.department,
       d.discharged_at,
       d.month,
       d.age,
       r.readmission_encounter_id,
       r.readmission_encounter_id IS NOT NULL                                       AS readmitted_60d,
       r.readmission_encounter_id IS NOT NULL
           OR h.data_until >= d.discharged_at + interval '60 days'                   AS known
FROM v_discharges d
CROSS JOIN horizon h
LEFT JOIN LATERAL (
    SELECT n.encounter_id AS readmission_encounter_id
    FROM encounters n
    WHERE n.patient_id = d.patient_id
      AND n.encounter_id <> d.encounter_id
      AND n.admission_type IS DISTINCT FROM 'elective'
      AND n.admitted_at > d.discharged_at
      AND n.admitted_at <= d.discharged_at + interval '60 days'
    ORDER BY n.admitted_at
    LIMIT 1
) r ON true
WHERE d.is_index
  AND d.age >= 18
  AND EXISTS (SELECT 1 FROM diagnoses g WHERE g.encounter_id = d.encounter_id AND g.icd10_code = 'E11.9');

CREATE VIEW v_diabetes_readmission_60d_summary AS
SELECT facility_id,
       count(*) FILTER (WHERE known)                                AS index_discharges_known,
       count(*) FILTER (WHERE readmitted_60d)                       AS readmitted_60d,
       count(*) FILTER (WHERE readmitted_60d)::double precision
           / nullif(count(*) FILTER (WHERE known), 0)               AS readmission_rate_60d
FROM v_diabetes_readmission_60d
GROUP BY facility_id;

-- Readmission cost Pareto: per patient, the total_cost of their readmission encounters
-- (encounters that are the readmission of a labelled index discharge), ranked.
CREATE VIEW v_readmission_cost_pareto AS
WITH costs AS (
    SELECT e.facility_id, e.patient_id, sum(e.total_cost)::double precision AS readmission_cost,
           count(*) AS readmissions, max(e.discharged_at) AS last_readmission_discharged_at
    FROM (SELECT DISTINCT readmission_encounter_id FROM readmissions WHERE readmitted) r
    JOIN encounters e ON e.encounter_id = r.readmission_encounter_id
    WHERE e.total_cost IS NOT NULL
    GROUP BY e.facility_id, e.patient_id
)
SELECT facility_id,
       patient_id,
       readmissions,
       readmission_cost,
       last_readmission_discharged_at,
       row_number() OVER w                                              AS cost_rank,
       100.0::double precision * row_number() OVER w / count(*) OVER (PARTITION BY facility_id) AS patient_pct,
       sum(readmission_cost) OVER w                                     AS cumulative_cost,
       100.0::double precision * sum(readmission_cost) OVER w
           / nullif(sum(readmission_cost) OVER (PARTITION BY facility_id), 0) AS cumulative_cost_pct
FROM costs
WINDOW w AS (PARTITION BY facility_id ORDER BY readmission_cost DESC, patient_id
             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);

-- Share of readmission cost carried by the top 5% of readmitted patients (by that cost),
-- and by the top 5% of all discharged patients (patients without readmission cost count as 0).
CREATE VIEW v_readmission_cost_pareto_summary AS
WITH p AS (
    SELECT facility_id, count(*) AS readmitted_patients, sum(readmission_cost) AS total_cost
    FROM v_readmission_cost_pareto GROUP BY facility_id
), allp AS (
    SELECT facility_id, count(DISTINCT patient_id) AS discharged_patients FROM v_discharges GROUP BY facility_id
)
SELECT p.facility_id,
       p.readmitted_patients,
       allp.discharged_patients,
       p.total_cost                                                                  AS readmission_cost,
       100.0::double precision * (SELECT coalesce(sum(c.readmission_cost), 0) FROM v_readmission_cost_pareto c
                WHERE c.facility_id = p.facility_id
                  AND c.cost_rank <= ceil(0.05 * p.readmitted_patients)) / nullif(p.total_cost, 0)
                                                                                     AS top5pct_readmitted_share,
       100.0::double precision * (SELECT coalesce(sum(c.readmission_cost), 0) FROM v_readmission_cost_pareto c
                WHERE c.facility_id = p.facility_id
                  AND c.cost_rank <= ceil(0.05 * allp.discharged_patients)) / nullif(p.total_cost, 0)
                                                                                     AS top5pct_all_patients_share
FROM p JOIN allp USING (facility_id);

-- ------------------------------------------------------------------ model health

-- Scored discharges whose label is known.
CREATE VIEW v_model_labelled AS
SELECT s.encounter_id,
       s.facility_id,
       s.department,
       s.discharged_at,
       date_trunc('day', s.discharged_at, 'UTC')   AS day,
       date_trunc('month', s.discharged_at, 'UTC') AS month,
       s.score,
       s.lace,
       s.threshold,
       s.high_risk,
       s.model_version,
       r.readmitted
FROM discharge_scores s
JOIN readmissions r ON r.encounter_id = s.encounter_id;

-- Model health per month: exact AUC from average ranks (Mann-Whitney U, ties counted half),
-- LACE's AUC on the same discharges, recall and precision of the alert flag, alerts per day.
CREATE VIEW model_metrics AS
WITH ranked AS (
    SELECT month, readmitted, high_risk,
           rank() OVER (PARTITION BY month ORDER BY score)
               + (count(*) OVER (PARTITION BY month, score) - 1) / 2.0::double precision AS r_score,
           rank() OVER (PARTITION BY month ORDER BY lace)
               + (count(*) OVER (PARTITION BY month, lace) - 1) / 2.0::double precision  AS r_lace
    FROM v_model_labelled
), agg AS (
    SELECT month,
           count(*)                                       AS labelled,
           count(*) FILTER (WHERE readmitted)             AS positives,
           count(*) FILTER (WHERE NOT readmitted)         AS negatives,
           sum(r_score) FILTER (WHERE readmitted)         AS rank_sum_score,
           sum(r_lace) FILTER (WHERE readmitted)          AS rank_sum_lace,
           count(*) FILTER (WHERE high_risk AND readmitted) AS true_positives,
           count(*) FILTER (WHERE high_risk)              AS flagged
    FROM ranked GROUP BY month
), alerts_m AS (
    SELECT date_trunc('month', discharged_at, 'UTC') AS month,
           count(*) AS alerts
    FROM alerts GROUP BY 1
), days_m AS (
    SELECT date_trunc('month', discharged_at, 'UTC') AS month,
           count(DISTINCT date_trunc('day', discharged_at, 'UTC')) AS days,
           count(*) AS scored
    FROM discharge_scores GROUP BY 1
)
SELECT dm.month,
       dm.scored,
       coalesce(a.labelled, 0)                                        AS labelled,
       coalesce(a.positives, 0)                                       AS positives,
       (a.rank_sum_score - a.positives * (a.positives + 1) / 2.0::double precision)
           / nullif(a.positives * a.negatives, 0)                     AS auc,
       (a.rank_sum_lace - a.positives * (a.positives + 1) / 2.0::double precision)
           / nullif(a.positives * a.negatives, 0)                     AS lace_auc,
       a.true_positives::double precision / nullif(a.positives, 0)    AS recall,
       a.true_positives::double precision / nullif(a.flagged, 0)      AS precision,
       coalesce(al.alerts, 0)                                         AS alerts,
       coalesce(al.alerts, 0)::double precision / dm.days             AS alerts_per_day
FROM days_m dm
LEFT JOIN agg a USING (month)
LEFT JOIN alerts_m al USING (month);

-- The same over the whole period (one row).
CREATE VIEW model_metrics_overall AS
WITH ranked AS (
    SELECT readmitted, high_risk,
           rank() OVER (ORDER BY score) + (count(*) OVER (PARTITION BY score) - 1) / 2.0::double precision AS r_score,
           rank() OVER (ORDER BY lace) + (count(*) OVER (PARTITION BY lace) - 1) / 2.0::double precision  AS r_lace
    FROM v_model_labelled
), a AS (
    SELECT count(*)                                       AS labelled,
           count(*) FILTER (WHERE readmitted)             AS positives,
           count(*) FILTER (WHERE NOT readmitted)         AS negatives,
           sum(r_score) FILTER (WHERE readmitted)         AS rank_sum_score,
           sum(r_lace) FILTER (WHERE readmitted)          AS rank_sum_lace,
           count(*) FILTER (WHERE high_risk AND readmitted) AS true_positives,
           count(*) FILTER (WHERE high_risk)              AS flagged
    FROM ranked
), s AS (
    SELECT min(discharged_at) AS first_discharged_at, max(discharged_at) AS last_discharged_at,
           count(*) AS scored, count(DISTINCT date_trunc('day', discharged_at, 'UTC')) AS days
    FROM discharge_scores
)
SELECT s.first_discharged_at,
       s.last_discharged_at,
       s.scored,
       a.labelled,
       a.positives,
       (a.rank_sum_score - a.positives * (a.positives + 1) / 2.0::double precision) / nullif(a.positives * a.negatives, 0) AS auc,
       (a.rank_sum_lace - a.positives * (a.positives + 1) / 2.0::double precision) / nullif(a.positives * a.negatives, 0)  AS lace_auc,
       a.true_positives::double precision / nullif(a.positives, 0)  AS recall,
       a.true_positives::double precision / nullif(a.flagged, 0)    AS precision,
       (SELECT count(*) FROM alerts)                                AS alerts,
       (SELECT count(*) FROM alerts)::double precision / nullif(s.days, 0) AS alerts_per_day
FROM a CROSS JOIN s;

-- Calibration by score decile over the labelled discharges.
CREATE VIEW model_calibration AS
WITH d AS (
    SELECT score, readmitted, ntile(10) OVER (ORDER BY score, encounter_id) AS decile
    FROM v_model_labelled
)
SELECT decile,
       count(*)                                         AS labelled,
       min(score)                                       AS min_score,
       max(score)                                       AS max_score,
       avg(score)                                       AS mean_score,
       avg(readmitted::int)::double precision           AS observed_rate
FROM d GROUP BY decile;

-- Alerts per UTC day and department.
CREATE VIEW v_alerts_daily AS
SELECT date_trunc('day', discharged_at, 'UTC') AS day,
       facility_id,
       department,
       count(*)        AS alerts,
       avg(score)      AS mean_score,
       avg(lace)::double precision AS mean_lace
FROM alerts
GROUP BY 1, 2, 3;
