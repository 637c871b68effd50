r"""HL7 v2 ADT -> event contract v1.1 (``contracts.events``), pure.

Triggers and the event each becomes (anything else: :class:`Unmappable`, AR + DLQ):
A01 admission, A02 transfer, A03 discharge, A04 registration, A06 / A07 class_change, A08
update, A11 / A12 / A13 cancellation (of an admission / transfer / discharge), A40 merge.

Each contract field and its HL7 source (first non-empty wins):

=========================  =====================================================================
``event_id``               uuid5 of sending facility (MSH-4) + control id (MSH-10): a re-sent
                           message maps to the same event (:func:`event_id_for`)
``hl7_trigger``            MSH-9.2
``occurred_at``            A01, A04: PV1-44 admit time; A03: PV1-45 discharge time; then (and for
                           every other trigger) EVN-6 event occurred, EVN-2 recorded, MSH-7
``facility_id``            MSH-4.1 sending facility
``patient_id``             PID-3.1 of the repetition whose type (PID-3.5) is ``MR``, else the first
``encounter_id``           PV1-19.1 visit number (A40: optional)
``department``             PV1-3.1 point of care through the department table (departments.py;
                           A40: optional, null when absent or not in the table)
``attending_provider_id``  PV1-7.1 (A40: optional)
``admission_type``         PV1-4 (table 0007)               (codes.py has every table)
``admit_source``           PV1-14 (table 0023)
``patient.age``            PID-7 birth date, at occurred_at
``patient.sex``            PID-8 (table 0001: ``F``, ``M``, ``O`` for O / A / N / X, ``U``; an
                           admission without PID-8: ``U``; A04 / A08: null when not sent or
                           not in the table)
``patient.race``           PID-10.1 (CDC codes), ``hispanic`` when PID-22 says so, else ``unknown``
``payer``                  PV1-20.1 financial class, else IN1-15 plan type
``chronic_conditions``     the DG1 codes in a chronic condition's ICD-10 category
``diagnosis_codes``        DG1-3.1 (ICD-10-CM systems only), by DG1-15 priority then order
``vitals``                 OBX-5 of OBX-3 LOINC 8480-6, 8462-4, 8867-4, 2345-7 (or 2339-0, 41653-7);
                           v1.1: the ones sent, null when none
``admitted_at``            PV1-44
``length_of_stay_days``    PV1-45 - PV1-44
``discharge_disposition``  PV1-36 (table 0112, UB-04 codes)
``procedure_codes``        PR1-3.1 (CPT systems only)
``total_cost``             PV1-47 total charges (charges, not cost: the only ADT source); v1.1:
                           null when not sent
``satisfaction_score``     none in HL7 ADT: null
``patient_class``          PV1-2 (table 0004). A04: required; A06: ``inpatient``; A07: PV1-2, else
                           ``outpatient``; A08: optional
``cancelled_event_type``   the trigger: A11 admission, A12 transfer, A13 discharge
``cancelled_occurred_at``  A11: PV1-44; A13: PV1-45; A12: null (none in the message)
``prior_patient_id``       MRG-1.1 of the repetition typed ``MR``, else the first
=========================  =====================================================================

Per trigger: A01 requires its admission fields; A03 its discharge fields; A04 requires PV1-2
and carries PV1-4 / PV1-14, the demographics (``patient``: age, sex, race, payer, each null
when not sent) and DG1 when sent; A06 carries the A01 fields when the message has them (null
otherwise); A08 the visit as it stands: PV1-3 / PV1-7, DG1 (empty when none sent), the
demographics; A11-A13 the visit (PV1-19, PV1-3 / PV1-7 after the cancellation); A40 MRG-1.

Times without a UTC offset are in the sender's zone (``tz``, default UTC). A code that is sent
but not in a table, and a field a trigger requires that is missing, make the message
:class:`Unmappable`.

>>> from producers.mllp.message import parse, read_header, decode
>>> raw = ("MSH|^~\\&|EHR|F01|WS|WS|20250101121000||ADT^A02^ADT_A02|C9|P|2.5\r"
...        "EVN|A02|20250101121000\rPID|1||M7^^^F01^MR\r"
...        "PV1|1|I|NEURO^2^B||||D4^Ng^A||||||||||||V77")
>>> ev = map_adt(parse(raw), read_header(raw), MapContext())
>>> ev.event_type, ev.patient_id, ev.encounter_id, ev.department, ev.occurred_at.isoformat()
('transfer', 'M7', 'V77', 'Neurology', '2025-01-01T12:10:00+00:00')
>>> ev.event_id == event_id_for("F01", "C9")
True
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field as dc_field
from datetime import datetime, timezone, tzinfo
from typing import Any, Callable, TypeVar

import hl7
import orjson
from pydantic import ValidationError

from producers.mllp import codes
from producers.mllp.departments import DepartmentTable
from producers.mllp.message import (
    ERR_REQUIRED_MISSING,
    ERR_TABLE_VALUE,
    ERR_UNSUPPORTED_EVENT,
    ERR_UNSUPPORTED_TYPE,
    ERR_UNSUPPORTED_VERSION,
    Header,
    field,
    version_supported,
)
from contracts.events import CANCELLED_BY, AnyAdtEvent, parse_adt

EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://wardstream/hl7v2/msh-4+msh-10")
TRIGGERS = {"A01": "admission", "A02": "transfer", "A03": "discharge", "A04": "registration",
            "A06": "class_change", "A07": "class_change", "A08": "update", "A11": "cancellation",
            "A12": "cancellation", "A13": "cancellation", "A40": "merge"}
_TRIGGER_SHAPE = re.compile(r"^[A-Z][0-9A-Z]{2}$")
T = TypeVar("T")



class Unmappable(ValueError):
    """The message can never become a valid contract v1.1 event (AR + DLQ, never retried).

    ``reason`` names HL7 fields and rules, never values (it goes to the DLQ and the logs);
    ``error`` is the HL7 table 0357 code for the ACK's ERR segment.
    """

    def __init__(self, reason: str, error: tuple[str, str] = ERR_REQUIRED_MISSING) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


@dataclass(frozen=True)
class MapContext:
    """What the mapping needs besides the message: the department table and the sender's zone."""

    departments: DepartmentTable = dc_field(default_factory=DepartmentTable.default)
    tz: tzinfo = timezone.utc


