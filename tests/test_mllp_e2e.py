"""``wardstream mllp`` against a sender the project did not write (HAPI HL7v2 2.6.0, tests/hapi/)
and the real broker: every ACK, and exactly the mapped events (contract v1.1: A01-A13, A40) on
hospital.adt / letters on the DLQ.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from kafka import TopicPartition

from producers.mllp.mapping import event_id_for
from contracts.events import Topics, parse_adt
from wardstream.kafka_io import end_offsets_of, make_consumer

ROOT = Path(__file__).resolve().parents[1]
HAPI = ROOT / "tests" / "hapi"
BUILD = ROOT / ".wardstream" / "hapi-sender"  # kept between runs: a rebuild only when a source changed
JAR = BUILD / "hapi-sender-1.jar"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hapi_classpath() -> str:
    """The HAPI sender's classpath, built with Maven when missing or older than its sources."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("Maven and Java 17 are needed to build the HAPI sender (tests/hapi/)")
    sources = [HAPI / "pom.xml", *HAPI.rglob("*.java")]
    if not JAR.exists() or JAR.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        proc = subprocess.run(["mvn", "-q", "-B", "-f", str(HAPI / "pom.xml"), "package",
                               f"-Dsender.out={BUILD}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return f"{BUILD / 'lib'}/*{os.pathsep}{JAR}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def listener(tmp_path: Path, **env: str) -> Iterator[int]:
    """``wardstream mllp`` as a subprocess on a free port; yields the port once it accepts."""
    port = _free_port()
    log = (tmp_path / "mllp.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "wardstream.cli", "mllp", "--port", str(port),
                             "--ack-timeout", env.pop("ack_timeout", "10")],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "mllp.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "listener did not start"
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def send(classpath: str, port: int, messages: list[str], tmp_path: Path) -> list[list[str]]:
    """Send ``messages`` with HAPI, one after the other's ACK; each ACK as [MSA-1, MSA-2, MSH-9]."""
    path = tmp_path / "messages.hl7"
    path.write_text("\n\n".join(m.replace("\r", "\n") for m in messages) + "\n")
    proc = subprocess.run(["java", "-cp", classpath, "wardstream.hapi.Sender", "127.0.0.1", str(port),
                           str(path), "60"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line.split("\t") for line in proc.stdout.splitlines()]


def seg(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(i, "") for i in range(1, max(fields) + 1))])


def msh(trigger: str, control_id: str, kind: str = "ADT") -> str:
    return f"MSH|^~\\&|EHR|F01|WARDSTREAM|WS|20250301080000||{kind}^{trigger}|{control_id}|P|2.5"


def adt(trigger: str, control_id: str, n: int, day: int) -> str:
    """An A01 / A02 / A03 of patient ``n`` (MRN M{n}, visit V{n}) on 2025-03-``day``."""
    pv1 = {1: "1", 2: "I", 3: "CARD^3^A", 4: "E", 7: f"D{n}^Doc", 14: "7", 19: f"V{n}", 20: "MC",
           44: "202503010800"}
    if trigger == "A02":
        pv1[3] = "NEURO^5^B"
    if trigger == "A03":
        pv1.update({3: "NEURO^5^B", 36: "01", 45: f"202503{day:02d}1000", 47: "8200.00"})
    segments = [msh(trigger, control_id), f"EVN|{trigger}|202503{day:02d}0900",
                f"PID|1||M{n}^^^F01^MR||Roe^Sam||19600101|M||2106-3", seg("PV1", pv1)]
    if trigger == "A01":
        segments += [f"OBX|{i}|NM|{code}^^LN||{value}" for i, (code, value) in enumerate(
            [("8480-6", "130"), ("8462-4", "80"), ("8867-4", "72"), ("2345-7", "110")], 1)]
    if trigger in ("A01", "A03"):
        segments.append("DG1|1||I50.9^Heart failure^I10")
    return "\r".join(segments)


def read_all(topic: str) -> list[bytes]:
    consumer = make_consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = end_offsets_of(consumer, tps)
        out: list[bytes] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                out += [r.value for r in records]
        return out
    finally:
        consumer.close()


def v11(trigger: str, control_id: str, n: int, day: int) -> str:
    """A contract v1.1 trigger of patient ``n`` (visit V{n}) on 2025-03-``day``: A04 registers a
    separate ED visit (E{n}), A40 merges MRN X{n} into M{n}, the others concern visit V{n}."""
    pv1 = {1: "1", 2: "O" if trigger == "A07" else "I", 3: "CARD^3^A", 7: f"D{n}^Doc", 19: f"V{n}",
           20: "MC", 44: "202503010800"}
    body = [seg("PV1", pv1), "DG1|1||I50.9^Heart failure^I10"]
    if trigger == "A04":
        pv1.update({2: "E", 3: "ED", 19: f"E{n}", 44: f"202503{day:02d}0700"})
        body = [seg("PV1", pv1)]
    elif trigger == "A40":
        body = [f"MRG|X{n}^^^F01^MR"]
    return "\r".join([msh(trigger, control_id), f"EVN|{trigger}|202503{day:02d}0900",
                      f"PID|1||M{n}^^^F01^MR||Roe^Sam||19600101|M||2106-3", *body])


V11 = {"A04": "registration", "A06": "class_change", "A07": "class_change", "A08": "update",
       "A11": "cancellation", "A12": "cancellation", "A13": "cancellation", "A40": "merge"}


def test_hapi_feed_gets_every_ack_and_exactly_the_mapped_events(kafka_ns, hapi_classpath, tmp_path):
    feed = []
    for n in (1, 2, 3):
        feed += [adt("A01", f"C{n}-1", n, 1), adt("A02", f"C{n}-2", n, 2), adt("A03", f"C{n}-3", n, 4)]
    feed += [v11(trigger, f"C4-{trigger}", 4, 5) for trigger in V11]  # contract v1.1: all AA
    feed.append("\r".join([msh("R01", "LAB-1", "ORU"), "PID|1||M1^^^F01^MR", "OBR|1", "OBX|1|NM|8867-4||70"]))
    feed.append("\r".join([msh("A05", "C1-5"), "EVN|A05|202503020900", "PID|1||M1^^^F01^MR",
                           seg("PV1", {2: "I", 3: "CARD", 19: "V1"})]))
    feed.append(feed[0])  # a re-send of the first A01 (same MSH-4 + MSH-10)
    adt_ids = [f"C{n}-{k}" for n in (1, 2, 3) for k in (1, 2, 3)]
    v11_ids = [f"C4-{trigger}" for trigger in V11]

    with listener(tmp_path) as port:
        acks = send(hapi_classpath, port, feed, tmp_path)

    expected = [["AA", cid, f"ACK^A0{cid[-1]}^ACK"] for cid in adt_ids]
    expected += [["AA", cid, f"ACK^{cid[3:]}^ACK"] for cid in v11_ids]
    expected += [["AR", "LAB-1", "ACK^R01^ACK"], ["AR", "C1-5", "ACK^A05^ACK"], ["AA", "C1-1", "ACK^A01^ACK"]]
    assert acks == expected

    topics = Topics(kafka_ns)
    events = [parse_adt(raw) for raw in read_all(topics.adt)]
    assert sorted(str(e.event_id) for e in events) == sorted(
        str(event_id_for("F01", c)) for c in adt_ids + v11_ids)
    by_patient: dict[str, list[str]] = {}
    for e in events:
        by_patient.setdefault(e.patient_id, []).append(e.event_type)
    assert by_patient == {**{f"M{n}": ["admission", "transfer", "discharge"] for n in (1, 2, 3)},
                          "M4": list(V11.values())}  # in order
    merge = next(e for e in events if e.event_type == "merge")
    assert (merge.prior_patient_id, merge.encounter_id) == ("X4", None)

    letters = [orjson.loads(raw) for raw in read_all(topics.dlq)]
    assert sorted((d["source_topic"], d["reason"].split(" (")[0]) for d in letters) == [
        ("mllp", "not an ADT message"), ("mllp", "unsupported ADT trigger A05")]
    assert all("MSH|" in d["raw"] for d in letters)
    log = (tmp_path / "mllp.log").read_text()
    assert "Roe" not in log and "19600101" not in log  # no patient data in the logs


def test_kafka_unreachable_gives_ae(hapi_classpath, tmp_path):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        bogus = f"127.0.0.1:{closed.getsockname()[1]}"
    with listener(tmp_path, KAFKA_BOOTSTRAP_SERVERS=bogus, WARDSTREAM_BROKER_WAIT_S="2",
                  ack_timeout="2") as port:
        acks = send(hapi_classpath, port, [adt("A01", "X-1", 9, 1), adt("A05", "X-2", 9, 2)], tmp_path)
    # nothing stored: AE (retry) for the event and for the unmappable one's dead letter too
    assert acks == [["AE", "X-1", "ACK^A01^ACK"], ["AE", "X-2", "ACK^A05^ACK"]]


def test_broker_stopped_mid_feed_gives_ae_and_the_retries_store_each_message_once(hapi_classpath, tmp_path):
    """The broker is SIGKILLed after 20 of 60 admissions and restarted 8 s later, while HAPI
    sends with retries (on AE or no answer, as an interface engine does): what was not stored is
    answered AE (never AA), the retries complete the feed, and in the end every message has one
    AA and exactly one event on hospital.adt. A private broker: the shared one is never touched."""
    from wardstream.config import scoped_env
    from wardstream.stack.kafka import LocalCluster

    feed = [adt("A01", f"B-{n}", n, 1) for n in range(60)]
    path = tmp_path / "messages.hl7"
    path.write_text("\n\n".join(m.replace("\r", "\n") for m in feed) + "\n")
    broker = LocalCluster.on_free_ports(tmp_path / "kafka", brokers=1)
    with scoped_env(**broker.env(), WARDSTREAM_NAMESPACE=""):
        broker.up(timeout=180)
        try:
            with listener(tmp_path, ack_timeout="3") as port:
                answers = _send_through_outage(hapi_classpath, port, path, broker, after=20, down_s=8)
            stored = [parse_adt(v).event_id for v in read_all(Topics("").adt)]
        finally:
            broker.down()
    last = {control_id: kind for kind, control_id, *_ in answers}
    print("answers:", dict(Counter(kind for kind, *_ in answers)), "events stored:", len(stored))
    assert last == {f"B-{n}": "AA" for n in range(60)}, answers
    assert any(kind in ("AE", "ERROR") for kind, *_ in answers), "the outage gave no AE: nothing was tested"
    assert sorted(map(str, stored)) == sorted(str(event_id_for("F01", f"B-{n}")) for n in range(60))


def _send_through_outage(classpath: str, port: int, path: Path, broker, after: int, down_s: float) -> list[list[str]]:
    """Run the HAPI sender with retries; SIGKILL the broker once ``after`` answers came, start it
    again ``down_s`` later. Every attempt's answer, in order."""
    import threading

    proc = subprocess.Popen(["java", "-cp", classpath, "wardstream.hapi.Sender", "127.0.0.1", str(port),
                             str(path), "10", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node = broker.node(1)
    restart = threading.Thread(target=lambda: (time.sleep(down_s), node.up(timeout=180)))
    answers: list[list[str]] = []
    try:
        for line in proc.stdout:
            answers.append(line.rstrip("\n").split("\t"))
            if len(answers) == after:
                node.kill()
                restart.start()
        assert proc.wait(60) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        if restart.is_alive():
            restart.join()
    return answers
