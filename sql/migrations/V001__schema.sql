-- V001: the normalized model of wardstream (DESIGN.md contract v1).
-- Event-derived tables are keyed by the ids of the events (event_id, encounter_id, ...), so the
-- sink can upsert them idempotently: a replayed or duplicated message changes nothing.
-- Reference tables (facilities, departments, providers, patients) get stub rows from ADT events
-- and are completed by hospital.reference / admission events, so foreign keys always hold.

CREATE TABLE facilities (
    facility_id     text PRIMARY KEY,
    name            text,
    beds            integer CHECK (beds > 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE departments (
    facility_id     text NOT NULL REFERENCES facilities (facility_id),
    department      text NOT NULL,
    beds            integer CHECK (beds >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (facility_id, department)
);

CREATE TABLE providers (
    provider_id     text PRIMARY KEY,
    facility_id     text NOT NULL REFERENCES facilities (facility_id),
    department      text,
    capacity        integer CHECK (capacity > 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Latest known demographics (from the patient's latest admission); encounters keep the values
-- at admission time for analyses by age group / payer.
CREATE TABLE patients (
    patient_id          text PRIMARY KEY,
    age                 smallint CHECK (age BETWEEN 0 AND 120),
    sex                 text CHECK (sex IN ('F', 'M')),
    race                text,
    payer               text CHECK (payer IN ('medicare', 'medicaid', 'private', 'uninsured')),
    chronic_conditions  text[],
    as_of               timestamptz,          -- occurred_at of the admission these values come from
    first_seen_at       timestamptz NOT NULL DEFAULT now()
);

-- Every contract-valid ADT event as received (the system of record on the database side).
CREATE TABLE adt_events (
    event_id                uuid PRIMARY KEY,
    event_type              text NOT NULL CHECK (event_type IN ('admission', 'discharge', 'transfer')),
    hl7_trigger             text NOT NULL CHECK (hl7_trigger IN ('A01', 'A03', 'A02')),
    occurred_at             timestamptz NOT NULL,
    facility_id             text NOT NULL,
    patient_id              text NOT NULL,
    encounter_id            text NOT NULL,
    department              text NOT NULL,
    attending_provider_id   text NOT NULL,
    payload                 jsonb NOT NULL,
    source_partition        integer NOT NULL,
    source_offset           bigint NOT NULL,
    ingested_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX adt_events_occurred_at_idx ON adt_events (occurred_at);
CREATE INDEX adt_events_encounter_idx ON adt_events (encounter_id, occurred_at);
CREATE INDEX adt_events_patient_idx ON adt_events (patient_id, occurred_at);

-- One row per encounter, merged from its admission, transfers and discharge.
-- department / attending_provider_id are the current (latest event) values; the other columns are
-- set once (first writer wins), so replaying old events never changes a row.
-- No cross-column checks here: the sink stores every contract-valid event, consistent or not
-- (the stream sends inconsistent ones to the DLQ), and a stuck sink would be worse.
CREATE TABLE encounters (
    encounter_id            text PRIMARY KEY,
    patient_id              text NOT NULL REFERENCES patients (patient_id),
    facility_id             text NOT NULL REFERENCES facilities (facility_id),
    department              text NOT NULL,
    attending_provider_id   text NOT NULL REFERENCES providers (provider_id),
    admit_department        text,
    admission_type          text CHECK (admission_type IN ('emergency', 'urgent', 'elective')),
    admit_source            text CHECK (admit_source IN ('ed', 'referral', 'transfer')),
    age_at_admission        smallint CHECK (age_at_admission BETWEEN 0 AND 120),
    sex                     text CHECK (sex IN ('F', 'M')),
    payer_at_admission      text,
    chronic_condition_count smallint,
    systolic_bp             double precision,
    diastolic_bp            double precision,
    heart_rate              double precision,
    glucose_mg_dl           double precision,
    admitted_at             timestamptz,
    discharged_at           timestamptz,
    length_of_stay_days     double precision CHECK (length_of_stay_days >= 0),
    discharge_disposition   text CHECK (discharge_disposition IN
                                ('home', 'home_health', 'snf', 'rehab', 'ama', 'expired')),
    payer                   text CHECK (payer IN ('medicare', 'medicaid', 'private', 'uninsured')),
    total_cost              numeric CHECK (total_cost >= 0),
    satisfaction_score      double precision CHECK (satisfaction_score BETWEEN 0 AND 100),
    last_event_at           timestamptz NOT NULL,   -- (last_event_at, last_event_offset) orders
    last_event_offset       bigint NOT NULL,        -- the events that set the current values
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX encounters_admitted_at_idx ON encounters (admitted_at);
CREATE INDEX encounters_discharged_at_idx ON encounters (discharged_at);
CREATE INDEX encounters_patient_idx ON encounters (patient_id, admitted_at);
CREATE INDEX encounters_department_idx ON encounters (facility_id, department, discharged_at);
CREATE INDEX encounters_provider_idx ON encounters (attending_provider_id, discharged_at);

-- Diagnosis codes (ICD-10-CM) as coded at admission and at discharge; position 0 is the primary.
CREATE TABLE diagnoses (
    encounter_id    text NOT NULL REFERENCES encounters (encounter_id),
    coded_at        text NOT NULL CHECK (coded_at IN ('admission', 'discharge')),
    position        smallint NOT NULL CHECK (position >= 0),
    icd10_code      text NOT NULL,
    PRIMARY KEY (encounter_id, coded_at, position)
);
CREATE INDEX diagnoses_code_idx ON diagnoses (icd10_code);

CREATE TABLE procedures (
    encounter_id    text NOT NULL REFERENCES encounters (encounter_id),
    position        smallint NOT NULL CHECK (position >= 0),
    cpt_code        text NOT NULL,
    PRIMARY KEY (encounter_id, position)
);
CREATE INDEX procedures_code_idx ON procedures (cpt_code);

-- The bill of an encounter (one charge per discharge: total_cost of the contract).
CREATE TABLE charges (
    encounter_id    text PRIMARY KEY REFERENCES encounters (encounter_id),
    patient_id      text NOT NULL REFERENCES patients (patient_id),
    facility_id     text NOT NULL,
    department      text NOT NULL,
    payer           text NOT NULL,
    amount          numeric NOT NULL CHECK (amount >= 0),
    charged_at      timestamptz NOT NULL
);
CREATE INDEX charges_charged_at_idx ON charges (charged_at);

-- hospital.readmission-labels: one label per index discharge.
CREATE TABLE readmissions (
    encounter_id                text PRIMARY KEY,
    patient_id                  text NOT NULL,
    discharged_at               timestamptz NOT NULL,
    readmitted                  boolean NOT NULL,
    readmission_encounter_id    text,
    known_at                    timestamptz NOT NULL,
    source_partition            integer NOT NULL,
    source_offset               bigint NOT NULL
);
CREATE INDEX readmissions_discharged_at_idx ON readmissions (discharged_at);
CREATE INDEX readmissions_patient_idx ON readmissions (patient_id);

-- hospital.discharge-scores
CREATE TABLE discharge_scores (
    encounter_id            text PRIMARY KEY,
    patient_id              text NOT NULL,
    facility_id             text NOT NULL,
    department              text NOT NULL,
    attending_provider_id   text NOT NULL,
    discharged_at           timestamptz NOT NULL,
    score                   double precision NOT NULL CHECK (score BETWEEN 0 AND 1),
    lace                    smallint NOT NULL CHECK (lace BETWEEN 0 AND 19),
    threshold               double precision NOT NULL CHECK (threshold BETWEEN 0 AND 1),
    high_risk               boolean NOT NULL,
    model_version           text NOT NULL,
    top_factors             jsonb NOT NULL,
    source_partition        integer NOT NULL,
    source_offset           bigint NOT NULL
);
CREATE INDEX discharge_scores_discharged_at_idx ON discharge_scores (discharged_at);
CREATE INDEX discharge_scores_department_idx ON discharge_scores (facility_id, department, discharged_at);

-- hospital.alerts
CREATE TABLE alerts (
    alert_id                text PRIMARY KEY,
    encounter_id            text NOT NULL,
    patient_id              text NOT NULL,
    facility_id             text NOT NULL,
    department              text NOT NULL,
    attending_provider_id   text NOT NULL,
    discharged_at           timestamptz NOT NULL,
    score                   double precision NOT NULL,
    lace                    smallint NOT NULL,
    threshold               double precision NOT NULL,
    reasons                 text[] NOT NULL,
    source_partition        integer NOT NULL,
    source_offset           bigint NOT NULL
);
CREATE INDEX alerts_discharged_at_idx ON alerts (discharged_at);
CREATE INDEX alerts_encounter_idx ON alerts (encounter_id);

-- hospital.kpis: the last message per (kpi, dimension, dimension_id, window, window_start) wins.
CREATE TABLE kpi_windows (
    kpi             text NOT NULL,
    dimension       text NOT NULL CHECK (dimension IN ('facility', 'department', 'provider')),
    dimension_id    text NOT NULL,
    "window"        text NOT NULL CHECK ("window" IN ('1d', '7d', '30d')),
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    facility_id     text NOT NULL,
    value           double precision,
    numerator       double precision NOT NULL,
    denominator     double precision NOT NULL,
    source_partition integer NOT NULL,
    source_offset   bigint NOT NULL,
    PRIMARY KEY (kpi, dimension, dimension_id, "window", window_start),
    CHECK (window_start < window_end)
);
CREATE INDEX kpi_windows_end_idx ON kpi_windows (window_end);
CREATE INDEX kpi_windows_lookup_idx ON kpi_windows (kpi, "window", dimension, window_start);

-- hospital.dlq: one row per failed source message (its coordinates are the key).
CREATE TABLE dead_letters (
    source_topic        text NOT NULL,
    source_partition    integer NOT NULL,
    source_offset       bigint NOT NULL,
    reason              text NOT NULL,
    raw                 text NOT NULL,
    raw_encoding        text NOT NULL CHECK (raw_encoding IN ('utf-8', 'base64')),
    failed_at           timestamptz NOT NULL,
    dlq_partition       integer NOT NULL,
    dlq_offset          bigint NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);
CREATE INDEX dead_letters_failed_at_idx ON dead_letters (failed_at);

-- The notifier's ledger: one delivery per encounter, whatever the number of alert messages.
CREATE TABLE alert_deliveries (
    encounter_id    text PRIMARY KEY,
    alert_id        text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX alert_deliveries_status_idx ON alert_deliveries (status, updated_at);
