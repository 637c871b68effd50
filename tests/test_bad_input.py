"""Bad input never stops the stream and is never lost or counted twice (produced = processed + DLQ).

The property test throws mutated simulator events at the pure per-event flow (``stream.adt_flow``
over plain dicts, the same code the Faust agent runs); ``test_bad_input_e2e`` sends a designed set of
bad messages through the real broker, worker and sink.
"""

from __future__ import annotations

import base64
import copy
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from producers.simulator import SimConfig, Simulation
from stream import adt_flow
from contracts.events import DeadLetter

PARTITIONS = 4
SOURCE = "hospital.adt"


# ---------------------------------------------------------------------- messages


@dataclass
class Msg:
    key: bytes | None
    value: bytes
    patient: str | None  # the patient the message is about, for bookkeeping (None if unknown)
    expect: str | None = None  # a DLQ reason prefix this message must get, None = no expectation
    mutated: bool = False

    @property
    def partition(self) -> int:
        return zlib.crc32(self.key or b"") % PARTITIONS


@lru_cache(maxsize=4)
def simulated(days: int = 3, beds: int = 150, seed: int = 3) -> tuple[tuple[str, dict], ...]:
    sim = Simulation(SimConfig(days=days, beds=beds, seed=seed))
    return tuple((item.key, item.event) for item in sim.stream())


def valid_messages(**cfg) -> list[Msg]:
    return [Msg(k.encode(), orjson.dumps(ev), k) for k, ev in simulated(**cfg)]


def _ts(value: str, delta: timedelta) -> str:
    return (datetime.fromisoformat(value.replace("Z", "+00:00")) + delta).isoformat().replace("+00:00", "Z")


def _fresh(ev: dict) -> dict:
    out = copy.deepcopy(ev)
    out["event_id"] = str(uuid.UUID(int=zlib.crc32(orjson.dumps(ev)) * 7919 + 1))
    return out


BAD_TYPES = {"occurred_at": "not-a-date", "patient_id": 42, "event_id": "nope", "department": None,
             "facility_id": ["F01"], "schema_version": "one"}
REQUIRED = ("event_id", "occurred_at", "patient_id", "encounter_id", "event_type", "facility_id")


