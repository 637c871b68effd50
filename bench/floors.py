"""What the layers under the worker cost alone: where the throughput limit of any Faust app sits.

``bench_e2e`` compares the pipeline with a bare kafka-python consumer that only decodes JSON. The
worker reads ``hospital.adt`` through two layers, and each is measured here on the same topic in
the same run, doing the same nothing (decode each message's JSON):

* ``aiokafka_consume``: aiokafka, the client under Faust, fetching in batches (its record decoding
  is compiled);
* ``faust_noop``: a Faust app configured like the worker (``stream.faust_patches``, the same stream
  buffer, at-least-once acks and commits) whose one agent only decodes each message's JSON. Its
  rate is the most any agent on Faust's stream path can reach here, whatever it does.

Run alone: ``python -m bench.floors TOPIC EXPECTED OUT_JSON`` starts the Faust app (it writes its
figures to OUT_JSON because a Faust worker takes over stdout, and exits when done).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from wardstream.config import REPO_ROOT, settings


class DecodeClock:
    """Decodes the records of each poll (``{partition: [records]}``) and times them against
    ``expected``: the work of the ceiling and of the bare clients alike."""

    def __init__(self, client: str, expected: int, timeout: float = 600) -> None:
        self.client, self.expected, self.timeout = client, expected, timeout
        self.n = 0
        self.started = time.perf_counter()

    def take(self, polled: Mapping[Any, list]) -> bool:
        """Decode ``polled``; True once ``expected`` records were. Raises after ``timeout``."""
        loads = orjson.loads
        for records in polled.values():
            for r in records:
                loads(r.value)
            self.n += len(records)
        if self.n < self.expected and self.seconds > self.timeout:
            raise TimeoutError(f"{self.client} read {self.n}/{self.expected} messages in {self.timeout:.0f} s")
        return self.n >= self.expected

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def aiokafka_consume(topic: str, expected: int) -> float:
    """Seconds for a bare aiokafka consumer (read_committed, batches) to read and decode ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def consume() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings().kafka.bootstrap_servers,
                                    enable_auto_commit=False, isolation_level="read_committed")
        await consumer.start()
        try:
            await consumer._client._wait_on_metadata(topic)  # no public call waits for one topic
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            clock = DecodeClock("aiokafka consumer", expected)
            while not clock.take(await consumer.getmany(timeout_ms=1000, max_records=10_000)):
                pass
            return clock.seconds
        finally:
            await consumer.stop()

    return asyncio.run(consume())


def faust_noop(topic: str, expected: int, timeout: float = 300) -> dict[str, float]:
    """Run the no-op Faust app on ``topic`` in a subprocess; its seconds from start-up and from the
    first message until it has taken ``expected`` messages."""
    with tempfile.TemporaryDirectory(prefix="wardstream-floor-") as tmp:
        out = Path(tmp) / "floor.json"
        proc = subprocess.run([sys.executable, "-m", "bench.floors", topic, str(expected), str(out)],
                              cwd=REPO_ROOT, capture_output=True, timeout=timeout,
                              env={**os.environ, "WARDSTREAM_STATE_DIR": tmp})
        if not out.exists():
            tail = proc.stderr.decode(errors="replace")[-600:]
            raise RuntimeError(f"the no-op Faust app gave no figures (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())


def _run_noop_app(topic: str, expected: int, out: Path) -> None:
    import faust

    from stream import faust_patches

    faust_patches.apply()
    started = time.perf_counter()
    app = faust.App(f"{settings().topic_namespace}floor-{os.getpid()}",
                    broker=f"kafka://{settings().kafka.bootstrap_servers}",
                    store="memory://", datadir=str(out.parent / "faust"), web_enabled=False,
                    processing_guarantee="at_least_once", key_serializer="raw", value_serializer="raw",
                    consumer_auto_offset_reset="earliest",
                    stream_buffer_maxsize=settings().stream.stream_buffer)
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(source, concurrency=1)
    async def decode_only(stream):  # noqa: ANN001 (Faust's stream)
        loads = orjson.loads
        async for value in stream:
            if not seen["n"]:
                seen["first"] = time.perf_counter()
            loads(value)
            seen["n"] += 1
            if seen["n"] >= expected:
                now = time.perf_counter()
                out.write_text(json.dumps({"from_start_s": now - started,
                                           "after_first_s": now - seen["first"], "messages": seen["n"]}))
                os._exit(0)  # the figures are written; nothing of this app's state matters

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    _run_noop_app(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
