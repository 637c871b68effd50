-- V011: withdrawals (DESIGN.md "Withdrawals"; stream/README.md). A cancellation (A11 / A12 / A13)
-- withdraws outputs: the stream sends a score, alert or label again under its key marked
-- withdrawn. The last message for a key is its state, so the sink removes the row from
-- discharge_scores / alerts / readmissions (every view and panel then leaves it out; a withdrawn
-- label is unknown again) and records the withdrawal in withdrawn_outputs (a later message for
-- the key puts the row back; the record stays as history). The sink gets DELETE on those three
-- output tables only; the ADT fact tables stay insert/update only (V009).
CREATE TABLE withdrawn_outputs (
    output            text NOT NULL CHECK (output IN ('discharge_scores', 'alerts', 'readmissions')),
    key               text NOT NULL,
    withdrawn_at      timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    PRIMARY KEY (output, key)
);

-- The notifier delivers a withdrawn alert's retraction once, by alert_id ('skipped' when the
-- alert itself was never delivered: nothing to retract).
CREATE TABLE alert_retractions (LIKE alert_deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE alert_retractions
    ADD PRIMARY KEY (alert_id),
    DROP CONSTRAINT alert_deliveries_status_check,
    ADD CONSTRAINT alert_retractions_status_check
        CHECK (status IN ('pending', 'delivered', 'failed', 'skipped'));

GRANT SELECT, INSERT, UPDATE ON withdrawn_outputs, alert_retractions TO wardstream_sink;
GRANT DELETE ON discharge_scores, alerts, readmissions TO wardstream_sink;
GRANT SELECT ON withdrawn_outputs, alert_retractions TO wardstream_reader;
