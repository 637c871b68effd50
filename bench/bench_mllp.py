"""``wardstream mllp`` (issue 16): ACK latency at 100 messages/s, and messages/s over 8 connections.

A ``wardstream mllp`` subprocess against the real local Kafka, in a namespace of its own
(:func:`bench.bench_e2e.namespace`). The messages are a simulated HL7 feed
(:mod:`producers.hl7_feed`, seed 42: A01 / A02 / A03 with A08 updates, A07s, A11-A13 cancellations
and A40 merges mixed in, each of which the listener maps to its contract v1.1 event and stores on
``hospital.adt`` before its AA: each ACK waits for one Kafka acknowledgement).

The sender is Python (:class:`producers.mllp.client.MllpClient`, blocking sockets), each
connection sending one message after the previous one's ACK, as HAPI and interface engines do:

1. **paced**: one connection at 100 messages/s (a fixed schedule); ACK latency p50 / p99 / max
   (send to ACK received), all messages and AA only. Target: p99 < 50 ms.
2. **parallel**: 8 connections at full speed, the feed split by patient (a patient's messages on
   one connection, in order); messages/s from the first send to the last ACK.

Each phase sends messages not sent before (the listener answers a re-sent MSH-10 from memory).
A warm-up of 50 messages (topic metadata, the first produce) is not counted.
"""

from __future__ import annotations

import socket
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import psutil

from bench.bench_e2e import RESULTS, Service, namespace
from producers.hl7_feed import Hl7Message, hl7_messages
from producers.mllp.client import MllpClient
from producers.simulator import SimConfig, Simulation

RATE = 100.0
CONNECTIONS = 8
WARMUP = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: Service, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.proc is not None and proc.proc.poll() is None, "wardstream mllp exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("wardstream mllp did not start") from None
            time.sleep(0.2)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def send_all(port: int, messages: Iterable[Hl7Message], codes: list[str] | None = None) -> None:
    """Each message on one connection after the previous one's ACK; the ACK codes into ``codes``."""
    with MllpClient("127.0.0.1", port, timeout=30) as client:
        for m in messages:
            ack = client.deliver(m.text.encode(), m.control_id)
            if codes is not None:
                codes.append(ack.code)


def paced(port: int, messages: list[Hl7Message], rate: float = RATE) -> dict[str, float]:
    """One connection, one message every 1/rate s (a fixed schedule): ACK latencies in ms."""
    lat: list[float] = []
    lat_aa: list[float] = []
    with MllpClient("127.0.0.1", port, timeout=30) as client:
        start = time.perf_counter()
        for i, m in enumerate(messages):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            ack = client.deliver(m.text.encode(), m.control_id)
            ms = (time.perf_counter() - t0) * 1000
            lat.append(ms)
            if ack.code == "AA":
                lat_aa.append(ms)
        achieved = len(messages) / (time.perf_counter() - start)
    return {"paced_messages": len(messages), "paced_rate": round(achieved, 1),
            "ack_p50_ms": round(_pct(lat, 0.50), 2), "ack_p99_ms": round(_pct(lat, 0.99), 2),
            "ack_max_ms": round(max(lat), 2),
            "ack_aa_p50_ms": round(_pct(lat_aa, 0.50), 2), "ack_aa_p99_ms": round(_pct(lat_aa, 0.99), 2),
            "ack_p99_target_met": _pct(lat, 0.99) < 50}


def parallel(port: int, messages: list[Hl7Message], connections: int = CONNECTIONS) -> dict[str, float]:
    """``connections`` senders at full speed, the feed split by patient: messages/s."""
    shares: list[list[Hl7Message]] = [[] for _ in range(connections)]
    for m in messages:
        shares[zlib.crc32(m.key.encode()) % connections].append(m)
    codes: list[list[str]] = [[] for _ in range(connections)]
    threads = [threading.Thread(target=send_all, args=(port, share, c)) for share, c in zip(shares, codes)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    sent = sum(len(c) for c in codes)
    assert sent == len(messages), f"{sent} of {len(messages)} messages answered"
    return {"parallel_connections": connections, "parallel_messages": sent,
            "parallel_messages_per_s": round(sent / elapsed, 1),
            "parallel_aa": sum(c.count("AA") for c in codes)}


def run(quick: bool = False) -> dict:
    n_paced = 500 if quick else 3000
    n_parallel = 4000 if quick else 20000
    feed = list(hl7_messages(Simulation(SimConfig(seed=42, days=30 if quick else 150))))
    need = WARMUP + n_paced + n_parallel
    assert len(feed) >= need, f"the feed has {len(feed)} messages, {need} needed"
    warm, slow, fast = feed[:WARMUP], feed[WARMUP:WARMUP + n_paced], feed[WARMUP + n_paced:need]
    logs = RESULTS / "logs" / "mllp"
    logs.mkdir(parents=True, exist_ok=True)
    log = Path(logs / "mllp.log")
    log.unlink(missing_ok=True)
    with namespace("bmllp"):
        port = free_port()
        with Service("mllp", "--port", str(port), log=log) as svc:
            wait_listening(port, svc)
            send_all(port, warm)
            proc = psutil.Process(svc.proc.pid)  # type: ignore[union-attr]
            cpu0 = sum(proc.cpu_times()[:2])
            figures = paced(port, slow)
            cpu1 = sum(proc.cpu_times()[:2])
            figures |= parallel(port, fast)
            cpu2 = sum(proc.cpu_times()[:2])
    figures["listener_cpu_ms_per_message_paced"] = round((cpu1 - cpu0) * 1000 / n_paced, 2)
    figures["listener_cpu_ms_per_message_parallel"] = round((cpu2 - cpu1) * 1000 / n_parallel, 2)
    figures["sender"] = "Python MllpClient (producers/mllp/client.py)"
    return figures
