"""An agent that raises stops the worker (``supervisor_strategy=CrashingSupervisor``), through the
real broker: no agent restarted in the process with its taken messages unacknowledged, which
blocked the next rebalance until the group dropped the worker while it still wrote changelogs."""

from __future__ import annotations

import time

import pytest

from contracts.events import Topics
from stream.runner import StreamWorker
from wardstream.config import scoped_env
from wardstream.kafka_io import ensure_topics, make_producer

pytestmark = pytest.mark.e2e


def test_an_agent_that_raises_stops_the_worker(kafka_ns, tmp_path) -> None:
    ensure_topics()
    producer = make_producer()
    # hospital.kpi-partials is the stream's own topic: a record it cannot read is a bug, not input
    producer.send(Topics(kafka_ns).kpi_partials, value=b"not a partial", partition=0)
    producer.flush()
    producer.close()
    log = tmp_path / "worker.log"
    with scoped_env(WARDSTREAM_STATE_DIR=str(tmp_path / "state")):
        with StreamWorker(log_path=log) as worker:
            deadline = time.monotonic() + 180
            while worker.alive() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not worker.alive(), "the worker kept running after its agent crashed"
            assert worker.proc is not None and worker.proc.returncode not in (0, None)
    text = log.read_text(errors="replace")
    assert "combine_kpis" in text and "Crashed reason" in text
    assert "Restarting dead" not in text  # not restarted in the process
