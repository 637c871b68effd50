"""The one typed configuration (wardstream/config.py): defaults, every variable, one-line errors,
and a stream app that is built at start, not at import. No broker or database needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wardstream.config import REPO_ROOT, ConfigError, KafkaSettings, Settings, StreamSettings, load_settings

# Every variable the project reads, with a valid non-default value and the attribute it sets.
VARIABLES: dict[str, tuple[str, str, object]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka.bootstrap_servers", "k1:9093,k2:9093", "k1:9093,k2:9093"),
    "KAFKA_SECURITY_PROTOCOL": ("kafka.security_protocol", "sasl_ssl", "SASL_SSL"),
    "KAFKA_SASL_MECHANISM": ("kafka.sasl_mechanism", "SCRAM-SHA-512", "SCRAM-SHA-512"),
    "KAFKA_SASL_USERNAME": ("kafka.sasl_username", "ward", "ward"),
    "KAFKA_SASL_PASSWORD": ("kafka.sasl_password", "pw", "pw"),
    "KAFKA_SSL_CAFILE": ("kafka.ssl_cafile", "/etc/ca.pem", "/etc/ca.pem"),
    "DATABASE_URL": ("database_url", "postgresql://u:p@db:5432/w", "postgresql://u:p@db:5432/w"),
    "SINK_DATABASE_URL": ("sink_database_url", "postgresql://s:p@db/w", "postgresql://s:p@db/w"),
    "WARDSTREAM_NAMESPACE": ("topic_namespace", "replay-1.", "replay-1."),
    "WARDSTREAM_STATE_DIR": ("state_dir", "/var/lib/ws", Path("/var/lib/ws")),
    "WARDSTREAM_ADT_PARTITIONS": ("adt_partitions", "8", 8),
    "ALERT_WEBHOOK_URL": ("alert_webhook_url", "https://hooks.example/x", "https://hooks.example/x"),
    "GRAFANA_URL": ("grafana_url", "http://g:3000", "http://g:3000"),
    "GRAFANA_TOKEN": ("grafana_token", "tok", "tok"),
    "GRAFANA_USER": ("grafana_user", "admin", "admin"),
    "GRAFANA_PASSWORD": ("grafana_password", "gpw", "gpw"),
    "WARDSTREAM_LOG_LEVEL": ("log_level", "debug", "DEBUG"),
    "WARDSTREAM_ALERT_SHARE": ("alert_share", "0.2", 0.2),
    "WARDSTREAM_ALERT_SHARES": ("alert_shares", "F01=0.12, F02=0.08", {"F01": 0.12, "F02": 0.08}),
    "WARDSTREAM_SINK_PASSWORD": ("sink_password", "spw", "spw"),
    "WARDSTREAM_READER_PASSWORD": ("reader_password", "rpw", "rpw"),
    "WARDSTREAM_SINK_LINGER_MS": ("sink_linger_ms", "0", 0),
    "WARDSTREAM_PROCESSING_GUARANTEE": ("stream.processing_guarantee", "exactly_once", "exactly_once"),
    "KPI_FLUSH_SECONDS": ("stream.kpi_flush_seconds", "0.5", 0.5),
    "WARDSTREAM_WEB_PORT": ("stream.web_port", "6067", 6067),
    "WARDSTREAM_STREAM_BUFFER": ("stream.stream_buffer", "1024", 1024),
    "WARDSTREAM_PRODUCER_LINGER": ("stream.producer_linger", "0.05", 0.05),
    "WARDSTREAM_EVENTS_LINGER": ("stream.events_linger", "0", 0.0),
    "WARDSTREAM_ADT_BATCH": ("stream.adt_batch", "2000", 2000),
    "WARDSTREAM_ADT_BATCH_WITHIN": ("stream.adt_batch_within", "0.2", 0.2),
    "WARDSTREAM_KPI_BATCH_WITHIN": ("stream.kpi_batch_within", "0.05", 0.05),
    "WARDSTREAM_STALL_SECONDS": ("stream.stall_seconds", "10", 10.0),
    "WARDSTREAM_FLUSH_YIELD_S": ("stream.flush_yield_s", "0", 0.0),
    "WARDSTREAM_KPI_FLUSH_PENDING_DAYS": ("stream.kpi_flush_pending_days", "500", 500),
    "WARDSTREAM_ROCKSDB_WRITE_BUFFER_KB": ("stream.rocksdb_write_buffer_kb", "1024", 1024),
    "WARDSTREAM_ROCKSDB_BLOCK_CACHE_KB": ("stream.rocksdb_block_cache_kb", "8192", 8192),
    "WARDSTREAM_FETCH_MAX_WAIT_MS": ("stream.fetch_max_wait_ms", "500", 500),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting in the environment (the test then sets its own)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _get(s: Settings, path: str) -> object:
    value: object = s
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_defaults_are_the_local_stack(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.kafka.kafka_python_kwargs() == {"bootstrap_servers": ["127.0.0.1:9092"],
                                             "security_protocol": "PLAINTEXT"}
    assert s.sqlalchemy_url == "postgresql+psycopg2://wardstream:wardstream@127.0.0.1:5432/wardstream"
    assert s.sink_url == s.database_url
    assert (s.topic_namespace, s.adt_partitions, s.log_level) == ("", 4, "INFO")
    assert s.state_dir == REPO_ROOT / ".wardstream" / "state"
    assert s.alert_webhook_url is None and s.grafana_url is None
    t = s.stream
    assert (t.processing_guarantee, t.kpi_flush_seconds, t.web_port) == ("at_least_once", 2.0, None)
    assert (t.adt_batch, t.adt_batch_within, t.fetch_max_wait_ms, t.stream_buffer) == (500, 0.01, 100, 4096)
    assert s.sink_linger_ms == 20


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_every_variable_is_read(clean_env: pytest.MonkeyPatch, name: str) -> None:
    path, raw, expected = VARIABLES[name]
    default = _get(load_settings(), path)
    clean_env.setenv(name, raw)
    assert _get(load_settings(), path) == expected != default


def test_an_empty_variable_means_its_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WARDSTREAM_ADT_PARTITIONS", "")
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    s = load_settings()
    assert s.adt_partitions == 4 and s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert "bootstrap_servers" not in s.kafka.model_fields_set  # the demo's "no broker given"


@pytest.mark.parametrize(("name", "raw", "line"), [
    ("WARDSTREAM_ADT_PARTITIONS", "four", "WARDSTREAM_ADT_PARTITIONS='four': must be an integer >= 1"),
    ("WARDSTREAM_ADT_PARTITIONS", "0", "WARDSTREAM_ADT_PARTITIONS='0': must be an integer >= 1"),
    ("KPI_FLUSH_SECONDS", "-1", "KPI_FLUSH_SECONDS='-1': must be a number > 0"),
    ("WARDSTREAM_ALERT_SHARE", "1.5", "WARDSTREAM_ALERT_SHARE='1.5': must be a number > 0 and <= 1"),
    ("WARDSTREAM_PROCESSING_GUARANTEE", "twice",
     "WARDSTREAM_PROCESSING_GUARANTEE='twice': must be one of at_least_once, exactly_once"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS",
     "KAFKA_SECURITY_PROTOCOL='TLS': must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("WARDSTREAM_WEB_PORT", "70000", "WARDSTREAM_WEB_PORT='70000': must be an integer >= 1 and <= 65535"),
    ("WARDSTREAM_ALERT_SHARES", "F01=0.1,F02", "WARDSTREAM_ALERT_SHARES='F01=0.1,F02': 'F02' is not FACILITY=SHARE"),
    ("WARDSTREAM_ALERT_SHARES", "F01=2", "WARDSTREAM_ALERT_SHARES F01='2': input should be less than or equal to 1"),
    ("WARDSTREAM_SINK_LINGER_MS", "2.5", "WARDSTREAM_SINK_LINGER_MS='2.5': must be an integer >= 0"),
])
def test_a_bad_value_is_one_line_naming_the_variable(clean_env: pytest.MonkeyPatch, name: str, raw: str,
                                                     line: str) -> None:
    clean_env.setenv(name, raw)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == line


def test_secrets_stay_out_of_reprs(clean_env: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SASL_PASSWORD", "GRAFANA_TOKEN", "GRAFANA_PASSWORD", "WARDSTREAM_SINK_PASSWORD",
                 "WARDSTREAM_READER_PASSWORD"):
        clean_env.setenv(name, "s3cret")
    clean_env.setenv("DATABASE_URL", "postgresql://u:s3cret@db/w")
    clean_env.setenv("SINK_DATABASE_URL", "postgresql://s:s3cret@db/w")
    assert "s3cret" not in repr(load_settings())


def test_alert_shares_per_facility(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WARDSTREAM_ALERT_SHARE", "0.15")
    clean_env.setenv("WARDSTREAM_ALERT_SHARES", "F01=0.12,F02=0.08")
    s = load_settings()
    assert (s.alert_share_for("F01"), s.alert_share_for("F02"), s.alert_share_for("F03")) == (0.12, 0.08, 0.15)
    assert load_settings().alert_shares == {"F01": 0.12, "F02": 0.08}


def test_the_groups_validate_on_their_own() -> None:
    assert KafkaSettings(KAFKA_SECURITY_PROTOCOL="ssl").security_protocol == "SSL"
    assert StreamSettings(WARDSTREAM_ADT_BATCH="7").adt_batch == 7


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, env={**os.environ, **env})


def test_importing_the_stream_app_reads_no_setting_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import stream.app, faust\n"
        "from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as T\n"
        "from stream import faust_patches\n"
        "print(T._create_worker_consumer is faust_patches._create_worker_consumer)\n"
    )
    done = _python(code, WARDSTREAM_ADT_PARTITIONS="four", WARDSTREAM_STATE_DIR=str(state))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # Faust not patched
    assert not state.exists()


def test_create_worker_builds_and_registers_everything(tmp_path: Path) -> None:
    code = (
        "import json\n"
        "from stream.app import create_worker\n"
        "from wardstream.config import load_settings\n"
        "app = create_worker(load_settings())\n"
        "from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as T\n"
        "from stream import faust_patches\n"
        "print(json.dumps([app.conf.id, app.conf.processing_guarantee.value, sorted(app.agents),\n"
        "      sorted(app.tables), T._create_worker_consumer is faust_patches._create_worker_consumer,\n"
        "      faust_patches.FETCH_MAX_WAIT_MS]))\n"
    )
    done = _python(code, WARDSTREAM_NAMESPACE="cfg.", WARDSTREAM_STATE_DIR=str(tmp_path),
                   WARDSTREAM_FETCH_MAX_WAIT_MS="250", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert done.returncode == 0, done.stderr
    app_id, guarantee, agents, tables, patched, fetch_wait = json.loads(done.stdout)
    assert (app_id, guarantee, patched, fetch_wait) == ("cfg.wardstream-stream", "at_least_once", True, 250)
    assert {"stream.app.process_adt", "stream.app.process_merges", "stream.app.combine_kpis",
            "stream.app.load_reference"} <= set(agents)
    assert {"patients", "partition_state", "due", "models", "kpi", "kpi_days"} <= set(tables)
    assert (tmp_path / "faust" / "cfg.wardstream-stream").is_dir()


@pytest.mark.parametrize("role", ["adt", "kpis"])
def test_a_worker_of_one_role_registers_that_side_only(tmp_path: Path, role: str) -> None:
    """``--role adt``: the ADT agents and tables under the group of a worker running both;
    ``--role kpis``: the KPI and health agents and tables, an app and group of their own."""
    code = (
        "import json\n"
        "from stream.app import create_worker\n"
        "from wardstream.config import load_settings\n"
        "app = create_worker(load_settings())\n"
        "print(json.dumps([app.conf.id, sorted(a.rsplit('.', 1)[1] for a in app.agents), sorted(app.tables)]))\n"
    )
    done = _python(code, WARDSTREAM_NAMESPACE="cfg.", WARDSTREAM_STATE_DIR=str(tmp_path),
                   WARDSTREAM_WORKER_ROLE=role, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert done.returncode == 0, done.stderr
    app_id, agents, tables = json.loads(done.stdout)
    if role == "adt":
        assert (app_id, agents) == ("cfg.wardstream-stream", ["process_adt", "process_merges"])
        assert tables == ["due", "health", "kpi", "models", "partition_state", "patients"]
    else:
        assert (app_id, agents) == ("cfg.wardstream-kpis", ["combine_kpis", "load_reference", "monitor_health"])
        assert tables == ["health_days", "kpi_days"]
    assert (tmp_path / "faust" / app_id).is_dir()


def test_the_worker_refuses_a_bad_setting_before_any_connection() -> None:
    """``python -m stream.cli`` (the worker alone, what stream.runner starts): one line, exit 2,
    no broker contacted (the broker address is unreachable; the refusal comes at once)."""
    done = subprocess.run([sys.executable, "-m", "stream.cli"], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT,
                          env={**os.environ, "WARDSTREAM_ADT_PARTITIONS": "four",
                               "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert done.returncode == 2
    assert done.stderr.strip() == "WARDSTREAM_ADT_PARTITIONS='four': must be an integer >= 1"
