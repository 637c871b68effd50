"""``wardstream simulate --format hl7``: the simulated HL7 feed (producers/hl7_encode.py,
hl7_feed.py, hl7_out.py) and its round trip through ``wardstream mllp``'s mapping.

Unit tests on a simulated month: same seed -> byte-identical messages; the extra messages (A08,
A11-A13, A40) leave the simulated events unchanged and make the issue's mix; event -> HL7 ->
``producers.mllp.mapping`` gives the event back, field by field, except the fields that cannot
round-trip (producers/hl7_encode.py says why). The e2e test sends a few days with
``simulate --mllp`` to a ``wardstream mllp`` subprocess and the real Kafka.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from datetime import date, datetime

import orjson
import pytest
from typer.testing import CliRunner

from producers.hl7_encode import control_id
from producers.hl7_feed import MAPPED, SIMULATED, Hl7Message, hl7_messages, read_file
from producers.hl7_out import Rejected, hl7_to_mllp
from producers.mllp import codes
from producers.mllp.client import MllpClient, MllpError
from producers.mllp.framing import FrameReader, frame
from producers.mllp.mapping import MapContext, event_id_for, map_adt
from producers.mllp.message import ERR_INTERNAL, build_ack, parse, read_header
from producers.simulator import SimConfig, Simulation, generate
from contracts.events import Topics, parse_adt
from wardstream.cli import app

MONTH = SimConfig(seed=42, start=date(2025, 3, 1), days=30)


@pytest.fixture(scope="module")
def month() -> list[Hl7Message]:
    return list(hl7_messages(Simulation(MONTH)))


def test_same_seed_same_messages_and_another_seed_others() -> None:
    cfg = SimConfig(seed=5, days=5)
    first = [m.text for m in hl7_messages(Simulation(cfg))]
    assert first == [m.text for m in hl7_messages(Simulation(cfg))]
    assert first != [m.text for m in hl7_messages(Simulation(SimConfig(seed=6, days=5)))]
    assert len({m.split("\r")[0].split("|")[9] for m in first}) == len(first)  # MSH-10 unique


def test_the_extras_leave_the_simulated_events_unchanged(month) -> None:
    carried = [orjson.dumps(m.event) for m in month if m.event is not None]
    assert carried == [orjson.dumps(e) for e in generate(MONTH)]
    assert [m.trigger for m in month if m.event is not None] == [
        m.trigger for m in month if m.trigger in SIMULATED]
    assert [m.t for m in month] == sorted(m.t for m in month)  # one feed, in time order
    assert max(m.t for m in month) < MONTH.end_epoch


def test_the_mix_is_a_real_feeds(month) -> None:
    n = len(month)
    share = Counter(m.trigger for m in month)
    assert 0.40 <= share["A08"] / n <= 0.50
    assert 0.01 <= (share["A11"] + share["A12"] + share["A13"]) / n <= 0.02
    assert min(share["A11"], share["A12"], share["A13"]) > 0
    assert 0 < share["A40"] / n < 0.005
    assert 0 < share["A07"] / n < 0.005
    events = {m.event["event_id"]: m.event for m in month if m.event is not None}
    for m in month:
        if m.trigger in ("A11", "A12", "A13"):  # each cancels a simulated event of its kind, later
            target = events[m.target]
            assert {"A11": "A01", "A12": "A02", "A13": "A03"}[m.trigger] == target["hl7_trigger"]
            assert m.key == target["patient_id"] and f"|{target['encounter_id']}^" in m.text
        if m.trigger == "A40":
            assert m.target.startswith("D") and f"MRG|{m.target}^" in m.text
        if m.trigger == "A07":  # an admission made an observation visit (PV1-2 O), later
            target = events[m.target]
            assert target["hl7_trigger"] == "A01" and m.t > datetime.fromisoformat(target["occurred_at"]).timestamp()
            assert "PV1|1|O|" in m.text and f"|{target['encounter_id']}^" in m.text


def _compare(mapped: dict, event: dict, mismatches: Counter) -> None:
    """Assert what must round-trip; count what may not (documented in producers/hl7_encode.py)."""
    want = parse_adt(orjson.dumps(event)).model_dump(mode="json")
    assert mapped["event_id"] == str(event_id_for(event["facility_id"], control_id(event["event_id"])))
    for key in want:
        if key == "event_id":
            continue
        if key == "length_of_stay_days":
            exact = (datetime.fromisoformat(want["occurred_at"]) - datetime.fromisoformat(
                want["admitted_at"])).total_seconds() / 86400
            assert mapped[key] == pytest.approx(exact, abs=1e-6)
            assert abs(mapped[key] - want[key]) <= 0.005 + 1e-9
            mismatches[key] += mapped[key] != want[key]
        elif key == "satisfaction_score":
            assert mapped[key] is None
            mismatches[key] += want[key] is not None
        elif key == "patient":
            got_p, want_p = mapped[key], want[key]
            assert {k: v for k, v in got_p.items() if k != "chronic_conditions"} == {
                k: v for k, v in want_p.items() if k != "chronic_conditions"}
            extra = set(got_p["chronic_conditions"]) - set(want_p["chronic_conditions"])
            assert set(want_p["chronic_conditions"]) <= set(got_p["chronic_conditions"])
            # an extra condition only from a diagnosis code in a chronic category
            assert extra <= {codes.CHRONIC_BY_CATEGORY.get(c[:3]) for c in want["diagnosis_codes"]}
            mismatches["patient.chronic_conditions (order)"] += (
                not extra and got_p["chronic_conditions"] != want_p["chronic_conditions"])
            mismatches["patient.chronic_conditions (primary dx)"] += bool(extra)
        else:
            assert mapped[key] == want[key], key


def test_round_trip_event_hl7_mapping_on_a_month(month) -> None:
    ctx = MapContext()
    mismatches: Counter[str] = Counter()
    n = Counter()
    for m in month:
        if m.event is None:
            continue
        mapped = map_adt(parse(m.text), read_header(m.text), ctx).model_dump(mode="json")
        _compare(mapped, m.event, mismatches)
        n[m.event["event_type"]] += 1
    assert n["admission"] > 1000 and n["discharge"] > 1000 and n["transfer"] > 200
    # what does not round-trip, and how often (a simulated month)
    assert mismatches["satisfaction_score"] > 0.5 * n["discharge"]  # surveyed discharges
    assert mismatches["length_of_stay_days"] > 0.9 * n["discharge"]  # rounded to 0.01 d by the simulator
    assert 0 < mismatches["patient.chronic_conditions (primary dx)"] < 0.15 * n["admission"]


def test_the_file_is_one_segment_per_line_and_a_blank_line_per_message(tmp_path) -> None:
    runner = CliRunner()
    paths = [tmp_path / "a.hl7", tmp_path / "b.hl7"]
    for p in paths:
        done = runner.invoke(app, ["simulate", "--format", "hl7", "--out", str(p), "--days", "3",
                                   "--no-progress"])
        assert done.exit_code == 0, done.output
    data = paths[0].read_bytes()
    assert data == paths[1].read_bytes()
    assert b"\r" not in data and data.endswith(b"\n\n")
    assert read_file(data) == [m.text for m in hl7_messages(Simulation(SimConfig(days=3)))]
    assert runner.invoke(app, ["simulate", "--format", "hl7", "--days", "1"]).exit_code == 2  # no --out
    assert runner.invoke(app, ["simulate", "--format", "json", "--mllp", "h:1"]).exit_code == 2


# ------------------------------------------------------------------ the MLLP sender


class ScriptedPeer(threading.Thread):
    """An MLLP peer that answers each message with the next code of ``codes`` (then AA)."""

    def __init__(self, codes: list[str]) -> None:
        super().__init__(daemon=True)
        self.codes = codes
        self.received: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        conn, _ = self.sock.accept()
        reader = FrameReader()
        with conn:
            while data := conn.recv(65536):
                for payload in reader.feed(data):
                    text = payload.decode()
                    self.received.append(text)
                    code = self.codes.pop(0) if self.codes else "AA"
                    error = None if code == "AA" else ERR_INTERNAL
                    conn.sendall(frame(build_ack(read_header(text), code, error=error,
                                                 text="scripted").encode()))


def test_the_sender_resends_after_ae_and_stops_on_ar_of_a_simulated_event() -> None:
    peer = ScriptedPeer(["AE", "AE"])
    peer.start()
    msg = "MSH|^~\\&|S|F01|R|WS|20250101||ADT^A01^ADT_A01|C1|P|2.5"
    with MllpClient("127.0.0.1", peer.port, timeout=5, backoff=0.01) as client:
        assert client.deliver(msg.encode(), "C1").code == "AA"
        assert client.resends == 2 and peer.received == [msg] * 3
        with pytest.raises(MllpError, match="ACK for control id"):
            client.deliver(msg.encode(), "OTHER")

    peer = ScriptedPeer(["AA"] * 5 + ["AR"])
    peer.start()
    with pytest.raises(Rejected, match=r"refused \(AR\) the A0[123] .*scripted"):
        hl7_to_mllp(Simulation(SimConfig(days=2)), "127.0.0.1", peer.port, progress=False)
    assert len(peer.received) == 6


# ------------------------------------------------------------------ e2e: through wardstream mllp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_simulate_hl7_over_mllp_into_wardstream_mllp(kafka_ns, tmp_path) -> None:
    from test_mllp_e2e import listener, read_all

    cfg = SimConfig(seed=7, start=date(2025, 2, 1), days=4)
    feed = list(hl7_messages(Simulation(cfg)))
    with listener(tmp_path) as port:
        done = subprocess.run(
            [sys.executable, "-m", "wardstream.cli", "simulate", "--mllp", f"127.0.0.1:{port}",
             "--seed", "7", "--start", "2025-02-01", "--days", "4", "--no-progress"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]

    # every message AA'd (the ACK table the command prints): the feed's triggers all map
    row = re.compile(r"│ (A\d\d)\s+│\s+([\d,]+) │\s+([\d,]+) │")
    rows = {m[0]: (int(m[1]), int(m[2])) for m in row.findall(done.stderr)}
    sent = Counter(m.trigger for m in feed)
    assert rows == {tr: ((n, 0) if tr in MAPPED else (0, n)) for tr, n in sent.items()}

    topics = Topics(kafka_ns)
    events = [orjson.loads(raw) for raw in read_all(topics.adt)]
    simulated = {str(event_id_for(m.event["facility_id"], m.control_id)): m.event
                 for m in feed if m.event is not None}
    v1 = [e for e in events if e["hl7_trigger"] in SIMULATED]
    assert sorted(e["event_id"] for e in v1) == sorted(simulated)  # exactly, none twice
    assert Counter(e["hl7_trigger"] for e in events) == sent
    mismatches: Counter[str] = Counter()
    for e in v1:
        _compare(parse_adt(orjson.dumps(e)).model_dump(mode="json"), simulated[e["event_id"]], mismatches)
    order: dict[str, list[str]] = {}
    for e in v1:  # per patient, in the simulated order (one partition per patient key)
        order.setdefault(e["patient_id"], []).append(e["event_id"])
    for pid, ids in order.items():
        assert ids == [i for i, ev in simulated.items() if ev["patient_id"] == pid]

    assert read_all(topics.dlq) == []
