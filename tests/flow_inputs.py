"""Inputs for tests that run the ADT flow in-process: simulated events as partitioned messages.

The messages are what the worker would read from ``hospital.adt``: (partition, offset, key,
value), partitioned by Kafka's default partitioner over ``N`` partitions.
"""

from __future__ import annotations

import orjson

from producers.simulator import SimConfig, Simulation
from wardstream.kafka_io import key_partition

N = 4
TABLES = ("patients", "partitions", "due", "models", "health", "kpi")

Message = tuple[int, int, bytes, bytes]


def partitioned_messages(cfg: SimConfig, n: int = N) -> list[Message]:
    """Every event of a simulation as the message the worker reads, in per-partition order."""
    offsets = [0] * n
    out = []
    for e in Simulation(cfg).stream():
        p = key_partition(e.key, n)
        out.append((p, offsets[p], e.key.encode(), orjson.dumps(e.event)))
        offsets[p] += 1
    return out


def flow_tables() -> dict[str, dict]:
    """Empty plain-dict tables for :class:`stream.adt_flow.AdtFlow`."""
    return {name: {} for name in TABLES}
