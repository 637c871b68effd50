"""Inputs for tests that run the ADT flow in-process: simulated events as partitioned messages.

The messages are what the worker would read from ``hospital.adt``: (partition, offset, key,
value), partitioned by Kafka's default partitioner over ``N`` partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ACCEPTED, AdtFlow, Output
from stream.kpi_combiner import KpiCombiner
from stream.kpi_tally import capacity_partial
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


def run_flow(events: Iterable[dict[str, Any]], providers: Iterable[Any],
             n: int = N) -> tuple[list[dict[str, Any]], list[list[Output]], list[tuple[str, bytes]]]:
    """Each event (a contract dict) through one flow on ``n`` partitions, by patient, a batch per
    event, its KPI partials into a combiner that knows the providers' capacities. Returns the
    applied events (each with its ``_partition``), each event's outputs, and the flushed windows."""
    flow = AdtFlow(source_topic="hospital.adt", **flow_tables())
    combiner = KpiCombiner(days={})
    for p in providers:
        combiner.put(capacity_partial(p.provider_id, p.facility_id, p.capacity)[2])
    offsets, applied, outputs = [0] * n, [], []
    for ev in events:
        p = key_partition(ev["patient_id"], n)
        got = flow.process(orjson.dumps(ev), p, offsets[p], key=ev["patient_id"].encode(), commit=False)
        for o in flow.kpi_partials(n):
            combiner.put(o.value)
        flow.commit()
        if any(o.topic == ACCEPTED for o in got):
            applied.append({**ev, "_partition": p})
        outputs.append(got)
        offsets[p] += 1
    return applied, outputs, combiner.flush()
