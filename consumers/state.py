"""Read back what the sink stored: row counts and order-independent table dumps.

For tests and fault drills (the fault drills compare final states: a replayed, restarted or
duplicated run must leave exactly the same rows). Volatile bookkeeping columns (wall-clock
``updated_at`` / ``ingested_at`` / ``first_seen_at``) are left out of dumps.
"""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from consumers.db import close_quietly, connect, owner_url
from consumers.tables import TABLE_NAMES

VOLATILE = frozenset({"updated_at", "ingested_at", "first_seen_at", "created_at"})


def table_counts(url: str | None = None, tables: tuple[str, ...] = TABLE_NAMES) -> dict[str, int]:
    conn = connect(url or owner_url(), "wardstream-state")
    try:
        with conn.cursor() as cur:
            out = {}
            for t in tables:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                out[t] = cur.fetchone()[0]
            return out
    finally:
        close_quietly(conn)


def dump_tables(url: str | None = None, tables: tuple[str, ...] = TABLE_NAMES) -> dict[str, list[tuple[Any, ...]]]:
    """table -> every row (without volatile columns), sorted: equal dumps = equal states."""
    conn = connect(url or owner_url(), "wardstream-state")
    try:
        out = {}
        with conn.cursor() as cur:
            for t in tables:
                cur.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position", (t,))
                cols = [c for (c,) in cur.fetchall() if c not in VOLATILE]
                cur.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols),
                    sql.Identifier(t)))
                out[t] = sorted(cur.fetchall(), key=lambda r: tuple("" if v is None else v for v in r))
        return out
    finally:
        close_quietly(conn)