def mutate(msgs: list[Msg], op: str, i: int, j: int) -> None:
    """Apply one mutation in place; marks what it touched and the reason it must produce, if sure."""
    i %= len(msgs)
    m = msgs[i]
    ev = orjson.loads(m.value) if m.patient and m.expect is None else None
    if op == "malformed_json":
        msgs.insert(i, Msg(m.key, m.value[: max(1, len(m.value) // 2)], m.patient, "contract", True))
    elif op == "non_utf8":
        msgs.insert(i, Msg(m.key, b"\xff\xfe" + m.value, m.patient, "contract", True))
    elif op == "drop_field" and ev:
        ev = _fresh(ev)
        ev.pop(REQUIRED[j % len(REQUIRED)], None)
        msgs.insert(i, Msg(m.key, orjson.dumps(ev), m.patient, "contract", True))
    elif op == "wrong_type" and ev:
        ev = _fresh(ev)
        name = sorted(BAD_TYPES)[j % len(BAD_TYPES)]
        ev[name] = BAD_TYPES[name]
        msgs.insert(i, Msg(m.key, orjson.dumps(ev), m.patient, "contract", True))
    elif op == "unknown_type" and ev:
        ev = _fresh(ev)
        ev.update(event_type="pre_admission", hl7_trigger="A05")  # no such type in v1.1 either
        msgs.insert(i, Msg(m.key, orjson.dumps(ev), m.patient, "contract", True))
    elif op == "negative" and ev:
        ev = _fresh(ev)
        if ev["event_type"] == "discharge":
            ev["total_cost" if j % 2 else "length_of_stay_days"] = -abs(ev["total_cost"]) - 1
        else:
            ev.setdefault("vitals", {})["heart_rate"] = -5.0
            ev["length_of_stay_days"] = -1.0  # transfer: an unknown field is a contract error too
        msgs.insert(i, Msg(m.key, orjson.dumps(ev), m.patient, "contract", True))
    elif op == "duplicate":
        # An exact copy right after the original: same event_id, so it must not count twice.
        msgs.insert(i + 1, Msg(m.key, m.value, m.patient, None, True))
        m.mutated = True
    elif op == "far_future" and ev:
        ev = _fresh(ev)
        ev["occurred_at"] = _ts(ev["occurred_at"], timedelta(days=3650))
        if "admitted_at" in ev:
            ev["admitted_at"] = _ts(ev["admitted_at"], timedelta(days=3650))
        msgs.insert(i + 1, Msg(m.key, orjson.dumps(ev), m.patient, None, True))
        m.mutated = True
    elif op == "shuffle":
        k = (i + 1 + j % 20) % len(msgs)
        msgs[i], msgs[k] = msgs[k], msgs[i]
        msgs[i].mutated = msgs[k].mutated = True
    elif op == "drop_admission":
        # The admission is lost upstream: the stay's next transfer / discharge has nothing to attach to.
        for k in range(i, len(msgs)):
            adm = msgs[k]
            if (not adm.patient or adm.expect is not None  # a mutated message may not be JSON
                    or orjson.loads(adm.value).get("event_type") != "admission"):
                continue
            later = [n for n in range(k + 1, len(msgs)) if msgs[n].patient == adm.patient
                     and msgs[n].expect is None]
            if not later:
                continue
            for other in msgs:
                if other.patient == adm.patient:
                    other.mutated = True
            nxt = msgs[later[0]]
            kind = orjson.loads(nxt.value)["event_type"]
            if kind != "admission" and not any(msgs[n].mutated and msgs[n].patient == adm.patient
                                               for n in range(k)):
                nxt.expect = f"{kind} without open admission"
            del msgs[k]
            break
    elif op == "no_key":
        msgs.insert(i, Msg(None, b"", None, "contract", True))


OPS = ("malformed_json", "non_utf8", "drop_field", "wrong_type", "unknown_type", "negative", "duplicate",
       "far_future", "shuffle", "drop_admission", "no_key")


# ---------------------------------------------------------------------- running the flow


def run_flow(msgs: list[Msg]):
    """Feed the messages to a fresh flow; returns per message (partition, offset, outputs)."""
    flow = adt_flow.AdtFlow(source_topic=SOURCE, patients={}, partitions={}, due={}, models={})
    offsets = Counter()
    results = []
    for m in msgs:
        p = m.partition
        off = offsets[p]
        offsets[p] += 1
        results.append((p, off, flow.process(m.value, p, off, key=m.key)))
    return results


def check_accounting(msgs: list[Msg], results) -> dict[str, int]:
    """produced = processed + DLQ; every DLQ record names its own message; nothing counted twice."""
    processed_ids: Counter = Counter()
    dlq = 0
    # patients whose valid events a mutation moved, copied or removed (contract-invalid inserts
    # cannot change any state, so they do not count)
    touched = {m.patient for m in msgs if m.mutated and m.patient and m.expect is None}
    for m, (p, off, outs) in zip(msgs, results):
        letters = [DeadLetter.model_validate_json(o.value) for o in outs if o.topic == adt_flow.DLQ]
        others = [o for o in outs if o.topic != adt_flow.DLQ]
        assert len(letters) <= 1
        if letters:  # a dead letter: nothing else, and it points at this very message
            dlq += 1
            d = letters[0]
            assert not others, (d.reason, [o.topic for o in others])
            assert (d.source_topic, d.source_partition, d.source_offset) == (SOURCE, p, off)
            assert d.reason
            raw = base64.b64decode(d.raw) if d.raw_encoding == "base64" else d.raw.encode()
            assert raw == m.value
            assert m.key == (outs[0].key)
            if m.expect:
                assert d.reason.startswith(m.expect), (d.reason, m.value[:200])
            # reasons carry no values from the message (they may hold patient data)
            assert m.patient is None or m.patient not in d.reason
            continue
        assert m.expect is None, f"should have gone to the DLQ ({m.expect}): {m.value[:200]!r}"
        ev = orjson.loads(m.value)
        processed_ids[ev["event_id"]] += 1
        if ev["event_type"] == "discharge":
            scores = [o for o in others if o.topic == adt_flow.SCORES]
            assert [o.key for o in scores] == [ev["encounter_id"]]
        assert [o.topic for o in others if o.topic == adt_flow.ACCEPTED] == [adt_flow.ACCEPTED]
    # nothing counted twice: an event id is applied at most once
    assert max(processed_ids.values(), default=1) == 1, processed_ids.most_common(3)
    # nothing lost: every message of a patient no mutation touched is processed
    for m, (_p, _off, outs) in zip(msgs, results):
        if m.patient and m.patient not in touched and m.expect is None:
            assert not any(o.topic == adt_flow.DLQ for o in outs), \
                [orjson.loads(o.value)["reason"] for o in outs if o.topic == adt_flow.DLQ]
    return {"produced": len(msgs), "processed": len(msgs) - dlq, "dlq": dlq}


def test_valid_stream_is_fully_processed() -> None:
    msgs = valid_messages()
    counts = check_accounting(msgs, run_flow(msgs))
    assert counts["dlq"] == 0 and counts["processed"] == len(msgs)


@pytest.mark.parametrize("op", OPS)
def test_each_kind_of_bad_input_is_accounted_for(op: str) -> None:
    msgs = valid_messages()
    for i in (15, 60, 110):
        mutate(msgs, op, i, i)
    counts = check_accounting(msgs, run_flow(msgs))
    assert counts["produced"] == counts["processed"] + counts["dlq"]
    if op not in ("shuffle",):  # a swap of two events can be harmless; every other kind is caught
        assert counts["dlq"] >= 1


@hsettings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10_000), st.integers(0, 100)),
                min_size=1, max_size=12))
