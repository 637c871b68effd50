"""A real single-node Apache Kafka (KRaft) started from its Maven Central jars.

No Docker here: the jars come from ``mvn dependency:copy-dependencies`` on ``pom.xml`` beside
this file, the broker runs as ``java -cp 'lib/*' kafka.Kafka server.properties`` on 127.0.0.1,
with a small heap. The version matches the ``apache/kafka`` image in docker-compose.yml.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from wardstream.config import REPO_ROOT

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


DEFAULT_HOME = REPO_ROOT / ".wardstream" / "kafka"


@dataclass
class LocalKafka:
    """Paths and lifecycle of one local broker. ``home`` holds its data, logs and pid; the jars
    live under ``jar_home`` (default: ``home``). A second broker (e.g. a test's cold one) takes its
    own ``home`` and ports and shares the jars: ``LocalKafka(tmp, port=..., controller_port=...,
    jar_home=DEFAULT_HOME)``."""

    home: Path = DEFAULT_HOME
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    jar_home: Path | None = None

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
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data}",
                    "num.partitions=4",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=8",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.hours=-1",
                    "log.segment.bytes=67108864",
                    "",
                ]
            )
        )
        return props

    def _format(self, props: Path) -> None:
        if (self.data / "meta.properties").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        uuid = self._java("kafka.tools.StorageTool", "random-uuid").stdout.strip().splitlines()[-1]
        out = self._java("kafka.tools.StorageTool", "format", "-t", uuid, "-c", str(props))
        if out.returncode != 0:
            raise StackError(f"Kafka storage format failed: {out.stderr[-2000:]}")

    # ------------------------------------------------------------------ lifecycle

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

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

        def ready() -> bool:
            if proc.poll() is not None:
                raise StackError(f"Kafka exited with {proc.returncode}; see {self.logs}/server.log")
            return self.healthy()

        wait_until(ready, timeout, f"Kafka on {self.bootstrap}")
        return f"Kafka {KAFKA_VERSION} up on {self.bootstrap} (pid {proc.pid})"

    def down(self, timeout: float = 60, hard: bool = False) -> str:
        pid = self.pid()
        if pid is None:
            return "Kafka is not running"
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
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

    def status(self) -> str:
        if self.healthy():
            return f"Kafka {KAFKA_VERSION}: up on {self.bootstrap}"
        return "Kafka: down"
