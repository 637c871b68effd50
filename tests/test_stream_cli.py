"""`wardstream worker` explains itself and rejects bad options before touching Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from stream.cli import register
from wardstream.logs import is_project


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps "worker" a subcommand
        pass

    return app


def test_help_explains_the_worker() -> None:
    result = CliRunner().invoke(_app(), ["worker", "--help"])
    assert result.exit_code == 0
    for word in ("hospital.adt", "--namespace", "--guarantee", "--kpi-flush-seconds", "SIGTERM"):
        assert word in result.output


def test_bad_options_are_refused() -> None:
    runner = CliRunner()
    bad_level = runner.invoke(_app(), ["worker", "--loglevel", "loud"])
    assert bad_level.exit_code == 2 and "loglevel" in bad_level.output
    bad_guarantee = runner.invoke(_app(), ["worker", "--guarantee", "twice"])
    assert bad_guarantee.exit_code == 2 and "at_least_once" in bad_guarantee.output


@pytest.mark.e2e
def test_the_worker_console_shows_its_own_lines_and_the_file_the_libraries(kafka_ns, tmp_path) -> None:
    """A running worker: Faust's and aiokafka's lines go to --log-file, not to the console."""
    log = tmp_path / "worker.log"
    env = {**os.environ, "WARDSTREAM_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "--log-file", str(log)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "[^Worker]: Ready" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    console = proc.communicate(timeout=60)[0].decode().splitlines()
    file_lines = log.read_text().splitlines()
    assert any(" faust.worker: [^Worker]: Ready" in line for line in file_lines)
    # the file names each line's logger; the console (Faust's format) shows only the project's
    own = [line.split(": ", 1)[1] for line in file_lines
           if len(line.split(" ", 4)) == 5 and is_project(line.split(" ", 4)[3].rstrip(":"))]
    shown = [line.split("] ", 3)[-1].rstrip() for line in console if line.startswith("[")]
    assert shown and all(any(o.endswith(msg) for o in own) for msg in shown), console
