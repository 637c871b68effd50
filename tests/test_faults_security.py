"""Security basics: secrets only from the environment, Kafka SASL/SSL reach every client, id-only logs."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from wardstream.config import REPO_ROOT, settings

# The documented local-stack defaults (README, wardstream/config.py), and doctest placeholders.
ALLOWED_LITERALS = {"wardstream", "wardstream_sink", "wardstream_reader", "p"}
SECRET = re.compile(r"""(?ix)
    (?:pass(?:word|wd)?|secret|token|api_?key)\w*["']?\s*[:=]\s*f?["']([^"'\n]*)["']   # name = "literal"
  | (?:pass(?:word|wd)?|secret|token)\w*["']?\s*[:=][^\n]*?default\s*=\s*["']([^"']+)["']  # field(default=...)
  | _env\(\s*"[A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*"\s*,\s*"([^"]+)"               # _env("X_PASSWORD", "...")
  | (?-i:^[ \t]*[A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*[ \t]*[:=][ \t]*([^\s"'$(][^\s#]*))  # YAML / .env
  | PASSWORD\s+'([^']*)'                                                            # SQL ... PASSWORD 'x'
  | [a-z][a-z0-9+]*://[^:/@\s"']+:([^@/\s"']+)@                                     # scheme://user:pw@host
""", re.MULTILINE)
SKIP_DIRS = {".git", ".wardstream", "node_modules", "__pycache__", "tests", ".venv", "build", "dist"}
SUFFIXES = {".py", ".yml", ".yaml", ".toml", ".sql", ".json", ".cfg", ".ini", ".sh", ".md", ".env", ".example"}


def _placeholder(value: str) -> bool:
    """Env-var names, ${VAR} / {var} / %s templates, .env.example's change-me values: not secrets."""
    return (not value or value.startswith(("change-me", "${", "{", "%", "$"))
            or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is not None)


def hard_coded_secrets(root: Path = REPO_ROOT) -> list[tuple[str, str]]:
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts) or not path.is_file():
            continue
        if path.suffix not in SUFFIXES and path.name not in ("Makefile", "Dockerfile", ".env.example"):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for m in SECRET.finditer(text):
            value = next(g for g in m.groups() if g is not None)
            if not _placeholder(value) and value not in ALLOWED_LITERALS:
                found.append((str(rel), m.group(0).strip()[:80]))
    return found


def test_the_secret_scan_finds_secrets(tmp_path) -> None:
    (tmp_path / "a.py").write_text('DB = "postgresql://app:hunter2@db:5432/x"\napi_token = "abc123"\n')
    (tmp_path / "b.yml").write_text("services:\n  x:\n    environment:\n      GF_SECURITY_ADMIN_PASSWORD: admin\n")
    (tmp_path / "c.yml").write_text("      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}\n")
    found = {f for f, _ in hard_coded_secrets(tmp_path)}
    assert found == {"a.py", "b.yml"}
    assert len(hard_coded_secrets(tmp_path)) == 3


def test_no_hard_coded_secrets_beyond_the_local_stack_defaults() -> None:
    assert hard_coded_secrets() == []


def test_secrets_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:from-env@h:5432/d")
    monkeypatch.setenv("WARDSTREAM_SINK_PASSWORD", "sink-from-env")
    monkeypatch.setenv("GRAFANA_TOKEN", "tok-from-env")
    s = settings()
    assert s.database_url.endswith("from-env@h:5432/d")
    assert s.sink_password == "sink-from-env" and s.grafana_token == "tok-from-env"
    assert "sink-from-env" not in repr(s) and "tok-from-env" not in repr(s)  # never printed


@pytest.fixture()
def sasl_env(monkeypatch, tmp_path):
    import subprocess

    ca = tmp_path / "ca.pem"  # a throwaway self-signed CA: Faust loads it into its SSL context
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=wardstream-test-ca", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)],
                   check=True, capture_output=True)
    for k, v in {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                 "KAFKA_SASL_USERNAME": "ward-user", "KAFKA_SASL_PASSWORD": "pw-from-env",
                 "KAFKA_SSL_CAFILE": str(ca), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}.items():
        monkeypatch.setenv(k, v)
    return ca


