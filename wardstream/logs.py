"""Logging of every ``wardstream`` command: the console shows the project's own lines only.

:func:`setup_logging` sends every record (the project's and the libraries': kafka-python,
aiokafka, Faust, librdkafka through its ``logger``, Python warnings) to the command's log file
``.wardstream/logs/<command>.log``; the console (stderr) gets the project's records at the chosen
level and a library's only when it is CRITICAL. Client internals such as kafka-python's "Task ...
ran for 0.101s ... blocking the event loop" or librdkafka's ``%4|GETPID|...`` retries are
diagnostics for the file, not messages for the user.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from wardstream.config import REPO_ROOT

LOG_DIR = REPO_ROOT / ".wardstream" / "logs"
# top-level packages whose records are the project's own
PROJECT_LOGGERS = ("wardstream", "stream", "consumers", "producers", "grafana", "bench", "__main__")
LIBRARY_DEBUG = ("kafka", "aiokafka", "librdkafka")  # their DEBUG is wire chatter: INFO in the file
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_project(name: str) -> bool:
    """Whether a logger name belongs to the project (its packages or a script run as main).

    >>> is_project("wardstream.kafka_io"), is_project("consumers"), is_project("kafka.net.selector")
    (True, True, False)
    >>> is_project("streamz")
    False
    """
    return name.split(".", 1)[0] in PROJECT_LOGGERS


class ConsoleFilter(logging.Filter):
    """Passes the project's records at ``level`` and up, a library's only at ``library_level``
    (CRITICAL by default) and up."""

    def __init__(self, level: int, library_level: int = logging.CRITICAL) -> None:
        super().__init__()
        self.level, self.library_level = level, library_level

    def filter(self, record: logging.LogRecord) -> bool:
        if is_project(record.name):
            return record.levelno >= self.level
        return record.levelno >= self.library_level


class StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is at emit time (rich's live view redirects it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 (logging's attribute)
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def log_file(command: str, log_dir: Path | None = None) -> Path:
    """Where ``command``'s records go (its name with spaces as dashes)."""
    return (log_dir or LOG_DIR) / f"{'-'.join(command.split()) or 'wardstream'}.log"


def setup_logging(command: str, level: str | int = "INFO", *, verbose: bool = False,
                  log_dir: Path | None = None) -> Path:
    """Configure the root logger for one command; returns its log file.

    ``level`` is the console's level for the project's records (WARDSTREAM_LOG_LEVEL); the file
    keeps INFO and up from everyone (DEBUG with ``verbose``). Idempotent: a second call replaces
    the handlers of the first.
    """
    console_level = logging.DEBUG if verbose else (
        level if isinstance(level, int) else logging.getLevelName(str(level).upper()))
    if not isinstance(console_level, int):
        console_level = logging.INFO
    file_level = logging.DEBUG if verbose else min(console_level, logging.INFO)
    path = log_file(command, log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_wardstream", False):
            root.removeHandler(handler)
            handler.close()
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(file_level)
    to_file.setFormatter(logging.Formatter(FORMAT))
    console = StderrHandler()  # stderr: stdout stays for a command's results
    console.setLevel(logging.DEBUG)
    console.addFilter(ConsoleFilter(console_level))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for handler in (to_file, console):
        handler._wardstream = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(min(console_level, file_level))
    for name in LIBRARY_DEBUG:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # a library's warnings.warn(...) goes to the file too
    return path
