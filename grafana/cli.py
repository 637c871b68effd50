"""``wardstream grafana push|build``: dashboards as code onto a running Grafana."""

from __future__ import annotations

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


@grafana_app.command()
def build(check: bool = typer.Option(False, "--check", help="Only verify the committed files.")) -> None:
    """Regenerate grafana/dashboards/*.json and the provisioning files from the Python boards."""
    from grafana.build import main

    raise typer.Exit(main(["--check"] if check else []))


def register(app: typer.Typer) -> None:
    app.add_typer(grafana_app, name="grafana")
