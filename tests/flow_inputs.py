"""Inputs for tests that run the ADT flow in-process: simulated events as partitioned messages.

The messages are what the worker would read from ``hospital.adt``: (partition, offset, key,
value), partitioned by Kafka's default partitioner over ``N`` partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ACCEPTED, MERGES, AdtFlow, Output
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


def run_flow(events: Iterable[dict[str, Any]], providers: Iterable[Any] = (), n: int = N,
             flow: AdtFlow | None = None, hop_delay: int = 0
             ) -> tuple[list[dict[str, Any]], list[list[Output]], list[tuple[str, bytes]]]:
    """Each event (a contract dict) through one flow on ``n`` partitions, by patient, a batch per
    event, its KPI partials into a combiner that knows the providers' capacities. The hops of a
    merge (``hospital.adt-merges``) are applied ``hop_delay`` events after the one that sent
    them (0: right after it; the rest at the end), their outputs counted as that event's; the
    messages a partition set aside meanwhile are then read back from its log, as the worker
    reads them back from Kafka. Returns the applied events (each with its ``_partition``, in the
    order applied), each event's outputs, and the flushed windows."""
    flow = flow or AdtFlow(source_topic="hospital.adt", **flow_tables())
    combiner = KpiCombiner(days={})
    for p in providers:
        combiner.put(capacity_partial(p.provider_id, p.facility_id, p.capacity)[2])
    offsets, merge_offsets, applied, outputs = [0] * n, [0] * n, [], []

    def commit() -> None:
        for o in flow.kpi_partials(n):
            combiner.put(o.value)
        flow.commit()

    sent: dict[str, dict[str, Any]] = {}  # the events by id: what an accepted message is
    logs: list[list[tuple[bytes, bytes]]] = [[] for _ in range(n)]  # hospital.adt: (value, key) by offset
    hops: list[tuple[int, Output]] = []  # (due at event index, record)

    def take(got: list[Output], now: int) -> list[Output]:
        """Record what ``got`` applied and queue the hops it sent."""
        for o in got:
            if o.topic == ACCEPTED:
                ev = orjson.loads(o.value)
                applied.append({**sent.get(ev["event_id"], ev), "_partition": o.partition})
            elif o.topic == MERGES:
                hops.append((now + hop_delay, o))
        return got

    events = list(events)
    for i, ev in enumerate(events):
        p = key_partition(ev["patient_id"], n)
        sent[ev["event_id"]] = ev
        raw, key = orjson.dumps(ev), ev["patient_id"].encode()
        logs[p].append((raw, key))
        got = take(flow.process(raw, p, offsets[p], key=key, commit=False), i)
        commit()
        offsets[p] += 1
        while hops and (hops[0][0] <= i or i == len(events) - 1):
            _, hop = hops.pop(0)
            mp = key_partition(hop.route, n)
            got += take(flow.process_merge(hop.value, mp, merge_offsets[mp], commit=False), i)
            for partition, back in flow.read_backs():  # what the worker reads back from Kafka
                for offset in back:
                    raw, key = logs[partition][offset]
                    got += take(flow.process(raw, partition, offset, key=key, commit=False), i)
            commit()
            merge_offsets[mp] += 1
        outputs.append(got)
    return applied, outputs, combiner.flush()
