"""A real Apache Kafka (KRaft) started from its Maven Central jars: one node, or a local cluster.

No Docker here: the jars come from ``mvn dependency:copy-dependencies`` on ``pom.xml`` beside
this file, each node runs as ``java -cp 'lib/*' kafka.Kafka server.properties`` on 127.0.0.1,
with a small heap. The version matches the ``apache/kafka`` image in docker-compose.yml.

:class:`LocalKafka` is one combined broker + controller node (``wardstream stack up``: client
port 9092, controller 9093, under ``.wardstream/kafka``). :class:`LocalCluster` is three such
nodes forming one KRaft quorum (``wardstream stack up --brokers 3``): node ``i`` (1..3) takes
client port ``9090 + 2i`` and controller port ``9091 + 2i`` (9092/9093, 9094/9095, 9096/9097)
and its own directory ``.wardstream/kafka-cluster/broker-i`` (data, logs, pid), all formatted
with one cluster id and sharing the jars of ``.wardstream/kafka``. Internal and new topics are
replicated 3 times with ``min.insync.replicas`` 2, so the cluster loses no acknowledged
(acks=all) write and keeps taking writes with one broker down.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wardstream.config import REPO_ROOT

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
STACK_FILES = Path(__file__).resolve().parent


class StackError(RuntimeError):
    """A local service could not be installed, started or stopped; the message says why."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")


def exited(pid: int) -> bool:
    """Whether process ``pid`` has ended; reaps it when it is this process's child (a node this
    process started), which would otherwise linger as a zombie that still answers ``kill -0``."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child: its parent reaps it
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False


def new_cluster_id(lib: Path) -> str:
    """A fresh KRaft cluster id from ``kafka.tools.StorageTool random-uuid``."""
    out = subprocess.run(["java", "-cp", f"{lib}/*", "kafka.tools.StorageTool", "random-uuid"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise StackError(f"Kafka could not make a cluster id: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


DEFAULT_HOME = REPO_ROOT / ".wardstream" / "kafka"
CLUSTER_HOME = REPO_ROOT / ".wardstream" / "kafka-cluster"


@dataclass
class LocalKafka:
    """Paths and lifecycle of one local broker. ``home`` holds its data, logs and pid; the jars
    live under ``jar_home`` (default: ``home``). A second broker (e.g. a test's cold one) takes its
    own ``home`` and ports and shares the jars: ``LocalKafka(tmp, port=..., controller_port=...,
    jar_home=DEFAULT_HOME)``.

    Alone it is its own quorum (``voters`` None). As a node of a :class:`LocalCluster` it takes
    its ``node_id``, the quorum's ``voters`` (``controller.quorum.voters``), the cluster's
    ``cluster_id`` and ``replication`` (3: the replication of internal topics and new topics'
    default, with ``min.insync.replicas`` 2)."""

    home: Path = DEFAULT_HOME
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    jar_home: Path | None = None
    node_id: int = 1
    voters: str | None = None
    cluster_id: str | None = None
    replication: int = 1

    @property
    def min_insync(self) -> int:
        """``min.insync.replicas`` for this replication: 2 of 3, 1 of 1.

        >>> LocalKafka(replication=3).min_insync, LocalKafka().min_insync
        (2, 1)
        """
        return min(2, self.replication)

    @property
    def lib(self) -> Path:
        return (self.jar_home or self.home) / f"lib-{KAFKA_VERSION}"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pidfile(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Fetch the pinned jars once (a few tens of MB from Maven Central)."""
        if self.lib.is_dir() and any(self.lib.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            return
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven)")
        if shutil.which("java") is None:
            raise StackError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
        self.lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.lib.parent / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", str(STACK_FILES / "pom.xml"),
               "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"mvn could not fetch the Kafka jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        tmp.rename(self.lib)

    def _java(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["java", "-cp", f"{self.lib}/*", *args], capture_output=True, text=True, **kw)

    def _write_properties(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        voters = self.voters or f"{self.node_id}@{self.host}:{self.controller_port}"
        cluster = [  # a cluster's replication; one broker keeps the broker defaults (1 and 1)
            f"default.replication.factor={self.replication}",
            f"min.insync.replicas={self.min_insync}",
        ] if self.replication > 1 else []
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={voters}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data}",
                    "num.partitions=4",
                    f"offsets.topic.replication.factor={self.replication}",
                    "offsets.topic.num.partitions=8",
                    f"transaction.state.log.replication.factor={self.replication}",
                    f"transaction.state.log.min.isr={self.min_insync}",
                    "transaction.state.log.num.partitions=8",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.hours=-1",
                    "log.segment.bytes=67108864",
                    *cluster,
                    "",
                ]
            )
        )
        return props

    def _format(self, props: Path) -> None:
        if (self.data / "meta.properties").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        uuid = self.cluster_id or new_cluster_id(self.lib)
        out = self._java("kafka.tools.StorageTool", "format", "-t", uuid, "-c", str(props))
        if out.returncode != 0:
            raise StackError(f"Kafka storage format failed: {out.stderr[-2000:]}")

    # ------------------------------------------------------------------ lifecycle

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return None if exited(pid) else pid

    def healthy(self) -> bool:
        """The broker answers a metadata request (not just an open port)."""
        if not port_open(self.host, self.port):
            return False
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                admin.describe_cluster()
            finally:
                admin.close()
            return True
        except Exception:
            return False

    def up(self, timeout: float = 90) -> str:
        if self.pid() and self.healthy():
            return f"Kafka {KAFKA_VERSION} already up on {self.bootstrap}"
        if port_open(self.host, self.port) and not self.pid():
            if self.healthy():
                return f"a Kafka broker (not started by wardstream) already answers on {self.bootstrap}"
            raise StackError(f"port {self.port} is taken by another program")
        proc = self.start()

        def ready() -> bool:
            if proc.poll() is not None:
                raise StackError(f"Kafka exited with {proc.returncode}; see {self.logs}/server.log")
            return self.healthy()

        wait_until(ready, timeout, f"Kafka on {self.bootstrap}")
        return f"Kafka {KAFKA_VERSION} up on {self.bootstrap} (pid {proc.pid})"

    def start(self) -> subprocess.Popen:
        """Install, configure, format (first time only) and launch the node; do not wait for it
        (the nodes of a quorum can only answer once a majority runs)."""
        self.install()
        props = self._write_properties()
        self._format(props)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KAFKA_HEAP_OPTS=f"-Xmx{self.heap}")
        cmd = [
            "java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.logs}",
            f"-Dlog4j.configuration=file:{STACK_FILES / 'log4j.properties'}",
            "-cp", f"{self.lib}/*", "kafka.Kafka", str(props),
        ]
        with open(self.logs / "stdout.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=self.home)
        self.pidfile.write_text(str(proc.pid))
        return proc

    def down(self, timeout: float = 60, hard: bool = False) -> str:
        pid = self.pid()
        if pid is None:
            return "Kafka is not running"
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if exited(pid):
                break
            time.sleep(0.3)
        else:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not port_open(self.host, self.port), 30, "Kafka's port to close")
        self.pidfile.unlink(missing_ok=True)
        return "Kafka stopped"

    def reset(self) -> None:
        """Stop and delete all broker data (topics, offsets): a fresh cluster on next up."""
        self.down()
        shutil.rmtree(self.data, ignore_errors=True)

    def kill(self) -> str:
        """SIGKILL the node (a crash: no controlled shutdown), as the drills do."""
        return self.down(hard=True)

    def status(self) -> str:
        if self.healthy():
            return f"Kafka {KAFKA_VERSION}: up on {self.bootstrap}"
        return "Kafka: down"


