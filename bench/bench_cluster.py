"""The replay of ``bench_replay`` on a three-broker cluster, with 1, 2 and 4 workers.

A private KRaft cluster (3 brokers on free ports, replication 3, ``min.insync.replicas`` 2, acks=all;
the stack's broker is left alone) is started under a temporary directory, the stack's PostgreSQL
if it is down, and :func:`bench.bench_replay.run` runs against it: a simulated year of a
10-hospital system (30 days with ``--quick``) replayed from offset 0 to the last committed
PostgreSQL row by 1, 2 and 4 workers and one sink, each count from a cold start in a fresh
namespace and database. The
figures are bench_replay's, prefixed ``replay_<n>w_``; ``cores`` names each broker.

On this machine the brokers, the workers, the sink and PostgreSQL share two cores, so more
workers cannot run faster here: the figures say what replication and more consumers cost, not
how a cluster of real hosts scales (README, "Deployment on a real cluster").

Alone: ``python -m bench.bench_cluster [--quick] [--workers 1 2 4]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import bench_replay
from wardstream.config import scoped_env
from wardstream.stack.kafka import LocalCluster
from wardstream.stack.postgres import LocalPostgres

BROKERS = 3


def run(quick: bool = False, workers: tuple[int, ...] = (1, 2, 4)) -> dict:
    LocalPostgres().up()  # before minutes of simulating and copying, not after them
    with tempfile.TemporaryDirectory(prefix="wardstream-bench-cluster-") as home:
        cluster = LocalCluster.on_free_ports(Path(home), BROKERS)
        with scoped_env(**cluster.env(), WARDSTREAM_BROKER_WAIT_S="90"):
            cluster.up(timeout=180)
            try:
                figures = bench_replay.run(quick=quick, workers=workers, brokers=lambda: {
                    f"kafka{node.node_id}": node.pid() for node in cluster.nodes})
            finally:
                cluster.down()
    return {"brokers": BROKERS, "replication_factor": cluster.replication, **figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 simulated days instead of 365")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                        help="worker counts to run (default: 1 2 4)")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, workers=tuple(args.workers)), indent=2))
