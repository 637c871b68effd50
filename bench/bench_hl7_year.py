"""A simulated HL7 year through ``wardstream mllp`` against the same year sent as JSON events (issue 16).

One hospital (seed 42, the simulator's defaults: 300 beds), 365 days (30 with ``--quick``), as
its HL7 v2 ADT feed (:mod:`producers.hl7_feed`: the simulated A01 / A02 / A03 with A08 updates,
A07s, A11-A13 cancellations and A40 merges mixed in). Two fresh namespaces, each given the
hospital's reference records first:

* **hl7**: a ``wardstream mllp`` subprocess; one connection sends the whole feed in order, each
  message after the previous one's ACK (as an EHR's interface does); every ACK code is counted.
* **json**: the contract events the same messages map to (:func:`producers.mllp.mapping.map_adt`),
  sent as JSON straight to ``hospital.adt`` (kafka-python, keyed by patient_id, in the feed's
  order): what a sender speaking wardstream's own JSON would send for that year.

Then one ``wardstream worker`` per namespace, one after the other, from a cold start until caught
up (:meth:`StreamWorker.wait_caught_up`), timed. Compared, per namespace: ``hospital.adt`` record
by record in each partition's order, and the final state of the outputs: the last value per key
of ``hospital.kpis`` (kpi, dimension, dimension_id, window, window_start), discharge scores and
readmission labels (encounter_id), alerts (alert_id), and the dead letters. Target: no difference.

A KPI window in which nothing was counted (numerator 0; and denominator 0, or a KPI whose
denominator counts nothing: the counts, census, provider utilization) that only one side sent
counts as absent: the stream sends a window when one of its inputs changed, and whether such a window
goes out at all depends on arrival order, not on the data (a provider's capacity record read
before or after its first events re-sends its census windows, the admissions among them; an
alert and its cancellation bundled in one batch's partials or in two). How many there are on
each side is reported (``kpis_nothing_counted_one_side``, hl7 / json).

The simulator's own JSON year (A01-A03 only) is not the comparison: an ADT feed carries no
satisfaction score, rebuilds chronic conditions from the DG1 codes and ages patients by birth
date (``producers/hl7_encode.py``), and the feed's A08s and cancellations change what is counted.

Alone: ``python -m bench.bench_hl7_year [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
from rich.progress import track

from bench.bench_e2e import RESULTS, Service, namespace, topics_ready
from bench.bench_mllp import free_port, send_all, wait_listening
from bench.bench_replay import read_records
from contracts.events import Topics, dump
from producers.hl7_feed import Hl7Message, hl7_messages
from producers.kafka_sink import Sender, publish_reference
from producers.mllp.mapping import MapContext, map_adt
from producers.mllp.message import parse, read_header
from producers.simulator import SimConfig, Simulation
from wardstream.config import settings

CAUGHT_UP_TIMEOUT_S = 3600

# each output's identity: its final value is the last record with that key
OUTPUT_KEYS: dict[str, Callable[[dict], object]] = {
    "kpis": lambda v: (v["kpi"], v["dimension"], v["dimension_id"], v["window"], v["window_start"]),
    "discharge_scores": lambda v: v["encounter_id"],
    "readmission_labels": lambda v: v["encounter_id"],
    "alerts": lambda v: v["alert_id"],
    "dlq": lambda v: (v.get("source_topic"), v["source_partition"], v["source_offset"]),
}


def run(quick: bool = False) -> dict:
    sim_config = SimConfig(seed=42, days=30 if quick else 365)
    feed = list(hl7_messages(Simulation(sim_config)))
    logs = RESULTS / "logs" / "hl7_year"
    logs.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {"days": sim_config.days, "hl7_messages": len(feed),
                                  **{f"trigger_{k}": v for k, v in sorted(Counter(m.trigger for m in feed).items())}}
    with namespace("bhl7"):
        figures |= _prefixed("hl7", _through_mllp(feed, sim_config, logs))
        figures |= _prefixed("hl7", _worker(logs / "hl7-worker.log"))
        hl7 = Read()
    with namespace("bjson"):
        figures |= _prefixed("json", _as_json(feed, sim_config))
        figures |= _prefixed("json", _worker(logs / "json-worker.log"))
        js = Read()
    for name in hl7.records:
        figures[f"{name}_records_hl7_json"] = f"{hl7.records[name]} / {js.records[name]}"
    figures["adt_differences"] = _adt_differences(hl7, js)
    one_side = _drop_nothing_counted(hl7.finals["kpis"], js.finals["kpis"])
    figures["kpis_nothing_counted_one_side"] = f"{one_side[0]} / {one_side[1]}"
    differences = {name: _final_differences(hl7.finals[name], js.finals[name]) for name in OUTPUT_KEYS}
    for name, found in differences.items():
        figures[f"{name}_final_differences"] = len(found)
    figures["identical"] = all(v == 0 for k, v in figures.items() if k.endswith("differences"))
    (logs / "differences.txt").write_text("".join(f"{name}: {d}\n" for name, found in differences.items()
                                                  for d in found))
    return figures


def _prefixed(prefix: str, d: dict[str, object]) -> dict[str, object]:
    return {f"{prefix}_{k}": v for k, v in d.items()}


def _reference(sim_config: SimConfig) -> None:
    """The hospital's facility and provider records on the namespace's hospital.reference."""
    sender = Sender("kafka-python", settings())
    try:
        publish_reference(sender, Simulation(sim_config).reference, Topics(settings().topic_namespace).reference)
    finally:
        sender.close()
    assert not sender.errors, sender.errors


def _through_mllp(feed: list[Hl7Message], sim_config: SimConfig, logs: Path) -> dict[str, object]:
    """The feed through a ``wardstream mllp`` subprocess on one connection, waiting for each ACK."""
    topics_ready()
    _reference(sim_config)
    port = free_port()
    log = logs / "mllp.log"
    log.unlink(missing_ok=True)
    codes: list[str] = []
    with Service("mllp", "--port", str(port), log=log) as svc:
        wait_listening(port, svc)
        started = time.perf_counter()
        send_all(port, track(feed, description="HL7 feed -> wardstream mllp", console=_console()), codes)
        seconds = time.perf_counter() - started
    return {"send_s": round(seconds, 1), "messages_per_s": round(len(feed) / seconds),
            **{f"acks_{code}": n for code, n in sorted(Counter(codes).items())}}


def _as_json(feed: list[Hl7Message], sim_config: SimConfig) -> dict[str, object]:
    """The events the feed's messages map to, as JSON straight to hospital.adt."""
    topics_ready()
    _reference(sim_config)
    ctx, adt = MapContext(), Topics(settings().topic_namespace).adt
    sender = Sender("kafka-python", settings())
    started = time.perf_counter()
    try:
        for m in feed:
            event = map_adt(parse(m.text), read_header(m.text), ctx)
            sender.send(adt, event.patient_id.encode(), dump(event))
        sender.flush()
    finally:
        sender.close()
    assert not sender.errors, f"{len(sender.errors)} events not acknowledged: {sender.errors[0]!r}"
    return {"send_s": round(time.perf_counter() - started, 1), "events": len(feed)}