def event_id_for(sending_facility: str, control_id: str) -> uuid.UUID:
    """The event id of a message: the same sender + MSH-10 always gives the same id.

    >>> str(event_id_for("F01", "C1")) == str(event_id_for("F01", "C1")) != str(event_id_for("F02", "C1"))
    True
    """
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{sending_facility}|{control_id}")


def check_routable(h: Header) -> None:
    """Raise :class:`Unmappable` unless ``h`` is an ADT trigger of :data:`TRIGGERS` of a
    supported version."""
    if h.message_type != "ADT":
        raise Unmappable("not an ADT message (MSH-9.1)", ERR_UNSUPPORTED_TYPE)
    if h.trigger not in TRIGGERS:
        shown = h.trigger if _TRIGGER_SHAPE.match(h.trigger) else "?"
        raise Unmappable(f"unsupported ADT trigger {shown} (A01-A04, A06-A08, A11-A13, A40 only)",
                         ERR_UNSUPPORTED_EVENT)
    if not version_supported(h.version):
        raise Unmappable("unsupported HL7 version (MSH-12; 2.3 to 2.8)", ERR_UNSUPPORTED_VERSION)
    if not h.control_id.strip():
        raise Unmappable("MSH-10 message control id missing")
    if not h.sending_facility.strip():
        raise Unmappable("MSH-4 sending facility missing")


