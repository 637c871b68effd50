"""One place for configuration: everything comes from environment variables.

Secrets (database passwords, SASL credentials, webhook URLs, Grafana tokens) are read
from the environment only, never from files in the repository. Defaults point at the
local stack that ``wardstream stack up`` starts on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class KafkaSettings:
    """Kafka client settings shared by the producer, the Faust worker and the sinks."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def kafka_python_kwargs(self) -> dict[str, object]:
        """Keyword arguments for kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.ssl_cafile:
            kwargs["ssl_cafile"] = self.ssl_cafile
        return kwargs


@dataclass(frozen=True)
class Settings:
    """All runtime settings; build with :func:`settings` so tests can override env vars."""

    kafka: KafkaSettings
    database_url: str
    # Prefix for every topic name and consumer group: "" gives the DESIGN.md names
    # (hospital.adt, ...); a replay into a fresh namespace uses e.g. "replay-1.".
    topic_namespace: str
    state_dir: Path
    adt_partitions: int
    alert_webhook_url: str | None
    grafana_url: str | None
    grafana_token: str | None = field(repr=False)
    grafana_user: str | None
    grafana_password: str | None = field(repr=False)
    log_level: str
    # Alert budget (DESIGN.md "Changes since v1"): the share k of its discharges a facility
    # flags (WARDSTREAM_ALERT_SHARE), with per-facility overrides (WARDSTREAM_ALERT_SHARES,
    # "F01=0.12,F02=0.08"). See :meth:`alert_share_for`.
    alert_share: float = 0.10
    alert_shares: dict[str, float] = field(default_factory=dict)
    # The sink / notifier connect as their own least-privilege role (sql/migrations/V003__roles.sql).
    sink_database_url: str | None = None
    sink_password: str = field(default="wardstream_sink", repr=False)
    reader_password: str = field(default="wardstream_reader", repr=False)

    def alert_share_for(self, facility_id: str) -> float:
        """The facility's alert share k: its override, else the default."""
        return self.alert_shares.get(facility_id, self.alert_share)

    @property
    def sink_url(self) -> str:
        """SINK_DATABASE_URL, falling back to DATABASE_URL (libpq form, for psycopg2)."""
        return self.sink_database_url or self.database_url
    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL for SQLAlchemy, pinned to the psycopg2 driver (SQLAlchemy 2.1 defaults to psycopg 3)."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg2://" + url[len(prefix):]
        return url


def settings() -> Settings:
    """Read the settings from the environment (cheap; call it where needed)."""
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092") or "",
            security_protocol=_env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") or "PLAINTEXT",
            sasl_mechanism=_env("KAFKA_SASL_MECHANISM"),
            sasl_username=_env("KAFKA_SASL_USERNAME"),
            sasl_password=_env("KAFKA_SASL_PASSWORD"),
            ssl_cafile=_env("KAFKA_SSL_CAFILE"),
        ),
        database_url=_env(
            "DATABASE_URL", "postgresql://wardstream:wardstream@127.0.0.1:5432/wardstream"
        )
        or "",
        topic_namespace=_env("WARDSTREAM_NAMESPACE", "") or "",
        state_dir=Path(_env("WARDSTREAM_STATE_DIR", str(REPO_ROOT / ".wardstream" / "state")) or ""),
        adt_partitions=int(_env("WARDSTREAM_ADT_PARTITIONS", "4") or "4"),
        alert_webhook_url=_env("ALERT_WEBHOOK_URL"),
        grafana_url=_env("GRAFANA_URL"),
        grafana_token=_env("GRAFANA_TOKEN"),
        grafana_user=_env("GRAFANA_USER"),
        grafana_password=_env("GRAFANA_PASSWORD"),
        log_level=_env("WARDSTREAM_LOG_LEVEL", "INFO") or "INFO",
        alert_share=float(_env("WARDSTREAM_ALERT_SHARE", "0.10") or "0.10"),
        alert_shares={f.strip(): float(v) for f, v in (
            item.split("=", 1) for item in (_env("WARDSTREAM_ALERT_SHARES", "") or "").split(",")
            if item.strip())},
        sink_database_url=_env("SINK_DATABASE_URL"),
        # Defaults are for the local stack only; set real secrets in the environment.
        sink_password=_env("WARDSTREAM_SINK_PASSWORD", "wardstream_sink") or "",
        reader_password=_env("WARDSTREAM_READER_PASSWORD", "wardstream_reader") or "",
    )


@contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set (or unset, with None) environment variables for the block, then restore them.

    Settings are read from the environment, so tests, benchmarks and drills switch namespace or
    database this way (then :func:`settings` sees it) and leave the process as they found it.
    """
    old = {k: os.environ.get(k) for k in values}
    try:
        _put_env(values)
        yield
    finally:
        _put_env(old)


def _put_env(values: dict[str, str | None]) -> None:
    """Set each variable, or unset it where the value is None."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
