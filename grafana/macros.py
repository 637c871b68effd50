"""Expand panel SQL the way Grafana does, so tests can run every panel on the real database.

Two steps, in Grafana's order:

1. template variables (Grafana's frontend, ``SqlDatasource.interpolateVariable``): a multi-value or
   include-``All`` variable becomes a list of quoted literals ``'a','b'``; ``All`` without a custom
   all value is the list of every option; a single-value variable is inserted with ``'`` doubled;
2. macros (Grafana's PostgreSQL backend, ``macros.go``), matched as ``$name(args)`` with no nested
   parentheses and arguments split on commas:

>>> from datetime import datetime, timezone
>>> t0 = datetime(2018, 4, 12, 18, 0, tzinfo=timezone.utc)
>>> t1 = datetime(2018, 4, 12, 18, 5, tzinfo=timezone.utc)
>>> expand_macros("WHERE $__timeFilter(time_column)", t0, t1)
"WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
>>> expand_macros("SELECT $__timeGroupAlias(time_column, '5m')", t0, t1)
'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'
>>> expand_macros("SELECT $__timeGroup(t,'5m'), v", t0, t1)  # pre-5.3 form: alias added
'SELECT floor(extract(epoch from t)/300)*300 AS "time", v'
>>> interpolate_variables("dept IN ($department)", [TemplateVar("department", ["A", "O'B"])])
"dept IN ('A','O''B')"
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

ALL = "$__all"


class MacroError(ValueError):
    """A macro is unknown or has bad arguments (Grafana answers the query with this error)."""


# --------------------------------------------------------------------------- template variables


@dataclass(frozen=True)
class TemplateVar:
    """A dashboard variable's current value(s) as Grafana's frontend would substitute them."""

    name: str
    current: str | list[str] | int | float
    options: list[str] = field(default_factory=list)
    multi: bool = True
    include_all: bool = True
    all_value: str | None = None  # Grafana's "custom all value": inserted verbatim

    def _selected(self) -> str | list[str] | int | float:
        cur = self.current
        if cur == ALL or cur == [ALL]:
            if self.all_value is not None:
                return self.all_value
            return list(self.options)
        return cur

    def render(self, fmt: str | None = None) -> str:
        """The text that replaces ``$name`` (``fmt``: Grafana's ``${name:raw|csv|singlequote}``)."""
        value = self._selected()
        if self.all_value is not None and value == self.all_value:
            return self.all_value
        values = value if isinstance(value, list) else [value]
        if fmt == "raw":
            return ",".join(str(v) for v in values) if isinstance(value, list) else str(value)
        if fmt == "csv":
            return ",".join(str(v) for v in values)
        if fmt in ("singlequote", "sqlstring"):
            return ",".join(_quote(str(v)) for v in values)
        if fmt is not None:
            raise MacroError(f"unsupported variable format {fmt!r} for ${self.name}")
        # SqlDatasource.interpolateVariable
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, list):
            return ",".join(_quote(str(v)) for v in value)
        if self.multi or self.include_all:
            return _quote(value)
        return value.replace("'", "''")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_VAR = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::(\w+))?\}")


def interpolate_variables(sql: str, variables: Sequence[TemplateVar]) -> str:
    """Replace ``$name``, ``${name}``, ``${name:fmt}``, ``[[name]]``; unknown names stay (macros)."""
    by_name = {v.name: v for v in variables}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        var = by_name.get(name)
        return m.group(0) if var is None else var.render(fmt)

    return _VAR.sub(sub, sql)


# --------------------------------------------------------------------------- macros

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600,
                 "d": 86400, "w": 7 * 86400}


def parse_interval(text: str) -> float:
    """Seconds in a Grafana interval (``'5m'``, ``1d``, ``1h30m``); ``M``/``y`` are calendar-dependent.

    >>> parse_interval("'1d'"), parse_interval("1h30m"), parse_interval("20ms")
    (86400, 5400, 0.02)
    """
    s = text.strip().strip("'")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise MacroError(f"error parsing interval {text}")
    return int(total) if float(total).is_integer() else total


