"""The ``wardstream`` command: one CLI, a subcommand per job.

Each package registers its own subcommands (``register(app)`` in ``<package>/cli.py``) so
that the command for a topic's producer, processor or sink lives beside its code.
"""

from __future__ import annotations

import importlib
import logging

import typer

from wardstream.config import settings

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
    "stream.cli",
    "consumers.cli",
    "grafana.cli",
    "wardstream.demo",
)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    level = logging.DEBUG if verbose else getattr(logging, settings().log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):  # client internals: connection chatter, no patient data
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a package still being built: skip only that module
        if exc.name != _name:
            raise
        continue
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
