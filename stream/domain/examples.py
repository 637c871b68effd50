"""Deterministic example ADT events for doctests and unit tests (no clock, no randomness).

Event ids are UUID5 of a readable seed so the same call gives the same event.

>>> adm = admission("P1", "E1", "2025-01-01T10:00:00Z")
>>> adm.event_type, adm.hl7_trigger, adm.admission_type
('admission', 'A01', 'emergency')
>>> discharge("P1", "E1", "2025-01-01T10:00:00Z", "2025-01-04T10:00:00Z").length_of_stay_days
3.0
"""

from __future__ import annotations

import uuid
from datetime import datetime
from contracts.events import AdmissionEvent, DischargeEvent, MergeEvent, TransferEvent

_NS = uuid.UUID("5b0c1f4e-7f4b-4c1e-9a57-1d2c3b4a5f60")


def ts(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def event_id(seed: str) -> uuid.UUID:
    return uuid.uuid5(_NS, seed)


def admission(
    patient_id: str,
    encounter_id: str,
    at: str | datetime,
    *,
    admission_type: str = "emergency",
    admit_source: str = "ed",
    department: str = "Internal Medicine",
    provider: str = "D1",
    facility: str = "F01",
    age: int = 70,
    sex: str = "F",
    race: str = "white",
    payer: str = "medicare",
    chronic_conditions: list[str] | None = None,
    diagnosis_codes: list[str] | None = None,
    vitals: dict[str, float] | None = None,
    seed: str | None = None,
) -> AdmissionEvent:
    return AdmissionEvent(
        event_id=event_id(seed or f"A|{patient_id}|{encounter_id}"),
        hl7_trigger="A01",
        occurred_at=ts(at),
        facility_id=facility,
        patient_id=patient_id,
        encounter_id=encounter_id,
        department=department,
        attending_provider_id=provider,
        admission_type=admission_type,
        admit_source=admit_source,
        patient={"age": age, "sex": sex, "race": race, "payer": payer,
                 "chronic_conditions": chronic_conditions or []},
        diagnosis_codes=diagnosis_codes or ["I50.9"],
        vitals=vitals or {"systolic_bp": 128, "diastolic_bp": 78, "heart_rate": 80, "glucose_mg_dl": 110},
    )


def discharge(
    patient_id: str,
    encounter_id: str,
    admitted_at: str | datetime,
    at: str | datetime,
    *,
    disposition: str = "home",
    department: str = "Internal Medicine",
    provider: str = "D1",
    facility: str = "F01",
    diagnosis_codes: list[str] | None = None,
    procedure_codes: list[str] | None = None,
    total_cost: float | None = 9000.0,
    payer: str = "medicare",
    satisfaction_score: float | None = 80.0,
    length_of_stay_days: float | None = None,
    seed: str | None = None,
) -> DischargeEvent:
    a, d = ts(admitted_at), ts(at)
    los = (d - a).total_seconds() / 86400 if length_of_stay_days is None else length_of_stay_days
    return DischargeEvent(
        event_id=event_id(seed or f"D|{patient_id}|{encounter_id}"),
        hl7_trigger="A03",
        occurred_at=d,
        facility_id=facility,
        patient_id=patient_id,
        encounter_id=encounter_id,
        department=department,
        attending_provider_id=provider,
        admitted_at=a,
        length_of_stay_days=los,
        discharge_disposition=disposition,
        diagnosis_codes=diagnosis_codes or ["I50.9"],
        procedure_codes=procedure_codes or [],
        total_cost=total_cost,
        payer=payer,
        satisfaction_score=satisfaction_score,
    )


def transfer(
    patient_id: str,
    encounter_id: str,
    at: str | datetime,
    *,
    department: str = "Cardiology",
    provider: str = "D2",
    facility: str = "F01",
    seed: str | None = None,
) -> TransferEvent:
    return TransferEvent(
        event_id=event_id(seed or f"T|{patient_id}|{encounter_id}|{ts(at).isoformat()}"),
        hl7_trigger="A02",
        occurred_at=ts(at),
        facility_id=facility,
        patient_id=patient_id,
        encounter_id=encounter_id,
        department=department,
        attending_provider_id=provider,
    )


def merge(patient_id: str, prior_patient_id: str, at: str | datetime, *, facility: str = "F01",
          seed: str | None = None) -> MergeEvent:
    """An A40: ``prior_patient_id``'s history belongs to ``patient_id`` from ``at`` on."""
    return MergeEvent(
        event_id=event_id(seed or f"M|{patient_id}|{prior_patient_id}"),
        hl7_trigger="A40",
        occurred_at=ts(at),
        facility_id=facility,
        patient_id=patient_id,
        prior_patient_id=prior_patient_id,
    )
