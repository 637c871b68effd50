"""Typed builders for Grafana dashboards: Dashboard, Row, Panel, Target, Variable.

Plain dataclasses that render to the JSON model Grafana stores (``schemaVersion`` 39, readable by
Grafana 10.4 and later, which migrate it forward). Only what wardstream's boards use is modelled;
anything else goes through ``Panel.options`` / ``Panel.custom`` untouched. Layout is automatic:
panels flow left to right on Grafana's 24-column grid and wrap, rows start a new line.

>>> board = Dashboard(uid="demo", title="Demo", items=[
...     Panel("Discharges", "stat", [Target("SELECT $__timeGroupAlias(t, 1d), 1 AS v "
...                                         "FROM x WHERE $__timeFilter(t) GROUP BY 1")], w=6, h=4),
...     Panel("Trend", "timeseries", [Target("SELECT 1")], w=24)])
>>> js = board.to_json()
>>> [(p["id"], p["gridPos"]) for p in js["panels"]]
[(1, {'h': 4, 'w': 6, 'x': 0, 'y': 0}), (2, {'h': 8, 'w': 24, 'x': 0, 'y': 4})]
>>> js["panels"][0]["targets"][0]["datasource"]["uid"]
'wardstream-pg'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from grafana.datasource import ds_ref

SCHEMA_VERSION = 39
GRID_WIDTH = 24

PanelKind = Literal["stat", "timeseries", "table", "barchart", "piechart", "bargauge", "gauge"]
Format = Literal["time_series", "table"]


@dataclass
class Target:
    """One SQL query of a panel. ``format`` tells Grafana how to read the rows.

    ``time_series``: a ``time`` column, numeric value columns, optionally a ``metric`` column
    (long format, one series per metric value). ``table``: any columns.
    """

    sql: str
    format: Format = "time_series"
    ref_id: str = "A"

    def to_json(self) -> dict[str, Any]:
        return {
            "refId": self.ref_id,
            "datasource": ds_ref(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.sql.strip(),
        }


@dataclass
class Threshold:
    """A colour step: from ``value`` upwards (``None`` = the base colour)."""

    value: float | None
    color: str


@dataclass
class Panel:
    """A visualisation. ``core`` marks panels that must show data after any simulated run."""

    title: str
    kind: PanelKind
    targets: list[Target]
    w: int = 12
    h: int = 8
    description: str = ""
    unit: str | None = None
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    thresholds: list[Threshold] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    core: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.w <= GRID_WIDTH:
            raise ValueError(f"panel {self.title!r}: width must be 1..{GRID_WIDTH}")
        refs = [t.ref_id for t in self.targets]
        if len(set(refs)) != len(refs):
            raise ValueError(f"panel {self.title!r}: duplicate refIds {refs}")

    def _defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        for key in ("unit", "decimals", "min", "max"):
            value = getattr(self, key)
            if value is not None:
                defaults[key] = value
        if self.thresholds:
            defaults["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": t.color, "value": t.value} for t in self.thresholds],
            }
        if self.custom:
            defaults["custom"] = self.custom
        return defaults

    def to_json(self, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "gridPos": grid,
            "datasource": ds_ref(),
            "targets": [t.to_json() for t in self.targets],
            "fieldConfig": {"defaults": self._defaults(), "overrides": self.overrides},
            "options": self.options,
            "transformations": self.transformations,
        }


@dataclass
class Row:
    """A full-width section header; panels after it belong to it."""

    title: str

    def to_json(self, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
        return {"id": panel_id, "type": "row", "title": self.title, "collapsed": False,
                "gridPos": grid, "panels": []}


@dataclass
class Variable:
    """A query template variable (multi-value with ``All``), refreshed on time range change.

    With ``include_all`` and no custom all value, Grafana sends ``All`` as the quoted list of
    every option, so panel SQL writes ``col IN ($name)`` for one, several or all values.
    """

    name: str
    label: str
    sql: str
    multi: bool = True
    include_all: bool = True

    def to_json(self) -> dict[str, Any]:
        current = {"selected": True, "text": ["All"], "value": ["$__all"]} if self.include_all else {}
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": ds_ref(),
            "definition": self.sql.strip(),
            "query": self.sql.strip(),
            "refresh": 2,
            "multi": self.multi,
            "includeAll": self.include_all,
            "current": current,
            "options": [],
            "sort": 1,
            "hide": 0,
        }


@dataclass
class Dashboard:
    """A whole board; ``to_json`` gives Grafana's dashboard model (no ``id``: uid identifies it)."""

    uid: str
    title: str
    items: list[Panel | Row]
    description: str = ""
    variables: list[Variable] = field(default_factory=list)
    tags: list[str] = field(default_factory=lambda: ["wardstream"])
    refresh: str = "10s"
    time_from: str = "now-90d"
    time_to: str = "now"

    def panels(self) -> list[Panel]:
        return [item for item in self.items if isinstance(item, Panel)]

    def _layout(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        x = y = line_h = 0
        for panel_id, item in enumerate(self.items, start=1):
            if isinstance(item, Row):
                y += line_h
                x, line_h = 0, 0
                out.append(item.to_json(panel_id, {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}))
                y += 1
                continue
            if x + item.w > GRID_WIDTH:
                y += line_h
                x, line_h = 0, 0
            out.append(item.to_json(panel_id, {"h": item.h, "w": item.w, "x": x, "y": y}))
            x += item.w
            line_h = max(line_h, item.h)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,
            "liveNow": False,
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": self.time_from, "to": self.time_to},
            "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m"]},
            "templating": {"list": [v.to_json() for v in self.variables]},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["wardstream"], "asDropdown": True,
                       "title": "wardstream", "includeVars": True, "keepTime": True}],
            "panels": self._layout(),
        }
