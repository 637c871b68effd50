"""Run dashboard queries outside Grafana: resolve the variables, expand macros, execute the SQL.

What Grafana does for a viewer, minus the drawing: query each variable in order (a variable's
SQL may use the ones before it), pick the first option or ``All``, then run every panel target
for a time range. Used by the tests (as the read-only role) and handy for debugging a panel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from grafana.datasource import READER_ROLE, DbLocation
from grafana.macros import ALL, TemplateVar, expand
from grafana.model import Dashboard, Panel, Target


@dataclass
class QueryResult:
    board: Dashboard
    panel: Panel
    target: Target
    sql: str
    columns: list[str]
    rows: list[tuple]


def reader_connection(database_url: str, password: str, statement_timeout_ms: int = 60_000):
    """A psycopg2 connection to DATABASE_URL's server and database as Grafana's read-only role."""
    import psycopg2

    loc = DbLocation.from_url(database_url)
    host, port = loc.host_port.rsplit(":", 1)
    conn = psycopg2.connect(host=host, port=int(port), dbname=loc.database, user=READER_ROLE,
                            password=password, connect_timeout=5,
                            options=f"-c statement_timeout={statement_timeout_ms}")
    conn.autocommit = True
    return conn


def resolve_variables(cur, board: Dashboard, start: datetime, end: datetime,
                      chosen: dict[str, str | list[str]] | None = None) -> list[TemplateVar]:
    """Query every variable's options; the value is ``chosen[name]``, else ``All`` or the first option."""
    chosen = chosen or {}
    resolved: list[TemplateVar] = []
    for var in board.variables:
        cur.execute(expand(var.sql, start, end, resolved))
        options = [str(row[0]) for row in cur.fetchall()]
        if var.name in chosen:
            current = chosen[var.name]
        elif var.include_all:
            current = ALL
        else:
            if not options:
                raise LookupError(f"variable ${var.name} of {board.title!r} has no options")
            current = options[0]
        resolved.append(TemplateVar(var.name, current, options, var.multi, var.include_all))
    return resolved


def run_board(cur, board: Dashboard, start: datetime, end: datetime,
              variables: list[TemplateVar]) -> Iterator[QueryResult]:
    """Every target of every panel, expanded and executed with ``cur`` (a DB-API cursor)."""
    for panel in board.panels():
        for target in panel.targets:
            sql = expand(target.sql, start, end, variables)
            cur.execute(sql)
            columns = [d[0] for d in cur.description]
            yield QueryResult(board, panel, target, sql, columns, cur.fetchall())


def _number(v: object) -> bool:
    return isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)


def shape_problems(r: QueryResult) -> list[str]:
    """Why Grafana could not draw this result, or why a core panel would look empty ([] = fine).

    Time series: a ``time`` column (timestamp or epoch seconds), rows sorted by time, numeric
    value columns, an optional text ``metric`` column. Bar and pie charts: a numeric column
    besides the x field. Core panels (``Panel.core``): at least one row with a number.
    """
    problems: list[str] = []
    cols, rows = r.columns, r.rows
    if r.target.format == "time_series":
        if "time" not in cols:
            return [f"no time column in {cols}"]
        ti = cols.index("time")
        value_idx = [i for i, c in enumerate(cols) if c not in ("time", "metric")]
        if not value_idx:
            problems.append("no value column")
        times = [row[ti] for row in rows]
        if not all(isinstance(t, datetime) or _number(t) for t in times):
            problems.append("time column is neither a timestamp nor epoch seconds")
        else:
            keyed = [t.timestamp() if isinstance(t, datetime) else float(t) for t in times]
            if keyed != sorted(keyed):
                problems.append("rows are not sorted by time")
        if "metric" in cols:
            mi = cols.index("metric")
            if not all(isinstance(row[mi], str) for row in rows):
                problems.append("metric column is not text")
        for i in value_idx:
            if not all(row[i] is None or _number(row[i]) for row in rows):
                problems.append(f"value column {cols[i]} is not numeric")
    else:
        x = r.panel.options.get("xField")
        if x is not None and x not in cols:
            problems.append(f"bar chart x field {x!r} not in {cols}")
        if r.panel.kind in ("barchart", "piechart") and rows:
            if not any(c != x and any(_number(row[i]) for row in rows) for i, c in enumerate(cols)):
                problems.append("no numeric column to draw")
    if r.panel.core:
        if not rows:
            problems.append("no rows (a core panel must show data)")
        elif not any(_number(v) for row in rows for c, v in zip(cols, row) if c not in ("time", "metric")):
            problems.append("only empty values")
    return problems
