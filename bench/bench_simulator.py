"""Simulator throughput: generation alone, and producing into the local broker vs Kafka's own tool.

(a) generation: a simulated year (60 days with ``quick``) generated and serialized with orjson, no
    I/O; wall and CPU events/s after the warm-up and including it, best of 3 (the machine is
    shared: CPU time is the steadier figure).
(b) produce: the same events into a fresh topic of the local broker, end to end
    (``simulate_to_kafka``: generation + produce + final flush) and produce-only (pre-serialized),
    for each client, against ``org.apache.kafka.tools.ProducerPerformance`` run here with the same
    record count, the same average record size, acks=all, on a fresh topic with as many partitions.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import orjson

from producers.kafka_sink import _Sender, have_confluent, simulate_to_kafka
from producers.simulator import SimConfig, Simulation
from contracts.events import Topics
from wardstream.config import settings
from wardstream.kafka_io import delete_namespace_topics
from wardstream.kafka_io import ensure_topics
from wardstream.stack.kafka import LocalKafka


def _generation(cfg: SimConfig, repeats: int) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """Best of ``repeats`` runs of generate + serialize (the shared machine adds noise, not speed).

    The warm-up (simulated months before ``start``, no events) is a fixed start-up cost, reported
    apart; the steady rate is the one that matters for a long stream.
    """
    dumps = orjson.dumps
    best = {"wall": 0.0, "cpu": 0.0, "cpu_total": 0.0, "warmup": 1e9}
    n = 0
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        it = Simulation(cfg).stream()
        dumps(next(it).event)
        w1, c1 = time.perf_counter(), time.process_time()
        n = 1
        for item in it:
            dumps(item.event)
            n += 1
        w2, c2 = time.perf_counter(), time.process_time()
        best["wall"] = max(best["wall"], (n - 1) / (w2 - w1))
        best["cpu"] = max(best["cpu"], (n - 1) / (c2 - c1))
        best["cpu_total"] = max(best["cpu_total"], n / (c2 - c0))
        best["warmup"] = min(best["warmup"], c1 - c0)
    out = [(item.key.encode(), dumps(item.event)) for item in Simulation(cfg).stream()]
    return {"gen_events": n, "gen_events_per_s_wall": round(best["wall"]),
            "gen_events_per_s_cpu": round(best["cpu"]),
            "gen_events_per_s_cpu_incl_warmup": round(best["cpu_total"]),
            "gen_warmup_cpu_s": round(best["warmup"], 3),
            "avg_event_bytes": round(sum(len(v) for _, v in out) / n)}, out


def _produce_only(client: str, events: list[tuple[bytes, bytes]], ns: str) -> tuple[float, float]:
    s = settings()
    topic = Topics(ns).adt
    ensure_topics([topic], s)
    sender = _Sender(client, s)
    send = sender.send
    t0 = time.perf_counter()
    for k, v in events:
        send(topic, k, v)
    sender.flush()
    dt = time.perf_counter() - t0
    sender.close()
    if sender.errors:
        raise RuntimeError(f"{len(sender.errors)} delivery errors: {sender.errors[0]!r}")
    return len(events) / dt, sum(len(v) for _, v in events) / dt / 1e6


def _java(n: int, size: int, topic: str) -> tuple[float, float]:
    ensure_topics([topic])
    lib = LocalKafka().lib
    cmd = ["java", "-Xmx512m", "-cp", f"{lib}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", topic, "--num-records", str(n), "--record-size", str(size), "--throughput", "-1",
           "--producer-props", f"bootstrap.servers={settings().kafka.bootstrap_servers}", "acks=all"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", out)[-1]
    return float(m[1]), float(m[2])


def run(quick: bool = False) -> dict:
    cfg = SimConfig(days=60 if quick else 365)
    figures, events = _generation(cfg, 1 if quick else 3)
    prefix = f"bench-sim-{uuid.uuid4().hex[:8]}."
    LocalKafka().up()
    old = os.environ.get("WARDSTREAM_NAMESPACE")
    try:
        clients = (["confluent"] if have_confluent() else []) + ["kafka-python"]
        for client in clients:
            tag = client.replace("-", "_")
            rate, mb = _produce_only(client, events, f"{prefix}{tag}-only.")
            figures[f"produce_only_{tag}_events_per_s"] = round(rate)
            figures[f"produce_only_{tag}_mb_per_s"] = round(mb, 1)
            os.environ["WARDSTREAM_NAMESPACE"] = f"{prefix}{tag}-e2e."
            summary = simulate_to_kafka(cfg, progress=False, client=client)
            figures[f"simulate_to_kafka_{tag}_events_per_s"] = round(summary.events_per_second)
            figures[f"simulate_to_kafka_{tag}_mb_per_s"] = round(summary.bytes / summary.wall_seconds / 1e6, 1)
        rate, mb = _java(len(events), figures["avg_event_bytes"], f"{prefix}java")
        figures["java_producer_perf_events_per_s"] = round(rate)
        figures["java_producer_perf_mb_per_s"] = round(mb, 1)
        best = clients[0].replace("-", "_")
        figures["ratio_simulate_to_kafka_vs_java"] = round(
            figures[f"simulate_to_kafka_{best}_events_per_s"] / rate, 2)
        figures["ratio_produce_only_vs_java"] = round(figures[f"produce_only_{best}_events_per_s"] / rate, 2)
        figures["ratio_kafka_python_produce_only_vs_java"] = round(
            figures["produce_only_kafka_python_events_per_s"] / rate, 2)
    finally:
        if old is None:
            os.environ.pop("WARDSTREAM_NAMESPACE", None)
        else:
            os.environ["WARDSTREAM_NAMESPACE"] = old
        delete_namespace_topics(prefix)
    return figures


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:45s} {v}")
