"""HL7 v2 A01 / A02 / A03 -> event contract v1, and the MLLP framing and ACKs (pure, no broker)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from producers.mllp.departments import DepartmentTable
from producers.mllp.framing import FrameReader, frame
from producers.mllp.mapping import MapContext, Unmappable, event_id_for, map_adt
from producers.mllp.message import build_ack, decode, parse, read_header
from contracts.events import AdmissionEvent, DischargeEvent, TransferEvent, dump, parse_adt

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
    (_a01(**{"ADT^A01^ADT_A01": "ADT^A08^ADT_A01"}), "unsupported ADT trigger A08"),
    (_a01(**{"ADT^A01^ADT_A01": "ORU^R01"}), "not an ADT message"),
    (_a01(**{"|2.5.1": "|2.2"}), "unsupported HL7 version"),
    (_a01(**{"CARD^301": "XYZ^301"}), "point of care not in the department table"),
    (_a01(**{"|F||2054-5": "|U||2054-5"}), "PID-8"),
    (_a01(**{"|V5001|MC|": "|V5001|ZZ|"}), "payer not mapped"),
    (_a01(**{"OBX|4|NM|2345-7": "OBX|4|NM|9999-9"}), "vitals missing: OBX glucose_mg_dl"),
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


def test_a03_without_charges_is_a_contract_v1_gap():
    text = ("MSH|^~\\&|EHR|F01|WS|WS|20250305120000||ADT^A03|M9|P|2.5\r"
            "PID|1||M1^^^F01^MR\r"
            + seg("PV1", {3: "ED", 7: "D1", 19: "V1", 20: "SP", 36: "20", 44: "20250301081500",
                          45: "20250305113000"}) + "\rDG1|1||R07.9^^I10")
    with pytest.raises(Unmappable, match="PV1-47 total charges missing"):
        _map(text)


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
