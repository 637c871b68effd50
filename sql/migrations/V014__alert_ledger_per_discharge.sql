-- V014: one delivery ledger row per discharge of an encounter, not per encounter.
--
-- A cancelled discharge (A13) withdraws its alert and the notifier delivers the retraction; when
-- the patient is then discharged again, the stream alerts again under the same alert_id (it is
-- the encounter's). With one ledger row per encounter that new alert looked like a duplicate of
-- the delivered one and never reached the care team. Each ledger row now names the discharge it
-- is about (discharged_at): a duplicate of the same discharge is still skipped, an alert for
-- another discharge of the encounter is delivered, and so is its retraction.
--
-- Rows written before this migration take their discharge from the alert the sink stored; a row
-- whose alert is not in the database (the notifier ran without the sink) gets '-infinity', which
-- the notifier treats as "any discharge of the encounter" (what the row meant until now).
ALTER TABLE alert_deliveries ADD COLUMN discharged_at timestamptz;
UPDATE alert_deliveries d SET discharged_at = a.discharged_at FROM alerts a WHERE a.alert_id = d.alert_id;
UPDATE alert_deliveries SET discharged_at = '-infinity' WHERE discharged_at IS NULL;
ALTER TABLE alert_deliveries
    ALTER COLUMN discharged_at SET NOT NULL,
    DROP CONSTRAINT alert_deliveries_pkey,
    ADD PRIMARY KEY (encounter_id, discharged_at);

ALTER TABLE alert_retractions ADD COLUMN discharged_at timestamptz;
UPDATE alert_retractions r SET discharged_at = d.discharged_at
FROM alert_deliveries d WHERE d.encounter_id = r.encounter_id;
UPDATE alert_retractions SET discharged_at = '-infinity' WHERE discharged_at IS NULL;
ALTER TABLE alert_retractions
    ALTER COLUMN discharged_at SET NOT NULL,
    DROP CONSTRAINT alert_retractions_pkey,
    ADD PRIMARY KEY (alert_id, discharged_at);

COMMENT ON COLUMN alert_deliveries.discharged_at IS
    'the discharge the alert is about (-infinity: a row from before V014 whose alert was not stored)';