def test_kafka_security_settings_reach_every_client(sasl_env) -> None:
    """kafka-python (producer, consumer, admin look-ups), librdkafka and Faust all get SASL/SSL."""
    import faust

    from stream.faust_app import broker_credentials
    from wardstream.kafka_io import confluent_config, make_consumer

    s = settings()
    assert "pw-from-env" not in repr(s.kafka)
    kw = s.kafka.kafka_python_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "ward-user" and kw["sasl_plain_password"] == "pw-from-env"
    assert kw["ssl_cafile"] == str(sasl_env) and kw["bootstrap_servers"] == ["127.0.0.1:1"]

    # A real kafka-python consumer built by the factory (api_version given: no connection needed).
    consumer = make_consumer(group_id="g", s=s, api_version=(3, 9))
    try:
        c = consumer.config
        assert (c["security_protocol"], c["sasl_mechanism"], c["sasl_plain_username"], c["ssl_cafile"]) == \
            ("SASL_SSL", "SCRAM-SHA-512", "ward-user", str(sasl_env))
    finally:
        consumer.close()

    conf = confluent_config(s)
    assert conf["security.protocol"] == "sasl_ssl" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "ward-user" and conf["sasl.password"] == "pw-from-env"
    assert conf["ssl.ca.location"] == str(sasl_env)

    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, str(creds.mechanism.value)) == ("ward-user", "pw-from-env",
                                                                           "SCRAM-SHA-512")
    assert creds.ssl_context is not None


# ---------------------------------------------------------------------- logs carry ids only


@pytest.mark.e2e
def test_worker_debug_log_has_no_patient_details(kafka_ns, tmp_path, monkeypatch) -> None:
    from producers.kafka_sink import simulate_to_kafka
    from producers.simulator import SimConfig, Simulation
    from stream.runner import StreamWorker

    cfg = SimConfig(days=4, beds=150, seed=11)
    simulate_to_kafka(cfg, progress=False)
    # plus one contract-invalid and one patient-level reject: DLQ paths log too
    from wardstream.kafka_io import make_producer
    from contracts.events import Topics

    events = [item.event for item in Simulation(cfg).stream()]
    adm = next(e for e in events if e["event_type"] == "admission")
    orphan = {**next(e for e in events if e["event_type"] == "discharge"), "patient_id": "PX-ORPHAN",
              "event_id": "00000000-0000-4000-8000-00000000abcd"}
    bad_type = {**adm, "event_id": "00000000-0000-4000-8000-00000000abce",
                "patient": {**adm["patient"], "age": "eighty"}}
    producer = make_producer()
    for ev in (orphan, bad_type):
        producer.send(Topics(kafka_ns).adt, key=ev["patient_id"].encode(), value=orjson.dumps(ev))
    producer.flush()
    producer.close()

    log = tmp_path / "worker.log"
    monkeypatch.setenv("WARDSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("WARDSTREAM_LOG_LEVEL", "DEBUG")
    with StreamWorker(log_path=log, loglevel="debug", flush_seconds=1) as w:
        w.wait_caught_up(timeout=300)
    text = log.read_text(errors="replace")
    assert "DEBUG" in text  # really logged at debug level
    assert "dlq" in text.lower()

    codes = {c for e in events for c in e.get("diagnosis_codes", [])}
    conditions = {c for e in events if "patient" in e for c in e["patient"]["chronic_conditions"]}
    leaks = sorted(c for c in codes | conditions if re.search(rf"(?<![\w.]){re.escape(c)}(?![\w])", text))
    assert leaks == [], leaks[:10]
    for field in ('"age"', '"race"', '"diagnosis_codes"', '"chronic_conditions"', '"vitals"', '"patient":',
                  "'age'", "'race'", "'diagnosis_codes'"):
        assert field not in text, field
    for race in ("hispanic", "asian", "white", "black"):
        assert not re.search(rf"\b{race}\b", text, re.IGNORECASE), race