def _num(seconds: float) -> str:
    """Go's ``%v`` of a float64: no trailing ``.0``."""
    text = repr(float(seconds))
    return text[:-2] if text.endswith(".0") else text


def rfc3339nano(t: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: ``Z`` suffix, fraction without trailing zeros.

    >>> rfc3339nano(datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=timezone.utc))
    '1960-02-01T07:00:00.5Z'
    """
    if t.tzinfo is None:
        raise ValueError("time range bounds must be timezone-aware")
    t = t.astimezone(timezone.utc)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def _epoch(t: datetime) -> int:
    return int(t.timestamp() // 1)


def _epoch_ns(t: datetime) -> int:
    delta = t.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta // timedelta(microseconds=1)) * 1000


def _evaluate(name: str, args: list[str], start: datetime, end: datetime) -> str:
    def column() -> str:
        if not args or args == [""]:
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    def group(expr: str) -> str:
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        seconds = _num(parse_interval(args[1]))
        return expr.format(col=args[0], s=seconds)

    if name == "__time":
        return f'{column()} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {column()}) as "time"'
    if name == "__timeFilter":
        return f"{column()} BETWEEN '{rfc3339nano(start)}' AND '{rfc3339nano(end)}'"
    if name == "__timeFrom":
        return f"'{rfc3339nano(start)}'"
    if name == "__timeTo":
        return f"'{rfc3339nano(end)}'"
    if name == "__timeGroup":
        return group("floor(extract(epoch from {col})/{s})*{s}")
    if name == "__timeGroupAlias":
        return group("floor(extract(epoch from {col})/{s})*{s}") + ' AS "time"'
    if name == "__unixEpochFilter":
        c = column()
        return f"{c} >= {_epoch(start)} AND {c} <= {_epoch(end)}"
    if name == "__unixEpochNanoFilter":
        c = column()
        return f"{c} >= {_epoch_ns(start)} AND {c} <= {_epoch_ns(end)}"
    if name == "__unixEpochFrom":
        return str(_epoch(start))
    if name == "__unixEpochTo":
        return str(_epoch(end))
    if name == "__unixEpochNanoFrom":
        return str(_epoch_ns(start))
    if name == "__unixEpochNanoTo":
        return str(_epoch_ns(end))
    if name == "__unixEpochGroup":
        return group("floor(({col})/{s})*{s}")
    if name == "__unixEpochGroupAlias":
        return group("floor(({col})/{s})*{s}") + ' AS "time"'
    raise MacroError(f"unknown macro {name!r}")


def expand_macros(sql: str, start: datetime, end: datetime, interval: timedelta | None = None) -> str:
    """Replace Grafana's PostgreSQL macros for the time range ``[start, end]``.

    ``$__interval`` / ``$__interval_ms`` (Grafana's auto interval) are replaced when ``interval``
    is given. ``$__timeGroup(c, i)`` directly followed by ``,`` gets ``AS "time"`` as in Grafana.
    """
    if interval is not None:
        ms = int(interval / timedelta(milliseconds=1))
        sql = sql.replace("$__interval_ms", str(ms)).replace("$__interval", _go_duration(ms))
    original = sql

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":
            at = original.find(m.group(0))
            if at >= 0 and original[at + len(m.group(0)):at + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        return _evaluate(name, args, start, end)

    return _MACRO.sub(sub, sql)


def _go_duration(ms: int) -> str:
    """Grafana's interval text: the largest whole unit (``1d``, ``5m``, ``250ms``)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def expand(sql: str, start: datetime, end: datetime, variables: Sequence[TemplateVar] = (),
           interval: timedelta | None = None) -> str:
    """Variables first (frontend), then macros (backend): the SQL PostgreSQL receives."""
    return expand_macros(interpolate_variables(sql, variables), start, end, interval)
