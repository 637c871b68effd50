-- V006: the alert budget's fields on scores and alerts, and the hospital.model-health table.
-- Both fields are NULL on rows written before the budget existed (contract v1 messages).

ALTER TABLE discharge_scores
    ADD COLUMN alert_share double precision CHECK (alert_share BETWEEN 0 AND 1),
    ADD COLUMN policy      text CHECK (policy IN ('budget', 'lace_cold_start'));
ALTER TABLE alerts
    ADD COLUMN alert_share double precision CHECK (alert_share BETWEEN 0 AND 1),
    ADD COLUMN policy      text CHECK (policy IN ('budget', 'lace_cold_start'));

-- hospital.model-health: the last message per check_id is its state.
CREATE TABLE model_health (
    check_id          text PRIMARY KEY,
    "check"           text NOT NULL CHECK ("check" IN ('psi_score', 'psi_feature', 'error_drift',
                                                       'equity_recall', 'equity_oe')),
    facility_id       text NOT NULL,
    subject           text NOT NULL,
    level             text NOT NULL CHECK (level IN ('ok', 'watch', 'act')),
    value             double precision NOT NULL,
    watch_at          double precision,
    act_at            double precision NOT NULL,
    baseline          double precision,
    n                 integer NOT NULL,
    window_start      timestamptz NOT NULL,
    window_end        timestamptz NOT NULL,
    message           text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL
);
CREATE INDEX model_health_window_end_idx ON model_health (window_end);
CREATE INDEX model_health_warnings_idx ON model_health (facility_id, "check", window_end) WHERE level <> 'ok';

GRANT SELECT, INSERT, UPDATE ON model_health TO wardstream_sink;
GRANT SELECT ON model_health TO wardstream_reader;
