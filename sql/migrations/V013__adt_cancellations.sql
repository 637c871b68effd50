-- V013: cancellations (A11 / A12 / A13) in the ADT fact tables and the views on them.
-- The stream forwards every cancellation it applied on hospital.adt-accepted, like any event; it
-- names an encounter and a kind of event, and cancels the encounter's latest not yet cancelled
-- event of that kind (contracts.events.CancellationEvent). The sink stores it in adt_events and,
-- for every encounter that has one, derives the marks below from the encounter's stored events
-- (consumers/cancellations.py): a function of those events, so a re-delivered message, a replayed
-- batch or a cancellation in the same batch as its event all end in the same rows. Nothing is
-- deleted (V009: the ADT fact tables stay insert/update only): rows are marked, views filter.

-- cancelled_by / cancelled_at: the cancellation (event_id, occurred_at) of this very event.
-- stay_cancelled_by: the A11 that withdrew the stay this event belongs to (its admission and
-- every later event of the encounter up to the next admission), so a cancelled admission counts
-- nowhere while a new admission of the same visit number counts again.
-- bed_department / bed_attending_provider_id: where the stream has the stay after this event when
-- that is not where the event says (null otherwise): a cancelled transfer gives the moves after
-- it, up to the next move, back to the bed before it (an A08 sent between a transfer and its A12
-- names the transfer's department), and a cancelled discharge leaves the stay where it is.
ALTER TABLE adt_events
    ADD COLUMN cancelled_by              uuid,
    ADD COLUMN cancelled_at              timestamptz,
    ADD COLUMN stay_cancelled_by         uuid,
    ADD COLUMN bed_department            text,
    ADD COLUMN bed_attending_provider_id text;
-- the sink looks up which encounters of a batch have a cancellation (a small index: ~1.5% of events)
CREATE INDEX adt_events_cancellation_idx ON adt_events (encounter_id) WHERE event_type = 'cancellation';

-- encounters: the encounter's latest stay as its live events give it (a cancelled discharge gives
-- no discharged_at / LOS / disposition / cost, the stay is open again where the discharge left
-- it); cancelled_by / cancelled_at: the A11 that withdrew that stay (the encounter counts nowhere).
ALTER TABLE encounters
    ADD COLUMN cancelled_by uuid,
    ADD COLUMN cancelled_at timestamptz;
-- charges, diagnoses and procedures of a withdrawn event (its discharge cancelled, its stay
-- withdrawn): marked with the cancellation; a later discharge of the encounter clears the mark.
ALTER TABLE charges
    ADD COLUMN cancelled_by uuid,
    ADD COLUMN cancelled_at timestamptz;
ALTER TABLE diagnoses
    ADD COLUMN cancelled_by uuid,
    ADD COLUMN cancelled_at timestamptz;
ALTER TABLE procedures
    ADD COLUMN cancelled_by uuid,
    ADD COLUMN cancelled_at timestamptz;

-- v_discharges needs no change: a cancelled discharge leaves encounters.discharged_at null, and
-- the stream cancels an admission only while its stay is open (a discharged stay needs an A13
-- first). kpi_daily, v_census_daily, v_provider_utilization_daily and the views on v_discharges
-- follow from v_discharges, v_admissions and v_bed_segments.

-- Admissions: without a cancelled one (V002's view otherwise).
CREATE OR REPLACE VIEW v_admissions AS
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
WHERE a.event_type = 'admission'
  AND a.cancelled_by IS NULL;

-- Bed segments (V010's view otherwise): each segment where the stream has the stay
-- (bed_department / bed_attending_provider_id, else the event's); no event of a withdrawn stay;
-- no cancelled transfer, so the segment before it goes on until the next event. A cancelled
-- discharge ends nothing: where it moved the stay (another department or attending than the
-- segment before it), it starts a segment there, as the stream reopens the stay in the
-- discharge's department and attending; where it moved nothing, it is left out, so the
-- segments are those of a feed without it.
CREATE OR REPLACE VIEW v_bed_segments AS
SELECT encounter_id, patient_id, facility_id, department, attending_provider_id, from_ts, to_ts
FROM (
    SELECT c.encounter_id, c.patient_id, c.facility_id, c.department, c.attending_provider_id,
           c.event_type, c.cancelled_by,
           c.occurred_at AS from_ts,
           lead(c.occurred_at) OVER (
               PARTITION BY c.encounter_id
               ORDER BY c.occurred_at, c.kind_order, c.source_partition, c.source_offset) AS to_ts
    FROM (
        SELECT a.*,
               lag(a.department) OVER w AS department_before,
               lag(a.attending_provider_id) OVER w AS attending_before
        FROM (
            SELECT e.encounter_id, e.patient_id, e.facility_id,
                   coalesce(e.bed_department, e.department) AS department,
                   coalesce(e.bed_attending_provider_id, e.attending_provider_id) AS attending_provider_id,
                   e.event_type, e.cancelled_by, e.occurred_at, e.source_partition, e.source_offset,
                   CASE e.event_type WHEN 'admission' THEN 0 WHEN 'discharge' THEN 2 ELSE 1 END AS kind_order
            FROM adt_events e
            WHERE e.event_type IN ('admission', 'transfer', 'update', 'discharge')
              AND e.stay_cancelled_by IS NULL
              AND (e.cancelled_by IS NULL OR e.event_type = 'discharge')
        ) a
        WINDOW w AS (PARTITION BY a.encounter_id
                     ORDER BY a.occurred_at, a.kind_order, a.source_partition, a.source_offset)
    ) c
    WHERE c.cancelled_by IS NULL
       OR (c.department, c.attending_provider_id) IS DISTINCT FROM (c.department_before, c.attending_before)
) s
WHERE event_type <> 'discharge' OR cancelled_by IS NOT NULL;

-- 60-day diabetes readmissions (V002's view otherwise): a withdrawn stay is no readmission.
CREATE OR REPLACE VIEW v_diabetes_readmission_60d AS
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
      AND n.cancelled_by IS NULL
      AND n.admission_type IS DISTINCT FROM 'elective'
      AND n.admitted_at > d.discharged_at
      AND n.admitted_at <= d.discharged_at + interval '60 days'
    ORDER BY n.admitted_at
    LIMIT 1
) r ON true
WHERE d.is_index
  AND d.age >= 18
  AND EXISTS (SELECT 1 FROM diagnoses g WHERE g.encounter_id = d.encounter_id AND g.icd10_code = 'E11.9'
                                          AND g.cancelled_by IS NULL);
