-- V016: patient merges (A40) in the ADT facts.
--
-- The stream forwards every merge it applied on hospital.adt-accepted: prior_patient_id's history
-- belongs to patient_id (the survivor) from then on (stream/domain/merges.py). The sink keeps the
-- merge in patient_merges and points every encounter and ADT event of the prior MRN (and of an
-- MRN merged into it, a chain) at the survivor, so every view that counts patients, readmissions
-- or their cost sees one patient. registered_patient_id keeps the MRN a row was sent under.
-- The sink re-points after each batch with ADT events (consumers.tables.apply_merges), so a prior's
-- row that arrives after the merge (another partition of hospital.adt-accepted) follows it too.

-- a merge concerns the patient, not a visit: no encounter, department or attending
ALTER TABLE adt_events
    ALTER COLUMN encounter_id DROP NOT NULL,
    ALTER COLUMN department DROP NOT NULL,
    ALTER COLUMN attending_provider_id DROP NOT NULL,
    ADD COLUMN registered_patient_id text;
ALTER TABLE encounters ADD COLUMN registered_patient_id text;

-- the first merge of an MRN (the stream retires it: a later one moves nothing)
CREATE TABLE patient_merges (
    prior_patient_id  text PRIMARY KEY,
    patient_id        text NOT NULL,
    merged_at         timestamptz NOT NULL,
    event_id          uuid NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (prior_patient_id <> patient_id)
);
GRANT SELECT, INSERT, UPDATE ON patient_merges TO wardstream_sink;
GRANT SELECT ON patient_merges TO wardstream_reader;