def cluster_ports(brokers: int, base: int = 9092) -> tuple[list[int], list[int]]:
    """Client and controller ports of a local cluster's nodes: pairs from ``base`` up.

    >>> cluster_ports(3)
    ([9092, 9094, 9096], [9093, 9095, 9097])
    """
    return [base + 2 * i for i in range(brokers)], [base + 2 * i + 1 for i in range(brokers)]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held open until every one is picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class LocalCluster:
    """A local KRaft cluster: one :class:`LocalKafka` node per client port, each a broker and a
    voter of the controller quorum, under ``home/broker-<id>``; the cluster id is kept in
    ``home/cluster.id``. Replication 3 (``min.insync.replicas`` 2) for internal and new topics.

    A drill or a benchmark runs its own on free ports: :meth:`on_free_ports`.
    """

    home: Path = CLUSTER_HOME
    ports: Sequence[int] = field(default_factory=lambda: cluster_ports(3)[0])
    controller_ports: Sequence[int] = field(default_factory=lambda: cluster_ports(3)[1])
    host: str = "127.0.0.1"
    heap: str = "512m"
    jar_home: Path = DEFAULT_HOME
    replication: int = 3

    @classmethod
    def on_free_ports(cls, home: Path, brokers: int = 3, heap: str = "384m") -> "LocalCluster":
        """A cluster of ``brokers`` under ``home`` on ports free right now (a drill's or a
        benchmark's own; the stack's broker and cluster keep theirs), the stack's jars."""
        ports = free_ports(2 * brokers)
        return cls(home=home, ports=ports[:brokers], controller_ports=ports[brokers:], heap=heap,
                   jar_home=DEFAULT_HOME, replication=min(3, brokers))

    def __post_init__(self) -> None:
        if len(self.ports) != len(self.controller_ports) or len(self.ports) < self.replication:
            raise StackError(f"a cluster of replication {self.replication} needs as many client and "
                             f"controller ports, at least {self.replication} of each")

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster.id"

    @property
    def nodes(self) -> list[LocalKafka]:
        """The nodes (node ids 1..n), configured as one quorum."""
        voters = ",".join(f"{i}@{self.host}:{c}" for i, c in enumerate(self.controller_ports, 1))
        cluster_id = self.cluster_id_file.read_text().strip() if self.cluster_id_file.exists() else None
        return [
            LocalKafka(home=self.home / f"broker-{i}", host=self.host, port=port, controller_port=cport,
                       heap=self.heap, jar_home=self.jar_home, node_id=i, voters=voters,
                       cluster_id=cluster_id, replication=self.replication)
            for i, (port, cport) in enumerate(zip(self.ports, self.controller_ports), 1)
        ]

    def node(self, node_id: int) -> LocalKafka:
        """The node with this id (1..n)."""
        return self.nodes[node_id - 1]

    @property
    def bootstrap(self) -> str:
        """KAFKA_BOOTSTRAP_SERVERS for this cluster: every broker."""
        return ",".join(f"{self.host}:{port}" for port in self.ports)

    def env(self) -> dict[str, str]:
        """The environment a wardstream command needs to use this cluster."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "WARDSTREAM_REPLICATION_FACTOR": str(self.replication),
            "WARDSTREAM_MIN_INSYNC_REPLICAS": str(min(2, self.replication)),
        }

    def running(self) -> bool:
        """Whether any node of this cluster runs (by its pid file)."""
        return any(node.pid() for node in self.nodes)

    def registered(self) -> set[int]:
        """Node ids of the brokers that every broker answering lists in its metadata (registered
        and not fenced); empty when no broker answers. Each broker is asked on its own: one whose
        metadata lags can list fewer than the others (a status right after ``up``, which had
        asked one broker, once showed 2 of 3)."""
        views = [seen for port in self.ports if port_open(self.host, port)
                 if (seen := self._listed_by(port)) is not None]
        return set.intersection(*views) if views else set()

    def _listed_by(self, port: int) -> set[int] | None:
        """The broker ids the broker on ``port`` lists (None: it did not answer). A new client
        per broker: its first metadata request goes to that broker, the only one it knows."""
        from confluent_kafka.admin import AdminClient

        try:
            meta = AdminClient({"bootstrap.servers": f"{self.host}:{port}", "socket.timeout.ms": 3000,
                                "logger": log}).list_topics(timeout=3)
        except Exception:
            return None
        return set(meta.brokers)

    def healthy(self) -> bool:
        """Every node runs and a metadata request lists all of them as brokers."""
        return len(self.registered()) == len(self.ports)

    def up(self, timeout: float = 120) -> str:
        """Start the nodes that are not running (all at once: a quorum needs a majority) and wait
        until a metadata request lists every broker (idempotent)."""
        nodes = self.nodes
        if all(node.pid() for node in nodes) and self.healthy():
            return f"Kafka {KAFKA_VERSION} cluster already up on {self.bootstrap}"
        for node in nodes:
            if node.pid():
                continue
            taken = [p for p in (node.port, node.controller_port) if port_open(self.host, p)]
            if taken:
                raise StackError(f"port {taken[0]} (broker {node.node_id}) is taken by another program "
                                 "(the one-broker stack? stop it first: wardstream stack down)")
        nodes[0].install()
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.cluster_id_file.exists():
            self.cluster_id_file.write_text(new_cluster_id(nodes[0].lib) + "\n")
            nodes = self.nodes
        procs = {node.node_id: node.start() for node in nodes if not node.pid()}

        def ready() -> bool:
            for node_id, proc in procs.items():
                if proc.poll() is not None:
                    raise StackError(f"Kafka broker {node_id} exited with {proc.returncode}; "
                                     f"see {self.node(node_id).logs}/server.log")
            return self.healthy()

        wait_until(ready, timeout, f"{len(nodes)} Kafka brokers on {self.bootstrap}")
        return f"Kafka {KAFKA_VERSION} cluster of {len(nodes)} brokers up on {self.bootstrap}"

    def down(self, timeout: float = 60) -> str:
        """Stop every node: SIGTERM to all at once (each a controlled shutdown while the quorum
        still stands), then wait for each; SIGKILL past ``timeout``."""
        running = [(node, pid) for node in self.nodes if (pid := node.pid())]
        if not running:
            return "Kafka cluster is not running"
        for _, pid in running:
            os.kill(pid, signal.SIGTERM)
        for node, _ in running:
            node.down(timeout=timeout)
        return f"Kafka cluster stopped ({len(running)} brokers)"

    def reset(self) -> None:
        """Stop and delete every node's data and the cluster id: a fresh cluster on next up."""
        self.down()
        for node in self.nodes:
            shutil.rmtree(node.data, ignore_errors=True)
        self.cluster_id_file.unlink(missing_ok=True)

    def status(self) -> str:
        """One line per broker (its ports, pid and whether the cluster lists it), then the total."""
        registered = self.registered()
        lines = []
        for node in self.nodes:
            pid = node.pid()
            state = ("up" if node.node_id in registered else "running, not registered") if pid else "down"
            where = f"{node.bootstrap} (controller :{node.controller_port}"
            lines.append(f"Kafka broker {node.node_id}: {state} on {where}" + (f", pid {pid})" if pid else ")"))
        lines.append(f"Kafka {KAFKA_VERSION} cluster: {len(registered)} of {len(self.ports)} brokers registered; "
                     f"logs under {self.home}/broker-*/logs")
        return "\n".join(lines)
