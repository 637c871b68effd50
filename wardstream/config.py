"""The one configuration of the project: typed, validated settings read from environment variables.

:func:`load_settings` (alias :func:`settings`) reads and validates every variable at once; each
command builds it at its start, so a bad value stops it with one line (:class:`ConfigError`)
before any connection. Nothing else in the project reads the environment. Secrets (database
passwords, SASL credentials, webhook URLs, Grafana tokens) come from the environment only, never
from files in the repository. Defaults point at the local stack of ``wardstream stack up``.
The variables are listed in README.md ("Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting that does not validate; ``str()`` is one line naming the variable."""


def _env(name: str) -> Any:
    """An optional field read from the environment variable ``name`` (its only name)."""
    return Field(None, validation_alias=AliasChoices(name))


_CONFIG = SettingsConfigDict(
    frozen=True, env_ignore_empty=True, extra="ignore", case_sensitive=True,
    populate_by_name=True, validate_default=False,
)


class KafkaSettings(BaseSettings):
    """Kafka client settings shared by the producer, the Faust worker and the sinks."""

    model_config = _CONFIG

    bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS"),
                                   min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL"))
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = _env("KAFKA_SASL_MECHANISM")
    sasl_username: str | None = _env("KAFKA_SASL_USERNAME")
    sasl_password: str | None = Field(None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD"), repr=False)
    ssl_cafile: str | None = _env("KAFKA_SSL_CAFILE")

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

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


def _seconds(name: str, default: float, *, zero_ok: bool = False) -> Any:
    bound = {"ge": 0} if zero_ok else {"gt": 0}
    return Field(default, validation_alias=AliasChoices(name), **bound)


class StreamSettings(BaseSettings):
    """The stream worker's settings (stream/README.md "Configuration"); tuning defaults from bench/."""

    model_config = _CONFIG

    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", validation_alias=AliasChoices("WARDSTREAM_PROCESSING_GUARANTEE"))
    # what one worker process runs (stream/README.md "Roles"): both sides, the ADT side only
    # (hospital.adt -> outputs, partials), or the KPI side only (partials -> hospital.kpis,
    # hospital.model-health), each side then its own Faust app, group and process
    role: Literal["all", "adt", "kpis"] = Field("all", validation_alias=AliasChoices("WARDSTREAM_WORKER_ROLE"))
    # how often changed KPI windows are emitted (wall clock decides only when, never a value)
    kpi_flush_seconds: float = _seconds("KPI_FLUSH_SECONDS", 2.0)
    # Faust's web view, off unless a port is given
    web_port: int | None = Field(None, validation_alias=AliasChoices("WARDSTREAM_WEB_PORT"), ge=1, le=65535)
    # messages Faust buffers per stream before it stops fetching
    stream_buffer: int = Field(4096, validation_alias=AliasChoices("WARDSTREAM_STREAM_BUFFER"), ge=1)
    # Faust's producer (table changelogs) and the KPI windows' producer
    producer_linger: float = _seconds("WARDSTREAM_PRODUCER_LINGER", 0.02, zero_ok=True)
    # the ADT outputs' producer: its linger counts in every alert's latency
    events_linger: float = _seconds("WARDSTREAM_EVENTS_LINGER", 0.001, zero_ok=True)
    # messages per agent batch, and how long an agent waits for its batch to fill
    adt_batch: int = Field(500, validation_alias=AliasChoices("WARDSTREAM_ADT_BATCH"), ge=1)
    adt_batch_within: float = _seconds("WARDSTREAM_ADT_BATCH_WITHIN", 0.01)
    # while hospital.adt has a backlog, the ADT agent joins batches until adt_batch, waiting at
    # most this long (0: never joins; stream.faust_batch.gathered)
    adt_batch_gather: float = _seconds("WARDSTREAM_ADT_BATCH_GATHER", 0.1, zero_ok=True)
    kpi_batch_within: float = _seconds("WARDSTREAM_KPI_BATCH_WITHIN", 0.2)
    # a partition with messages past its state and none taken this long is sought again
    stall_seconds: float = _seconds("WARDSTREAM_STALL_SECONDS", 30.0)
    # the KPI flush sleeps this long once per 10 ms it runs, so the ADT agent runs meanwhile
    flush_yield_s: float = _seconds("WARDSTREAM_FLUSH_YIELD_S", 0.001, zero_ok=True)
    # while the ADT side is behind, KPI flushes hold each window's KPIs until they settle in event
    # time (one message per window in a replay instead of one per flush crossing its days)
    kpi_settle: bool = Field(True, validation_alias=AliasChoices("WARDSTREAM_KPI_SETTLE"))
    # dirty (dimension, day) pairs after which the KPI agent flushes at once
    kpi_flush_pending_days: int = Field(2000, validation_alias=AliasChoices("WARDSTREAM_KPI_FLUSH_PENDING_DAYS"),
                                        ge=1)
    # per RocksDB store (tables x partitions): Faust's defaults are 64 MiB x 3 and 2 GiB
    rocksdb_write_buffer_kb: int = Field(2048, validation_alias=AliasChoices("WARDSTREAM_ROCKSDB_WRITE_BUFFER_KB"),
                                         ge=64)
    rocksdb_block_cache_kb: int = Field(4096, validation_alias=AliasChoices("WARDSTREAM_ROCKSDB_BLOCK_CACHE_KB"),
                                        ge=64)
    # how long the broker may hold the worker's fetch (Faust fixes 1,500; stream/faust_patches.py)
    fetch_max_wait_ms: int = Field(100, validation_alias=AliasChoices("WARDSTREAM_FETCH_MAX_WAIT_MS"), ge=0)


class Settings(BaseSettings):
    """All runtime settings; build them with :func:`load_settings`."""

    model_config = _CONFIG

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, validation_alias=AliasChoices("kafka"))
    stream: StreamSettings = Field(default_factory=StreamSettings, validation_alias=AliasChoices("stream"))
    database_url: str = Field("postgresql://wardstream:wardstream@127.0.0.1:5432/wardstream",
                              validation_alias=AliasChoices("DATABASE_URL"), repr=False)
    # Prefix for every topic name and consumer group: "" gives the DESIGN.md names
    # (hospital.adt, ...); a replay into a fresh namespace uses e.g. "replay-1.".
    topic_namespace: str = Field("", validation_alias=AliasChoices("WARDSTREAM_NAMESPACE"))
    state_dir: Path = Field(REPO_ROOT / ".wardstream" / "state", validation_alias=AliasChoices("WARDSTREAM_STATE_DIR"))
    adt_partitions: int = Field(4, validation_alias=AliasChoices("WARDSTREAM_ADT_PARTITIONS"), ge=1)
    # Copies of every topic the project creates, and how many must have a write before an
    # acks=all producer hears it succeeded: 1 and 1 on one broker, 3 and 2 on a cluster
    # (`wardstream stack env` prints them for the running stack).
    replication_factor: int = Field(1, validation_alias=AliasChoices("WARDSTREAM_REPLICATION_FACTOR"), ge=1)
    min_insync_replicas: int = Field(1, validation_alias=AliasChoices("WARDSTREAM_MIN_INSYNC_REPLICAS"), ge=1)
    alert_webhook_url: str | None = _env("ALERT_WEBHOOK_URL")
    grafana_url: str | None = _env("GRAFANA_URL")
    grafana_token: str | None = Field(None, validation_alias=AliasChoices("GRAFANA_TOKEN"), repr=False)
    grafana_user: str | None = _env("GRAFANA_USER")
    grafana_password: str | None = Field(None, validation_alias=AliasChoices("GRAFANA_PASSWORD"), repr=False)
    # the console's log level (the worker's own is its --loglevel)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=AliasChoices("WARDSTREAM_LOG_LEVEL"))
    # Alert budget (DESIGN.md "Changes since v1"): the share k of its discharges a facility
    # flags, with per-facility overrides ("F01=0.12,F02=0.08"). See :meth:`alert_share_for`.
    alert_share: float = Field(0.10, validation_alias=AliasChoices("WARDSTREAM_ALERT_SHARE"), gt=0, le=1)
    alert_shares: Annotated[dict[str, Annotated[float, Gt(0), Le(1)]], NoDecode] = Field(
        default_factory=dict, validation_alias=AliasChoices("WARDSTREAM_ALERT_SHARES"))
    # The sink / notifier connect as their own least-privilege role (sql/migrations/V003__roles.sql).
    sink_database_url: str | None = Field(None, validation_alias=AliasChoices("SINK_DATABASE_URL"), repr=False)
    # Defaults are for the local stack only; set real secrets in the environment.
    sink_password: str = Field("wardstream_sink", validation_alias=AliasChoices("WARDSTREAM_SINK_PASSWORD"),
                               repr=False)
    reader_password: str = Field("wardstream_reader", validation_alias=AliasChoices("WARDSTREAM_READER_PASSWORD"),
                                 repr=False)
    # while messages flow, how long the broker may hold the sink's fetch to fill a batch (0: never)
    sink_linger_ms: int = Field(20, validation_alias=AliasChoices("WARDSTREAM_SINK_LINGER_MS"), ge=0)
    # how long a client waits out a starting or unreachable broker (wardstream.kafka_io.broker_call)
    broker_wait_s: float = Field(60.0, validation_alias=AliasChoices("WARDSTREAM_BROKER_WAIT_S"), gt=0)
    # how long the sink's or the notifier's consumer may stay out of a stable consumer group
    # before it is replaced by a new one (wardstream.kafka_io.GroupMember)
    group_settle_s: float = Field(120.0, validation_alias=AliasChoices("WARDSTREAM_GROUP_SETTLE_S"), gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("min_insync_replicas")
    @classmethod
    def _insync(cls, value: int, info: ValidationInfo) -> int:
        """No more in-sync replicas than copies: such a topic would refuse every acks=all write."""
        copies = info.data.get("replication_factor")
        if copies is not None and value > copies:
            raise ValueError(f"must be at most WARDSTREAM_REPLICATION_FACTOR ({copies})")
        return value

    @field_validator("alert_shares", mode="before")
    @classmethod
    def _shares(cls, value: Any) -> Any:
        """``"F01=0.12,F02=0.08"`` -> ``{"F01": "0.12", "F02": "0.08"}`` (then typed as floats)."""
        if not isinstance(value, str):
            return value
        shares: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            facility, sep, share = item.partition("=")
            if not (sep and facility.strip()):
                raise ValueError(f"{item!r} is not FACILITY=SHARE")
            shares[facility.strip()] = share.strip()
        return shares

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


def load_settings() -> Settings:
    """Read and validate every setting from the environment; raises :class:`ConfigError`."""
    try:
        return Settings(kafka=_build(KafkaSettings), stream=_build(StreamSettings))
    except ValidationError as exc:
        raise ConfigError(describe(exc, Settings)) from None


def settings() -> Settings:
    """The settings as the environment has them now (:func:`load_settings`; cheap, call it where needed)."""
    return load_settings()


def _build(model: type[BaseSettings]) -> Any:
    try:
        return model()
    except ValidationError as exc:
        raise ConfigError(describe(exc, model)) from None


def describe(exc: ValidationError, model: type[BaseSettings]) -> str:
    """One line per :class:`ConfigError`: ``VARIABLE='value': what it must be`` for each error.

    >>> try:
    ...     StreamSettings(WARDSTREAM_ADT_BATCH="many")
    ... except ValidationError as exc:
    ...     print(describe(exc, StreamSettings))
    WARDSTREAM_ADT_BATCH='many': must be an integer >= 1
    """
    return "; ".join(_one(error, model) for error in exc.errors())


def _one(error: Any, model: type[BaseSettings]) -> str:
    loc = [str(part) for part in error["loc"]]
    field = model.model_fields.get(loc[0]) or next(
        (f for f in model.model_fields.values() if _variable(f) == loc[0]), None)
    name = _variable(field) if field is not None else loc[0]
    if len(loc) > 1:  # an entry of a mapping (WARDSTREAM_ALERT_SHARES)
        name = f"{name} {loc[1]}"
    if field is None or len(loc) > 1 or error["type"] == "value_error":
        what = error["msg"].removeprefix("Value error, ")
        return f"{name}={_shown(error.get('input'), name)}: {what[:1].lower()}{what[1:]}"
    return f"{name}={_shown(error.get('input'), name)}: must be {_expected(field)}"


def _variable(field: Any) -> str:
    alias = field.validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else str(alias)


def _shown(value: Any, name: str) -> str:
    """The value as given, except secrets."""
    secret = any(word in name for word in ("PASSWORD", "TOKEN", "DATABASE_URL"))
    return "'***'" if secret else repr(value)


def _expected(field: Any) -> str:
    """What a field accepts, from its type and bounds: ``an integer >= 1``, ``one of a, b``."""
    annotation = field.annotation
    args = getattr(annotation, "__args__", ())
    literal = next((a for a in (annotation, *args) if getattr(a, "__origin__", None) is Literal), None)
    if literal is not None or getattr(annotation, "__origin__", None) is Literal:
        choices = (literal or annotation).__args__
        return "one of " + ", ".join(str(c) for c in choices)
    base = next((t for t in (int, float) if t is annotation or t in args), None)
    text = {int: "an integer", float: "a number"}.get(base, "a valid value")  # type: ignore[arg-type]
    symbols = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}
    bounds = [f"{sym} {getattr(m, attr)}" for m in field.metadata for kind, (sym, attr) in symbols.items()
              if isinstance(m, kind)]
    return " ".join([text, " and ".join(bounds)]).strip()


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
