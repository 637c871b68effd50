"""``wardstream grafana push|check|build``: dashboards as code onto a running Grafana."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import typer

from grafana.datasource import FOLDER_UID
from wardstream.config import settings

grafana_app = typer.Typer(
    help="Grafana dashboards as code: regenerate the committed JSON, push everything to a Grafana.",
    no_args_is_help=True,
)


@grafana_app.command()
def push(
    db_host: str = typer.Option(
        None, "--db-host", metavar="HOST:PORT",
        help="PostgreSQL as Grafana's server reaches it (default: host and port of DATABASE_URL). "
        "Use e.g. postgres:5432 when Grafana runs in docker-compose.",
    ),
    db_name: str = typer.Option(None, "--db-name", help="Database name (default: that of DATABASE_URL)."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="Seconds per HTTP request."),
) -> None:
    """Create or update the datasource, the "wardstream" folder and every dashboard on Grafana.

    Reads GRAFANA_URL and GRAFANA_TOKEN (or GRAFANA_USER + GRAFANA_PASSWORD) and the read-only
    role's password WARDSTREAM_READER_PASSWORD from the environment.
    """
    from grafana.boards import all_dashboards
    from grafana.datasource import DbLocation
    from grafana.push import PushError, connect
    from grafana.push import push as do_push

    cfg = settings()
    try:
        location = DbLocation.from_url(cfg.database_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="DATABASE_URL") from None
    if db_host:
        if ":" not in db_host or not db_host.rsplit(":", 1)[1].isdigit():
            raise typer.BadParameter("expected HOST:PORT, e.g. postgres:5432", param_hint="--db-host")
        location = DbLocation(db_host, location.database)
    if db_name:
        location = DbLocation(location.host_port, db_name)
    try:
        api = connect(cfg.grafana_url, cfg.grafana_token, cfg.grafana_user, cfg.grafana_password, timeout)
        report = do_push(api, [b.to_json() for b in all_dashboards()], location, cfg.reader_password)
    except PushError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"datasource: {report.datasource}")
    typer.echo(f"folder {FOLDER_UID}: {report.folder}")
    typer.echo(f"dashboards saved: {len(report.dashboards)} ({', '.join(report.dashboards)})")


def _day(value: str | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=timezone.utc)
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint=param) from None


@grafana_app.command()
def check(
    start: str = typer.Option(None, "--from", metavar="YYYY-MM-DD",
                              help="Start of the time range (UTC day). Default: 90 days before --to."),
    end: str = typer.Option(None, "--to", metavar="YYYY-MM-DD",
                            help="End of the time range (UTC day, exclusive). Default: now."),
    facility: str = typer.Option(None, "--facility", help="Facility id. Default: the first one."),
    board_uid: str = typer.Option(None, "--board", help="Only this dashboard uid (e.g. wardstream-overview)."),
) -> None:
    """Run every panel's SQL on DATABASE_URL's database as the read-only role, like Grafana would.

    Variables and macros are expanded as Grafana does (department = All). Prints rows per panel
    and exits 1 when a query fails or returns what its panel cannot draw; empty core panels are
    listed too (they mean the pipeline has not produced that data yet).
    """
    import psycopg2
    from rich.console import Console
    from rich.table import Table

    from grafana.boards import all_dashboards
    from grafana.run import reader_connection, resolve_variables, run_board, shape_problems

    t1 = _day(end, "--to") or datetime.now(timezone.utc)
    t0 = _day(start, "--from") or t1 - timedelta(days=90)
    if t0 >= t1:
        raise typer.BadParameter("must be before --to", param_hint="--from")
    boards = [b for b in all_dashboards() if board_uid in (None, b.uid)]
    if not boards:
        raise typer.BadParameter(f"no dashboard with uid {board_uid!r}", param_hint="--board")
    cfg = settings()
    try:
        conn = reader_connection(cfg.database_url, cfg.reader_password)
    except (psycopg2.Error, ValueError) as exc:
        typer.secho(f"error: cannot connect as the read-only role: {exc}".strip(), fg="red", err=True)
        raise typer.Exit(1) from None
    table = Table("dashboard", "panel", "rows", "problems", title=f"{t0:%Y-%m-%d} .. {t1:%Y-%m-%d}")
    failed = 0
    try:
        cur = conn.cursor()
        for board in boards:
            try:
                variables = resolve_variables(cur, board, t0, t1, {"facility": facility} if facility else None)
                for result in run_board(cur, board, t0, t1, variables):
                    problems = shape_problems(result)
                    failed += bool(problems)
                    table.add_row(board.title, result.panel.title, str(len(result.rows)), "; ".join(problems))
            except (psycopg2.Error, LookupError) as exc:
                failed += 1
                table.add_row(board.title, "(query failed)", "-", str(exc).strip().splitlines()[0])
    finally:
        conn.close()
    Console().print(table)
    if failed:
        typer.secho(f"{failed} panel(s) with problems", fg="red", err=True)
        raise typer.Exit(1)


@grafana_app.command()
def build(check: bool = typer.Option(False, "--check", help="Only verify the committed files.")) -> None:
    """Regenerate grafana/dashboards/*.json and the provisioning files from the Python boards."""
    from grafana.build import main

    raise typer.Exit(main(["--check"] if check else []))


def register(app: typer.Typer) -> None:
    app.add_typer(grafana_app, name="grafana")
