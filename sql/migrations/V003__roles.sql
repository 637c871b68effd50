-- V003: least-privilege roles. Roles are cluster-wide (created once, idempotently, even when
-- several databases migrate at the same time); grants are per database (applied here).
-- Passwords come from the environment through the migration runner (session settings
-- wardstream.sink_password / wardstream.reader_password); the runner re-applies them on every run.

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
        ('wardstream_sink', current_setting('wardstream.sink_password', true)),
        ('wardstream_reader', current_setting('wardstream.reader_password', true))) AS t(name, pw)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
                               r.name, coalesce(r.pw, r.name));
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a concurrent migration of another database
            END;
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO wardstream_sink, wardstream_reader', current_database());
    -- the sink stages each batch in session temp tables (COPY, then INSERT ... ON CONFLICT)
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO wardstream_sink', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO wardstream_sink, wardstream_reader;

-- The sink and the notifier write facts and their ledger; they never delete nor touch the schema.
GRANT SELECT, INSERT, UPDATE ON
    facilities, departments, providers, patients, adt_events, encounters, diagnoses, procedures,
    charges, readmissions, discharge_scores, alerts, kpi_windows, dead_letters, alert_deliveries
TO wardstream_sink;

-- Grafana reads everything, including views added by later migrations.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO wardstream_reader;
GRANT EXECUTE ON FUNCTION age_group(integer) TO wardstream_reader, wardstream_sink;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO wardstream_reader;
