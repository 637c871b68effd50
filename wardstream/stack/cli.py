"""``wardstream stack up|down|status|env|reset``: the local Kafka + PostgreSQL without Docker.

One broker by default; ``--brokers 3`` runs a local three-node KRaft cluster instead
(:class:`wardstream.stack.kafka.LocalCluster`). ``down``, ``status`` and ``env`` act on whichever
Kafka runs.
"""

from __future__ import annotations

import typer

from wardstream.stack.kafka import LocalCluster, LocalKafka, StackError
from wardstream.stack.postgres import LocalPostgres

stack = typer.Typer(help="Start, stop and check the local Kafka (KRaft) and PostgreSQL.", no_args_is_help=True)

BROKERS_HELP = "Kafka brokers: 1 (one node on 9092) or 3 (a cluster on 9092, 9094, 9096)."


def _do(action) -> None:
    try:
        typer.echo(action())
    except StackError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def _brokers(value: int) -> int:
    if value not in (1, 3):
        raise typer.BadParameter("must be 1 or 3")
    return value


def _env_line(env: dict[str, str]) -> str:
    return "export " + " ".join(f"{k}={v}" for k, v in env.items())


@stack.command()
def up(brokers: int = typer.Option(1, "--brokers", callback=_brokers, help=BROKERS_HELP)) -> None:
    """Start Kafka and PostgreSQL on 127.0.0.1 and wait until both answer (idempotent).

    With --brokers 3: three combined broker + controller nodes form one KRaft quorum (node i has
    client port 9090+2i and controller port 9091+2i: 9092/9093, 9094/9095, 9096/9097), each with
    its data, logs and pid under .wardstream/kafka-cluster/broker-i. Topics are replicated 3
    times with min.insync.replicas 2, so writes go on with one broker down. The one-broker
    stack must be down first (it holds 9092). Point the commands at the cluster with
    `eval "$(wardstream stack env)"`, which sets KAFKA_BOOTSTRAP_SERVERS (all three brokers),
    WARDSTREAM_REPLICATION_FACTOR=3 and WARDSTREAM_MIN_INSYNC_REPLICAS=2.
    """
    if brokers > 1 and LocalKafka().pid():
        typer.secho(f"error: the one-broker Kafka runs on {LocalKafka().bootstrap}; "
                    "`wardstream stack down` first for the cluster", fg="red", err=True)
        raise typer.Exit(1)
    _do(LocalPostgres().up)
    if brokers == 1:
        cluster = LocalCluster()
        if cluster.running():
            typer.echo(f"the {len(cluster.ports)}-broker Kafka cluster runs on {cluster.bootstrap} "
                       "(`wardstream stack down` first for one broker)")
            return
        _do(LocalKafka().up)
        return
    _do(LocalCluster().up)
    typer.echo(_env_line(LocalCluster().env()))


@stack.command()
def down() -> None:
    """Stop Kafka (one broker or the cluster) and PostgreSQL cleanly (data is kept)."""
    cluster = LocalCluster()
    was_cluster = cluster.running()
    if was_cluster:
        _do(cluster.down)
    if LocalKafka().pid() or not was_cluster:
        _do(LocalKafka().down)
    _do(LocalPostgres().down)


@stack.command()
def status() -> None:
    """Say whether each service answers (each broker, on a cluster)."""
    cluster = LocalCluster()
    typer.echo(cluster.status() if cluster.running() else LocalKafka().status())
    typer.echo(LocalPostgres().status())


@stack.command()
def env() -> None:
    """Print the Kafka environment for the running stack, for `eval "$(wardstream stack env)"`:
    KAFKA_BOOTSTRAP_SERVERS, WARDSTREAM_REPLICATION_FACTOR and WARDSTREAM_MIN_INSYNC_REPLICAS."""
    cluster = LocalCluster()
    if cluster.running():
        typer.echo(_env_line(cluster.env()))
    else:
        typer.echo(_env_line({"KAFKA_BOOTSTRAP_SERVERS": LocalKafka().bootstrap,
                              "WARDSTREAM_REPLICATION_FACTOR": "1", "WARDSTREAM_MIN_INSYNC_REPLICAS": "1"}))


@stack.command()
def reset(yes: bool = typer.Option(False, "--yes", help="Do not ask."),
          brokers: int = typer.Option(1, "--brokers", callback=_brokers, help=BROKERS_HELP)) -> None:
    """Stop Kafka and delete its topics and offsets (PostgreSQL data is kept)."""
    if not yes:
        typer.confirm("Delete all local Kafka data?", abort=True)
    (LocalCluster() if brokers > 1 else LocalKafka()).reset()
    typer.echo("Kafka data deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(stack, name="stack")
