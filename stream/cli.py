"""``wardstream worker``: run the Faust stream processor (stream/README.md)."""

from __future__ import annotations

import os

import typer

LOG_LEVELS = ("debug", "info", "warning", "error")
GUARANTEES = ("at_least_once", "exactly_once")


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        loglevel: str = typer.Option(
            "info", "--loglevel", "-l", help=f"Faust log level: {', '.join(LOG_LEVELS)}."),
        namespace: str | None = typer.Option(
            None, "--namespace", "-n",
            help="Topic namespace (prefix), e.g. 'replay-1.' for a replay into a fresh run. "
                 "Default: WARDSTREAM_NAMESPACE (empty = the hospital.* topics)."),
        guarantee: str | None = typer.Option(
            None, "--guarantee",
            help="Faust processing guarantee: at_least_once (default) or exactly_once. Outputs "
                 "are effectively-once either way (ids derive from input ids, state skips "
                 "re-delivered offsets); Faust 0.15.3's exactly_once lost outputs on a SIGTERM "
                 "stop (stream/README.md). Env WARDSTREAM_PROCESSING_GUARANTEE."),
        flush_seconds: float | None = typer.Option(
            None, "--kpi-flush-seconds", min=0.1,
            help="How often changed KPI windows are emitted (wall clock; values never depend on "
                 "it). Default: KPI_FLUSH_SECONDS or 2."),
    ) -> None:
        """Consume hospital.adt and produce scores, alerts, labels, KPIs and the DLQ.

        Creates the topics when missing, then runs one Faust worker (app id and consumer group
        '{namespace}wardstream-stream', state under WARDSTREAM_STATE_DIR/faust). Stop it with
        Ctrl-C / SIGTERM: a restarted worker resumes from its changelogged state, the online
        models included. Logs carry ids only.
        """
        if loglevel.lower() not in LOG_LEVELS:
            raise typer.BadParameter(f"choose one of {', '.join(LOG_LEVELS)}", param_hint="--loglevel")
        if guarantee is not None and guarantee not in GUARANTEES:
            raise typer.BadParameter(f"choose one of {', '.join(GUARANTEES)}", param_hint="--guarantee")
        if namespace is not None:
            os.environ["WARDSTREAM_NAMESPACE"] = namespace
        if guarantee is not None:
            os.environ["WARDSTREAM_PROCESSING_GUARANTEE"] = guarantee
        if flush_seconds is not None:
            os.environ["KPI_FLUSH_SECONDS"] = str(flush_seconds)
        run_worker(loglevel.lower())


def run_worker(loglevel: str = "info") -> None:
    """Create the topics, import the app (it reads the env at import) and run a Faust worker."""
    from wardstream.kafka_io import ensure_topics

    ensure_topics()
    from stream.app import app as faust_app

    _worker_class()(faust_app, loglevel=loglevel).execute_from_commandline()


def _worker_class() -> type:
    import logging

    import faust

    class Worker(faust.Worker):
        """Faust's worker, with the chosen level applied to every library logger.

        Faust leaves aiokafka/faust/mode loggers effectively at DEBUG: they build a record per
        message that the handler then drops (7% of the worker's time, bench/README.md).
        """

        def _setup_logging(self) -> None:
            super()._setup_logging()
            level = getattr(logging, str(self.loglevel).upper(), logging.INFO)
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
    app()


if __name__ == "__main__":
    main()