def _worker(log: Path) -> dict[str, object]:
    """One worker from a cold start until caught up (every input committed, the KPI windows out)."""
    from stream.runner import StreamWorker

    log.unlink(missing_ok=True)
    started = time.perf_counter()
    with StreamWorker(log_path=log, loglevel="warning") as worker:
        worker.wait_caught_up(timeout=CAUGHT_UP_TIMEOUT_S)
        seconds = time.perf_counter() - started
    return {"worker_s": round(seconds, 1)}


class Read:
    """A namespace's topics as compared: hospital.adt's values per partition in offset order, and
    each output's final value per key (and how many records it took)."""

    def __init__(self) -> None:
        ns = settings().topic_namespace
        t = Topics(ns)
        self.adt: dict[int, list[bytes]] = {}
        for partition, _key, value in read_records(t.adt):
            self.adt.setdefault(partition, []).append(value)
        topics = {"kpis": t.kpis, "discharge_scores": t.discharge_scores,
                  "readmission_labels": t.readmission_labels, "alerts": t.alerts, "dlq": t.dlq}
        self.records = {"adt": sum(map(len, self.adt.values()))}
        self.finals: dict[str, dict[object, dict]] = {}
        for name, topic in topics.items():
            key, out, n = OUTPUT_KEYS[name], {}, 0
            for _partition, _key, value in read_records(topic):
                v = orjson.loads(value)
                if "source_topic" in v:  # a dead letter: the topic's name without the namespace
                    v["source_topic"] = v["source_topic"].removeprefix(ns)
                out[key(v)] = v
                n += 1
            self.finals[name], self.records[name] = out, n


def _adt_differences(a: Read, b: Read) -> int:
    """Records of hospital.adt that differ, position by position in each partition."""
    diff = 0
    for p in a.adt.keys() | b.adt.keys():
        xa, xb = a.adt.get(p, []), b.adt.get(p, [])
        diff += sum(x != y and orjson.loads(x) != orjson.loads(y) for x, y in zip(xa, xb))
        diff += abs(len(xa) - len(xb))
    return diff


UNCOUNTED_DENOMINATOR = {"admissions", "discharges", "census", "provider_utilization"}


def _nothing_counted(window: dict) -> bool:
    return not window["numerator"] and (not window["denominator"] or window["kpi"] in UNCOUNTED_DENOMINATOR)


def _drop_nothing_counted(a: dict[object, dict], b: dict[object, dict]) -> tuple[int, int]:
    """Remove the KPI windows only one side has in which nothing was counted (module doc); how
    many on each side."""
    dropped = []
    for mine, other in ((a, b), (b, a)):
        keys = [k for k, v in mine.items() if k not in other and _nothing_counted(v)]
        for k in keys:
            del mine[k]
        dropped.append(len(keys))
    return dropped[0], dropped[1]


def _final_differences(a: dict[object, dict], b: dict[object, dict]) -> list[str]:
    """Keys whose final value differs, or that only one side has: each with what differs."""
    out = []
    for k in sorted(a.keys() | b.keys(), key=str):
        x, y = a.get(k), b.get(k)
        if x == y:
            continue
        if x is None or y is None:
            out.append(f"{k}: only in {'json' if x is None else 'hl7'} {x or y}")
        else:
            out.append(f"{k}: " + ", ".join(f"{f} {x.get(f)!r} / {y.get(f)!r}"
                                            for f in sorted(x.keys() | y.keys()) if x.get(f) != y.get(f)))
    return out


def _console():
    from rich.console import Console

    return Console(stderr=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 simulated days instead of 365")
    figures = run(quick=parser.parse_args().quick)
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
