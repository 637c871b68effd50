"""A real PostgreSQL server from Debian's ``postgresql`` package, run with ``pg_ctlcluster``.

``up`` installs the package when missing (as root), starts the cluster on 127.0.0.1, and
creates the application role and database named by ``DATABASE_URL`` (idempotently).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from wardstream.config import settings
from wardstream.stack.kafka import StackError, port_open, wait_until

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


@dataclass
class LocalPostgres:
    cluster: str = "main"
    host: str = "127.0.0.1"
    port: int = 5432

    def version(self) -> str | None:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        return versions[-1].split("/")[4] if versions else None

    def install(self) -> str:
        version = self.version()
        if version:
            return version
        if os.geteuid() != 0:
            raise StackError("PostgreSQL is not installed; run: sudo apt-get install -y postgresql")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
            proc = _run(cmd, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            if proc.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        version = self.version()
        if not version:
            raise StackError("apt-get installed postgresql but no server binary was found")
        return version

    def _ensure_cluster(self, version: str) -> None:
        if not os.path.isdir(f"/etc/postgresql/{version}/{self.cluster}"):
            proc = _run(["pg_createcluster", version, self.cluster, "-p", str(self.port)])
            if proc.returncode != 0:
                raise StackError(f"pg_createcluster failed: {proc.stderr}")

    def healthy(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        # pg_isready asks the server over TCP without logging in: 0 = accepting connections.
        return _run(["pg_isready", "-q", "-h", self.host, "-p", str(self.port)]).returncode == 0

    def psql_admin(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the ``postgres`` superuser over the local socket (setup only)."""
        proc = _run(["runuser", "-u", "postgres", "--", "psql", "-p", str(self.port), "-d", db,
                     "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        if proc.returncode != 0:
            raise StackError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout

    def _ensure_app_database(self) -> str:
        url = urlsplit(settings().database_url.replace("+psycopg2", ""))
        user, password, db = url.username or "wardstream", url.password or "", url.path.lstrip("/")
        for ident in (user, db):
            if not _IDENT.match(ident):
                raise StackError(f"role/database name {ident!r} must be a plain lower-case identifier")
        pw = password.replace("'", "''")
        self.psql_admin(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='{user}') THEN "
            f"CREATE ROLE {user} LOGIN CREATEROLE PASSWORD '{pw}'; "
            f"ELSE ALTER ROLE {user} LOGIN CREATEROLE PASSWORD '{pw}'; END IF; END$$;"
        )
        if not self.psql_admin(f"SELECT 1 FROM pg_database WHERE datname='{db}'").strip():
            self.psql_admin(f"CREATE DATABASE {db} OWNER {user}")
        return db

    @contextmanager
    def scratch_database(self, prefix: str = "wardstream_t", migrate: bool = False) -> Iterator[str]:
        """A new empty database owned by DATABASE_URL's role, dropped after the block; yields its URL.

        Tests, drills and benchmarks each get their own, so runs never see each other's rows.
        ``migrate`` applies sql/migrations first.
        """
        base = settings().database_url
        owner = urlsplit(base.replace("+psycopg2", "")).username or "wardstream"
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        self.psql_admin(f"CREATE DATABASE {name} OWNER {owner}")
        url = f"{base.rsplit('/', 1)[0]}/{name}"
        try:
            if migrate:
                from consumers.migrate import migrate as apply_migrations

                apply_migrations(url)
            yield url
        finally:
            self.psql_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def up(self, timeout: float = 60) -> str:
        if os.geteuid() != 0:
            if port_open(self.host, self.port):
                return f"PostgreSQL answers on {self.host}:{self.port} (not managed: not root)"
            raise StackError("starting the local PostgreSQL needs root (pg_ctlcluster); or set DATABASE_URL")
        version = self.install()
        self._ensure_cluster(version)
        if not self.healthy():
            proc = _run(["pg_ctlcluster", version, self.cluster, "start"])
            if proc.returncode != 0 and "already running" not in proc.stderr:
                raise StackError(f"pg_ctlcluster start failed: {proc.stderr.strip()}")
            wait_until(self.healthy, timeout, f"PostgreSQL on {self.host}:{self.port}")
        db = self._ensure_app_database()
        return f"PostgreSQL {version} up on {self.host}:{self.port} (database {db})"

    def down(self) -> str:
        version = self.version()
        if not version or not port_open(self.host, self.port):
            return "PostgreSQL is not running"
        proc = _run(["pg_ctlcluster", version, self.cluster, "stop", "-m", "fast"])
        if proc.returncode != 0:
            raise StackError(f"pg_ctlcluster stop failed: {proc.stderr.strip()}")
        return "PostgreSQL stopped"

    def restart(self) -> None:
        version = self.version()
        _run(["pg_ctlcluster", version or "", self.cluster, "restart", "-m", "fast"])
        wait_until(self.healthy, 60, "PostgreSQL after restart")

    def status(self) -> str:
        return f"PostgreSQL: up on {self.host}:{self.port}" if self.healthy() else "PostgreSQL: down"


def have_kcat() -> bool:
    return shutil.which("kcat") is not None
