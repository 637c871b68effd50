-- V004: the sink keeps ADT events the stream dead-lettered out of adt_events and their derived rows.
-- A dead letter names its event by source (partition, offset): the sink deletes the adt_events row
-- at those coordinates (index below) and re-derives the encounters / patients it touched, so it now
-- deletes from the event-derived fact tables. Reference tables (facilities, departments, providers),
-- outputs, dead_letters and the notifier's ledger stay insert/update only; still no DDL.

CREATE INDEX adt_events_source_idx ON adt_events (source_partition, source_offset);

GRANT DELETE ON adt_events, encounters, diagnoses, procedures, charges, patients TO wardstream_sink;
