"""A newcomer's first run: the demo as the very first client of a broker that has just started.

A started broker answers metadata requests seconds before its group and transaction
coordinators do (CoordinatorNotAvailable / "Coordinator load in progress"); every client must
wait that out (wardstream.kafka_io.broker_call). The test starts its own broker (own ports, own
data directory, wiped first; the jars of the shared one) so the shared broker is never touched,
and stops it afterwards. The console must carry the project's lines only.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator
from datetime import date

import pytest
from rich.console import Console

from producers.simulator import SimConfig, Simulation
from wardstream.demo import run_demo
from wardstream.logs import setup_logging
from wardstream.stack.kafka import DEFAULT_HOME, LocalKafka

pytestmark = pytest.mark.e2e

LIBRARY_LINES = ("%4|", "%3|", "GETPID", "blocking the event loop", "kafka.", "aiokafka", "Traceback")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def cold_kafka(tmp_path) -> Iterator[LocalKafka]:
    """A broker of this test only, from wiped data; stopped (and its data left to tmp_path) after."""
    kafka = LocalKafka(home=tmp_path / "kafka", port=free_port(), controller_port=free_port(),
                       heap="384m", jar_home=DEFAULT_HOME)
    assert kafka.bootstrap != LocalKafka().bootstrap
    kafka.reset()  # what `wardstream stack reset` does: no topics, no offsets, no coordinators yet
    assert not kafka.data.exists()
    kafka.up()
    try:
        yield kafka
    finally:
        kafka.down()


def test_demo_is_the_first_client_of_a_cold_broker(cold_kafka, fresh_db, monkeypatch, tmp_path,
                                                   capfd) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", cold_kafka.bootstrap)
    monkeypatch.setenv("WARDSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("WARDSTREAM_NAMESPACE", "")  # restored afterwards (the demo sets its own)
    log_path = setup_logging("demo", log_dir=tmp_path / "logs")
    days, beds = 14, 64
    events = sum(1 for _ in Simulation(SimConfig(seed=5, start=date(2025, 1, 1), days=days, beds=beds)).stream())
    out = io.StringIO()
    try:
        snap = run_demo(history_days=days - 1, days=1, speed=0, seed=5, beds=beds,
                        console=Console(file=out, width=120))
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if not getattr(h, "_wardstream", False)]

    assert snap.produced == events == snap.rows["adt_events"]
    assert snap.rows["discharge_scores"] > 0 and snap.rows["kpi_partials"] > 0
    assert snap.rows["dead_letters"] == 0
    # the console (the demo's view, and stdout/stderr of this process and of librdkafka's C code)
    # shows no library lines; they are in the command's log file
    console = out.getvalue() + "".join(capfd.readouterr())
    assert "wardstream demo" in console
    assert not [line for line in console.splitlines() if any(m in line for m in LIBRARY_LINES)]
    assert log_path.exists()
