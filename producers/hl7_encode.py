r"""Simulated events -> HL7 v2.5 ADT messages (pure): the inverse of :mod:`producers.mllp.mapping`.

:func:`encode_event` writes an A01 / A02 / A03 that carries every field the mapping reads, so
``map_adt(encode_event(e))`` gives ``e`` back (``tests/test_simulator_hl7.py`` checks it field by
field). What cannot come back, and why:

- ``event_id``: the mapping derives it from MSH-4 + MSH-10 (uuid5, so a re-sent message maps to
  the same event); MSH-10 is the first 20 hex digits of the simulated id (:func:`control_id`),
  so the HL7 path's id is ``event_id_for(facility_id, control_id(event_id))``.
- ``length_of_stay_days``: the simulator rounds it to 2 decimals; the mapping computes it from
  PV1-45 - PV1-44 (6 decimals), which is the exact stay: they differ by < 0.005 days.
- ``satisfaction_score``: no HL7 ADT field carries it; the mapping gives null.
- ``patient.chronic_conditions``: rebuilt from the DG1 codes' ICD-10 categories, sorted (the
  simulator keeps its drawing order: same set), and it also lists a condition whose code is the
  stay's primary diagnosis (a heart-failure admission of a patient the simulator drew without
  heart failure: ~9% of admissions).
- ``patient.age``: PID-7 is the patient's birthday in the year that gives the simulated age on
  the admission day (the simulator does not age patients between stays, so a patient's PID-7
  year can differ by one between stays).

Segments are joined with ``\r`` (HL7's segment terminator); times are UTC with ``+0000``, so the
listener's ``--timezone`` does not change them.

>>> ev = {"schema_version": 1, "event_id": "0f8e2d4c-1b2a-4c3d-8e9f-001122334455",
...       "hl7_trigger": "A02", "occurred_at": "2025-01-02T03:04:05Z", "facility_id": "F01",
...       "patient_id": "P0000001", "encounter_id": "E00000001", "department": "Neurology",
...       "attending_provider_id": "F01-NEU-01", "event_type": "transfer"}
>>> print(encode_event(ev, prior_department="Emergency").replace("\r", "\n"))
MSH|^~\&|WARDSTREAM-SIM|F01|WARDSTREAM|WS|20250102030405+0000||ADT^A02^ADT_A02|0f8e2d4c1b2a4c3d8e9f|P|2.5
EVN|A02|20250102030405+0000||||20250102030405+0000
PID|1||P0000001^^^F01^MR||Johnson^Rowan
PV1|1|I|NEURO^^^F01|||ED^^^F01|F01-NEU-01^Kim^Sage|||NEURO|||||||||E00000001^^^F01^VN
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

SENDING_APP = "WARDSTREAM-SIM"
VERSION = "2.5"

# the inverse of producers.mllp.codes / departments: one HL7 code per contract value
POINT_OF_CARE: dict[str, str] = {
    "Emergency": "ED", "Cardiology": "CARD", "Oncology": "ONC", "Orthopedics": "ORTH",
    "Pediatrics": "PEDS", "Internal Medicine": "MED", "Neurology": "NEURO", "Surgery": "SURG",
}
ADMISSION_TYPE = {"emergency": "E", "urgent": "U", "elective": "C"}  # table 0007
ADMIT_SOURCE = {"ed": "7", "referral": "1", "transfer": "4"}  # table 0023 / UB-04 point of origin
DISPOSITION = {"home": "01", "home_health": "06", "snf": "03", "rehab": "62", "ama": "07",
               "expired": "20"}  # table 0112 / UB-04 discharge status
FINANCIAL_CLASS = {"medicare": "MCR", "medicaid": "MCD", "private": "COM", "uninsured": "SELF"}
RACE = {"white": "2106-3^White^CDCREC", "black": "2054-5^Black or African American^CDCREC",
        "asian": "2028-9^Asian^CDCREC", "other": "2131-1^Other Race^CDCREC",
        "hispanic": "2131-1^Other Race^CDCREC"}  # ethnicity in PID-22
HISPANIC = "2135-2^Hispanic or Latino^CDCREC"
NOT_HISPANIC = "2186-5^Not Hispanic or Latino^CDCREC"
VITALS = (("systolic_bp", "8480-6^Systolic blood pressure^LN", "mm[Hg]"),
          ("diastolic_bp", "8462-4^Diastolic blood pressure^LN", "mm[Hg]"),
          ("heart_rate", "8867-4^Heart rate^LN", "/min"),
          ("glucose_mg_dl", "2345-7^Glucose^LN", "mg/dL"))

# synthetic names, chosen by a hash of the id: HL7 wants a PID-5 / an XCN name, events carry none
_FAMILY = ("Lee", "Garcia", "Smith", "Nguyen", "Brown", "Patel", "Johnson", "Kim", "Lopez", "Miller",
           "Davis", "Wilson", "Clark", "Lewis", "Young", "Walker", "Hall", "Allen", "King", "Wright")
_GIVEN = ("Robin", "Alex", "Sam", "Jordan", "Taylor", "Casey", "Morgan", "Jamie", "Riley", "Avery",
          "Quinn", "Drew", "Kai", "Rowan", "Sage", "Emery", "Reese", "Parker", "Blake", "Logan")


def _pick(options: Sequence[str], key: str, salt: int = 0) -> str:
    return options[(zlib.crc32(key.encode()) + salt) % len(options)]


def name_of(ident: str) -> str:
    """A synthetic ``family^given`` for a patient or provider id (deterministic).

    >>> name_of("P0000001")
    'Johnson^Rowan'
    """
    return f"{_pick(_FAMILY, ident)}^{_pick(_GIVEN, ident, 7)}"


def control_id(event_id: str) -> str:
    """MSH-10 of a simulated event: the first 20 hex digits of its id (MSH-10 is 20 characters
    in v2.5; 80 bits keep them unique).

    >>> control_id("0f8e2d4c-1b2a-4c3d-8e9f-001122334455")
    '0f8e2d4c1b2a4c3d8e9f'
    """
    return event_id.replace("-", "")[:20]


def ts(iso: str) -> str:
    """An HL7 DTM (UTC, ``+0000``) of a contract time ``YYYY-MM-DDTHH:MM:SSZ``.

    >>> ts("2025-01-02T03:04:05Z")
    '20250102030405+0000'
    """
    return f"{iso[0:4]}{iso[5:7]}{iso[8:10]}{iso[11:13]}{iso[14:16]}{iso[17:19]}+0000"


def birth_date(patient_id: str, age: int, on: str) -> str:
    """PID-7: the patient's birthday (fixed by the id) in the year that makes ``age`` on the day
    ``on`` (``YYYY-MM-DD...``).

    >>> birth_date("P0000001", 70, "2025-01-02T03:04:05Z")
    '19541114'
    """
    h = zlib.crc32(patient_id.encode())
    month, day = 1 + h % 12, 1 + (h >> 8) % 28
    year = int(on[0:4]) - age - ((month, day) > (int(on[5:7]), int(on[8:10])))
    return f"{year:04d}{month:02d}{day:02d}"


def segment(name: str, fields: Mapping[int, str]) -> str:
    """``name|f1|f2|...`` up to the highest field number given (absent fields empty).

    >>> segment("PV1", {2: "I", 4: "E"})
    'PV1||I||E'
    """
    return "|".join([name, *(fields.get(i, "") for i in range(1, max(fields) + 1))])


def msh(trigger: str, facility: str, at: str, control: str) -> str:
    structure = {"A02": "ADT_A02", "A03": "ADT_A03", "A06": "ADT_A06", "A07": "ADT_A06", "A11": "ADT_A09",
                 "A12": "ADT_A12", "A40": "ADT_A39"}.get(trigger, "ADT_A01")
    return (f"MSH|^~\\&|{SENDING_APP}|{facility}|WARDSTREAM|WS|{ts(at)}||ADT^{trigger}^{structure}|"
            f"{control}|P|{VERSION}")


def evn(trigger: str, at: str) -> str:
    """EVN-2 recorded and EVN-6 occurred (the mapping's event time of an A02)."""
    return segment("EVN", {1: trigger, 2: ts(at), 6: ts(at)})


def pid(facility: str, patient_id: str, patient: Mapping | None = None, on: str = "") -> str:
    """PID-3 MRN (type MR), PID-5 a synthetic name and, with ``patient`` (the admission's block),
    PID-7 birth date, PID-8 sex, PID-10 race, PID-22 ethnicity."""
    f = {1: "1", 3: f"{patient_id}^^^{facility}^MR", 5: name_of(patient_id)}
    if patient is not None:
        f.update({7: birth_date(patient_id, patient["age"], on), 8: patient["sex"],
                  10: RACE.get(patient["race"], ""),
                  22: HISPANIC if patient["race"] == "hispanic" else NOT_HISPANIC})
    return segment("PID", f)


def location(department: str, facility: str) -> str:
    return f"{POINT_OF_CARE.get(department, department)}^^^{facility}"


def pv1(ev: Mapping, *, prior_department: str | None = None, admission: Mapping | None = None,
        payer: str | None = None, patient_class: str = "I") -> str:
    """PV1 of an event: PV1-2 patient class, PV1-3 location, PV1-6 prior location (A02), PV1-7
    attending, PV1-19 visit number, and what the event type carries: PV1-4 / 14 / 44
    (admission), PV1-20 financial class, PV1-36 / 44 / 45 / 47 (discharge)."""
    fac = ev["facility_id"]
    prov = ev["attending_provider_id"]
    f = {1: "1", 2: patient_class, 3: location(ev["department"], fac), 7: f"{prov}^{name_of(prov)}",
         10: POINT_OF_CARE.get(ev["department"], ""), 19: f"{ev['encounter_id']}^^^{fac}^VN"}
    if prior_department:
        f[6] = location(prior_department, fac)
    if payer:
        f[20] = FINANCIAL_CLASS[payer]
    if admission is not None:
        f.update({4: ADMISSION_TYPE[admission["admission_type"]],
                  14: ADMIT_SOURCE[admission["admit_source"]], 44: ts(admission["occurred_at"])})
    if ev["event_type"] == "discharge":
        f.update({36: DISPOSITION[ev["discharge_disposition"]], 44: ts(ev["admitted_at"]),
                  45: ts(ev["occurred_at"]), 47: repr(float(ev["total_cost"]))})
    return segment("PV1", f)


def dg1(codes: Sequence[str], at: str, kind: str = "A") -> list[str]:
    """DG1 per ICD-10-CM code, in order (DG1-15 priority 1, 2, ...); DG1-6 ``A`` admitting, ``F``
    final, ``W`` working."""
    return [segment("DG1", {1: str(i), 3: f"{code}^^I10", 5: ts(at), 6: kind, 15: str(i)})
            for i, code in enumerate(codes, 1)]


def obx(vitals: Mapping[str, float], at: str) -> list[str]:
    return [segment("OBX", {1: str(i), 2: "NM", 3: loinc, 5: f"{vitals[name]:g}", 6: unit,
                            11: "F", 14: ts(at)})
            for i, (name, loinc, unit) in enumerate(VITALS, 1)]


def pr1(codes: Sequence[str], at: str) -> list[str]:
    return [segment("PR1", {1: str(i), 3: f"{code}^^C4", 5: ts(at)}) for i, code in enumerate(codes, 1)]


def encode_event(ev: Mapping, *, admission: Mapping | None = None,
                 prior_department: str | None = None) -> str:
    """The HL7 message of a simulated A01 / A02 / A03 event (contract v1 dict).

    ``admission``: the encounter's A01 event, so that an A02 / A03 carries the patient's PID-7 /
    8 / 10 / 22 and PV1-4 / 14 / 44 as real feeds do (the mapping does not need them there);
    ``prior_department``: an A02's previous location (PV1-6).
    """
    trigger, fac, at = ev["hl7_trigger"], ev["facility_id"], ev["occurred_at"]
    adm = ev if trigger == "A01" else admission
    patient = adm["patient"] if adm is not None else None
    segments = [msh(trigger, fac, at, control_id(ev["event_id"])), evn(trigger, at),
                pid(fac, ev["patient_id"], patient, adm["occurred_at"] if adm is not None else ""),
                pv1(ev, prior_department=prior_department, admission=adm,
                    payer=ev.get("payer") or (patient["payer"] if patient else None))]
    if trigger == "A01":
        segments += obx(ev["vitals"], at) + dg1(ev["diagnosis_codes"], at, "A")
    elif trigger == "A03":
        segments += dg1(ev["diagnosis_codes"], at, "F") + pr1(ev["procedure_codes"], at)
    return "\r".join(segments)
