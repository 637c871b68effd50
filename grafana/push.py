"""Install wardstream's datasource, folder and dashboards on a running Grafana (its HTTP API).

Idempotent: the datasource is created or updated by its fixed uid, the folder created once, every
dashboard saved with ``overwrite``. A datasource that Grafana provisioned from a file (docker-compose)
is read-only through the API and is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from grafana.datasource import (
    DS_UID,
    FOLDER_TITLE,
    FOLDER_UID,
    DbLocation,
    datasource_payload,
)


class PushError(RuntimeError):
    """Grafana is not configured, not reachable, or refused a request; the message says which."""


@dataclass
class PushReport:
    datasource: str = ""  # created | updated | provisioned (left as is)
    folder: str = ""  # created | exists
    dashboards: list[str] = field(default_factory=list)  # uids saved
    found: list[str] = field(default_factory=list)  # uids Grafana lists in the folder afterwards


def connect(url: str | None, token: str | None, user: str | None, password: str | None,
            timeout: float = 10.0) -> GrafanaApi:
    """A client for ``url`` with a token (preferred) or basic auth; clear errors when unset."""
    if not url:
        raise PushError("GRAFANA_URL is not set (e.g. http://127.0.0.1:3000)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"GRAFANA_URL must be an http(s) URL, got {url!r}")
    if token:
        credential: str | tuple[str, str] = token
    elif user and password:
        credential = (user, password)
    else:
        raise PushError("set GRAFANA_TOKEN (a service account token) or GRAFANA_USER and GRAFANA_PASSWORD")
    return GrafanaApi.from_url(url, credential=credential, timeout=timeout)


def _call(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except GrafanaClientError as exc:
        raise PushError(f"Grafana refused to {what}: HTTP {exc.status_code} {exc.message}") from None
    except GrafanaException as exc:
        raise PushError(f"Grafana failed to {what}: {exc.message}") from None
    except OSError as exc:  # the HTTP client's connection errors (niquests' RequestException is one)
        raise PushError(f"Grafana is unreachable ({what}): {exc}") from None


def _get_or_none(what: str, fn, *args):
    """The object, or None when Grafana answers 404; any other failure is a PushError."""
    def get():
        try:
            return fn(*args)
        except GrafanaClientError as exc:
            if exc.status_code == 404:
                return None
            raise

    return _call(what, get)


def push(api: GrafanaApi, dashboards: list[dict], db: DbLocation, reader_password: str) -> PushReport:
    """Create/update the datasource, the folder and every dashboard; then list what Grafana has."""
    report = PushReport()
    health = _call("answer /api/health", api.client.GET, "/health")
    if not isinstance(health, dict) or health.get("database") not in (None, "ok"):
        raise PushError(f"Grafana is not healthy: {health}")

    existing = _get_or_none("look up the datasource", api.datasource.get_datasource_by_uid, DS_UID)
    if existing is not None and existing.get("readOnly"):
        report.datasource = "provisioned (left as is)"
    else:
        body = datasource_payload(db, reader_password)
        if existing is None:
            _call("create the datasource", api.datasource.create_datasource, body)
            report.datasource = "created"
        else:
            _call("update the datasource", api.datasource.update_datasource_by_uid, DS_UID, body)
            report.datasource = "updated"

    if _get_or_none("look up the folder", api.folder.get_folder, FOLDER_UID) is None:
        _call("create the folder", api.folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID)
        report.folder = "created"
    else:
        report.folder = "exists"

    for board in dashboards:
        payload = {"dashboard": {**board, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                   "message": "wardstream grafana push"}
        _call(f"save dashboard {board['uid']}", api.dashboard.update_dashboard, payload)
        report.dashboards.append(board["uid"])

    hits = _call("search the folder", api.search.search_dashboards, type_="dash-db", folder_uids=[FOLDER_UID])
    report.found = sorted(h["uid"] for h in hits or [] if "uid" in h)
    missing = sorted(set(report.dashboards) - set(report.found))
    if missing:
        raise PushError(f"Grafana saved but does not list these dashboards in folder {FOLDER_UID!r}: {missing}")
    return report
