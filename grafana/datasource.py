"""The one PostgreSQL datasource every panel reads, and the folder the dashboards live in.

Panels name the datasource by a fixed uid, so the same JSON works with the provisioned datasource
(docker-compose) and with the one ``wardstream grafana push`` creates on any Grafana. Grafana logs
in as the read-only role: a dashboard can never change the data it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DS_TYPE = "grafana-postgresql-datasource"
DS_UID = "wardstream-pg"
DS_NAME = "wardstream PostgreSQL"
READER_ROLE = "wardstream_reader"
# Grafana reads it from its own environment (provisioning); wardstream from config.settings().
READER_PASSWORD_ENV = "WARDSTREAM_READER_PASSWORD"
FOLDER_UID = "wardstream"
FOLDER_TITLE = "wardstream"
# Grafana's own encoding of the server version (major * 100): enables version-specific SQL hints.
POSTGRES_VERSION = 1500


def ds_ref() -> dict[str, str]:
    """The ``datasource`` object every panel and target carries."""
    return {"type": DS_TYPE, "uid": DS_UID}


@dataclass(frozen=True)
class DbLocation:
    """Where Grafana finds PostgreSQL: ``host:port`` and the database name."""

    host_port: str
    database: str

    @classmethod
    def from_url(cls, url: str) -> "DbLocation":
        """Take host, port and database from a ``DATABASE_URL`` (credentials are ignored).

        >>> DbLocation.from_url("postgresql+psycopg2://u:p@db.example:6543/wards")
        DbLocation(host_port='db.example:6543', database='wards')
        >>> DbLocation.from_url("postgresql://u@localhost/w").host_port
        'localhost:5432'
        """
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("DATABASE_URL needs a host and a database name, e.g. postgresql://u:p@host:5432/db")
        return cls(f"{parts.hostname}:{parts.port or 5432}", unquote(parts.path.strip("/")))


def datasource_payload(location: DbLocation, password: str | None) -> dict:
    """The body of Grafana's ``POST /api/datasources`` / ``PUT /api/datasources/uid/<uid>``."""
    body: dict = {
        "uid": DS_UID,
        "name": DS_NAME,
        "type": DS_TYPE,
        "access": "proxy",
        "url": location.host_port,
        "user": READER_ROLE,
        "isDefault": True,
        "jsonData": {
            "database": location.database,
            "sslmode": "disable",
            "postgresVersion": POSTGRES_VERSION,
            "timescaledb": False,
            "maxOpenConns": 10,
            "timeInterval": "1m",
        },
    }
    if password is not None:
        body["secureJsonData"] = {"password": password}
    return body


def provisioning_datasource(location: DbLocation) -> dict:
    """Grafana's datasource provisioning file; the password stays an env reference for Grafana."""
    ds = datasource_payload(location, "${" + READER_PASSWORD_ENV + "}")
    ds["editable"] = False
    return {"apiVersion": 1, "datasources": [ds]}


def provisioning_dashboards(path: str) -> dict:
    """Grafana's dashboard provider file: load every JSON under ``path`` into the folder."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "wardstream",
                "orgId": 1,
                "folder": FOLDER_TITLE,
                "folderUid": FOLDER_UID,
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": path, "foldersFromFilesStructure": False},
            }
        ],
    }
