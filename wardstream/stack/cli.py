"""``wardstream stack up|down|status|reset``: the local Kafka + PostgreSQL without Docker."""

from __future__ import annotations

import typer

from wardstream.stack.kafka import LocalKafka, StackError
from wardstream.stack.postgres import LocalPostgres

stack = typer.Typer(help="Start, stop and check the local Kafka (KRaft) and PostgreSQL.", no_args_is_help=True)


def _do(action) -> None:
    try:
        typer.echo(action())
    except StackError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@stack.command()
def up() -> None:
    """Start Kafka and PostgreSQL on 127.0.0.1 and wait until both answer (idempotent)."""
    _do(LocalPostgres().up)
    _do(LocalKafka().up)


@stack.command()
def down() -> None:
    """Stop both services cleanly (data is kept)."""
    _do(LocalKafka().down)
    _do(LocalPostgres().down)


@stack.command()
def status() -> None:
    """Say whether each service answers."""
    typer.echo(LocalKafka().status())
    typer.echo(LocalPostgres().status())


@stack.command()
def reset(yes: bool = typer.Option(False, "--yes", help="Do not ask.")) -> None:
    """Stop Kafka and delete its topics and offsets (PostgreSQL data is kept)."""
    if not yes:
        typer.confirm("Delete all local Kafka data?", abort=True)
    LocalKafka().reset()
    typer.echo("Kafka data deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(stack, name="stack")
