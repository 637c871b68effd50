"""Deterministic, contract-valid messages for every topic the sink reads (tests and benchmarks).

Not a simulator (that is ``producers/``): just enough variety to exercise every table, merge
rule and view — transfers, readmissions within 30 and 60 days, expired patients, missing
satisfaction answers, E11.9 diabetes, repeated KPI partial keys (last record wins), DLQ records and a few
contract-invalid ADT messages — built with the ``contracts.events`` models.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
from pydantic import BaseModel

from contracts.events import (
    DEPARTMENTS,
    AdmissionEvent,
    Alert,
    DeadLetter,
    DischargeEvent,
    DischargeScore,
    FacilityRef,
    PatientInfo,
    ProviderRef,
    ReadmissionLabel,
    TopFactor,
    Topics,
    TransferEvent,
    Vitals,
    dump,
)

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
THRESHOLD = 0.3


@dataclass
class FakeData:
    """Messages per topic as (key, model), in production order; ``invalid_adt`` are raw bytes."""

    adt: list[tuple[str, BaseModel]] = field(default_factory=list)
    reference: list[tuple[str, BaseModel]] = field(default_factory=list)
    scores: list[tuple[str, BaseModel]] = field(default_factory=list)
    labels: list[tuple[str, BaseModel]] = field(default_factory=list)
    alerts: list[tuple[str, BaseModel]] = field(default_factory=list)
    kpis: list[tuple[str, bytes]] = field(default_factory=list)  # hospital.kpi-partials records
    dlq: list[tuple[str, BaseModel]] = field(default_factory=list)
    invalid_adt: list[bytes] = field(default_factory=list)

    def by_topic(self, namespace: str = "") -> dict[str, list[tuple[str, BaseModel]]]:
        t = Topics(namespace)
        return {t.reference: self.reference, t.adt_accepted: self.adt, t.discharge_scores: self.scores,
                t.readmission_labels: self.labels, t.alerts: self.alerts, t.kpi_partials: self.kpis,
                t.dlq: self.dlq}


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def generate(patients: int = 60, days: int = 90, seed: int = 7, facility_id: str = "F01") -> FakeData:
    """Build a deterministic data set: ~1.6 encounters per patient over ``days`` days."""
    rng = random.Random(seed)
    data = FakeData()
    departments = list(DEPARTMENTS)
    providers = {d: [f"D{i:02d}{j}" for j in range(2)] for i, d in enumerate(departments)}
    data.reference.append((facility_id, FacilityRef(
        facility_id=facility_id, name="General", beds=300,
        department_beds={d: 20 + 5 * i for i, d in enumerate(departments)})))
    for d, ids in providers.items():
        for p in ids:
            data.reference.append((p, ProviderRef(provider_id=p, facility_id=facility_id, department=d,
                                                  capacity=rng.randint(4, 12))))
    discharges: list[DischargeEvent] = []
    admissions: dict[str, AdmissionEvent] = {}
    horizon = START + timedelta(days=days)
    for n in range(patients):
        pid = f"P{n:05d}"
        age = rng.randint(1, 95)
        chronic = rng.sample(["diabetes", "chf", "copd", "ckd", "cancer"], rng.randint(0, 3))
        diabetic = "diabetes" in chronic and age >= 18
        t = START + timedelta(hours=rng.uniform(0, days * 24 * 0.7))
        for k in range(rng.choice([1, 1, 2, 2, 3])):
            eid = f"E{n:05d}-{k}"
            dept = rng.choice(departments)
            doc = rng.choice(providers[dept])
            codes = (["E11.9"] if diabetic else []) + rng.sample(["I50.9", "J44.1", "N18.3", "C34.90", "S72.001A", "I10"], 2)
            adm = AdmissionEvent(
                event_id=_uuid(rng), hl7_trigger="A01", occurred_at=t, facility_id=facility_id,
                patient_id=pid, encounter_id=eid, department=dept, attending_provider_id=doc,
                admission_type=rng.choice(["emergency", "urgent", "elective"]),
                admit_source=rng.choice(["ed", "referral", "transfer"]),
                patient=PatientInfo(age=age, sex=rng.choice(["F", "M"]), race=rng.choice(["white", "black", "asian"]),
                                    payer=rng.choice(["medicare", "medicaid", "private", "uninsured"]),
                                    chronic_conditions=chronic),
                diagnosis_codes=codes,
                vitals=Vitals(systolic_bp=rng.uniform(90, 180), diastolic_bp=rng.uniform(50, 110),
                              heart_rate=rng.uniform(50, 130), glucose_mg_dl=rng.uniform(70, 300)))
            data.adt.append((pid, adm))
            admissions[eid] = adm
            los = round(rng.uniform(0.3, 12), 2)
            end = t + timedelta(days=los)
            if rng.random() < 0.4:  # a transfer mid-stay
                dept2 = rng.choice(departments)
                doc2 = rng.choice(providers[dept2])
                data.adt.append((pid, TransferEvent(
                    event_id=_uuid(rng), hl7_trigger="A02", occurred_at=t + timedelta(days=los / 2),
                    facility_id=facility_id, patient_id=pid, encounter_id=eid, department=dept2,
                    attending_provider_id=doc2)))
                dept, doc = dept2, doc2
            if end >= horizon:  # still in a bed at the end of the data
                break
            dis = DischargeEvent(
                event_id=_uuid(rng), hl7_trigger="A03", occurred_at=end, facility_id=facility_id,
                patient_id=pid, encounter_id=eid, department=dept, attending_provider_id=doc,
                admitted_at=t, length_of_stay_days=los,
                discharge_disposition=rng.choice(["home"] * 6 + ["home_health", "snf", "rehab", "ama", "expired"]),
                diagnosis_codes=codes, procedure_codes=rng.sample(["99223", "33533", "27447", "93000"], rng.randint(0, 2)),
                total_cost=round(rng.uniform(2000, 40000), 2), payer=adm.patient.payer,
                satisfaction_score=None if rng.random() < 0.3 else round(rng.uniform(40, 100), 1))
            data.adt.append((pid, dis))
            discharges.append(dis)
            if dis.discharge_disposition == "expired":
                break
            t = end + timedelta(days=rng.choice([rng.uniform(1, 29), rng.uniform(31, 55), rng.uniform(61, 120)]))
            if t >= horizon:
                break
    # Outputs: a score per discharge, an alert when high risk, labels known at the data horizon.
    by_patient: dict[str, list[AdmissionEvent]] = {}
    for a in admissions.values():
        by_patient.setdefault(a.patient_id, []).append(a)
    for d in discharges:
        score = round(rng.random() ** 1.5, 4)
        lace = rng.randint(0, 19)
        high = score >= THRESHOLD
        sc = DischargeScore(
            encounter_id=d.encounter_id, patient_id=d.patient_id, facility_id=d.facility_id,
            department=d.department, attending_provider_id=d.attending_provider_id,
            discharged_at=d.occurred_at, score=score, lace=lace, threshold=THRESHOLD, high_risk=high,
            model_version="p0-v1",
            top_factors=[TopFactor(feature=f, contribution=round(rng.uniform(0, 1), 3), text=f"{f} raises risk")
                         for f in ("lace", "age", "prior_admissions")])
        data.scores.append((d.encounter_id, sc))
        if high:
            data.alerts.append((d.encounter_id, Alert(
                alert_id=f"alert-{d.encounter_id}", encounter_id=d.encounter_id, patient_id=d.patient_id,
                facility_id=d.facility_id, department=d.department,
                attending_provider_id=d.attending_provider_id, discharged_at=d.occurred_at, score=score,
                lace=lace, threshold=THRESHOLD, reasons=["High LACE index", "Prior admissions"])))
        if d.discharge_disposition == "expired":
            continue
        nxt = [a for a in by_patient[d.patient_id]
               if d.occurred_at < a.occurred_at <= d.occurred_at + timedelta(days=30)
               and a.admission_type != "elective"]
        if nxt:
            data.labels.append((d.encounter_id, ReadmissionLabel(
                encounter_id=d.encounter_id, patient_id=d.patient_id, discharged_at=d.occurred_at,
                readmitted=True, readmission_encounter_id=nxt[0].encounter_id, known_at=nxt[0].occurred_at)))
        elif d.occurred_at + timedelta(days=30) <= horizon:
            data.labels.append((d.encounter_id, ReadmissionLabel(
                encounter_id=d.encounter_id, patient_id=d.patient_id, discharged_at=d.occurred_at,
                readmitted=False, readmission_encounter_id=None, known_at=d.occurred_at + timedelta(days=30))))
    # KPI day partials (stream/kpi_tally.py): each key twice, the second record must win.
    for day in range(3):
        ws = (START + timedelta(days=day)).date().isoformat()
        for dep in departments[:3]:
            for v in (1, 2 + day):
                record = {"dimension": "department", "dimension_id": dep, "facility_id": facility_id,
                          "day": ws, "partition": 0, "micro": {"discharges": v * 1_000_000}, "patients": []}
                data.kpis.append((f"department|{dep}|{ws}|0", orjson.dumps(record)))
    for i in range(3):
        data.dlq.append((f"P{i}", DeadLetter(
            reason="contract: missing field", source_topic="hospital.adt", source_partition=0,
            source_offset=1000 + i, raw='{"bad": true}', failed_at=START + timedelta(hours=i))))
    data.invalid_adt = [b"not json", b'{"schema_version": 1, "event_type": "admission"}', b"\xff\xfe"]
    return data


def produce(data: FakeData, namespace: str, producer=None, include_invalid: bool = True) -> int:
    """Send every message of ``data`` to the topics the sink reads in ``namespace`` (the ADT events
    and the invalid ones to ``hospital.adt-accepted``, as if the stream had applied them, without
    the ``source_offset`` header); returns the count sent."""
    from wardstream.kafka_io import ensure_topics, make_producer

    t = Topics(namespace)
    ensure_topics([t.adt_accepted, t.reference, t.kpi_partials, *t.outputs()])
    own = producer is None
    producer = producer or make_producer()
    sent = 0
    for topic, messages in data.by_topic(namespace).items():
        for key, model in messages:
            producer.send(topic, key=key.encode(), value=model if isinstance(model, bytes) else dump(model))
            sent += 1
    if include_invalid:
        for i, raw in enumerate(data.invalid_adt):
            producer.send(t.adt_accepted, key=f"X{i}".encode(), value=raw)
            sent += 1
    producer.flush()
    if own:
        producer.close()
    return sent
