"""The simulator: determinism, CLI options, contract v1 round-trip, event invariants, Kafka e2e."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from producers.clock import SimClock
from producers.runner import simulate_to_file, write_truth
from producers.simulator import SimConfig, Simulation, generate
from contracts.events import DEPARTMENTS, Topics, TruthRecord, dump, parse_adt, parse_reference
from wardstream.cli import app
from wardstream.config import settings

runner = CliRunner()


def simulate_file(tmp_path: Path, name: str, *args: str) -> tuple[bytes, bytes]:
    out, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.truth.jsonl"
    res = runner.invoke(app, ["simulate", "--out", str(out), "--truth-out", str(truth),
                              "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return out.read_bytes(), truth.read_bytes()


# --------------------------------------------------------------------------- determinism & options

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path) -> None:
    a = simulate_file(tmp_path, "a", "--days", "20", "--seed", "7")
    b = simulate_file(tmp_path, "b", "--days", "20", "--seed", "7")
    c = simulate_file(tmp_path, "c", "--days", "20", "--seed", "8")
    assert a == b
    assert a[0] != c[0]
    assert a[0].count(b"\n") > 1000


def test_deterministic_across_processes_and_hash_seeds(tmp_path) -> None:
    """Byte-identical events and truth whatever PYTHONHASHSEED (no set or hash order leaks in)."""
    outputs = []
    for hash_seed in ("1", "2"):
        out, truth = tmp_path / f"e{hash_seed}.jsonl", tmp_path / f"t{hash_seed}.jsonl"
        subprocess.run([sys.executable, "-m", "wardstream.cli", "simulate", "--days", "45", "--no-progress",
                        "--out", str(out), "--truth-out", str(truth)], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONHASHSEED=hash_seed), timeout=300)
        outputs.append((out.read_bytes(), truth.read_bytes()))
    assert outputs[0] == outputs[1]


def test_api_matches_cli_bytes(tmp_path) -> None:
    events, _ = simulate_file(tmp_path, "cli", "--days", "5", "--beds", "120", "--facilities", "2")
    api = b"".join(orjson.dumps(e) + b"\n" for e in generate(SimConfig(days=5, beds=120, facilities=2)))
    assert api == events


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "--days"),
    (["--days", "-3"], "--days"),
    (["--beds", "10"], "--beds"),
    (["--speed", "-1"], "--speed"),
    (["--start", "2025-02-30"], "--start"),
    (["--start", "yesterday"], "--start"),
    (["--facilities", "0"], "facilities"),
    (["--out", "/nonexistent-dir/x.jsonl"], "--out"),
    (["--out", "/tmp"], "--out"),
    (["--out", "/tmp/ok.jsonl", "--truth-out", "/nonexistent-dir/t.jsonl"], "--truth-out"),
    (["--client", "java"], "--client"),
])
def test_bad_options_are_clear_errors(args, message) -> None:
    res = runner.invoke(app, ["simulate", "--no-progress", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Invalid value" in res.output


def test_unwritable_out_file(tmp_path) -> None:
    if os.geteuid() == 0:
        locked = Path("/proc/version")  # not writable even for root
    else:
        locked = tmp_path / "ro.jsonl"
        locked.write_text("")
        locked.chmod(0o444)
    res = runner.invoke(app, ["simulate", "--no-progress", "--out", str(locked)])
    assert res.exit_code == 2 and "--out" in res.output


# --------------------------------------------------------------------------- contract & invariants

@pytest.fixture(scope="module")
def month(tmp_path_factory) -> dict:
    cfg = SimConfig(seed=42, start=date(2025, 3, 1), days=45, beds=200, facilities=2)
    sim = Simulation(cfg)
    path = tmp_path_factory.mktemp("month") / "events.jsonl"
    summary = simulate_to_file(sim, path, progress=False)
    truth = tmp_path_factory.mktemp("month") / "truth.jsonl"
    write_truth(sim, truth)
    return {"cfg": cfg, "sim": sim, "lines": path.read_bytes().splitlines(),
            "truth": truth.read_bytes().splitlines(), "summary": summary}


def test_every_line_is_contract_v1_and_redumps_identically(month) -> None:
    kinds = set()
    for line in month["lines"]:
        ev = parse_adt(line)
        assert dump(ev) == line
        kinds.add(ev.event_type)
    assert kinds == {"admission", "discharge", "transfer"}
    for line in month["truth"]:
        assert dump(TruthRecord.model_validate_json(line)) == line


def test_ids_times_and_period(month) -> None:
    cfg, events = month["cfg"], [orjson.loads(x) for x in month["lines"]]
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    end = start + timedelta(days=cfg.days)
    times = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert times == sorted(times) and times[0] >= start and times[-1] < end
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 4 for i in ids)
    assert all(re.fullmatch(r"P\d{7}", e["patient_id"]) and re.fullmatch(r"E\d{8}", e["encounter_id"])
               and re.fullmatch(r"F\d{2}", e["facility_id"])
               and re.fullmatch(re.escape(e["facility_id"]) + r"-D\d{3}", e["attending_provider_id"])
               for e in events)
    assert {e["facility_id"] for e in events} == {"F01", "F02"}
    assert {e["department"] for e in events} == set(DEPARTMENTS)
    refs = {p.provider_id: p for p in month["sim"].reference.providers}
    assert all(refs[e["attending_provider_id"]].department == e["department"] for e in events)
    assert month["summary"].events == len(events)


def test_stays_are_well_formed(month) -> None:
    events = [orjson.loads(x) for x in month["lines"]]
    by_enc: dict[str, list[dict]] = defaultdict(list)
    open_stay: dict[str, str] = {}
    for e in events:
        pid, enc = e["patient_id"], e["encounter_id"]
        if e["event_type"] == "admission":
            assert pid not in open_stay, "a patient is admitted twice at once"
            open_stay[pid] = enc
            codes = e["diagnosis_codes"]
            assert codes and len(set(codes)) == len(codes)
            from producers.rules import CONDITION_CODES
            for cond in e["patient"]["chronic_conditions"]:
                code = CONDITION_CODES[cond]
                assert code in codes or (cond == "cancer" and "C50.919" in codes)
        else:
            assert open_stay.get(pid) == enc, "transfer/discharge without its admission"
            if e["event_type"] == "discharge":
                del open_stay[pid]
        by_enc[enc].append(e)
    discharges = [evs for evs in by_enc.values() if evs[-1]["event_type"] == "discharge"]
    assert len(discharges) > 1000
    for evs in discharges:
        adm, dis = evs[0], evs[-1]
        assert dis["admitted_at"] == adm["occurred_at"] and dis["diagnosis_codes"] == adm["diagnosis_codes"]
        assert dis["department"] == evs[-2]["department"]  # where the last transfer left them
        los = (datetime.fromisoformat(dis["occurred_at"]) - datetime.fromisoformat(adm["occurred_at"]))
        assert abs(los.total_seconds() / 86400 - dis["length_of_stay_days"]) < 0.006
        assert dis["payer"] == adm["patient"]["payer"]
    transferred = sum(1 for evs in discharges if len(evs) > 2)
    assert 0.18 <= transferred / len(discharges) <= 0.32
    dispositions = {evs[-1]["discharge_disposition"] for evs in discharges}
    assert {"home", "expired", "snf"} <= dispositions
    nulls = sum(evs[-1]["satisfaction_score"] is None for evs in discharges) / len(discharges)
    assert 0.30 <= nulls <= 0.50
    assert any(e["admit_source"] == "ed" for e in events if e["event_type"] == "admission")


def test_truth_is_one_record_per_discharge(month) -> None:
    truth = [orjson.loads(x) for x in month["truth"]]
    discharges = [orjson.loads(x) for x in month["lines"] if b'"event_type":"discharge"' in x]
    assert [t["encounter_id"] for t in truth] == [d["encounter_id"] for d in discharges]
    dispo = {d["encounter_id"]: d["discharge_disposition"] for d in discharges}
    assert all(t["p_readmit"] == 0 and not t["readmitted"] for t in truth if dispo[t["encounter_id"]] == "expired")
    assert any(t["readmitted"] for t in truth)
    assert not any(b"p_readmit" in x or b"frailty" in x or b"readmitted" in x for x in month["lines"])


def test_stop_flag_ends_cleanly_and_truth_follows_emitted_events(tmp_path) -> None:
    sim2 = Simulation(SimConfig(days=30))  # stop is polled before every event here
    n = {"k": 0}

    def stop() -> bool:
        n["k"] += 1
        return n["k"] > 1500

    summary2 = simulate_to_file(sim2, tmp_path / "b.jsonl", progress=False, stop=stop)
    lines2 = (tmp_path / "b.jsonl").read_bytes().splitlines()
    assert summary2.interrupted and summary2.events == len(lines2) < 5000
    assert sum(summary2.by_type.values()) == len(lines2)
    discharged = [orjson.loads(x)["encounter_id"] for x in lines2 if b'"discharge"' in x]
    assert [t["encounter_id"] for t in sim2.truth_records()] == discharged


@pytest.mark.parametrize("beds, facilities", [(64, 1), (3000, 1), (120, 3)])
def test_small_and_large_hospitals(beds, facilities) -> None:
    cfg = SimConfig(days=30, beds=beds, facilities=facilities)
    sim = Simulation(cfg)
    events = [item.event for item in sim.stream()]
    admissions = sum(e["event_type"] == "admission" for e in events)
    # ~beds * 0.8 occupancy / ~5 days stay admissions a day, per facility
    assert 0.08 * beds * facilities * 30 <= admissions <= 0.30 * beds * facilities * 30
    assert {e["facility_id"] for e in events} == {f"F{i:02d}" for i in range(1, facilities + 1)}
    assert sim.reference.facilities[0].beds == beds
    assert sum(sim.reference.facilities[0].department_beds.values()) == beds


def test_clock_paces_event_time() -> None:
    now = [100.0]
    naps: list[float] = []

    def sleep(s: float) -> None:
        naps.append(s)
        now[0] += s

    clock = SimClock(speed=60.0, sim_start=0, now=lambda: now[0], sleep=sleep)
    clock.wait_until(600)  # 10 simulated minutes at 60x = 10 wall seconds
    assert now[0] == pytest.approx(110.0) and max(naps) <= 0.2 + 1e-9
    clock.wait_until(300)  # already past: no wait
    assert now[0] == pytest.approx(110.0)
    stopped = SimClock(speed=1.0, sim_start=0, now=lambda: now[0], sleep=sleep)
    stopped.wait_until(10**6, stop=lambda: True)  # a stop flag ends the wait at once
    with pytest.raises(ValueError):
        SimClock(speed=-1, sim_start=0)


# --------------------------------------------------------------------------- Kafka end to end

def _read_all(topic: str, expected: int, timeout_s: float = 60.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers="127.0.0.1:9092", group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(consumer)
    finally:
        consumer.close()
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_simulate_into_kafka_and_read_back(kafka_ns, tmp_path, client) -> None:
    from kafka.partitioner.default import murmur2

    from producers.kafka_sink import have_confluent, simulate_to_kafka

    if client == "confluent" and not have_confluent():
        pytest.skip("confluent-kafka not installed")
    cfg = SimConfig(seed=11, days=4, beds=150)
    truth = tmp_path / "truth.jsonl"
    summary = simulate_to_kafka(cfg, progress=False, truth_out=truth, client=client)
    expected = [orjson.dumps(e) for e in generate(cfg)]
    assert summary.events == len(expected) > 100 and not summary.interrupted
    topics = Topics(kafka_ns)

    records = _read_all(topics.adt, len(expected))
    assert len(records) == len(expected)
    assert sorted(r.value for r in records) == sorted(expected)
    n_parts = len({r.partition for r in records})
    assert n_parts > 1
    per_patient: dict[bytes, list] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.key == orjson.loads(r.value)["patient_id"].encode()
        per_patient[r.key].append(r.value)
        parts = settings().adt_partitions
        assert r.partition == (murmur2(r.key) & 0x7FFFFFFF) % parts  # Java-compatible partitioning
    want: dict[bytes, list] = defaultdict(list)
    for v in expected:
        want[orjson.loads(v)["patient_id"].encode()].append(v)
    assert per_patient == want  # complete and in per-patient order
    assert len(truth.read_bytes().splitlines()) == summary.by_type["discharge"]

    refs = [parse_reference(r.value) for r in _read_all(topics.reference, 2)]
    sim = Simulation(cfg)
    assert {r.facility_id if r.kind == "facility" else r.provider_id for r in refs} == (
        {f.facility_id for f in sim.reference.facilities} | {p.provider_id for p in sim.reference.providers})

    kcat = shutil.which("kcat") or ("/usr/bin/kcat" if Path("/usr/bin/kcat").exists() else None)
    if kcat is None:
        return  # kcat part only where kcat is installed
    res = subprocess.run([kcat, "-b", "127.0.0.1:9092", "-C", "-t", topics.adt, "-e", "-q",
                          "-f", "%p\t%k\t%s\n"], capture_output=True, timeout=60, check=True)
    rows = [line.split(b"\t", 2) for line in res.stdout.splitlines()]
    assert sorted(v for _, _, v in rows) == sorted(expected)
    kc_patient: dict[bytes, list] = defaultdict(list)
    for _, k, v in rows:  # kcat prints each partition in offset order
        kc_patient[k].append(v)
    assert kc_patient == want


@pytest.mark.e2e
def test_ctrl_c_stops_cleanly_after_flushing(kafka_ns, tmp_path) -> None:
    env = dict(os.environ, WARDSTREAM_NAMESPACE=kafka_ns)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wardstream.cli", "simulate", "--days", "365", "--speed", "864000",
         "--no-progress", "--truth-out", str(tmp_path / "t.jsonl")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(6)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 130, text
    assert "interrupted" in text and "yes" in text
    sent = int(re.search(r"│ events\s+│\s+([\d,]+)", text).group(1).replace(",", ""))
    assert 0 < sent < 39_000
    records = _read_all(Topics(kafka_ns).adt, sent, timeout_s=30)
    assert len(records) == sent  # everything handed to the producer was flushed, nothing more
    discharges = sum(b'"event_type":"discharge"' in r.value for r in records)
    assert len((tmp_path / "t.jsonl").read_bytes().splitlines()) == discharges
