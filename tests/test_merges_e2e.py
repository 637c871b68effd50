"""Patient merges (A40) through the real broker, the stream worker and PostgreSQL: the merge's
hops travel ``hospital.adt-merges`` between the partitions of the two MRNs, the labels are the
independent oracle's, nothing is lost or dead-lettered but the merged MRN's later event, and the
sink points the prior's rows at the survivor, with ``kpi_daily`` equal to the stream's 1d
windows; and over a simulated HL7 feed the worker, whose hops take real time, sends what the
in-process flow sends with hops that take none."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from contracts.events import Topics, dump
from flow_inputs import run_flow
from producers.hl7_feed import hl7_messages
from producers.mllp.mapping import MapContext, map_adt
from producers.mllp.message import parse, read_header
from producers.simulator import SimConfig, Simulation
from stream.adt_flow import ALERTS, DLQ, LABELS, SCORES
from stream_oracle import Oracle, last_by_key, read_all
from test_sink_cancellations_e2e import KPI_DAILY_VS_STREAM, _close, _pipeline, _read, stream_events
from test_sink_support import sink_db  # noqa: F401  (fixture)
from test_stream_merges import LATE_PRIOR, merge_feed

pytestmark = pytest.mark.e2e


def test_merges_through_the_stream_and_the_sink(kafka_ns, sink_db, tmp_path) -> None:
    """Through a worker (and the sink) run once per stretch of the feed: each merge begins a
    stretch, and the survivors' messages after it may come before its hops land (they wait);
    then the rest, then the merged MRN's late admission. A prior's events and due dates stay
    in earlier or later stretches than its merge: within one backlog the prior's partition can
    meet the merge's retire record before or after them (stream/README.md "Merges")."""
    events = merge_feed()
    starts = sorted({e.occurred_at for e in events if e.event_type == "merge"}) + [
        datetime(2025, 1, 16, 9, tzinfo=timezone.utc)]
    rest = [e for e in events if e.event_id != LATE_PRIOR.event_id]
    bounds = [datetime.min.replace(tzinfo=timezone.utc), *starts, datetime.max.replace(tzinfo=timezone.utc)]
    stretches = [[e for e in rest if a <= e.occurred_at < b] for a, b in zip(bounds, bounds[1:])]
    for n, part in enumerate([*(p for p in stretches if p), [LATE_PRIOR]]):
        _pipeline(part, kafka_ns, sink_db, tmp_path / f"run{n}")
    t = Topics(kafka_ns)
    accepted = read_all(t.adt_accepted)
    dead = [orjson.loads(m.value) for m in read_all(t.dlq)]
    assert len(accepted) + len(dead) == len(events)  # produced = processed + DLQ
    assert [d["reason"] for d in dead] == ["patient merged into another (A40)"], [d["raw"][:300] for d in dead]
    hops = [orjson.loads(m.value)["step"] for m in read_all(t.adt_merges)]
    assert sorted(hops) == ["absorb"] * 3 + ["retire"] * 3

    # labels: the oracle's, from the events the stream applied (with their partitions)
    applied = [{**orjson.loads(m.value), "_partition": m.partition} for m in accepted]
    scores = last_by_key(read_all(t.discharge_scores))
    oracle = Oracle(applied, scores, {})
    labels = last_by_key(read_all(t.readmission_labels))
    assert {k: (v["readmitted"], v["readmission_encounter_id"]) for k, v in labels.items()} == {
        k: (v["readmitted"], v["readmission_encounter_id"]) for k, v in oracle.labels.items()}
    assert labels["E1"]["readmitted"] and labels["E6"]["readmitted"]

    got = _read(sink_db, {
        "merges": "SELECT prior_patient_id, patient_id FROM patient_merges ORDER BY 1",
        "moved": "SELECT encounter_id, patient_id FROM encounters WHERE encounter_id IN ('E2', 'E6', 'E8') "
                 "ORDER BY 1",
        "sent as": "SELECT registered_patient_id, patient_id, count(*) FROM adt_events "
                   "WHERE registered_patient_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1",
        "readmitted": "SELECT encounter_id FROM readmissions WHERE readmitted ORDER BY 1",
        "kpi_daily vs stream": KPI_DAILY_VS_STREAM})
    assert got["merges"] == [("Q3", "Q4"), ("X1", "P9"), ("X2", "M2")]
    assert got["moved"] == [("E2", "M2"), ("E6", "P9"), ("E8", "Q4")]
    # every event sent under a prior MRN before its merge, pointed at the survivor
    assert got["sent as"] == [("Q3", "Q4", 1), ("X1", "P9", 2), ("X2", "M2", 2)]
    assert got["readmitted"] == [("E1",), ("E6",)]
    compared = got["kpi_daily vs stream"]
    assert len(compared) > 50 and [r for r in compared if not _close(r[-2], r[-1])] == []


def test_a_simulated_hl7_feed_gives_the_outputs_of_hops_that_take_no_time(kafka_ns, tmp_path) -> None:
    """A month of the simulated HL7 feed (A08s, cancellations, merges) from a backlog through a
    worker: its merges' hops take two trips through Kafka while the ADT agent has batches to
    take, so the survivors' partitions set messages aside and apply them when the merges land
    (in batches of 10 here).
    The in-process flow applies each hop at once. Every score, alert, label and dead letter
    is the same: a partition's outputs do not depend on how long its merges took."""
    ctx = MapContext()
    events = [map_adt(parse(m.text), read_header(m.text), ctx)
              for m in hl7_messages(Simulation(SimConfig(seed=42, days=30)))]
    assert sum(e.event_type == "merge" for e in events) >= 3
    # small batches: the messages set aside are applied in several (stream.app._apply_set_aside)
    stream_events(events, kafka_ns, tmp_path / "state", WARDSTREAM_ADT_BATCH="40")
    assert "messages set aside meanwhile are applied now" in (tmp_path / "state" / "worker.log").read_text()
    topics = Topics(kafka_ns)
    _, outputs, _ = run_flow([orjson.loads(dump(e)) for e in events])

    def in_process(topic: str) -> dict[str, dict]:
        return {o.key.decode() if isinstance(o.key, bytes) else o.key: orjson.loads(o.value)
                for got in outputs for o in got if o.topic == topic}

    def letters(values) -> list[tuple]:
        return sorted((v["source_partition"], v["source_offset"], v["reason"]) for v in values)

    assert len(in_process(SCORES)) > 1000 and in_process(ALERTS) and in_process(LABELS)
    for topic, name in ((SCORES, topics.discharge_scores), (ALERTS, topics.alerts),
                        (LABELS, topics.readmission_labels)):
        want, got = in_process(topic), last_by_key(read_all(name))
        assert got == want, (topic, [k for k in want.keys() | got.keys() if want.get(k) != got.get(k)][:5])
    dead = [orjson.loads(m.value) for m in read_all(topics.dlq)]
    assert letters(dead) == letters(orjson.loads(o.value) for got in outputs for o in got if o.topic == DLQ)
