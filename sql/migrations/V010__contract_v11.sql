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
