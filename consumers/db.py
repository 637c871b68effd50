"""PostgreSQL connections for the sink, the notifier and the migrations (psycopg2).

One place turns the configured URLs into libpq DSNs, so SQLAlchemy-style URLs
(``postgresql+psycopg2://``) work as well as plain ones.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

from wardstream.config import settings

# Errors after which a new connection may succeed: server restart, network, deadlock, serialization.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg2.OperationalError, psycopg2.InterfaceError)


def libpq_url(url: str) -> str:
    """Drop a SQLAlchemy driver suffix so libpq accepts the URL.

    >>> libpq_url("postgresql+psycopg2://u:p@h:5432/db")
    'postgresql://u:p@h:5432/db'
    """
    for prefix in ("postgresql+psycopg2://", "postgres+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def owner_url() -> str:
    """DATABASE_URL: the schema owner (migrations)."""
    return libpq_url(settings().database_url)


def sink_url() -> str:
    """SINK_DATABASE_URL, falling back to DATABASE_URL: the sink and the notifier."""
    return libpq_url(settings().sink_url)


def connect(url: str, application_name: str = "wardstream") -> psycopg2.extensions.connection:
    """A new connection with a short connect timeout and keepalives (a dead server is noticed fast)."""
    return psycopg2.connect(
        url, connect_timeout=5, application_name=application_name,
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
    )


def close_quietly(conn: psycopg2.extensions.connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except psycopg2.Error:
        pass
