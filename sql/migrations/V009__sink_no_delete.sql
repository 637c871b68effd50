-- V009: the sink no longer deletes. It stores the ADT events the stream applied
-- (hospital.adt-accepted) instead of reading hospital.adt and taking the dead-lettered events back
-- out, so the DELETE that V004 granted on the event-derived fact tables is revoked: the sink and
-- the notifier are insert/update only again, as V003 made them. (V004's index stays: replays and
-- support queries look events up by source coordinates.)

REVOKE DELETE ON adt_events, encounters, diagnoses, procedures, charges, patients FROM wardstream_sink;
