"""`wardstream worker` explains itself and rejects bad options before touching Kafka."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from stream.cli import register


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
