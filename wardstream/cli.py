"""The ``wardstream`` command: one CLI, a subcommand per job.

Each package registers its own subcommands (``register(app)`` in ``<package>/cli.py``) so
that the command for a topic's producer, processor or sink lives beside its code.
"""

from __future__ import annotations

import importlib
import inspect

import typer

from wardstream.config import ConfigError, settings
from wardstream.kafka_io import BrokerUnavailable
from wardstream.logs import setup_logging

app = typer.Typer(
    name="wardstream",
    help="Streaming analytics for hospitals: simulate ADT events, process them with Faust, "
    "sink to PostgreSQL, alert care teams, replay topics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add subcommands, in the order of the data flow.
COMMAND_MODULES = (
    "wardstream.stack.cli",
    "producers.cli",
    "producers.mllp.cli",
    "stream.cli",
    "consumers.cli",
    "grafana.cli",
    "wardstream.demo",
)


LIVE_VIEWS = ("demo",)  # commands whose console is a rich live view


@app.callback()
def _setup(ctx: typer.Context,
           verbose: bool = typer.Option(False, "--verbose", "-v",
                                        help="Debug logging on the console and in the log file.")) -> None:
    """Check the settings once and set up logging before any subcommand runs."""
    s = settings()  # a bad setting stops here with one line (ConfigError, see main)
    command = ctx.invoked_subcommand or "wardstream"
    # a live view is its command's console: at the default level its INFO lines go to the file only
    level = "WARNING" if command in LIVE_VIEWS and s.log_level == "INFO" else s.log_level
    setup_logging(command, level, verbose=verbose)


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a package still being built: skip only that module
        if exc.name != _name:
            raise
        continue
    _module.register(app)


def reflow(text: str) -> str:
    r"""A docstring as help text: each paragraph one line, so the help wraps to the terminal's
    width instead of the source's (typer keeps single line breaks). Bullet lines ("- ", "* ")
    and paragraphs starting with a backspace (click's no-rewrap mark) keep their breaks.

    >>> reflow("Store the events.\n\n    Batched upserts, offsets\n    committed after.\n    - one bullet")
    'Store the events.\n\nBatched upserts, offsets committed after.\n- one bullet'
    """
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b"):
            paragraphs.append(para)
            continue
        lines: list[str] = []
        for line in para.splitlines():
            line = line.strip()
            if lines and not line.startswith(("- ", "* ")):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(typer_app: typer.Typer) -> None:
    """Reflow the help of every command of ``typer_app`` and its sub-apps (see :func:`reflow`)."""
    for info in typer_app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            info.help = reflow(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    """The ``wardstream`` entry point: a bad setting or an unreachable broker is one line on
    stderr and exit code 2, not a traceback."""
    try:
        app(prog_name="wardstream")
    except (ConfigError, BrokerUnavailable) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