def map_adt(msg: hl7.Message, h: Header, ctx: MapContext) -> AnyAdtEvent:
    """The contract v1.1 event of an ADT message (:data:`TRIGGERS`), validated by
    ``contracts.events.parse_adt``; raises :class:`Unmappable` with the reason."""
    check_routable(h)
    trigger = h.trigger
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(event_id_for(h.sending_facility, h.control_id)),
        "event_type": TRIGGERS[trigger],
        "hl7_trigger": trigger,
        "facility_id": h.sending_facility,
        "patient_id": _required(_mrn(msg), "PID-3 patient identifier"),
    }
    event.update(_visit(msg, ctx, required=trigger != "A40"))
    occurred = _BODIES[trigger](msg, ctx, event)
    event["occurred_at"] = _iso(occurred)
    try:
        return parse_adt(orjson.dumps(event))
    except ValidationError as exc:
        raise Unmappable("contract v1.1: " + _contract_errors(exc), ERR_TABLE_VALUE) from None
    except ValueError as exc:  # a model validator (e.g. discharge before admission)
        raise Unmappable(f"contract v1.1: {exc}", ERR_TABLE_VALUE) from None


def _visit(msg: hl7.Message, ctx: MapContext, required: bool) -> dict[str, str | None]:
    """PV1-19 visit number, PV1-3 department and PV1-7 attending: required on every trigger but
    A40, whose PV1 is optional (a merge concerns the patient)."""
    if required:
        return {"encounter_id": _required(field(msg, "PV1.F19.R1.C1"), "PV1-19 visit number"),
                "department": _department(msg, ctx),
                "attending_provider_id": _required(field(msg, "PV1.F7.R1.C1"), "PV1-7 attending doctor")}
    poc = field(msg, "PV1.F3.R1.C1").strip()
    return {"encounter_id": field(msg, "PV1.F19.R1.C1").strip() or None,
            "department": ctx.departments.lookup(poc) if poc else None,
            "attending_provider_id": field(msg, "PV1.F7.R1.C1").strip() or None}


# --------------------------------------------------------------------------- bodies
# Each adds its trigger's fields to the event and returns the event time.

_EVENT_TIME = ("EVN.F6", "EVN.F2", "MSH.F7")


