"""Fault drills on a three-broker cluster with two workers, each as on a host of its own.

The module starts a private KRaft cluster (3 brokers on free ports, replication 3,
``min.insync.replicas`` 2; the shared broker is never touched) and runs one input undisturbed on
it with one worker: the reference. Each drill then runs the same input in a fresh namespace with
two workers (``tests/fleet.py``: separate state, home, temporary and working directories, only
Kafka in common), the live sink, and the notifier posting to a real HTTP server; copies half of
the input, faults the cluster or a worker once the workers are mid-way through it, copies the
rest, drains, and checks what the chaos soak checks: every first score identical, final outputs
and the live sink's database equal to the reference's, KPI windows and labels equal to the
oracle, one alert per encounter and one webhook delivery per alert, produced = processed + DLQ.
``tests/loop_drills.py`` runs each drill 10 times in a row.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from contracts.events import Topics
from faults import (
    RunResult,
    baseline,
    group_members,
    new_namespace,
    replay_copy,
    replay_rest,
    scratch_database,
    wait_mid_stream,
    wait_until,
)
from fleet import ROOT, Fleet, finish, private_cluster
from producers.simulator import SimConfig
from soak_checks import table
from stream.runner import group_id
from test_stack_cluster import partitions
from wardstream.config import settings
from wardstream.stack.kafka import LocalCluster
from webhook import Webhook

pytestmark = pytest.mark.e2e

# ~60 simulated days of one 150-bed hospital: labels need 30 days; a drill stays within minutes.
# Another seed than tests/faults.py's FAULT_CONFIG: its reference run lives on the shared broker.
CONFIG = dict(days=60, beds=150, seed=19)
HEAD = 0.5  # the fault comes while the workers are in the first half of the input
DOWN_S = 3.0  # how long a killed broker or worker stays down


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory) -> LocalCluster:
    with private_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory) -> RunResult:
    return baseline(tmp_path_factory.mktemp("reference"), **CONFIG)


def kill_adt_leader(cluster: LocalCluster, fleet: Fleet) -> str:
    """SIGKILL the broker that leads most ``hospital.adt`` partitions, then restart it."""
    leaders = Counter(leader for leader, _, _ in partitions(settings(), Topics(fleet.namespace).adt).values())
    node_id, led = leaders.most_common(1)[0]
    _restart_broker(cluster, node_id)
    return f"broker {node_id}, leader of {led} of {sum(leaders.values())} hospital.adt partitions"


def kill_coordinator(cluster: LocalCluster, fleet: Fleet) -> str:
    """SIGKILL the broker that coordinates the workers' consumer group, then restart it."""
    group = group_id(fleet.namespace)
    admin = AdminClient({"bootstrap.servers": settings().kafka.bootstrap_servers})
    node_id = admin.describe_consumer_groups([group])[group].result(timeout=30).coordinator.id
    _restart_broker(cluster, node_id)
    return f"broker {node_id}, coordinator of the workers' group"


def kill_worker_new_host(cluster: LocalCluster, fleet: Fleet) -> str:
    """SIGKILL worker 2, then start it on a new host: its state comes from the changelogs, which
    live on several brokers (the batch journal's ordering, stream/adt_flow.py)."""
    fleet.kill_worker(2)
    time.sleep(DOWN_S)
    fleet.start_worker(2, new_host=True)
    return "worker 2, restarted on a new host (empty state directory)"


def _restart_broker(cluster: LocalCluster, node_id: int) -> None:
    node = cluster.node(node_id)
    node.kill()
    time.sleep(DOWN_S)
    node.up(timeout=180)


@pytest.mark.parametrize("fault", [kill_adt_leader, kill_coordinator, kill_worker_new_host],
                         ids=["adt-leader", "coordinator", "worker"])
def test_cluster_drill(cluster, reference, tmp_path, fault) -> None:
    ns = new_namespace("cluster")
    started = time.monotonic()
    with ExitStack() as stack:
        url = stack.enter_context(scratch_database())
        hook = stack.enter_context(Webhook())
        fleet = Fleet(ns, url, tmp_path, workers=2, hook_url=hook.url)
        stack.callback(fleet.stop_all)
        own_files = _files_outside_hosts()
        for i in (1, 2):
            fleet.start_worker(i)
        # Both in the group before any input arrives, so both work on it.
        wait_until(lambda: group_members(ns) == 2, 180, "two members in the worker group")
        fleet.start_sink()
        fleet.start_notifier()
        head = replay_copy(reference.namespace, ns, HEAD)
        wait_mid_stream(fleet.any_worker(), 0.6)
        what = fault(cluster, fleet)
        cluster.up(timeout=180)  # every broker back (a no-op unless one failed to restart)
        fleet.revive()
        assert head + replay_rest(reference.namespace, ns, HEAD) == reference.adt_messages
        checks = finish(fleet, reference, SimConfig(**CONFIG), lambda: [d["key"] for d in hook.delivered])
        hosts = _host_files(tmp_path)
        stray = _files_outside_hosts() - own_files
    print(f"cluster drill, SIGKILL of {what}: {time.monotonic() - started:.0f}s\n{table(checks)}")
    failed = [c for c in checks if c.ok is False]
    assert not failed, table(checks)
    # as on separate hosts: each worker's tables in its own state directory, nothing elsewhere
    assert all(files for files in hosts.values()), hosts
    assert not {p for p in stray if ns in p}, sorted(stray)[:5]


def _host_files(run_dir: Path) -> dict[str, int]:
    """Per host directory, the files of its worker's tables."""
    return {host.name: sum(1 for p in (host / "state").rglob("*") if p.is_file())
            for host in sorted(run_dir.glob("host-*"))}


def _files_outside_hosts() -> set[str]:
    """Paths under the checkout's default state directory and this user's ``~/.faust`` (where a
    worker that ignored its host's state directory or home would write)."""
    return {str(p) for d in (ROOT / ".wardstream" / "state", Path.home() / ".faust") if d.exists()
            for p in d.rglob("*")}
