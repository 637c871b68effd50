"""The ``wardstream`` command as a user meets it: one line and exit code 2 for a bad setting or an
unreachable broker, the project's own lines on the console (the libraries' in the log file), and
help that reads well. No server needed."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from wardstream.cli import app
from wardstream.logs import setup_logging


def wardstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wardstream.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def help_text(*args: str) -> str:
    done = CliRunner().invoke(app, [*args, "--help"], prog_name="wardstream", env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    return done.output


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_bad_setting_is_one_line_and_exit_code_2() -> None:
    done = wardstream("db", "status", WARDSTREAM_ADT_PARTITIONS="four")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: WARDSTREAM_ADT_PARTITIONS='four': must be an integer >= 1"]


def test_an_unreachable_broker_is_one_line_and_exit_code_2() -> None:
    port = closed_port()
    done = wardstream("simulate", "--days", "1", "--no-progress",
                      KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", WARDSTREAM_BROKER_WAIT_S="2")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, no library warnings
    assert lines[0].startswith(f"error: Kafka at 127.0.0.1:{port} not ready: waited 2 s for ")


def test_the_console_shows_the_projects_lines_and_the_file_everything(tmp_path, capsys) -> None:
    path = setup_logging("demo", "INFO", log_dir=tmp_path)
    try:
        logging.getLogger("kafka.net.selector").warning(
            "Task <poll> ran for 0.101s (>0.100s threshold). It is blocking the event loop")
        logging.getLogger("librdkafka").warning("%4|GETPID|rdkafka#producer-1| Coordinator load in progress")
        logging.getLogger("consumers.sink").warning("database unavailable, retry 1 in 0.5s")
        logging.getLogger("wardstream.kafka_io").debug("not at INFO")
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_wardstream", False)]
    console = capsys.readouterr().err
    assert console.splitlines() == ["WARNING consumers.sink: database unavailable, retry 1 in 0.5s"]
    logged = path.read_text()
    assert path == tmp_path / "demo.log"
    assert "blocking the event loop" in logged and "GETPID" in logged and "database unavailable" in logged
    assert "not at INFO" not in logged


@pytest.mark.parametrize("command, level", [("demo", logging.WARNING), ("sink", logging.INFO)])
def test_a_live_view_keeps_info_lines_off_its_console(command, level) -> None:
    """The demo's console is its live view: at the default level, its INFO lines go to the file."""
    from wardstream.logs import ConsoleFilter

    try:
        assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0
        levels = [f.level for h in logging.getLogger().handlers for f in h.filters
                  if isinstance(f, ConsoleFilter)]
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_wardstream", False)]
    assert levels == [level]


def _commands(command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_help_is_reflowed() -> None:
    """typer keeps a docstring's line breaks: each paragraph is one line, so help wraps to the
    terminal (wardstream.cli.reflow)."""
    paths = []
    for path, command in _commands(typer.main.get_command(app)):
        paths.append(path)
        for para in (command.help or "").split("\n\n"):
            assert "\n" not in para.replace("\n- ", "").replace("\n* ", ""), (path, para)
    assert ("stack", "up") in paths and ("grafana", "push") in paths and ("demo",) in paths


@pytest.mark.parametrize(("args", "choices"), [
    (["simulate"], "<auto|confluent|kafka-python>"), (["simulate"], "<case-mix|coding|both>"),
    (["worker"], "<debug|info|warning|error>"), (["worker"], "<at_least_once|exactly_once>"),
])
def test_options_with_fixed_values_show_them(args, choices) -> None:
    assert choices in help_text(*args)


@pytest.mark.parametrize("args", [[], ["stack"], ["simulate"], ["worker"], ["sink"], ["notify"],
                                  ["replay"], ["demo"], ["db"], ["grafana"], ["grafana", "check"]])
def test_help_works(args) -> None:
    assert f"Usage: wardstream {' '.join(args)}".strip() in help_text(*args)
