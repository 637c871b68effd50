"""Run dashboard queries outside Grafana: resolve the variables, expand macros, execute the SQL.

What Grafana does for a viewer, minus the drawing: query each variable in order (a variable's
SQL may use the ones before it), pick the first option or ``All``, then run every panel target
for a time range. Used by the tests (as the read-only role) and handy for debugging a panel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

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
