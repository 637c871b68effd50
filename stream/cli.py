"""``wardstream worker``: run the Faust stream processor (stream/README.md)."""

from __future__ import annotations

import gc
import logging
import sys
from enum import Enum
from pathlib import Path

import typer

from wardstream.config import ConfigError, Settings, load_settings

LOG_LEVELS = ("debug", "info", "warning", "error")
GUARANTEES = ("at_least_once", "exactly_once")
ROLES = ("all", "adt", "kpis")
LogLevel = Enum("LogLevel", {v: v for v in LOG_LEVELS}, type=str)  # type: ignore[misc]
Guarantee = Enum("Guarantee", {v: v for v in GUARANTEES}, type=str)  # type: ignore[misc]
Role = Enum("Role", {v: v for v in ROLES}, type=str)  # type: ignore[misc]

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        loglevel: LogLevel = typer.Option(
            "info", "--loglevel", "-l", help="Faust log level.", case_sensitive=False),
        namespace: str | None = typer.Option(
            None, "--namespace", "-n",
            help="Topic namespace (prefix), e.g. 'replay-1.' for a replay into a fresh run. "
                 "Default: WARDSTREAM_NAMESPACE (empty = the hospital.* topics)."),
        guarantee: Guarantee | None = typer.Option(
            None, "--guarantee",
            help="Faust processing guarantee (default: WARDSTREAM_PROCESSING_GUARANTEE, else "
                 "at_least_once). Outputs are effectively-once either way (ids derive from input "
                 "ids, state skips re-delivered offsets); exactly_once on Faust 0.15.3 loses "
                 "outputs on a SIGTERM stop (stream/README.md)."),
        role: Role | None = typer.Option(
            None, "--role", case_sensitive=False,
            help="What this worker runs: 'all' (default: WARDSTREAM_WORKER_ROLE, else all), 'adt' "
                 "(hospital.adt -> scores, alerts, labels, partials) or 'kpis' (partials -> "
                 "hospital.kpis, hospital.model-health; app and group '{namespace}wardstream-kpis'). "
                 "Run one 'adt' and one 'kpis' worker to give each side a process of its own."),
        flush_seconds: float | None = typer.Option(
            None, "--kpi-flush-seconds", min=0.1,
            help="How often changed KPI windows are emitted (wall clock; values never depend on "
                 "it). Default: KPI_FLUSH_SECONDS or 2."),
        log_file: str | None = typer.Option(
            None, "--log-file",
            help="Where the libraries' log lines (Faust, aiokafka, kafka-python) go, with every "
                 "line of the worker; the console shows the worker's own lines and library errors. "
                 "Default: .wardstream/logs/worker.log; '-': everything on the console."),
    ) -> None:
        """Consume hospital.adt and produce scores, alerts, labels, KPIs and the DLQ.

        Creates the topics when missing, then runs one Faust worker (app id and consumer group
        '{namespace}wardstream-stream', '{namespace}wardstream-kpis' for the role kpis; state under
        WARDSTREAM_STATE_DIR/faust). Stop it with
        Ctrl-C / SIGTERM: a restarted worker resumes from its changelogged state, the online
        models included. Logs carry ids only.
        """
        s = load_settings()  # a bad setting stops here, before any connection
        s = s.model_copy(update={
            "topic_namespace": s.topic_namespace if namespace is None else namespace,
            "stream": s.stream.model_copy(update={
                "processing_guarantee": guarantee.value if guarantee else s.stream.processing_guarantee,
                "role": role.value if role else s.stream.role,
                "kpi_flush_seconds": flush_seconds or s.stream.kpi_flush_seconds,
            }),
        })
        run_worker(s, loglevel.value, log_file=log_file)


def run_worker(s: Settings, loglevel: str = "info", log_file: str | None = None) -> None:
    """Create the topics, build the app (:func:`stream.app.create_worker`) and run a Faust worker.

    ``log_file``: see ``wardstream worker --log-file`` (None: the default file; "-": none).
    """
    from stream.app import create_worker
    from stream.faust_app import changelog_topics
    from wardstream.kafka_io import ensure_topics, topic_specs

    app = create_worker(s)
    changelogs = changelog_topics(app)
    ensure_topics([*topic_specs(s), *changelogs], s=s, extra=changelogs)
    name = "worker-kpis" if s.stream.role == "kpis" else "worker"  # the default log file's name
    _worker_class(log_file, name)(app, loglevel=loglevel).execute_from_commandline()


GC_THRESHOLDS = (20_000, 10, 10)  # allocations between young collections (Python's default: 700)


def tune_gc() -> None:
    """Keep Python's garbage collector off the worker's latency: called once the worker started.

    A started worker tracks ~270k objects, nearly all its libraries' modules, classes and
    functions, which live as long as the process. Each full collection walked them all (~150
    ms with the event loop stopped, four every 10 s at 400 events/s, every alert in flight
    waiting), and a young collection ran every 700 allocations, so the objects of one batch
    outlived it into the old generation, and full collections came all the more often
    (bench/README.md). ``gc.freeze`` moves the start's objects out of the collector's
    generations after one last collection (they are still freed by reference counting; only a
    reference cycle among them would stay, and that collection found none), and a batch's
    objects now die young."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("%d objects of the worker's start moved out of the garbage collector's generations",
             gc.get_freeze_count())


def _worker_class(log_file: str | None, log_name: str = "worker") -> type:
    import faust

    from wardstream.logs import ConsoleFilter, log_file as default_log_file

    class Worker(faust.Worker):
        """Faust's worker, with the chosen level applied to every library logger, and the
        libraries' lines in the log file rather than on the console (unless ``log_file`` is "-").

        Faust leaves aiokafka/faust/mode loggers effectively at DEBUG: they build a record per
        message that the handler then drops (7% of the worker's time, bench/README.md).
        """

        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            tune_gc()

        def _setup_logging(self) -> None:
            super()._setup_logging()
            level = getattr(logging, str(self.loglevel).upper(), logging.INFO)
            if log_file != "-":
                path = default_log_file(log_name) if log_file is None else Path(log_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                root = logging.getLogger()
                for handler in root.handlers:  # Faust's console handlers
                    handler.addFilter(ConsoleFilter(level, library_level=logging.ERROR))
                to_file = logging.FileHandler(path, encoding="utf-8")
                to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                root.addHandler(to_file)
            for name in ("", "faust", "mode", "aiokafka", "kafka"):
                logging.getLogger(name).setLevel(level)
            logging.getLogger("aiokafka").setLevel(max(level, logging.WARNING))
            # At DEBUG these log every message they send, table changelogs (patient state)
            # included: logs carry ids only, so they never go below INFO.
            for name in ("faust.topics", "faust.transport.drivers.aiokafka"):
                logging.getLogger(name).setLevel(max(level, logging.INFO))

    return Worker


def main() -> None:
    """``python -m stream.cli [options]``: the worker alone, without the other packages' CLIs
    (what :mod:`stream.runner` starts, so a half-built sibling package cannot break it)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    try:
        app()
    except ConfigError as exc:  # a bad setting: one line, no traceback
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