def test_mutated_streams_keep_the_accounting(mutations) -> None:
    msgs = valid_messages()
    for op, i, j in mutations:
        mutate(msgs, op, i, j)
    counts = check_accounting(msgs, run_flow(msgs))
    assert counts["produced"] == counts["processed"] + counts["dlq"]


# ---------------------------------------------------------------------- end to end


def _designed_bad_messages(events: list[tuple[str, dict]]) -> list[tuple[int, Msg]]:
    """(insert position, bad message) pairs, each with the DLQ reason it must get."""
    def first(kind: str, after: int = 0) -> int:
        return next(i for i, (_, e) in enumerate(events) if i >= after and e["event_type"] == kind)

    n = len(events)
    adm_i = first("admission", n // 5)
    key, adm = events[adm_i]
    dis_i = first("discharge", n // 4)
    dkey, dis = events[dis_i]
    # a patient with an admission and a later discharge: re-sending the admission after it is out of order
    pid = next(e["patient_id"] for _, e in events[n // 3:] if e["event_type"] == "discharge")
    p_adm = next(e for _, e in events if e["patient_id"] == pid and e["event_type"] == "admission")
    p_dis_i = next(i for i, (_, e) in enumerate(events) if e["patient_id"] == pid and e["event_type"] == "discharge")
    late = _fresh(p_adm)
    orphan = {**_fresh(dis), "patient_id": "PX-ORPHAN-1", "encounter_id": "EX-ORPHAN-1"}
    future = {**_fresh(adm), "patient_id": "PX-FUTURE-1", "encounter_id": "EX-FUTURE-1",
              "occurred_at": _ts(adm["occurred_at"], timedelta(days=3650))}
    wrong = _fresh(adm)
    wrong["patient"] = {**adm["patient"], "age": "eighty"}
    unknown = {**_fresh(adm), "event_type": "pre_admission", "hl7_trigger": "A05"}
    neg_cost = {**_fresh(dis), "total_cost": -100.0}
    neg_stay = {**_fresh(dis), "length_of_stay_days": -2.0}
    raw = orjson.dumps(adm)
    e = lambda ev: orjson.dumps(ev)  # noqa: E731
    return [
        (adm_i + 1, Msg(key.encode(), raw[:57], key, "contract")),                   # malformed JSON
        (adm_i + 1, Msg(key.encode(), b"\xff\xfe\x00" + raw[:40], key, "contract")),  # not UTF-8
        (adm_i + 1, Msg(key.encode(), e(wrong), key, "contract")),                    # wrong type
        (adm_i + 1, Msg(key.encode(), e(unknown), key, "contract")),                  # unknown event type
        (adm_i + 1, Msg(key.encode(), raw, key, "duplicate event_id")),               # exact duplicate
        (dis_i + 1, Msg(b"PX-ORPHAN-1", e(orphan), "PX-ORPHAN-1", "discharge without open admission")),
        (dis_i + 1, Msg(dkey.encode(), e(neg_cost), dkey, "contract")),               # negative cost
        (dis_i + 1, Msg(dkey.encode(), e(neg_stay), dkey, "contract")),               # negative stay
        (dis_i + 1, Msg(b"PX-FUTURE-1", e(future), "PX-FUTURE-1", "far future")),
        (p_dis_i + 1, Msg(pid.encode(), e(late), pid, "out of order for patient")),
        (dis_i + 2, Msg(None, b"", None, "contract")),                                # empty, no key
    ]


@pytest.mark.e2e
def test_bad_input_e2e_produced_equals_processed_plus_dlq(kafka_ns, fresh_db, tmp_path, monkeypatch) -> None:
    """Through the broker, the worker and the sink: every message is processed xor dead-lettered."""
    import psycopg2

    from faults import read_outputs, sink_namespace
    from contracts.events import Topics
    from stream.runner import StreamWorker
    from wardstream.kafka_io import ensure_topics, make_producer

    from consumers.migrate import migrate

    sim = Simulation(SimConfig(days=4, beds=150, seed=9))
    events = [(item.key, item.event) for item in sim.stream()]
    msgs = [Msg(k.encode(), orjson.dumps(ev), k) for k, ev in events]
    for pos, bad in sorted(_designed_bad_messages(events), key=lambda x: -x[0]):
        msgs.insert(pos, bad)

    topics = Topics(kafka_ns)
    ensure_topics()
    producer = make_producer(max_in_flight_requests_per_connection=1)
    from producers.kafka_sink import publish_reference, Sender  # reference data, as the simulator sends it
    from wardstream.config import settings as _settings

    sender = Sender("kafka-python", _settings())
    publish_reference(sender, sim.reference, topics.reference)
    sender.close()
    futures = [producer.send(topics.adt, key=m.key, value=m.value) for m in msgs]
    producer.flush()
    coords = [(f.get(10).partition, f.get(10).offset) for f in futures]
    producer.close()

    monkeypatch.setenv("WARDSTREAM_STATE_DIR", str(tmp_path / "state"))
    with StreamWorker(log_path=tmp_path / "worker.log", flush_seconds=1) as w:
        w.wait_caught_up(timeout=300)
        assert w.alive()  # bad input never stops the worker

    out = read_outputs(kafka_ns)
    bad = {c: m for c, m in zip(coords, msgs) if m.expect}
    good = [m for m in msgs if not m.expect]
    # DLQ = exactly the bad messages, each once, with its reason and its original bytes
    assert set(out.dlq) == set(bad), (sorted(set(out.dlq) - set(bad)), sorted(set(bad) - set(out.dlq)))
    assert out.messages["dlq"] >= len(bad)
    for c, m in bad.items():
        d = out.dlq[c]
        assert d["reason"].startswith(m.expect), (m.expect, d["reason"])
        raw = base64.b64decode(d["raw"]) if d["raw_encoding"] == "base64" else d["raw"].encode()
        assert raw == m.value and d["source_topic"] == topics.adt
    # processed = the rest: counted by the KPIs and scored, nothing twice
    kinds = Counter(orjson.loads(m.value)["event_type"] for m in good)
    fac = lambda kpi: sum(v["numerator"] for k, v in out.kpis.items()  # noqa: E731
                          if k[0] == kpi and k[1] == "facility" and k[3] == "1d")
    assert fac("admissions") == kinds["admission"]
    assert fac("discharges") == kinds["discharge"]
    assert set(out.scores) == {orjson.loads(m.value)["encounter_id"] for m in good
                               if orjson.loads(m.value)["event_type"] == "discharge"}
    assert len(msgs) == sum(kinds.values()) + len(out.dlq)

    # the sink: dead_letters holds the same coordinates and reasons
    migrate()
    stats = sink_namespace(kafka_ns, fresh_db)
    assert stats.rejected == 0
    conn = psycopg2.connect(fresh_db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT source_partition, source_offset, reason FROM dead_letters WHERE source_topic = %s",
                    (topics.adt,))
        rows = {(p, o): r for p, o, r in cur.fetchall()}
        cur.execute("SELECT count(*) FROM discharge_scores")
        assert cur.fetchone()[0] == len(out.scores)
        # the alert budget's fields arrive: 4 days are all cold start (the model has no labels yet)
        cur.execute("SELECT policy, alert_share::float8, count(*) FROM discharge_scores GROUP BY 1, 2")
        assert cur.fetchall() == [("lace_cold_start", 0.10, len(out.scores))]
        cur.execute("SELECT count(*), count(*) FILTER (WHERE policy = 'lace_cold_start' AND alert_share = 0.10)"
                    " FROM alerts")
        assert cur.fetchone() == (len(out.alerts), len(out.alerts))
    conn.close()
    assert rows == {c: out.dlq[c]["reason"] for c in bad}


@pytest.mark.e2e
def test_no_offset_is_both_an_adt_event_and_a_dead_letter(kafka_ns, fresh_db, tmp_path, monkeypatch) -> None:
    import psycopg2

    from consumers.migrate import migrate
    from faults import sink_namespace
    from contracts.events import Topics
    from stream.runner import StreamWorker
    from wardstream.kafka_io import ensure_topics, make_producer

    events = [(item.key, item.event) for item in Simulation(SimConfig(days=2, beds=150, seed=4)).stream()]
    _k, dis = next((k, e) for k, e in events if e["event_type"] == "discharge")
    orphan = {**_fresh(dis), "patient_id": "PX-ORPHAN-2", "encounter_id": "EX-ORPHAN-2"}
    ensure_topics()
    producer = make_producer()
    for k, ev in [*events, ("PX-ORPHAN-2", orphan)]:
        producer.send(Topics(kafka_ns).adt, key=k.encode(), value=orjson.dumps(ev))
    producer.flush()
    producer.close()
    monkeypatch.setenv("WARDSTREAM_STATE_DIR", str(tmp_path / "state"))
    with StreamWorker(log_path=tmp_path / "worker.log", flush_seconds=1) as w:
        w.wait_caught_up(timeout=300)
    migrate()
    sink_namespace(kafka_ns, fresh_db)
    conn = psycopg2.connect(fresh_db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dead_letters d JOIN adt_events a "
                    "ON (a.source_partition, a.source_offset) = (d.source_partition, d.source_offset)")
        both = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM dead_letters")
        assert cur.fetchone()[0] == 1
    conn.close()
    assert both == 0
