"""``wardstream grafana push`` against a local HTTP server that answers like Grafana's API.

The server keeps state (datasources, folders, dashboards) the way Grafana does, so a second push
must update instead of create; every request is recorded with its method, path, auth and body.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from grafana.boards import all_dashboards
from grafana.datasource import DS_TYPE, DS_UID, FOLDER_UID, READER_ROLE, DbLocation
from grafana.push import PushError, connect, push
from wardstream.cli import app

TOKEN = "glsa_test_token"


@dataclass
class FakeGrafana:
    """State and request log of the fake server."""

    datasources: dict[str, dict] = field(default_factory=dict)
    folders: dict[str, dict] = field(default_factory=dict)
    dashboards: dict[str, dict] = field(default_factory=dict)
    calls: list[tuple[str, str, dict | None]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    url: str = ""

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.calls if method is None or m == method]

    def bodies(self, method: str, path: str) -> list[dict]:
        return [b for m, p, b in self.calls if m == method and p == path and b is not None]


def _handler(state: FakeGrafana):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.calls.append((method, path, body))
            state.auth.append(self.headers.get("Authorization"))
            if path == "/api/health":
                return self._send(200, {"commit": "x", "database": "ok", "version": "12.1.0"})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401, {"message": "Unauthorized"})
            if path.startswith("/api/datasources/uid/"):
                uid = path.rsplit("/", 1)[1]
                if uid not in state.datasources:
                    return self._send(404, {"message": "Data source not found"})
                if method == "GET":
                    return self._send(200, state.datasources[uid])
                if method == "PUT":
                    if state.datasources[uid].get("readOnly"):
                        return self._send(403, {"message": "Cannot update read-only data source"})
                    state.datasources[uid] = {**body, "id": state.datasources[uid]["id"], "readOnly": False}
                    return self._send(200, {"message": "Datasource updated", "datasource": state.datasources[uid]})
            if path == "/api/datasources" and method == "POST":
                if body["uid"] in state.datasources:
                    return self._send(409, {"message": "data source with the same uid already exists"})
                state.datasources[body["uid"]] = {**body, "id": len(state.datasources) + 1, "readOnly": False}
                return self._send(200, {"message": "Datasource added", "datasource": state.datasources[body["uid"]]})
            if path.startswith("/api/folders/") and method == "GET":
                uid = path.rsplit("/", 1)[1]
                if uid not in state.folders:
                    return self._send(404, {"message": "folder not found"})
                return self._send(200, state.folders[uid])
            if path == "/api/folders" and method == "POST":
                if body["uid"] in state.folders:
                    return self._send(409, {"message": "a folder with the same uid already exists"})
                state.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": 7}
                return self._send(200, state.folders[body["uid"]])
            if path == "/api/dashboards/db" and method == "POST":
                dash = body["dashboard"]
                if body.get("folderUid") not in state.folders:
                    return self._send(400, {"message": "folder not found"})
                if dash["uid"] in state.dashboards and not body.get("overwrite"):
                    return self._send(412, {"status": "version-mismatch"})
                state.dashboards[dash["uid"]] = {"dashboard": dash, "folderUid": body["folderUid"]}
                return self._send(200, {"status": "success", "uid": dash["uid"], "version": 1})
            if path == "/api/search" and method == "GET":
                folders = query.get("folderUIDs", [])
                hits = [{"uid": uid, "title": d["dashboard"]["title"], "type": "dash-db",
                         "folderUid": d["folderUid"]}
                        for uid, d in state.dashboards.items()
                        if query.get("type") == ["dash-db"] and (not folders or d["folderUid"] in folders)]
                return self._send(200, hits)
            return self._send(404, {"message": "Not found"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PUT(self):
            self._handle("PUT")

    return Handler


@pytest.fixture()
def grafana() -> Iterator[FakeGrafana]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


DB = DbLocation("db.internal:5432", "wardstream")
BOARDS = [b.to_json() for b in all_dashboards()]


def test_first_push_creates_everything(grafana: FakeGrafana):
    api = connect(grafana.url, TOKEN, None, None)
    report = push(api, BOARDS, DB, "s3cret")
    assert report.datasource == "created" and report.folder == "created"
    assert report.found == sorted(b["uid"] for b in BOARDS)

    assert grafana.paths()[:6] == ["/api/health", f"/api/datasources/uid/{DS_UID}", "/api/datasources",
                                   f"/api/folders/{FOLDER_UID}", "/api/folders", "/api/dashboards/db"]
    assert grafana.paths("POST").count("/api/dashboards/db") == len(BOARDS)
    assert grafana.paths()[-1] == "/api/search"
    assert all(a == f"Bearer {TOKEN}" for a in grafana.auth[1:])

    (ds,) = grafana.bodies("POST", "/api/datasources")
    assert ds["uid"] == DS_UID and ds["type"] == DS_TYPE and ds["user"] == READER_ROLE
    assert ds["url"] == "db.internal:5432" and ds["jsonData"]["database"] == "wardstream"
    assert ds["secureJsonData"] == {"password": "s3cret"} and ds["access"] == "proxy"
    (folder,) = grafana.bodies("POST", "/api/folders")
    assert folder == {"title": "wardstream", "uid": FOLDER_UID}
    saved = grafana.bodies("POST", "/api/dashboards/db")
    assert [s["dashboard"]["uid"] for s in saved] == [b["uid"] for b in BOARDS]
    for s, board in zip(saved, BOARDS):
        assert s["overwrite"] is True and s["folderUid"] == FOLDER_UID and s["dashboard"]["id"] is None
        assert s["dashboard"]["panels"] == board["panels"]


def test_second_push_updates_in_place(grafana: FakeGrafana):
    api = connect(grafana.url, TOKEN, None, None)
    push(api, BOARDS, DB, "s3cret")
    grafana.calls.clear()
    report = push(api, BOARDS, DbLocation("db2:5433", "other"), "rotated")
    assert report.datasource == "updated" and report.folder == "exists"
    assert "/api/folders" not in grafana.paths("POST") and "/api/datasources" not in grafana.paths("POST")
    (ds,) = grafana.bodies("PUT", f"/api/datasources/uid/{DS_UID}")
    assert ds["url"] == "db2:5433" and ds["secureJsonData"]["password"] == "rotated"
    assert len(grafana.datasources) == 1 and len(grafana.dashboards) == len(BOARDS)


def test_a_provisioned_datasource_is_left_alone(grafana: FakeGrafana):
    grafana.datasources[DS_UID] = {"uid": DS_UID, "id": 1, "type": DS_TYPE, "readOnly": True}
    report = push(connect(grafana.url, TOKEN, None, None), BOARDS, DB, "s3cret")
    assert report.datasource.startswith("provisioned")
    assert not any("datasources" in p for p in grafana.paths("PUT") + grafana.paths("POST"))
    assert len(grafana.dashboards) == len(BOARDS)


def test_bad_credentials_give_a_clear_error(grafana: FakeGrafana):
    with pytest.raises(PushError, match="HTTP 401"):
        push(connect(grafana.url, "wrong", None, None), BOARDS, DB, "pw")
    assert grafana.dashboards == {}


def test_basic_auth_is_used_without_a_token(grafana: FakeGrafana):
    with pytest.raises(PushError, match="401"):
        push(connect(grafana.url, None, "admin", "pw"), BOARDS, DB, "pw")
    assert grafana.auth[-1].startswith("Basic ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_and_unset_configuration():
    with pytest.raises(PushError, match="unreachable"):
        push(connect(f"http://127.0.0.1:{_free_port()}", TOKEN, None, None, timeout=2), BOARDS, DB, "pw")
    with pytest.raises(PushError, match="GRAFANA_URL is not set"):
        connect(None, TOKEN, None, None)
    with pytest.raises(PushError, match="http"):
        connect("grafana:3000", TOKEN, None, None)
    with pytest.raises(PushError, match="GRAFANA_TOKEN"):
        connect("http://127.0.0.1:3000", None, "admin", None)


def test_cli_push(grafana: FakeGrafana, monkeypatch):
    runner = CliRunner()
    for name in ("GRAFANA_URL", "GRAFANA_TOKEN", "GRAFANA_USER", "GRAFANA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["grafana", "push"])
    assert result.exit_code == 1 and "GRAFANA_URL is not set" in result.output

    monkeypatch.setenv("GRAFANA_URL", grafana.url)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:5432/wardstream")
    monkeypatch.setenv("WARDSTREAM_READER_PASSWORD", "from-env")
    result = runner.invoke(app, ["grafana", "push", "--db-host", "postgres:5432"])
    assert result.exit_code == 0, result.output
    assert f"dashboards saved: {len(BOARDS)}" in result.output
    (ds,) = grafana.bodies("POST", "/api/datasources")
    assert ds["url"] == "postgres:5432" and ds["secureJsonData"]["password"] == "from-env"

    result = runner.invoke(app, ["grafana", "push", "--db-host", "no-port"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
