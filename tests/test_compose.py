"""docker-compose.yml is valid and wires the stack as documented.

With the compose plugin (``docker compose version`` works) the file is also checked by
``docker compose config -q``; the structural checks below run everywhere (PyYAML).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from grafana.datasource import READER_PASSWORD_ENV
from wardstream.config import REPO_ROOT
from wardstream.stack.kafka import KAFKA_VERSION, LocalKafka

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = {"migrate", "simulator", "worker", "sink", "notifier"}
ENV_EXAMPLE = REPO_ROOT / ".env.example"


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def _example_vars() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _strings(node) -> list[str]:
    """Every string value of the parsed file (interpolation happens in values, not comments)."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="docker compose plugin not installed (YAML checks still run)")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    proc = subprocess.run(["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
                           "config", "-q"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr


def test_services_and_images():
    assert set(SERVICES) == {"kafka", "postgres", "grafana"} | APP_SERVICES
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert re.fullmatch(r"postgres:1[56](\.\d+)?", SERVICES["postgres"]["image"])
    assert re.fullmatch(r"grafana/grafana-oss:\d+\.\d+\.\d+", SERVICES["grafana"]["image"]), "pin Grafana"
    for name in APP_SERVICES:  # one image, built from the one Dockerfile
        svc = SERVICES[name]
        assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert svc["image"] == "wardstream:local"
    commands = {n: " ".join(SERVICES[n]["command"]) for n in APP_SERVICES}
    assert commands["migrate"] == "db migrate" and commands["sink"] == "sink"
    assert commands["notifier"] == "notify" and commands["worker"].startswith("worker")
    assert "wardstream simulate" in commands["simulator"]


def test_the_commands_exist_in_the_cli():
    from typer.testing import CliRunner

    from wardstream.cli import app

    runner = CliRunner()
    for args in (["db", "migrate", "--help"], ["worker", "--help"], ["sink", "--help"], ["notify", "--help"],
                 ["simulate", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)


def test_every_flag_the_services_pass_exists():
    from typer.testing import CliRunner

    from wardstream.cli import app

    runner = CliRunner()
    for name in APP_SERVICES:
        words = " ".join(SERVICES[name]["command"]).split()
        if words[0] == "exec":  # the simulator's shell form: exec wardstream simulate ...
            words = words[2:]
        sub = [w for w in words[:2] if not w.startswith("-")]
        help_text = runner.invoke(app, [*sub, "--help"], terminal_width=200).output
        for flag in (w for w in words if w.startswith("--")):
            assert flag in help_text, f"{name}: `wardstream {' '.join(sub)}` has no {flag}"


def test_dockerfile():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install" in text and 'ENTRYPOINT ["wardstream"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M), "do not run the app as root"
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".git" in ignored and ".wardstream" in ignored


def test_healthchecks_and_start_order():
    for name in ("kafka", "postgres", "grafana", "worker"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, name
    allowed = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, (name, dep)
            assert cond["condition"] in allowed, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy: it needs a check"
    deps = {n: set((s.get("depends_on") or {})) for n, s in SERVICES.items()}
    # no cycles: a topological order exists
    order, pending = [], dict(deps)
    while pending:
        ready = [n for n, d in pending.items() if d <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order += sorted(ready)
        for n in ready:
            del pending[n]

    def cond(a: str, b: str) -> str:
        return SERVICES[a]["depends_on"][b]["condition"]

    assert cond("migrate", "postgres") == "service_healthy"
    for name in ("sink", "notifier", "grafana"):
        assert cond(name, "migrate") == "service_completed_successfully"
    for name in ("worker", "sink", "notifier", "simulator"):
        assert cond(name, "kafka") == "service_healthy"
    assert cond("simulator", "worker") == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no" and SERVICES["simulator"]["restart"] == "no"


def test_worker_healthcheck_probes_the_faust_web_port():
    port = _env("worker")["WARDSTREAM_WEB_PORT"]
    assert port in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_mounted_paths_exist_in_the_repo():
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), (name, source)
            else:
                assert source in (COMPOSE.get("volumes") or {}), f"{name}: undeclared named volume {source}"
    grafana = SERVICES["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert any(v.startswith("./grafana/dashboards:") for v in grafana)
    home = _env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount = next(v for v in grafana if v.startswith("./grafana/dashboards:")).split(":")[1]
    assert home.startswith(mount + "/") and (REPO_ROOT / "grafana/dashboards" / home.rsplit("/", 1)[1]).exists()
    # the dashboard provider reads the folder the dashboards are mounted at
    prov = yaml.safe_load((REPO_ROOT / "grafana/provisioning/dashboards/wardstream.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == mount


def test_ports_bind_to_loopback_only():
    for name, svc in SERVICES.items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_environment_and_secrets():
    for name in APP_SERVICES:
        env = _env(name)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert env["DATABASE_URL"].startswith("postgresql://wardstream:${POSTGRES_PASSWORD:?")
        assert "@postgres:5432/wardstream" in env["SINK_DATABASE_URL"]
    assert _env("migrate")[READER_PASSWORD_ENV].startswith("${WARDSTREAM_READER_PASSWORD:?")
    assert _env("grafana")[READER_PASSWORD_ENV].startswith("${WARDSTREAM_READER_PASSWORD:?")
    assert _env("grafana")["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GF_SECURITY_ADMIN_PASSWORD:?")
    assert "ALERT_WEBHOOK_URL" in _env("notifier")
    # every password is a reference to .env, never a literal in the file
    for name, svc in SERVICES.items():
        for key, value in _env(name).items():
            if "PASSWORD" in key:
                assert value.startswith("${") and ":?" in value, (name, key)
    # every required variable is documented in .env.example; .env itself is never committed
    required = {m for value in _strings(COMPOSE) for m in re.findall(r"(?<!\$)\$\{(\w+):\?", value)}
    assert required == {"POSTGRES_PASSWORD", "WARDSTREAM_SINK_PASSWORD", "WARDSTREAM_READER_PASSWORD",
                        "GF_SECURITY_ADMIN_PASSWORD", "ALERT_WEBHOOK_URL"}
    assert required <= set(_example_vars())
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert tracked.stdout.strip() == ""


def test_kafka_settings_match_the_local_stack(tmp_path):
    props = LocalKafka(home=tmp_path)._write_properties().read_text().splitlines()
    stack = dict(line.split("=", 1) for line in props if line)
    env = _env("kafka")
    location_specific = {"listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs",
                         "listener.security.protocol.map"}
    for key, value in stack.items():
        if key in location_specific:
            continue
        env_key = "KAFKA_" + key.upper().replace(".", "_")
        assert env.get(env_key) == value, f"{env_key}: compose {env.get(env_key)!r} vs stack {value!r}"
    assert "CONTROLLER:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
