"""Versioned SQL migrations: ``sql/migrations/V<NNN>__<name>.sql`` applied in order, once.

Applied files are recorded in ``schema_migrations`` with their SHA-256; re-running is a no-op,
and an applied file that changed afterwards is an error (never edit an applied migration, add a
new one). A per-database advisory lock serializes concurrent runs. After the migrations the
passwords of the wardstream roles are (re)set from the environment, so rotating them is a re-run.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.errors

from consumers.db import close_quietly, connect, owner_url
from wardstream.config import REPO_ROOT, settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = REPO_ROOT / "sql" / "migrations"
_FILE = re.compile(r"^V(\d{3,})__([A-Za-z0-9_]+)\.sql$")
_LOCK_KEY = 0x77617264  # "ward": advisory lock id of the migration runner
ROLES = ("wardstream_sink", "wardstream_reader")


class MigrationError(RuntimeError):
    """A migration file set that cannot be applied safely (bad name, changed checksum, ...)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of ``directory`` in version order; rejects unknown names and duplicates."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named V<NNN>__<name>.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}: "
                                 f"{found[version].filename}, {path.name}")
        found[version] = Migration(version, m.group(2), path,
                                   hashlib.sha256(path.read_bytes()).hexdigest())
    return [found[v] for v in sorted(found)]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    filename    text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)"""


def migrate(url: str | None = None, directory: Path = MIGRATIONS_DIR) -> MigrationResult:
    """Apply the pending migrations of ``directory`` to the database at ``url`` (DATABASE_URL)."""
    migrations = discover(directory)
    s = settings()
    result = MigrationResult()
    conn = connect(url or owner_url(), "wardstream-migrate")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            cur.execute(_CREATE_TABLE)
            cur.execute("SELECT version, filename, checksum FROM schema_migrations")
            applied = {v: (f, c) for v, f, c in cur.fetchall()}
            known = {m.version for m in migrations}
            missing = sorted(set(applied) - known)
            if missing:
                raise MigrationError(f"applied migrations missing from {directory}: "
                                     + ", ".join(applied[v][0] for v in missing))
            for m in migrations:
                if m.version in applied:
                    if applied[m.version][1] != m.checksum:
                        raise MigrationError(
                            f"{m.filename} changed after it was applied (checksum "
                            f"{applied[m.version][1][:12]} in the database, {m.checksum[:12]} on disk); "
                            "add a new migration instead of editing an applied one")
                    result.already_applied.append(m.filename)
                    continue
                _apply(conn, m, s.sink_password, s.reader_password)
                result.applied.append(m.filename)
            _sync_passwords(conn, s.sink_password, s.reader_password)
            cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    finally:
        close_quietly(conn)
    return result


def _apply(conn, m: Migration, sink_password: str, reader_password: str) -> None:
    started = time.perf_counter()
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            # Transaction-local settings: read by V003__roles.sql when it creates the roles.
            cur.execute("SELECT set_config('wardstream.sink_password', %s, true), "
                        "set_config('wardstream.reader_password', %s, true)",
                        (sink_password, reader_password))
            cur.execute(m.sql())
            cur.execute("INSERT INTO schema_migrations (version, name, filename, checksum, duration_ms) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (m.version, m.name, m.filename, m.checksum,
                         int((time.perf_counter() - started) * 1000)))
        conn.commit()
        log.info("applied migration %s", m.filename)
    except psycopg2.Error as exc:
        conn.rollback()
        raise MigrationError(f"{m.filename} failed: {exc.pgerror or exc}".strip()) from exc
    finally:
        conn.autocommit = True


def _sync_passwords(conn, sink_password: str, reader_password: str) -> None:
    """Set the roles' passwords from the environment (retried: roles are shared by every database)."""
    with conn.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),))
        present = {r for (r,) in cur.fetchall()}
        for role, password in zip(ROLES, (sink_password, reader_password)):
            if role not in present:
                continue
            for attempt in range(5):
                try:
                    cur.execute(f"ALTER ROLE {role} PASSWORD %s", (password,))
                    break
                except psycopg2.errors.InsufficientPrivilege:
                    log.warning("cannot set the password of %s (no CREATEROLE); left as is", role)
                    break
                except psycopg2.Error:  # "tuple concurrently updated" from a parallel migration
                    if attempt == 4:
                        raise
                    time.sleep(0.1 * (attempt + 1))


def status(url: str | None = None, directory: Path = MIGRATIONS_DIR) -> list[tuple[str, str]]:
    """(filename, state) per migration file: applied, pending or CHANGED."""
    migrations = discover(directory)
    conn = connect(url or owner_url(), "wardstream-migrate")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            exists = cur.fetchone()[0]
            applied = {}
            if exists:
                cur.execute("SELECT version, checksum FROM schema_migrations")
                applied = dict(cur.fetchall())
    finally:
        close_quietly(conn)
    out = []
    for m in migrations:
        if m.version not in applied:
            out.append((m.filename, "pending"))
        else:
            out.append((m.filename, "applied" if applied[m.version] == m.checksum else "CHANGED"))
    return out
