"""HL7 v2 ADT -> event contract v1.1 (A01-A04, A06-A08, A11-A13, A40), and the MLLP framing and
ACKs (pure, no broker)."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from producers.mllp.departments import DepartmentTable
from producers.mllp.framing import FrameReader, frame
from producers.mllp.mapping import MapContext, Unmappable, event_id_for, map_adt
from producers.mllp.message import build_ack, decode, parse, read_header
from contracts.events import (
    AdmissionEvent,
    CancellationEvent,
    ClassChangeEvent,
    DischargeEvent,
    MergeEvent,
    RegistrationEvent,
    TransferEvent,
    UpdateEvent,
    dump,
    parse_adt,
)
from producers.hl7_feed import Hl7Message, hl7_messages
from producers.simulator import SimConfig, Simulation

def seg(name: str, fields: dict[int, str]) -> str:
    """One segment with these fields (1-based numbers; the others empty)."""
    n = max(fields)
    return "|".join([name, *(fields.get(i, "") for i in range(1, n + 1))])


A01 = "\r".join([
    "MSH|^~\\&|EHR|F01|WS|WS|20250301083000||ADT^A01^ADT_A01|MSG001|P|2.5.1",
    "EVN|A01|20250301083000",
    "PID|1||999-00-1111^^^SSA^SS~M1001^^^F01^MR||Doe^Jane||19480615|F||2054-5|||||||||||||2186-5",
    seg("PV1", {1: "1", 2: "I", 3: "CARD^301^A^F01", 4: "E", 7: "D77^House^Greg", 14: "7",
                19: "V5001", 20: "MC", 44: "20250301081500"}),
    "OBX|1|NM|8480-6^Systolic BP^LN||142|mm[Hg]",
    "OBX|2|NM|8462-4^Diastolic BP^LN||88|mm[Hg]",
    "OBX|3|NM|8867-4^Heart rate^LN||97|/min",
    "OBX|4|NM|2345-7^Glucose^LN||182|mg/dL",
    "DG1|1||E119^Type 2 diabetes^I10||||||||||||2",
    "DG1|2||I50.9^Heart failure^I10||||||||||||1",
    "DG1|3||428.0^CHF^I9",
])


def _a01(**replace: str) -> str:
    text = A01
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _map(text: str, ctx: MapContext | None = None):
    return map_adt(parse(text), read_header(text), ctx or MapContext())


def test_a01_maps_every_field():
    ev = _map(A01)
    assert isinstance(ev, AdmissionEvent)
    assert ev == parse_adt(dump(ev))  # what goes to Kafka is a valid v1 event
    assert ev.event_id == event_id_for("F01", "MSG001")
    assert (ev.facility_id, ev.patient_id, ev.encounter_id) == ("F01", "M1001", "V5001")
    assert (ev.department, ev.attending_provider_id) == ("Cardiology", "D77")
    assert (ev.admission_type, ev.admit_source) == ("emergency", "ed")  # PV1-4 E, PV1-14 7
    assert ev.occurred_at == datetime(2025, 3, 1, 8, 15, tzinfo=timezone.utc)  # PV1-44 before EVN-2
    assert ev.diagnosis_codes == ["I50.9", "E11.9"]  # DG1-15 priority first; ICD-9 dropped
    p = ev.patient
    assert (p.age, p.sex, p.race, p.payer) == (76, "F", "black", "medicare")
    assert p.chronic_conditions == ["diabetes", "heart_failure"]
    assert ev.vitals.model_dump() == {"systolic_bp": 142.0, "diastolic_bp": 88.0,
                                      "heart_rate": 97.0, "glucose_mg_dl": 182.0}


@pytest.mark.parametrize("pid8, sex", [("U", "U"), ("", "U"), ("X", "O"), ("A", "O"), ("m", "M")])
def test_an_admission_takes_every_pid8_code_of_table_0001(pid8, sex):
    """PID-8 is optional in HL7: an admission without it, or with unknown / other, is still an
    admission (contract v1.1 adds O and U), not an AR that would lose the whole stay."""
    assert _map(_a01(**{"|F||2054-5": f"|{pid8}||2054-5"})).patient.sex == sex


def test_a03_discharge_with_charges_and_local_time():
    text = "\r".join([
        "MSH|^~\\&|EHR|F01|WS|WS|20250305120000||ADT^A03|MSG003|P|2.3",
        "EVN|A03|20250305120000",
        "PID|1||M1001^^^F01^MR||Doe^Jane||19480615|F",
        seg("PV1", {1: "1", 2: "I", 3: "4W^301^A", 7: "D77", 19: "V5001", 20: "COM", 36: "01",
                    44: "20250301081500", 45: "20250305113000", 47: "12345.50"}),
        "DG1|1||I509^HF^I10",
        "PR1|1||93306^Echo^C4",
    ])
    ctx = MapContext(DepartmentTable.default().with_overrides({"4w": "Cardiology"}),
                     ZoneInfo("America/Chicago"))
    ev = _map(text, ctx)
    assert isinstance(ev, DischargeEvent)
    assert ev.occurred_at == datetime(2025, 3, 5, 17, 30, tzinfo=timezone.utc)  # CST = UTC-6
    assert ev.admitted_at == datetime(2025, 3, 1, 14, 15, tzinfo=timezone.utc)
    assert ev.length_of_stay_days == pytest.approx(4 + 3.25 / 24)
    assert (ev.discharge_disposition, ev.payer, ev.total_cost) == ("home", "private", 12345.5)
    assert (ev.diagnosis_codes, ev.procedure_codes, ev.satisfaction_score) == (["I50.9"], ["93306"], None)
    assert ev.department == "Cardiology"


def test_a02_transfer_uses_the_event_time():
    text = ("MSH|^~\\&|EHR|F01|WS|WS|20250302100000||ADT^A02|MSG002|P|2.8\r"
            "EVN|A02|20250302095900||||20250302095500\r"
            "PID|1||M1001^^^F01^MR\r" + seg("PV1", {3: "ICU^1^A", 7: "D12", 19: "V5001"}))
    ev = _map(text, MapContext(DepartmentTable.default().with_overrides({"ICU": "Internal Medicine"})))
    assert isinstance(ev, TransferEvent)
    assert ev.occurred_at == datetime(2025, 3, 2, 9, 55, tzinfo=timezone.utc)  # EVN-6
    assert (ev.department, ev.attending_provider_id) == ("Internal Medicine", "D12")


@pytest.mark.parametrize("text, reason", [
    (_a01(**{"ADT^A01^ADT_A01": "ADT^A05^ADT_A05"}), "unsupported ADT trigger A05"),
    (_a01(**{"ADT^A01^ADT_A01": "ORU^R01"}), "not an ADT message"),
    (_a01(**{"|2.5.1": "|2.2"}), "unsupported HL7 version"),
    (_a01(**{"CARD^301": "XYZ^301"}), "point of care not in the department table"),
    (_a01(**{"|F||2054-5": "|Z||2054-5"}), "PID-8 administrative sex code not mapped"),
    (_a01(**{"|V5001|MC|": "|V5001|ZZ|"}), "payer not mapped"),
    (_a01(**{"|142|": "|high|"}), "OBX-5 vital sign is not a number"),
    (_a01(**{"I10||||||||||||2": "I9||||||||||||2", "I50.9^Heart failure^I10": "x^y^I9"}),
     "DG1-3 ICD-10-CM diagnosis missing"),
    (_a01(**{"D77^House^Greg": ""}), "PV1-7 attending doctor missing"),
])
def test_unmappable_messages_say_why_without_patient_data(text, reason):
    with pytest.raises(Unmappable) as info:
        _map(text)
    assert reason in info.value.reason
    for value in ("M1001", "Doe", "Jane", "19480615", "V5001", "D77"):
        assert value not in info.value.reason


def test_a03_without_charges_and_a01_with_some_vitals_map_with_nulls():
    """Contract v1.1: a feed without PV1-47 or with only some vitals is mapped, not rejected."""
    text = ("MSH|^~\\&|EHR|F01|WS|WS|20250305120000||ADT^A03|M9|P|2.5\r"
            "PID|1||M1^^^F01^MR\r"
            + seg("PV1", {3: "ED", 7: "D1", 19: "V1", 20: "SP", 36: "20", 44: "20250301081500",
                          45: "20250305113000"}) + "\rDG1|1||R07.9^^I10")
    assert _map(text).total_cost is None
    adm = _map(_a01(**{"OBX|4|NM|2345-7": "OBX|4|NM|9999-9"}))
    assert adm.vitals.glucose_mg_dl is None and adm.vitals.heart_rate == 97.0
    bare = "\r".join(line for line in A01.split("\r") if not line.startswith("OBX"))
    assert _map(bare).vitals is None


def test_latin1_and_newline_separated_messages_decode():
    text = A01.replace("Doe^Jane", "Müller^Zoë").replace("\r", "\n")
    ev = _map(decode(text.encode("latin-1")))
    assert ev.patient_id == "M1001"


def test_frames_split_and_merged_across_reads():
    payloads = [A01.encode(), b"MSH|^~\\&|X|F02|||20250101||ADT^A02|2|P|2.4"]
    stream = b"\r\n junk" + b"".join(frame(p) for p in payloads)
    for size in (1, 2, 7, len(stream)):
        reader = FrameReader()
        got = [f for i in range(0, len(stream), size) for f in reader.feed(stream[i:i + size])]
        assert got == payloads


def test_ack_of_every_code_echoes_the_control_id_and_has_a_valid_msh9():
    h = read_header(A01)
    for code in ("AA", "AE", "AR"):
        ack = parse(build_ack(h, code, error=None if code == "AA" else ("207", "Internal")))
        assert str(ack["MSA.F1"]) == code and str(ack["MSA.F2"]) == "MSG001"
        assert [str(ack[f"MSH.F9.R1.C{i}"]) for i in (1, 2, 3)] == ["ACK", "A01", "ACK"]
        assert (str(ack["MSH.F4"]), str(ack["MSH.F6"]), str(ack["MSH.F12"])) == ("WS", "F01", "2.5.1")


# --------------------------------------------------------------------------- contract v1.1


def _msg(trigger: str, *segments: str, control: str = "MSG100") -> str:
    return "\r".join([f"MSH|^~\\&|EHR|F01|WS|WS|20250302100000||ADT^{trigger}|{control}|P|2.5",
                      f"EVN|{trigger}|20250302095900||||20250302095500", *segments])


PID = "PID|1||M1001^^^F01^MR||Doe^Jane||19480615|F||2054-5"
EVENT_AT = datetime(2025, 3, 2, 9, 55, tzinfo=timezone.utc)  # EVN-6


def test_a04_registration_of_an_ed_visit():
    ev = _map(_msg("A04", PID, seg("PV1", {2: "E", 3: "ED", 7: "D9", 19: "V9", 20: "SP",
                                           44: "20250302093000"}), "DG1|1||R07.9^^I10"))
    assert isinstance(ev, RegistrationEvent)
    assert (ev.patient_class, ev.department, ev.encounter_id, ev.admission_type) == (
        "emergency", "Emergency", "V9", None)
    assert ev.occurred_at == datetime(2025, 3, 2, 9, 30, tzinfo=timezone.utc)  # PV1-44
    assert ev.patient.model_dump() == {"age": 76, "sex": "F", "race": "black", "payer": "uninsured"}
    assert ev.diagnosis_codes == ["R07.9"]


def test_a06_carries_the_admission_fields_it_has_and_a07_the_new_class():
    a06 = _map(_msg("A06", PID, seg("PV1", {2: "I", 3: "CARD", 4: "E", 7: "D9", 14: "7", 19: "V9",
                                            20: "MC"}), "DG1|1||I50.9^^I10"))
    assert isinstance(a06, ClassChangeEvent) and a06.patient_class == "inpatient"
    assert (a06.admission_type, a06.admit_source, a06.patient.payer, a06.diagnosis_codes) == (
        "emergency", "ed", "medicare", ["I50.9"])
    assert a06.patient.chronic_conditions == ["heart_failure"] and a06.vitals is None
    sparse = _map(_msg("A06", "PID|1||M1001^^^F01^MR", seg("PV1", {3: "CARD", 7: "D9", 19: "V9"})))
    assert (sparse.admission_type, sparse.patient) == (None, None)
    a07 = _map(_msg("A07", PID, seg("PV1", {2: "O", 3: "CARD", 7: "D9", 19: "V9"})))
    assert isinstance(a07, ClassChangeEvent) and a07.patient_class == "outpatient"
    assert a07.occurred_at == EVENT_AT


def test_a08_update_carries_the_visit_as_it_stands():
    ev = _map(_msg("A08", "PID|1||M1001^^^F01^MR||Doe^Jane||19480615|U",
                   seg("PV1", {2: "I", 3: "NEURO", 7: "D12", 19: "V5001"}),
                   "DG1|1||I639^Stroke^I10||||||||||||1", "DG1|2||E871^^I10"))
    assert isinstance(ev, UpdateEvent)
    assert (ev.department, ev.attending_provider_id, ev.patient_class) == ("Neurology", "D12", "inpatient")
    assert ev.diagnosis_codes == ["I63.9", "E87.1"]
    assert ev.patient.model_dump() == {"age": 76, "sex": "U", "race": None, "payer": None}  # PID-8 U: unknown
    bare = _map(_msg("A08", "PID|1||M1001^^^F01^MR", seg("PV1", {3: "NEURO", 7: "D12", 19: "V5001"})))
    assert (bare.diagnosis_codes, bare.patient, bare.patient_class) == ([], None, None)


@pytest.mark.parametrize("trigger, kind, at", [
    ("A11", "admission", datetime(2025, 3, 1, 8, 15, tzinfo=timezone.utc)),
    ("A12", "transfer", None),
    ("A13", "discharge", datetime(2025, 3, 2, 9, 0, tzinfo=timezone.utc)),
])
def test_cancellations_name_what_they_cancel(trigger, kind, at):
    ev = _map(_msg(trigger, PID, seg("PV1", {3: "CARD", 7: "D77", 19: "V5001", 44: "20250301081500",
                                             45: "20250302090000"})))
    assert isinstance(ev, CancellationEvent)
    assert (ev.cancelled_event_type, ev.cancelled_occurred_at, ev.encounter_id) == (kind, at, "V5001")
    assert ev.occurred_at == EVENT_AT


def test_a40_merge_with_and_without_a_visit():
    ev = _map(_msg("A40", "PID|1||M1001^^^F01^MR", "MRG|X1^^^F01^PI~D777^^^F01^MR"))
    assert isinstance(ev, MergeEvent)
    assert (ev.patient_id, ev.prior_patient_id, ev.encounter_id, ev.department) == ("M1001", "D777", None, None)
    with pytest.raises(Unmappable, match="MRG-1 prior patient identifier missing"):
        _map(_msg("A40", "PID|1||M1001^^^F01^MR"))


@pytest.mark.parametrize("text, reason", [
    (_msg("A04", PID, seg("PV1", {3: "ED", 7: "D9", 19: "V9"})), "PV1-2 patient class missing"),
    (_msg("A04", PID, seg("PV1", {2: "Z", 3: "ED", 7: "D9", 19: "V9"})), "PV1-2 patient class code not mapped"),
    (_msg("A08", PID, seg("PV1", {3: "NEURO", 7: "D12"})), "PV1-19 visit number missing"),
    (_msg("A08", PID, seg("PV1", {3: "NEURO", 7: "D12", 19: "V1", 20: "ZZ"})), "payer not mapped"),
    (_msg("A13", PID, seg("PV1", {3: "ICU", 7: "D12", 19: "V1"})), "point of care not in the department table"),
    (_msg("A07", PID, seg("PV1", {2: "I", 3: "CARD", 7: "D9", 19: "V9"})), "class_change value_error"),
])
def test_unmappable_v11_messages(text, reason):
    with pytest.raises(Unmappable) as info:
        _map(text)
    assert reason in info.value.reason
    assert "M1001" not in info.value.reason and "19480615" not in info.value.reason


@pytest.fixture(scope="module")
def feed() -> list[Hl7Message]:
    sim = Simulation(SimConfig(seed=4, start=date(2025, 1, 1), days=45, beds=64))
    return list(hl7_messages(sim))


def test_the_simulated_feed_maps_completely(feed):
    """Every message of ``wardstream simulate --format hl7`` (A01-A03, A08, A11-A13, A40) maps,
    and a cancellation / merge names what the simulator says it cancels / merges."""
    by_id = {m.event["event_id"]: m.event for m in feed if m.event is not None}
    seen = Counter()
    for m in feed:
        ev = _map(m.text)
        seen[m.trigger] += 1
        assert ev.hl7_trigger == m.trigger and ev.event_id == event_id_for(ev.facility_id, m.control_id)
        if isinstance(ev, CancellationEvent):
            target = by_id[m.target]
            assert (ev.cancelled_event_type, ev.encounter_id) == (target["event_type"], target["encounter_id"])
            if ev.cancelled_event_type == "admission":
                assert ev.cancelled_occurred_at == datetime.fromisoformat(target["occurred_at"].replace("Z", "+00:00"))
        elif isinstance(ev, MergeEvent):
            assert ev.prior_patient_id == m.target and ev.patient_id == m.key
        elif isinstance(ev, UpdateEvent):
            assert ev.diagnosis_codes and ev.patient.age is not None
    assert {"A01", "A02", "A03", "A08", "A11", "A12", "A13"} <= set(seen)
