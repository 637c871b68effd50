"""Migrations apply once, re-apply as a no-op, refuse edited files; roles are least-privilege."""

from __future__ import annotations

import shutil
import threading
import uuid

import psycopg2
import psycopg2.errors
import pytest
from typer.testing import CliRunner

from consumers.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate, status
from consumers.rows import Batch
from consumers.tables import write_batch
from stream.domain.examples import admission
from test_sink_support import role_url, sink_db  # noqa: F401  (fixture)
from wardstream.cli import app
from wardstream.config import settings
from wardstream.stack.postgres import LocalPostgres

CATALOG = """
SELECT c.relkind::text, c.relname, string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod), ','
                                       ORDER BY a.attnum)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'public' GROUP BY 1, 2 ORDER BY 1, 2"""


def _catalog(url: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(CATALOG)
        rows = cur.fetchall()
    conn.close()
    return rows


def test_discover_orders_files_and_rejects_bad_names(tmp_path) -> None:
    names = [m.filename for m in discover()]
    assert names == sorted(names) and names[0] == "V001__schema.sql"
    (tmp_path / "V001__a.sql").write_text("select 1;")
    (tmp_path / "schema.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="named V<NNN>__"):
        discover(tmp_path)
    (tmp_path / "schema.sql").unlink()
    (tmp_path / "V0001__b.sql").write_text("select 2;")
    with pytest.raises(MigrationError, match="version 1"):
        discover(tmp_path)


@pytest.mark.e2e
def test_migrate_applies_everything_then_is_a_no_op(fresh_db) -> None:
    first = migrate(fresh_db)
    assert first.applied == [m.filename for m in discover()]
    before = _catalog(fresh_db)
    assert {"encounters", "adt_events", "kpi_windows", "alert_deliveries", "kpi_daily",
            "model_metrics"} <= {name for _, name, _ in before}
    second = migrate(fresh_db)
    assert second.applied == [] and second.already_applied == first.applied
    assert _catalog(fresh_db) == before
    assert {state for _, state in status(fresh_db)} == {"applied"}


@pytest.mark.e2e
def test_an_edited_applied_migration_is_refused(fresh_db, tmp_path) -> None:
    for f in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(f, tmp_path / f.name)
    migrate(fresh_db, tmp_path)
    target = tmp_path / "V001__schema.sql"
    target.write_text(target.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(fresh_db, tmp_path)
    assert ("V001__schema.sql", "CHANGED") in status(fresh_db, tmp_path)
    # a new file is applied on top of the recorded ones
    target.write_text(target.read_text().replace("\n-- edited\n", ""))
    (tmp_path / "V900__extra.sql").write_text("CREATE TABLE extra_t (id int PRIMARY KEY);")
    assert migrate(fresh_db, tmp_path).applied == ["V900__extra.sql"]


@pytest.mark.e2e
def test_parallel_databases_migrate_at_once(stack) -> None:
    """Roles are cluster-wide: concurrent first migrations of several databases must all succeed."""
    pg = LocalPostgres()
    names = [f"wardstream_t{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for n in names:
        pg.psql_admin(f"CREATE DATABASE {n} OWNER wardstream")
    errors: list[BaseException] = []

    def run(n: str) -> None:
        try:
            migrate(f"postgresql://wardstream:wardstream@127.0.0.1:5432/{n}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
    finally:
        for n in names:
            pg.psql_admin(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


@pytest.mark.e2e
def test_reader_reads_and_cannot_write(sink_db) -> None:
    url = role_url(sink_db, "wardstream_reader", settings().reader_password)
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            for view in ("kpi_daily", "v_discharges", "model_metrics", "v_census_daily", "kpi_windows"):
                cur.execute(f"SELECT count(*) FROM {view}")
                assert cur.fetchone()[0] >= 0
        conn.commit()
        for stmt in ("INSERT INTO facilities (facility_id) VALUES ('X')",
                     "UPDATE encounters SET department = 'x'",
                     "DELETE FROM adt_events",
                     "CREATE TABLE evil (id int)",
                     "DROP VIEW kpi_daily"):
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(stmt)
            conn.rollback()
    finally:
        conn.close()


@pytest.mark.e2e
def test_sink_role_writes_facts_only(sink_db) -> None:
    conn = psycopg2.connect(role_url(sink_db, "wardstream_sink", settings().sink_password))
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO facilities (facility_id) VALUES ('F9')")
            cur.execute("UPDATE facilities SET beds = 10 WHERE facility_id = 'F9'")
            # V008: KPI partials are upserted (the last record per key wins)
            for _ in range(2):
                cur.execute("INSERT INTO kpi_partials (dimension, dimension_id, day, adt_partition, facility_id, "
                            "patients) VALUES ('facility', 'F9', '2025-01-01', 0, 'F9', '{}') ON CONFLICT "
                            "(dimension, dimension_id, day, adt_partition) DO UPDATE SET patients = '{P1}'")
        conn.commit()
        # V009 took back V004's DELETE: the sink stores accepted events and never deletes
        deletes = [f"DELETE FROM {table}" for table in ("adt_events", "encounters", "diagnoses",
                                                        "procedures", "charges", "patients")]
        for stmt in (*deletes,
                     "DELETE FROM facilities",
                     "DELETE FROM dead_letters",
                     "DELETE FROM kpi_partials",
                     "UPDATE kpi_windows_v1 SET value = 0",  # V008: the old table is read-only
                     "INSERT INTO schema_migrations VALUES (999, 'x', 'x', 'x', now(), 0)",
                     "CREATE TABLE evil (id int)",
                     "TRUNCATE encounters"):
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(stmt)
            conn.rollback()
    finally:
        conn.close()


@pytest.mark.e2e
def test_admissions_of_other_or_unknown_sex_are_stored(sink_db) -> None:
    """V015: contract v1.1's PID-8 values O and U reach patients and encounters through the sink."""
    batch = Batch()
    for n, sex in enumerate(("O", "U")):
        batch.add_adt(admission(f"P{n}", f"E{n}", "2025-01-01T08:00:00+00:00", sex=sex), 0, n)
    conn = psycopg2.connect(role_url(sink_db, "wardstream_sink", settings().sink_password))
    try:
        with conn.cursor() as cur:
            write_batch(cur, batch)
            cur.execute("SELECT p.sex, e.sex FROM patients p JOIN encounters e USING (patient_id) ORDER BY 1")
            assert cur.fetchall() == [("O", "O"), ("U", "U")]
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute("UPDATE patients SET sex = 'Z'")
    finally:
        conn.close()


@pytest.mark.e2e
def test_cli_migrate_and_status(fresh_db) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["db", "migrate"])
    assert out.exit_code == 0, out.output
    assert "applied  V001__schema.sql" in out.output
    again = runner.invoke(app, ["db", "migrate"])
    assert again.exit_code == 0 and "0 applied" in again.output
    st = runner.invoke(app, ["db", "status"])
    assert st.exit_code == 0 and "pending" not in st.output and "V003__roles.sql" in st.output
