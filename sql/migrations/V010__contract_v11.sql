-- V010: event contract v1.1 (HL7 v2 feeds). The stream applies registrations (A04) and updates
-- (A08) besides admissions, transfers and discharges, and the sink stores what it applied
-- (hospital.adt-accepted), so adt_events takes the v1.1 event types and triggers. The other v1.1
-- types (class changes, cancellations, merges) are dead-lettered by the stream for now; the checks
-- already list them so that applying them later needs no new migration for this table.
ALTER TABLE adt_events
    DROP CONSTRAINT adt_events_event_type_check,
    DROP CONSTRAINT adt_events_hl7_trigger_check,
    ADD CONSTRAINT adt_events_event_type_check CHECK (event_type IN (
        'admission', 'discharge', 'transfer', 'registration', 'class_change', 'update',
        'cancellation', 'merge')),
    ADD CONSTRAINT adt_events_hl7_trigger_check CHECK (hl7_trigger IN (
        'A01', 'A03', 'A02', 'A04', 'A06', 'A07', 'A08', 'A11', 'A12', 'A13', 'A40'));

-- Bed segments come from the events of an inpatient stay only: a registration is a visit without
-- a bed. An update starts a segment in the (department, attending) it names, as a transfer does;
-- when it moves neither, the two segments it splits add up to the same census.
CREATE OR REPLACE VIEW v_bed_segments AS
SELECT encounter_id, patient_id, facility_id, department, attending_provider_id, from_ts, to_ts
FROM (
    SELECT a.encounter_id, a.patient_id, a.facility_id, a.department, a.attending_provider_id,
           a.event_type,
           a.occurred_at AS from_ts,
           lead(a.occurred_at) OVER (
               PARTITION BY a.encounter_id
               ORDER BY a.occurred_at,
                        CASE a.event_type WHEN 'admission' THEN 0 WHEN 'discharge' THEN 2 ELSE 1 END,
                        a.source_partition, a.source_offset) AS to_ts
    FROM adt_events a
    WHERE a.event_type IN ('admission', 'transfer', 'update', 'discharge')
) s
WHERE event_type <> 'discharge';

-- Cost per patient over discharges with a known cost: contract v1.1 lets total_cost be null (a feed
-- without PV1-47), and a null must not count as a free stay. The views of V002 that divide a cost
-- by patients, again, with only that denominator changed (patients with a known cost), as the
-- stream's cost_per_patient and kpi_windows count them.
CREATE OR REPLACE VIEW kpi_daily AS
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
           sum(total_cost), count(DISTINCT patient_id) FILTER (WHERE total_cost IS NOT NULL)
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
CREATE OR REPLACE VIEW v_kpi_summary AS
SELECT facility_id,
       min(discharged_at)                                                          AS first_discharge_at,
       max(discharged_at)                                                          AS last_discharge_at,
       count(*)                                                                    AS discharges,
       count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL)                 AS index_discharges_known,
       count(*) FILTER (WHERE is_index AND readmitted)::double precision
           / nullif(count(*) FILTER (WHERE is_index AND readmitted IS NOT NULL), 0) AS readmission_rate,
       avg(length_of_stay_days)                                                    AS avg_length_of_stay,
       sum(total_cost) / nullif(count(DISTINCT patient_id) FILTER (WHERE total_cost IS NOT NULL), 0)                     AS cost_per_patient,
       100.0::double precision * count(*) FILTER (WHERE high_risk) / nullif(count(score), 0)         AS high_risk_pct,
       100.0::double precision * count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false)
           / nullif(sum(length_of_stay_days), 0)                                   AS outcome_efficiency
FROM v_discharges
GROUP BY facility_id;

-- ------------------------------------------------------------------ analyses of the source reports

-- Department outcome efficiency (and the KPIs beside it) by month.
CREATE OR REPLACE VIEW v_department_outcomes AS
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
       sum(total_cost) / nullif(count(DISTINCT patient_id) FILTER (WHERE total_cost IS NOT NULL), 0)                     AS cost_per_patient,
       count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false) AS good_outcomes,
       sum(length_of_stay_days)                                                    AS patient_days,
       100.0::double precision * count(*) FILTER (WHERE discharge_disposition <> 'expired' AND readmitted = false)
           / nullif(sum(length_of_stay_days), 0)                                   AS outcome_efficiency
FROM v_discharges
GROUP BY month, facility_id, department;

-- Revenue (total_cost billed) per distinct patient by department and age group at admission.
CREATE OR REPLACE VIEW v_revenue_per_patient AS
SELECT month,
       facility_id,
       department,
       age_group,
       count(*)                                          AS discharges,
       count(DISTINCT patient_id)                        AS patients,
       sum(total_cost)                                   AS revenue,
       sum(total_cost) / nullif(count(DISTINCT patient_id) FILTER (WHERE total_cost IS NOT NULL), 0) AS revenue_per_patient
FROM v_discharges
GROUP BY month, facility_id, department, age_group;
