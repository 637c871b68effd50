"""The committed Grafana files are exactly what the code generates, and every panel is well formed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import yaml

from grafana.boards import all_dashboards
from grafana.build import DASHBOARD_DIR, PROVISIONING_DIR, generated_files, stale_files
from grafana.datasource import DS_TYPE, DS_UID, READER_ROLE
from grafana.macros import TemplateVar, expand
from grafana.model import Dashboard, Panel, Row, Target
from contracts.events import KPI_NAMES
from wardstream.config import REPO_ROOT

BOARDS = all_dashboards()
COMMITTED = {p.name: json.loads(p.read_text()) for p in DASHBOARD_DIR.glob("*.json")}
TIME_MACROS = ("$__timeFilter(", "$__timeGroupAlias(", "$__timeFrom()", "$__timeTo()", "$__unixEpochFilter(")


def test_build_check_passes_on_the_committed_files():
    proc = subprocess.run([sys.executable, "-m", "grafana.build", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert stale_files() == []


def test_generated_json_equals_committed_json():
    assert {b.uid + ".json" for b in BOARDS} == set(COMMITTED)
    for board in BOARDS:
        assert board.to_json() == COMMITTED[board.uid + ".json"]


def test_check_detects_a_stale_file(tmp_path, monkeypatch):
    import grafana.build as build

    monkeypatch.setattr(build, "DASHBOARD_DIR", tmp_path)
    monkeypatch.setattr(build, "PROVISIONING_DIR", tmp_path / "prov")
    monkeypatch.setattr(build, "GRAFANA_DIR", tmp_path)
    # relative_to(GRAFANA_DIR.parent) must still work for messages
    build.write()
    assert build.stale_files() == []
    victim = tmp_path / f"{BOARDS[0].uid}.json"
    victim.write_text(victim.read_text().replace('"10s"', '"1m"'))
    (tmp_path / "orphan.json").write_text("{}")
    problems = build.stale_files()
    assert any(victim.name in p and "differs" in p for p in problems)
    assert any("orphan.json" in p and "not generated" in p for p in problems)
    assert build.main(["--check"]) == 1
    build.write()
    assert build.stale_files() == [] and not (tmp_path / "orphan.json").exists()


def test_the_seven_boards_of_the_issue():
    titles = {b.title for b in BOARDS}
    assert titles == {"Hospital overview", "Departments", "Providers", "High-risk discharges",
                      "Finance and insurance", "Patient experience", "Model health"}


def test_every_panel_and_target_names_the_provisioned_datasource():
    for name, board in COMMITTED.items():
        assert board["refresh"] == "10s", name
        for var in board["templating"]["list"]:
            assert var["datasource"] == {"type": DS_TYPE, "uid": DS_UID}
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": DS_TYPE, "uid": DS_UID}, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DS_UID
                assert target["rawQuery"] is True and target["rawSql"]


def _queries():
    for board in BOARDS:
        for panel in board.panels():
            for target in panel.targets:
                yield board, panel, target


@pytest.mark.parametrize("board,panel,target", list(_queries()),
                         ids=lambda x: getattr(x, "title", None) or getattr(x, "ref_id", ""))
def test_every_query_is_time_range_aware_and_uses_only_known_variables(board: Dashboard, panel: Panel,
                                                                       target: Target):
    sql = target.sql
    assert any(m in sql for m in TIME_MACROS), f"{board.title} / {panel.title}: no time macro"
    names = {v.name for v in board.variables}
    used = set(re.findall(r"\$(?!__)(\w+)", sql))
    assert used <= names, f"{panel.title}: undefined variables {used - names}"
    # Grafana's macro regex does not allow nested parentheses inside a macro call
    for m in re.finditer(r"\$__\w+\(", sql):
        inner = sql[m.end():sql.index(")", m.end())]
        assert "(" not in inner, f"{panel.title}: nested parentheses in {m.group(0)}"
    # expandable for any value of the variables
    vars_ = [TemplateVar(v.name, "X" if not v.multi else ["A", "B"], multi=v.multi,
                         include_all=v.include_all) for v in board.variables]
    expanded = expand(sql, datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 2, 1, tzinfo=timezone.utc),
                      vars_)
    assert "$" not in expanded.replace("$$", ""), expanded
    if target.format == "time_series":
        assert '"time"' in expanded, f"{panel.title}: a time series needs a time column"


def test_the_six_headline_kpis_are_on_the_overview():
    overview = next(b for b in BOARDS if b.uid == "wardstream-overview")
    sql = "\n".join(t.sql for p in overview.panels() for t in p.targets)
    for kpi in ("readmission_rate", "avg_length_of_stay", "cost_per_patient", "high_risk_pct",
                "provider_utilization", "outcome_efficiency", "census"):
        assert kpi in KPI_NAMES
        assert f"'{kpi}'" in sql, kpi
    kinds = {p.kind for p in overview.panels()}
    assert {"stat", "timeseries"} <= kinds


def test_variables_facility_and_department():
    for board in BOARDS:
        names = [v.name for v in board.variables]
        assert names[0] == "facility"
        if board.uid not in ("wardstream-overview", "wardstream-model-health"):
            assert "department" in names
    committed = COMMITTED["wardstream-departments.json"]["templating"]["list"]
    dept = next(v for v in committed if v["name"] == "department")
    assert dept["multi"] and dept["includeAll"] and dept["current"]["value"] == ["$__all"]


def test_layout_never_overlaps():
    for name, board in COMMITTED.items():
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not (cells & mine), (name, panel["title"])
            cells |= mine
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))


def test_provisioning_files():
    ds = yaml.safe_load((PROVISIONING_DIR / "datasources" / "wardstream.yaml").read_text())["datasources"][0]
    assert ds["uid"] == DS_UID and ds["type"] == DS_TYPE and ds["user"] == READER_ROLE
    # the password is an environment reference Grafana resolves, never a literal
    assert ds["secureJsonData"]["password"] == "${WARDSTREAM_READER_PASSWORD}"
    prov = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "wardstream.yaml").read_text())["providers"][0]
    assert prov["type"] == "file" and prov["folderUid"] == "wardstream"
    assert set(generated_files()) >= {PROVISIONING_DIR / "datasources" / "wardstream.yaml"}


def test_builders_reject_bad_panels():
    with pytest.raises(ValueError):
        Panel("too wide", "stat", [Target("SELECT 1")], w=25)
    with pytest.raises(ValueError):
        Panel("dup refs", "stat", [Target("SELECT 1"), Target("SELECT 2")])
    board = Dashboard("x", "X", [Row("r"), Panel("a", "stat", [Target("SELECT 1")], w=20),
                                 Panel("b", "stat", [Target("SELECT 1")], w=8)])
    grid = [p["gridPos"] for p in board.to_json()["panels"]]
    assert grid == [{"h": 1, "w": 24, "x": 0, "y": 0}, {"h": 8, "w": 20, "x": 0, "y": 1},
                    {"h": 8, "w": 8, "x": 0, "y": 9}]
