"""CLI of the consumers: ``wardstream db migrate|status``, ``wardstream sink``, ``wardstream notify``."""

from __future__ import annotations

import json

import typer

from wardstream.config import settings


def _parse_topics(topics: str | None) -> list[str] | None:
    if topics is None:
        return None
    names = [t.strip() for t in topics.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter("give at least one topic name", param_hint="--topics")
    return names


def _check_stop(once: bool, until_idle: float | None) -> None:
    if once and until_idle is not None:
        raise typer.BadParameter("use either --once or --until-idle, not both", param_hint="--once")


def register(app: typer.Typer) -> None:
    from consumers.replay import register as register_replay

    register_replay(app)  # `wardstream replay` (consumers/replay.py)
    db = typer.Typer(help="PostgreSQL schema: versioned migrations in sql/migrations.", no_args_is_help=True)
    app.add_typer(db, name="db")

    @db.command("migrate")
    def migrate_cmd() -> None:
        """Apply the pending sql/migrations/V*.sql files to DATABASE_URL (a re-run is a no-op).

        Verifies the checksum of every applied file (an edited applied migration is an error),
        creates the roles wardstream_sink / wardstream_reader once per cluster and grants them
        on this database; their passwords come from WARDSTREAM_SINK_PASSWORD /
        WARDSTREAM_READER_PASSWORD.
        """
        from consumers.migrate import MigrationError, migrate

        try:
            result = migrate()
        except MigrationError as exc:
            typer.secho(f"migration failed: {exc}", fg="red", err=True)
            raise typer.Exit(1) from exc
        for name in result.applied:
            typer.echo(f"applied  {name}")
        typer.echo(f"{len(result.applied)} applied, {len(result.already_applied)} already applied")

    @db.command("status")
    def status_cmd() -> None:
        """List the migration files and whether each is applied, pending or CHANGED."""
        from consumers.migrate import status

        for name, state in status():
            typer.echo(f"{state:8} {name}")

    @app.command("sink")
    def sink_cmd(
        once: bool = typer.Option(False, "--once", help="Stop when caught up with the end of every partition."),
        until_idle: float | None = typer.Option(
            None, "--until-idle", min=0.1, metavar="SECONDS",
            help="Stop after SECONDS without a new message (tests, the demo)."),
        group: str | None = typer.Option(
            None, "--group", help="Consumer group. Default: '<namespace>wardstream-sink'."),
        topics: str | None = typer.Option(
            None, "--topics",
            help="Comma-separated topics to store. Default: hospital.adt-accepted, hospital.reference and every "
                 "output topic, under WARDSTREAM_NAMESPACE."),
        max_batch: int = typer.Option(5000, "--max-batch", min=1, help="Messages per database transaction."),
        linger_ms: int | None = typer.Option(
            None, "--linger-ms", min=0, metavar="MS",
            help="While messages flow, the broker may hold each fetch up to MS to fill a batch "
                 "(fewer, larger transactions on a live stream; 0: never). "
                 "Default: WARDSTREAM_SINK_LINGER_MS, else 20."),
    ) -> None:
        """Store the ADT events, reference data and every output topic in PostgreSQL.

        Batched idempotent upserts (a replay changes nothing); Kafka offsets are committed only
        after the database commit; a database outage pauses the sink (retries with backoff)
        and it resumes with nothing lost. Contract-invalid ADT messages are counted and skipped
        (the stream sends them to the DLQ). Connects as SINK_DATABASE_URL (else DATABASE_URL).
        SIGTERM / Ctrl-C: finishes the current batch and exits.
        """
        from rich.console import Console

        from consumers.sink import default_topics, run_sink

        _check_stop(once, until_idle)
        names = _parse_topics(topics)
        if names is not None:
            known = set(default_topics())
            bad = [t for t in names if t not in known]
            if bad:
                raise typer.BadParameter(f"unknown topics {bad}; known: {sorted(known)}", param_hint="--topics")
        console = Console(stderr=True)
        with console.status("sink: waiting for messages") as status:
            def on_batch(st) -> None:
                status.update(f"sink: {st.messages} messages, {sum(st.rows.values())} rows, "
                              f"{sum(st.invalid.values())} invalid, {st.db_retries} db retries")
            stats = run_sink(topics=names, group=group, once=once, until_idle=until_idle,
                             max_batch=max_batch, on_batch=on_batch, linger_ms=linger_ms)
        typer.echo(json.dumps(stats.as_dict(), indent=2))

    @app.command("notify")
    def notify_cmd(
        url: str | None = typer.Option(None, "--url", help="Webhook URL. Default: ALERT_WEBHOOK_URL."),
        once: bool = typer.Option(False, "--once", help="Stop when caught up with hospital.alerts."),
        until_idle: float | None = typer.Option(
            None, "--until-idle", min=0.1, metavar="SECONDS", help="Stop after SECONDS without a new alert."),
        group: str | None = typer.Option(
            None, "--group", help="Consumer group. Default: '<namespace>wardstream-notifier'."),
        max_attempts: int = typer.Option(5, "--max-attempts", min=1, help="POST attempts per alert."),
        backoff: float = typer.Option(0.5, "--backoff", min=0.0, help="First retry delay (s), doubling."),
        retry_failed: bool = typer.Option(
            False, "--retry-failed", help="First re-send the deliveries recorded as failed."),
    ) -> None:
        """Deliver each alert of hospital.alerts once to a Slack-style webhook.

        One delivery per discharge (ledger table alert_deliveries: pending / delivered / failed,
        attempts, last_error), retries with exponential backoff, offsets committed after the
        status is recorded. The message carries ids, department, score, LACE and reasons; no names.
        """
        from consumers.notify import run_notifier

        _check_stop(once, until_idle)
        target = url or settings().alert_webhook_url
        if not target:
            raise typer.BadParameter("set ALERT_WEBHOOK_URL or pass --url", param_hint="--url")
        if not target.startswith(("http://", "https://")):
            raise typer.BadParameter("must be an http(s):// URL", param_hint="--url")
        stats = run_notifier(url=target, group=group, once=once, until_idle=until_idle,
                             max_attempts=max_attempts, backoff_initial=backoff, retry_failed=retry_failed)
        typer.echo(json.dumps(stats.as_dict(), indent=2))


