-- V012: a KPI window's facility_id is the facility of its latest record, as the stream labels
-- it (stream/kpi_combiner.py): the record of the highest ADT partition on the window's last
-- known day. A department name spans facilities; V008 gave every window of a dimension the
-- facility of the dimension's latest record overall, which the stream cannot send (a window
-- sent earlier keeps the label it had then), so the two differed and the stream's label depended
-- on when a window was sent. Only the label changes: the view's text is V008's otherwise (a view
-- is replaced whole). A filter on facility_id no longer reaches the kpi_partials scan (the
-- label is computed per window); one on dimension / dimension_id still does.

CREATE OR REPLACE VIEW kpi_windows AS
WITH dims AS (
    SELECT k.dimension, k.dimension_id, k.first_day, k.last_day,
           CASE WHEN k.dimension = 'provider' THEN p.capacity END AS capacity
    FROM (SELECT dimension, dimension_id, min(day) AS first_day, max(day) AS last_day
          FROM kpi_partials
          GROUP BY dimension, dimension_id) k
    LEFT JOIN providers p ON p.provider_id = k.dimension_id
), sums AS (
    SELECT dimension, dimension_id, day,
           (array_agg(facility_id ORDER BY adt_partition DESC))[1] AS facility_id,
           sum(admissions_micro)    AS admissions,
           sum(discharges_micro)    AS discharges,
           sum(los_sum_micro)       AS los_sum,
           sum(cost_sum_micro)      AS cost_sum,
           sum(scored_micro)        AS scored,
           sum(high_risk_micro)     AS high_risk,
           sum(index_known_micro)   AS index_known,
           sum(readmitted_micro)    AS readmitted,
           sum(good_outcomes_micro) AS good_outcomes,
           sum(patient_days_micro)  AS patient_days,
           sum(census_delta_micro)  AS census_delta,
           sum(tp_micro)            AS tp,
           sum(fp_micro)            AS fp,
           sum(fn_micro)            AS fn
    FROM kpi_partials
    GROUP BY dimension, dimension_id, day
), patient_marks AS (
    -- per day: patients counted from that day on (starts), and where each window length stops
    -- counting them (ends_1d, ends_7d, ends_30d)
    SELECT d.dimension, d.dimension_id, m.day,
           count(*) FILTER (WHERE m.n = 0)  AS starts,
           count(*) FILTER (WHERE m.n = 1)  AS ends_1d,
           count(*) FILTER (WHERE m.n = 7)  AS ends_7d,
           count(*) FILTER (WHERE m.n = 30) AS ends_30d
    FROM (SELECT dimension, dimension_id, day,
                 lead(day) OVER (PARTITION BY dimension, dimension_id, patient_id ORDER BY day) AS next_day
          FROM (SELECT DISTINCT dimension, dimension_id, day, unnest(patients) AS patient_id
                FROM kpi_partials) u) d
    CROSS JOIN LATERAL (VALUES (0, d.day), (1, least(d.day + 1, d.next_day)),
                               (7, least(d.day + 7, d.next_day)), (30, least(d.day + 30, d.next_day))) m(n, day)
    GROUP BY d.dimension, d.dimension_id, m.day
), days AS (
    -- every day of every dimension from its first to its last known day
    SELECT g.dimension, g.dimension_id, s.facility_id AS day_facility, g.capacity,
           g.first_day + i AS day, s.day IS NOT NULL AS known,
           s.admissions, s.discharges, s.los_sum, s.cost_sum, s.scored, s.high_risk, s.index_known,
           s.readmitted, s.good_outcomes, s.patient_days, s.census_delta, s.tp, s.fp, s.fn,
           coalesce(pm.starts, 0) AS starts, coalesce(pm.ends_1d, 0) AS ends_1d,
           coalesce(pm.ends_7d, 0) AS ends_7d, coalesce(pm.ends_30d, 0) AS ends_30d
    FROM dims g
    CROSS JOIN LATERAL generate_series(0, g.last_day - g.first_day) AS i
    LEFT JOIN sums s ON s.dimension = g.dimension AND s.dimension_id = g.dimension_id
                    AND s.day = g.first_day + i
    LEFT JOIN patient_marks pm ON pm.dimension = g.dimension AND pm.dimension_id = g.dimension_id
                              AND pm.day = g.first_day + i
), running AS (
    -- per day D: the sums over the 7 and 30 days ending with D (NULL: no day had the input),
    -- known days in them, census at the end of D, distinct patients
    SELECT dimension, dimension_id, day_facility, capacity, day, known,
           admissions, discharges, los_sum, cost_sum, scored, high_risk, index_known, readmitted,
           good_outcomes, patient_days, tp, fp, fn,
           sum(admissions) OVER w7 AS admissions_7d,       sum(admissions) OVER w30 AS admissions_30d,
           sum(discharges) OVER w7 AS discharges_7d,       sum(discharges) OVER w30 AS discharges_30d,
           sum(los_sum) OVER w7 AS los_sum_7d,             sum(los_sum) OVER w30 AS los_sum_30d,
           sum(cost_sum) OVER w7 AS cost_sum_7d,           sum(cost_sum) OVER w30 AS cost_sum_30d,
           sum(scored) OVER w7 AS scored_7d,               sum(scored) OVER w30 AS scored_30d,
           sum(high_risk) OVER w7 AS high_risk_7d,         sum(high_risk) OVER w30 AS high_risk_30d,
           sum(index_known) OVER w7 AS index_known_7d,     sum(index_known) OVER w30 AS index_known_30d,
           sum(readmitted) OVER w7 AS readmitted_7d,       sum(readmitted) OVER w30 AS readmitted_30d,
           sum(good_outcomes) OVER w7 AS good_outcomes_7d, sum(good_outcomes) OVER w30 AS good_outcomes_30d,
           sum(patient_days) OVER w7 AS patient_days_7d,   sum(patient_days) OVER w30 AS patient_days_30d,
           sum(tp) OVER w7 AS tp_7d,                       sum(tp) OVER w30 AS tp_30d,
           sum(fp) OVER w7 AS fp_7d,                       sum(fp) OVER w30 AS fp_30d,
           sum(fn) OVER w7 AS fn_7d,                       sum(fn) OVER w30 AS fn_30d,
           count(*) FILTER (WHERE known) OVER w7 AS known_7d,
           count(*) FILTER (WHERE known) OVER w30 AS known_30d,
           count(*) FILTER (WHERE known) OVER wall AS known_seq,  -- a day and the unknown days after it share one
           sum(census_delta) OVER wall AS census,  -- NULL until a day moved the census
           sum(starts) OVER wall - sum(ends_1d) OVER wall AS patients_1d,
           sum(starts) OVER wall - sum(ends_7d) OVER wall AS patients_7d,
           sum(starts) OVER wall - sum(ends_30d) OVER wall AS patients_30d
    FROM days
    WINDOW wall AS (PARTITION BY dimension, dimension_id ORDER BY day),
           w7 AS (wall ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
           w30 AS (wall ROWS BETWEEN 29 PRECEDING AND CURRENT ROW)
), census AS (
    -- the sum of the day-end census over the window's days (provider_utilization); the label of
    -- the windows ending with this day: the facility of the latest known day up to it
    SELECT r.*,
           first_value(day_facility) OVER (PARTITION BY dimension, dimension_id, known_seq ORDER BY day)
               AS facility_id,
           sum(coalesce(census, 0)) OVER w7 AS census_days_7d,
           sum(coalesce(census, 0)) OVER w30 AS census_days_30d
    FROM running r
    WINDOW wall AS (PARTITION BY dimension, dimension_id ORDER BY day),
           w7 AS (wall ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
           w30 AS (wall ROWS BETWEEN 29 PRECEDING AND CURRENT ROW)
), windows AS (
    SELECT c.dimension, c.dimension_id, c.facility_id, c.capacity, c.census, w.*,
           (c.day + 1 - w.n)::timestamp AT TIME ZONE 'UTC' AS window_start,
           (c.day + 1)::timestamp AT TIME ZONE 'UTC' AS window_end
    FROM census c
    CROSS JOIN LATERAL (VALUES
        ('1d', 1, c.known::int::bigint, c.admissions, c.discharges, c.los_sum, c.cost_sum, c.scored,
         c.high_risk, c.index_known, c.readmitted, c.good_outcomes, c.patient_days, c.tp, c.fp, c.fn,
         c.patients_1d, coalesce(c.census, 0)),
        ('7d', 7, c.known_7d, c.admissions_7d, c.discharges_7d, c.los_sum_7d, c.cost_sum_7d,
         c.scored_7d, c.high_risk_7d, c.index_known_7d, c.readmitted_7d, c.good_outcomes_7d,
         c.patient_days_7d, c.tp_7d, c.fp_7d, c.fn_7d, c.patients_7d, c.census_days_7d),
        ('30d', 30, c.known_30d, c.admissions_30d, c.discharges_30d, c.los_sum_30d, c.cost_sum_30d,
         c.scored_30d, c.high_risk_30d, c.index_known_30d, c.readmitted_30d, c.good_outcomes_30d,
         c.patient_days_30d, c.tp_30d, c.fp_30d, c.fn_30d, c.patients_30d, c.census_days_30d)
    ) AS w("window", n, known_days, admissions, discharges, los_sum, cost_sum, scored, high_risk,
           index_known, readmitted, good_outcomes, patient_days, tp, fp, fn, patients, census_days)
    WHERE w.known_days > 0
)
SELECT k.kpi, w.dimension, w.dimension_id, w."window", w.window_start, w.window_end, w.facility_id,
       CASE WHEN k.den <> 0 THEN k.scale * k.num / k.den END AS value,
       k.num AS numerator, k.den AS denominator
FROM windows w
CROSS JOIN LATERAL (
    SELECT v.kpi, v.scale, coalesce(v.num, 0)::double precision / 1e6 AS num,
           coalesce(v.den, 0)::double precision / 1e6 AS den
    FROM (VALUES
        ('readmission_rate', 1.0::double precision, w.readmitted, w.index_known,
         w.readmitted IS NOT NULL OR w.index_known IS NOT NULL),
        ('avg_length_of_stay', 1.0, w.los_sum, w.discharges, w.los_sum IS NOT NULL OR w.discharges IS NOT NULL),
        ('cost_per_patient', 1.0, w.cost_sum, w.patients * 1000000, w.cost_sum IS NOT NULL OR w.patients > 0),
        ('high_risk_pct', 100.0, w.high_risk, w.scored, w.high_risk IS NOT NULL OR w.scored IS NOT NULL),
        ('provider_utilization', 1.0, w.census_days, w.capacity::numeric * w.n * 1000000,
         w.dimension = 'provider' AND w.census IS NOT NULL),
        ('outcome_efficiency', 100.0, w.good_outcomes, w.patient_days,
         w.good_outcomes IS NOT NULL OR w.patient_days IS NOT NULL),
        ('discharges', 1.0, w.discharges, 1000000, w.discharges IS NOT NULL),
        ('admissions', 1.0, w.admissions, 1000000, w.admissions IS NOT NULL),
        ('census', 1.0, w.census, 1000000, w.census IS NOT NULL),
        ('model_recall', 1.0, w.tp, coalesce(w.tp, 0) + coalesce(w.fn, 0), w.tp IS NOT NULL OR w.fn IS NOT NULL),
        ('model_precision', 1.0, w.tp, coalesce(w.tp, 0) + coalesce(w.fp, 0), w.tp IS NOT NULL OR w.fp IS NOT NULL)
    ) AS v(kpi, scale, num, den, present)
    WHERE v.present
) k;