def _admission(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    occurred = _time(msg, ctx, "PV1.F44", *_EVENT_TIME)
    dx = _diagnoses(msg)
    event.update(
        admission_type=_coded(msg, "PV1.F4.R1.C1", codes.ADMISSION_TYPE, "PV1-4 admission type"),
        admit_source=_coded(msg, "PV1.F14.R1.C1", codes.ADMIT_SOURCE, "PV1-14 admit source"),
        patient=_patient(msg, occurred, dx),
        diagnosis_codes=_required_list(dx, "DG1-3 ICD-10-CM diagnosis"),
        vitals=_vitals(msg),
    )
    return occurred


def _discharge(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    occurred = _time(msg, ctx, "PV1.F45", *_EVENT_TIME)
    admitted = _required_time(msg, ctx, "PV1.F44", "PV1-44 admit date/time")
    event.update(
        admitted_at=_iso(admitted),
        length_of_stay_days=round((occurred - admitted).total_seconds() / 86400, 6),
        discharge_disposition=_coded(msg, "PV1.F36.R1.C1", codes.DISPOSITION,
                                     "PV1-36 discharge disposition"),
        diagnosis_codes=_required_list(_diagnoses(msg), "DG1-3 ICD-10-CM diagnosis"),
        procedure_codes=_procedures(msg),
        total_cost=_charges(msg),
        payer=_payer(msg),
        satisfaction_score=None,
    )
    return occurred


def _transfer(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    return _time(msg, ctx, *_EVENT_TIME)


def _registration(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    occurred = _time(msg, ctx, "PV1.F44", *_EVENT_TIME)
    event.update(
        patient_class=_coded(msg, "PV1.F2.R1.C1", codes.PATIENT_CLASS, "PV1-2 patient class"),
        admission_type=_optional_coded(msg, "PV1.F4.R1.C1", codes.ADMISSION_TYPE, "PV1-4 admission type"),
        admit_source=_optional_coded(msg, "PV1.F14.R1.C1", codes.ADMIT_SOURCE, "PV1-14 admit source"),
        patient=_demographics(msg, occurred),
        diagnosis_codes=_diagnoses(msg),
    )
    return occurred


def _class_change(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    """A06: to inpatient, with the admission's fields the message has (null when one is
    missing); A07: PV1-2, the new class (``outpatient`` when not sent)."""
    occurred = _time(msg, ctx, *_EVENT_TIME)
    if event["hl7_trigger"] == "A07":
        event["patient_class"] = _optional_coded(
            msg, "PV1.F2.R1.C1", codes.PATIENT_CLASS, "PV1-2 patient class") or "outpatient"
        return occurred
    dx = _diagnoses(msg)
    event.update(
        patient_class="inpatient",
        admission_type=_optional_coded(msg, "PV1.F4.R1.C1", codes.ADMISSION_TYPE, "PV1-4 admission type"),
        admit_source=_optional_coded(msg, "PV1.F14.R1.C1", codes.ADMIT_SOURCE, "PV1-14 admit source"),
        patient=_optional(lambda: _patient(msg, occurred, dx)),
        diagnosis_codes=dx,
        vitals=_vitals(msg),
    )
    return occurred


def _update(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    occurred = _time(msg, ctx, *_EVENT_TIME)
    event.update(
        patient_class=_optional_coded(msg, "PV1.F2.R1.C1", codes.PATIENT_CLASS, "PV1-2 patient class"),
        diagnosis_codes=_diagnoses(msg),
        patient=_demographics(msg, occurred),
    )
    return occurred


def _cancellation(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    """The cancelled event is the encounter's latest of its kind (contracts.events); its time
    when the message has it: PV1-44 for a cancelled admission, PV1-45 for a discharge."""
    kind = CANCELLED_BY[event["hl7_trigger"]]
    when = {"admission": "PV1.F44", "discharge": "PV1.F45"}.get(kind)
    at = _parse_ts(field(msg, f"{when}.R1.C1"), ctx, _NAMES[when]) if when else None
    event.update(cancelled_event_type=kind, cancelled_occurred_at=_iso(at) if at else None)
    return _time(msg, ctx, *_EVENT_TIME)


def _merge(msg: hl7.Message, ctx: MapContext, event: dict[str, Any]) -> datetime:
    event["prior_patient_id"] = _required(_mrn(msg, "MRG.F1"), "MRG-1 prior patient identifier")
    return _time(msg, ctx, *_EVENT_TIME)


_BODIES = {"A01": _admission, "A02": _transfer, "A03": _discharge, "A04": _registration,
           "A06": _class_change, "A07": _class_change, "A08": _update, "A11": _cancellation,
           "A12": _cancellation, "A13": _cancellation, "A40": _merge}


# --------------------------------------------------------------------------- fields


def _required(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise Unmappable(f"{what} missing")
    return value


def _required_list(values: list[str], what: str) -> list[str]:
    if not values:
        raise Unmappable(f"{what} missing (contract v1 requires one)")
    return values


def _repetitions(msg: hl7.Message, key: str) -> list[str]:
    """The accessor prefix of each repetition of field ``key`` (``"PID.F3"``) that is present."""
    out = []
    for r in range(1, 50):
        try:
            msg[f"{key}.R{r}"]
        except (KeyError, IndexError):
            break
        out.append(f"{key}.R{r}")
    return out


def _segments(msg: hl7.Message, name: str) -> int:
    try:
        return len(msg.segments(name))
    except KeyError:
        return 0


def _mrn(msg: hl7.Message, key: str = "PID.F3") -> str:
    """The MRN of a CX list (PID-3, MRG-1): the repetition typed ``MR``, else the first."""
    reps = _repetitions(msg, key)
    for rep in reps:
        if field(msg, f"{rep}.C5").strip().upper() == "MR" and field(msg, f"{rep}.C1").strip():
            return field(msg, f"{rep}.C1")
    return field(msg, reps[0] + ".C1") if reps else ""


def _department(msg: hl7.Message, ctx: MapContext) -> str:
    poc = _required(field(msg, "PV1.F3.R1.C1"), "PV1-3 point of care")
    department = ctx.departments.lookup(poc)
    if department is None:
        raise Unmappable("PV1-3 point of care not in the department table (--departments)", ERR_TABLE_VALUE)
    return department


def _coded(msg: hl7.Message, key: str, table: dict[str, str], what: str) -> str:
    value = _required(field(msg, key), what).upper()
    if value not in table:
        raise Unmappable(f"{what} code not mapped", ERR_TABLE_VALUE)
    return table[value]


def _optional_coded(msg: hl7.Message, key: str, table: dict[str, str], what: str) -> str | None:
    """A coded field that may be empty (None); a code sent but not in the table is unmappable."""
    return _coded(msg, key, table, what) if field(msg, key).strip() else None


def _optional(read: Callable[[], T]) -> T | None:
    """``read()``, or None when the message lacks what it needs (for the optional blocks of
    v1.1 events: a missing field is "not sent", a wrong one still makes the message unmappable)."""
    try:
        return read()
    except Unmappable as exc:
        if exc.error != ERR_REQUIRED_MISSING:
            raise
        return None


def _parse_ts(value: str, ctx: MapContext, what: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        ts = hl7.parse_datetime(value.strip())
    except ValueError:
        raise Unmappable(f"{what} is not an HL7 date/time", ERR_TABLE_VALUE) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=ctx.tz)
    return ts.astimezone(timezone.utc)


_NAMES = {"PV1.F44": "PV1-44", "PV1.F45": "PV1-45", "EVN.F6": "EVN-6", "EVN.F2": "EVN-2",
          "MSH.F7": "MSH-7"}


def _time(msg: hl7.Message, ctx: MapContext, *keys: str) -> datetime:
    for key in keys:
        ts = _parse_ts(field(msg, f"{key}.R1.C1"), ctx, _NAMES[key])
        if ts is not None:
            return ts
    raise Unmappable("event time missing (" + ", ".join(_NAMES[k] for k in keys) + ")")


def _required_time(msg: hl7.Message, ctx: MapContext, key: str, what: str) -> datetime:
    ts = _parse_ts(field(msg, f"{key}.R1.C1"), ctx, what)
    if ts is None:
        raise Unmappable(f"{what} missing")
    return ts


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _age(msg: hl7.Message, at: datetime) -> int:
    raw = _required(field(msg, "PID.F7.R1.C1"), "PID-7 date of birth")
    try:
        born = hl7.parse_datetime(raw).date()
    except ValueError:
        raise Unmappable("PID-7 date of birth is not an HL7 date", ERR_TABLE_VALUE) from None
    day = at.date()
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _patient(msg: hl7.Message, at: datetime, dx: list[str]) -> dict[str, Any]:
    """An admission's patient block: PID-7 / PID-8 / PID-10 / PID-22, the payer, the DG1's
    chronic conditions."""
    return {"age": _age(msg, at), "sex": _sex(msg), "race": _race(msg), "payer": _payer(msg),
            "chronic_conditions": _chronic(dx)}


def _demographics(msg: hl7.Message, at: datetime) -> dict[str, Any] | None:
    """What of PID-7 / PID-8 / PID-10 / PID-22 and the payer the message has (v1.1
    ``Demographics``): a field not sent is null, and so is a sex code not in table 0001;
    None when there is nothing."""
    out = {"age": _optional(lambda: _age(msg, at)),
           "sex": codes.SEX.get(field(msg, "PID.F8.R1.C1").strip().upper()),
           "race": _race(msg) if field(msg, "PID.F10.R1.C1").strip() or field(msg, "PID.F22.R1.C1").strip() else None,
           "payer": _optional(lambda: _payer(msg))}
    return out if any(v is not None for v in out.values()) else None


def _sex(msg: hl7.Message) -> str:
    """An admission's sex: PID-8 is optional in HL7, so not sent means unknown (U)."""
    return _optional_coded(msg, "PID.F8.R1.C1", codes.SEX, "PID-8 administrative sex") or "U"


def _race(msg: hl7.Message) -> str:
    if field(msg, "PID.F22.R1.C1").strip().upper() in codes.HISPANIC:
        return "hispanic"
    return codes.RACE.get(field(msg, "PID.F10.R1.C1").strip().upper(), "unknown")


def _payer(msg: hl7.Message) -> str:
    for value in (field(msg, "PV1.F20.R1.C1"), field(msg, "IN1.F15.R1.C1")):
        payer = codes.PAYER.get(value.strip().upper())
        if payer:
            return payer
    if not (field(msg, "PV1.F20.R1.C1").strip() or field(msg, "IN1.F15.R1.C1").strip()):
        raise Unmappable("payer missing (PV1-20 financial class, IN1-15 plan type)")
    raise Unmappable("payer not mapped (PV1-20 financial class, IN1-15 plan type)", ERR_TABLE_VALUE)


def _coded_list(msg: hl7.Message, segment: str, fld: int, systems: frozenset[str],
                priority: int | None) -> list[str]:
    found: list[tuple[int, int, str]] = []
    for i in range(1, _segments(msg, segment) + 1):
        code = field(msg, f"{segment}{i}.F{fld}.R1.C1").strip()
        system = field(msg, f"{segment}{i}.F{fld}.R1.C3").strip().upper()
        if not code or system not in systems:
            continue
        rank = field(msg, f"{segment}{i}.F{priority}.R1.C1").strip() if priority else ""
        found.append((int(rank) if rank.isdigit() and int(rank) > 0 else 99, i, code))
    return [code for _, _, code in sorted(found)]


def _diagnoses(msg: hl7.Message) -> list[str]:
    out: list[str] = []
    for code in _coded_list(msg, "DG1", 3, codes.ICD10_SYSTEMS, 15):
        if codes.icd10(code) not in out:
            out.append(codes.icd10(code))
    return out


def _procedures(msg: hl7.Message) -> list[str]:
    return _coded_list(msg, "PR1", 3, codes.CPT_SYSTEMS, None)


def _chronic(diagnoses: list[str]) -> list[str]:
    names = [codes.CHRONIC_BY_CATEGORY.get(code[:3]) for code in diagnoses]
    return sorted({n for n in names if n})


def _number(value: str, what: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise Unmappable(f"{what} is not a number", ERR_TABLE_VALUE) from None


def _vitals(msg: hl7.Message) -> dict[str, float] | None:
    """The vitals among the OBX (first value of each wins); None when there is none (v1.1)."""
    vitals: dict[str, float] = {}
    for i in range(1, _segments(msg, "OBX") + 1):
        name = codes.VITALS_LOINC.get(field(msg, f"OBX{i}.F3.R1.C1").strip())
        if name and name not in vitals and field(msg, f"OBX{i}.F5.R1.C1").strip():
            vitals[name] = _number(field(msg, f"OBX{i}.F5.R1.C1"), "OBX-5 vital sign")
    return vitals or None


def _charges(msg: hl7.Message) -> float | None:
    """PV1-47 total charges; None when not sent (v1.1: a discharge's cost may be null)."""
    value = field(msg, "PV1.F47.R1.C1")
    return _number(value, "PV1-47 total charges") if value.strip() else None


def _contract_errors(exc: ValidationError) -> str:
    """Which contract fields failed and why, without their values (no patient data)."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "event"
        parts.append(f"{loc} {err.get('type', 'invalid')}")
    return "; ".join(parts)
