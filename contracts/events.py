"""The topic contracts of wardstream: topic names and typed event / output models.

This is the only place that defines a topic name or an event field (DESIGN.md, contract v1,
and its additive v1.1 for HL7 v2 feeds). Producers, the Faust app, the sinks and the tests import
from here. Field names are fixed: add fields, never rename. Every message carries
``schema_version`` 1 (v1.1 adds event types and nullable fields; a v1 event is a valid v1.1 event).

Event contract v1.1 (``event_type``: ``hl7_trigger``; the README's "HL7 v2 over MLLP" and
``producers/mllp/mapping.py`` give every field's HL7 source):

================  ===========  ==========================================================
registration      A04          an ED / outpatient visit: no inpatient bed
class_change      A06, A07     the encounter's new ``patient_class`` (A06: to inpatient);
                               applied as an admission / a cancelled admission (applied_as)
update            A08          the open encounter as it now stands (department, attending,
                               diagnoses, demographics); null / empty: not sent, unchanged
cancellation      A11-A13      cancels the encounter's latest ``cancelled_event_type`` event
merge             A40          ``prior_patient_id``'s history belongs to ``patient_id``
================  ===========  ==========================================================

Nullable in v1.1 (an ADT feed may not carry them): ``admission.vitals`` (and each vital),
``discharge.total_cost`` (``satisfaction_score`` was nullable in v1).

>>> ev = parse_adt(b'{"schema_version":1,"event_id":"6c0f7c0e-3a56-4a8e-9d1f-0d6f2b1e8a11",'
...   b'"event_type":"transfer","hl7_trigger":"A02","occurred_at":"2025-01-01T10:00:00Z",'
...   b'"facility_id":"F01","patient_id":"P1","encounter_id":"E1","department":"Surgery",'
...   b'"attending_provider_id":"D1"}')
>>> ev.event_type, ev.occurred_at.isoformat()
('transfer', '2025-01-01T10:00:00+00:00')
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal, Union
from uuid import UUID

import orjson

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    field_serializer,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = 1

# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Topics:
    """Topic names, optionally under a namespace prefix (replays into a fresh namespace)."""

    namespace: str = ""

    def _t(self, name: str) -> str:
        return f"{self.namespace}{name}"

    @property
    def adt(self) -> str:
        return self._t("hospital.adt")

    @property
    def discharge_scores(self) -> str:
        return self._t("hospital.discharge-scores")

    @property
    def readmission_labels(self) -> str:
        return self._t("hospital.readmission-labels")

    @property
    def alerts(self) -> str:
        return self._t("hospital.alerts")

    @property
    def kpis(self) -> str:
        return self._t("hospital.kpis")

    @property
    def dlq(self) -> str:
        return self._t("hospital.dlq")

    @property
    def reference(self) -> str:
        """Extension of DESIGN.md: compacted reference data (providers' capacity, beds)."""
        return self._t("hospital.reference")

    @property
    def kpi_partials(self) -> str:
        """Internal, compacted: per ADT partition, the absolute KPI inputs of a (dimension, day)
        (replace, not add; stream/kpi_tally.py). The KPI combiner and the sink read it."""
        return self._t("hospital.kpi-partials")

    @property
    def adt_accepted(self) -> str:
        """The ``hospital.adt`` events the stream applied (the DLQ has the others), as sent, on
        the same partition, in the order applied: what the sink stores as ADT facts."""
        return self._t("hospital.adt-accepted")

    @property
    def model_health(self) -> str:
        """Model-health checks (calibration, equity, drift): DESIGN.md "Changes since v1"."""
        return self._t("hospital.model-health")

    @property
    def health_partials(self) -> str:
        """Internal: per ADT partition, absolute (facility, day) health aggregates (replace, not add)."""
        return self._t("hospital.health-partials")

    @property
    def adt_merges(self) -> str:
        """Internal: the two hops of a patient merge (A40) between ``hospital.adt`` partitions,
        keyed by patient_id like ``hospital.adt`` (stream/README.md, "Merges")."""
        return self._t("hospital.adt-merges")

    def outputs(self) -> list[str]:
        return [self.discharge_scores, self.readmission_labels, self.alerts, self.kpis, self.dlq,
                self.model_health]

    def all(self) -> list[str]:
        return [self.adt, self.reference, self.kpi_partials, self.health_partials,
                self.adt_accepted, self.adt_merges, *self.outputs()]


# --------------------------------------------------------------------------- enums

EventType = Literal["admission", "discharge", "transfer", "registration", "class_change", "update",
                    "cancellation", "merge"]
Hl7Trigger = Literal["A01", "A03", "A02", "A04", "A06", "A07", "A08", "A11", "A12", "A13", "A40"]
PatientClass = Literal["inpatient", "outpatient", "emergency", "preadmit", "recurring", "obstetrics"]
CancelledType = Literal["admission", "transfer", "discharge"]
AdmissionType = Literal["emergency", "urgent", "elective"]
AdmitSource = Literal["ed", "referral", "transfer"]
Payer = Literal["medicare", "medicaid", "private", "uninsured"]
# v1: F / M. v1.1 (HL7 feeds, PID-8 table 0001): O other (also A ambiguous, N not applicable, X),
# U unknown (also PID-8 not sent on an admission)
Sex = Literal["F", "M", "O", "U"]
Disposition = Literal["home", "home_health", "snf", "rehab", "ama", "expired"]
Dimension = Literal["facility", "department", "provider"]
Window = Literal["1d", "7d", "30d"]
AlertPolicy = Literal["budget", "lace_cold_start"]
HealthCheck = Literal["psi_score", "psi_feature", "error_drift", "equity_recall", "equity_oe"]
HealthLevel = Literal["ok", "watch", "act"]

TRIGGER_OF: dict[str, str] = {"admission": "A01", "discharge": "A03", "transfer": "A02"}  # v1
# every event type's possible triggers (v1.1); a cancellation's trigger names what it cancels
TRIGGERS_OF: dict[str, tuple[str, ...]] = {
    **{kind: (trigger,) for kind, trigger in TRIGGER_OF.items()},
    "registration": ("A04",), "class_change": ("A06", "A07"), "update": ("A08",),
    "cancellation": ("A11", "A12", "A13"), "merge": ("A40",),
}
CANCELLED_BY: dict[str, str] = {"A11": "admission", "A12": "transfer", "A13": "discharge"}

DEPARTMENTS: tuple[str, ...] = (
    "Emergency",
    "Cardiology",
    "Oncology",
    "Orthopedics",
    "Pediatrics",
    "Internal Medicine",
    "Neurology",
    "Surgery",
)

KPI_NAMES: tuple[str, ...] = (
    "readmission_rate",
    "avg_length_of_stay",
    "cost_per_patient",
    "high_risk_pct",
    "provider_utilization",
    "outcome_efficiency",
    "discharges",
    "admissions",
    "census",
)

NonNegFloat = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    """Strict-ish base: unknown fields are rejected on input, datetimes must carry a zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_serializer("*", when_used="json", check_fields=False)
    def _ser(self, value: object) -> object:
        if isinstance(value, datetime):
            return format_ts(value)
        return value


def format_ts(value: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` suffix and no sub-second noise beyond what is set."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- ADT events


class PatientInfo(_Model):
    age: int = Field(ge=0, le=120)
    sex: Sex
    race: str
    payer: Payer
    chronic_conditions: list[str]


class Demographics(_Model):
    """v1.1: the demographics an update (A08) carries as they now stand; null: not sent."""

    age: int | None = Field(default=None, ge=0, le=120)
    sex: Sex | None = None
    race: str | None = None
    payer: Payer | None = None


class Vitals(_Model):
    # v1.1: each may be null (a feed sends the vitals it has); v1 required all four
    systolic_bp: float | None = Field(default=None, gt=0, lt=400)
    diastolic_bp: float | None = Field(default=None, gt=0, lt=300)
    heart_rate: float | None = Field(default=None, gt=0, lt=400)
    glucose_mg_dl: float | None = Field(default=None, gt=0, lt=3000)


class _EventBase(_Model):
    """What every ADT event carries; ``hl7_trigger`` must be one of its type's (TRIGGERS_OF)."""

    schema_version: Literal[1] = 1
    event_id: UUID
    hl7_trigger: Hl7Trigger
    occurred_at: AwareDatetime
    facility_id: str = Field(min_length=1)
    patient_id: str = Field(min_length=1)

    @model_validator(mode="after")
    def _trigger_matches(self) -> "_EventBase":
        expected = TRIGGERS_OF[self.event_type]  # type: ignore[attr-defined]
        if self.hl7_trigger not in expected:
            raise ValueError(f"hl7_trigger {self.hl7_trigger} does not match {' / '.join(expected)}")
        return self


class _AdtBase(_EventBase):
    encounter_id: str = Field(min_length=1)
    department: str = Field(min_length=1)
    attending_provider_id: str = Field(min_length=1)


class AdmissionEvent(_AdtBase):
    event_type: Literal["admission"] = "admission"
    admission_type: AdmissionType
    admit_source: AdmitSource
    patient: PatientInfo
    diagnosis_codes: list[str] = Field(min_length=1)
    vitals: Vitals | None = None  # v1.1: null when the feed sends none


class DischargeEvent(_AdtBase):
    event_type: Literal["discharge"] = "discharge"
    admitted_at: AwareDatetime
    length_of_stay_days: NonNegFloat
    discharge_disposition: Disposition
    diagnosis_codes: list[str] = Field(min_length=1)
    procedure_codes: list[str]
    total_cost: NonNegFloat | None = None  # v1.1: null when the feed sends no charges
    payer: Payer
    satisfaction_score: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _admitted_before(self) -> "DischargeEvent":
        if self.admitted_at > self.occurred_at:
            raise ValueError("admitted_at is after the discharge time")
        return self


class TransferEvent(_AdtBase):
    event_type: Literal["transfer"] = "transfer"


class _ClassedVisit(_AdtBase):
    """A visit's patient class and, when the feed sends them, how it came (A04, A06)."""

    patient_class: PatientClass
    admission_type: AdmissionType | None = None
    admit_source: AdmitSource | None = None
    diagnosis_codes: list[str] = Field(default_factory=list)


class RegistrationEvent(_ClassedVisit):
    """v1.1, A04: a visit without an inpatient bed (ED, outpatient); ``encounter_id`` is its visit."""

    event_type: Literal["registration"] = "registration"
    patient: Demographics | None = None


class ClassChangeEvent(_ClassedVisit):
    """v1.1, A06 (to inpatient) / A07 (to a class without a bed): the encounter's new class.

    An A06 also carries what an admission does when the feed sends it (null otherwise): with
    them, the stream can open the inpatient stay the change starts.
    """

    event_type: Literal["class_change"] = "class_change"
    patient: PatientInfo | None = None
    vitals: Vitals | None = None

    @model_validator(mode="after")
    def _class_matches(self) -> "ClassChangeEvent":
        if (self.hl7_trigger == "A06") != (self.patient_class == "inpatient"):
            raise ValueError("A06 changes to inpatient, A07 to another class")
        return self


class UpdateEvent(_AdtBase):
    """v1.1, A08: the encounter as it now stands. ``department`` / ``attending_provider_id`` are
    always sent; ``diagnosis_codes`` empty and ``patient`` / ``patient_class`` null mean the
    message did not carry them (unchanged), not that they were removed."""

    event_type: Literal["update"] = "update"
    patient_class: PatientClass | None = None
    diagnosis_codes: list[str] = Field(default_factory=list)
    patient: Demographics | None = None


class CancellationEvent(_AdtBase):
    """v1.1, A11 / A12 / A13: cancels the latest not yet cancelled ``cancelled_event_type`` event
    of ``encounter_id`` (HL7 names no event id: the visit and the trigger identify it; an
    encounter has one admission and one discharge, and A12 cancels its latest transfer).

    ``department`` / ``attending_provider_id`` are where the patient is after the cancellation
    (an A12's restored location). ``cancelled_occurred_at``: when the cancelled event happened,
    when the message says (A11: PV1-44, A13: PV1-45), else null.
    """

    event_type: Literal["cancellation"] = "cancellation"
    cancelled_event_type: CancelledType
    cancelled_occurred_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _cancelled_matches(self) -> "CancellationEvent":
        if CANCELLED_BY[self.hl7_trigger] != self.cancelled_event_type:
            raise ValueError(f"{self.hl7_trigger} cancels a {CANCELLED_BY[self.hl7_trigger]}")
        return self


class MergeEvent(_EventBase):
    """v1.1, A40: ``prior_patient_id`` (MRG-1) is merged into ``patient_id`` (the survivor).

    A merge concerns the patient, not a visit: encounter, department and attending are null
    unless the message has a PV1.
    """

    event_type: Literal["merge"] = "merge"
    encounter_id: str | None = None
    department: str | None = None
    attending_provider_id: str | None = None
    prior_patient_id: str = Field(min_length=1)

    @model_validator(mode="after")
    def _two_patients(self) -> "MergeEvent":
        if self.prior_patient_id == self.patient_id:
            raise ValueError("prior_patient_id is the surviving patient_id")
        return self


AdtEvent = Annotated[
    Union[AdmissionEvent, DischargeEvent, TransferEvent, RegistrationEvent, ClassChangeEvent,
          UpdateEvent, CancellationEvent, MergeEvent],
    Field(discriminator="event_type"),
]
AnyAdtEvent = (AdmissionEvent | DischargeEvent | TransferEvent | RegistrationEvent
               | ClassChangeEvent | UpdateEvent | CancellationEvent | MergeEvent)
V1_EVENT_TYPES: frozenset[str] = frozenset(TRIGGER_OF)
_ADT = TypeAdapter(AdtEvent)


def parse_adt(raw: bytes | str) -> AnyAdtEvent:
    """Validate one ADT message (contract v1.1); raises ``pydantic.ValidationError`` (or
    ValueError) when bad."""
    return _ADT.validate_json(raw)


ADMISSION_FIELDS = ("admission_type", "admit_source", "patient")  # and at least one diagnosis


def applied_as(ev: AnyAdtEvent) -> AnyAdtEvent:
    """A class change as the event it acts as; every other event as it is.

    An **A06** (to inpatient) that carries what an admission does (admission type, admit source,
    patient, a diagnosis) starts an inpatient stay at the change: it acts as an admission. An
    **A07** (from inpatient to a class without a bed, e.g. observation) means the visit was not
    an inpatient stay, as a billing reclassification counts it: it acts as a cancellation of the
    stay's admission (A11). An A06 without those fields is returned as it is (it cannot open a
    stay). The result keeps the event's id, time and ``hl7_trigger`` (so it is not itself a valid
    message: the stream and the sink apply it, nobody sends it).

    >>> a07 = parse_adt(b'{"event_id":"6c0f7c0e-3a56-4a8e-9d1f-0d6f2b1e8a11","event_type":"class_change",'
    ...   b'"hl7_trigger":"A07","occurred_at":"2025-01-02T10:00:00Z","facility_id":"F01","patient_id":"P1",'
    ...   b'"encounter_id":"E1","department":"Surgery","attending_provider_id":"D1",'
    ...   b'"patient_class":"outpatient"}')
    >>> as_ = applied_as(a07)
    >>> as_.event_type, as_.cancelled_event_type, as_.hl7_trigger
    ('cancellation', 'admission', 'A07')
    """
    if not isinstance(ev, ClassChangeEvent):
        return ev
    common = ev.model_dump(include={"schema_version", "event_id", "hl7_trigger", "occurred_at", "facility_id",
                                    "patient_id", "encounter_id", "department", "attending_provider_id"})
    if ev.hl7_trigger == "A07":
        return CancellationEvent.model_construct(**common, cancelled_event_type="admission",
                                                 cancelled_occurred_at=None)
    if any(getattr(ev, f) is None for f in ADMISSION_FIELDS) or not ev.diagnosis_codes:
        return ev
    return AdmissionEvent.model_construct(**common, admission_type=ev.admission_type, admit_source=ev.admit_source,
                                          patient=ev.patient, diagnosis_codes=list(ev.diagnosis_codes),
                                          vitals=ev.vitals)


def dump(model: BaseModel) -> bytes:
    """Serialize any contract model to compact UTF-8 JSON."""
    return model.model_dump_json().encode()


# --------------------------------------------------------------------------- outputs


class _Withdrawable(_Model):
    """An output a cancellation can withdraw (DESIGN.md "Withdrawals"): the message sent again
    under its key with ``withdrawn`` true and ``withdrawn_at`` the cancellation's event time;
    the last message for a key is its state. Both fields are left out of the JSON while unset,
    so an output nothing withdrew is byte for byte what it was before withdrawals existed."""

    withdrawn: bool = False
    withdrawn_at: AwareDatetime | None = None

    @model_serializer(mode="wrap")
    def _unset_left_out(self, handler: SerializerFunctionWrapHandler) -> dict:
        d = handler(self)
        if not self.withdrawn:
            d.pop("withdrawn", None)
            d.pop("withdrawn_at", None)
        return d

    def withdrawn_copy(self, at: datetime):
        """This message as its withdrawal (same key, same fields)."""
        return self.model_copy(update={"withdrawn": True, "withdrawn_at": at})


class TopFactor(_Model):
    feature: str
    contribution: float
    text: str


class DischargeScore(_Withdrawable):
    schema_version: Literal[1] = 1
    encounter_id: str
    patient_id: str
    facility_id: str
    department: str
    attending_provider_id: str
    discharged_at: AwareDatetime
    score: float = Field(ge=0, le=1)
    lace: int = Field(ge=0, le=19)
    threshold: float = Field(ge=0, le=1)
    high_risk: bool
    model_version: str
    top_factors: list[TopFactor]
    # alert budget (DESIGN.md "Changes since v1"): the facility's share k and the rule that set
    # the threshold; None only on messages written before the budget existed
    alert_share: float | None = Field(default=None, ge=0, le=1)
    policy: AlertPolicy | None = None


class ReadmissionLabel(_Withdrawable):
    schema_version: Literal[1] = 1
    encounter_id: str
    patient_id: str
    discharged_at: AwareDatetime
    readmitted: bool
    readmission_encounter_id: str | None
    known_at: AwareDatetime


class Alert(_Withdrawable):
    schema_version: Literal[1] = 1
    alert_id: str
    encounter_id: str
    patient_id: str
    facility_id: str
    department: str
    attending_provider_id: str
    discharged_at: AwareDatetime
    score: float
    lace: int
    threshold: float
    reasons: list[str]
    alert_share: float | None = Field(default=None, ge=0, le=1)
    policy: AlertPolicy | None = None


class KpiValue(_Model):
    schema_version: Literal[1] = 1
    kpi: str
    dimension: Dimension
    dimension_id: str
    facility_id: str
    window: Window
    window_start: AwareDatetime
    window_end: AwareDatetime
    value: float | None
    numerator: float
    denominator: float


def kpi_value_json(kpi: str, dimension: str, dimension_id: str, facility_id: str, window: str,
                   window_start: str, window_end: str, value: float | None, numerator: float,
                   denominator: float) -> bytes:
    """``dump(KpiValue(...))`` for values the KPI combiner computed itself, without the model.

    A flush sends hundreds of thousands of these, and building and serializing a model each was
    a quarter of its time. Same bytes (the tests compare both on every message of a run);
    ``window_start``/``window_end`` come already formatted (``format_ts``).

    >>> from datetime import datetime, timezone
    >>> t0, t1 = datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 1, 2, tzinfo=timezone.utc)
    >>> fast = kpi_value_json("census", "facility", "F01", "F01", "1d", format_ts(t0), format_ts(t1),
    ...                       12.5, 12.5, 1.0)
    >>> fast == dump(KpiValue(kpi="census", dimension="facility", dimension_id="F01", facility_id="F01",
    ...                       window="1d", window_start=t0, window_end=t1, value=12.5, numerator=12.5,
    ...                       denominator=1.0))
    True
    """
    return orjson.dumps({
        "schema_version": 1, "kpi": kpi, "dimension": dimension, "dimension_id": dimension_id,
        "facility_id": facility_id, "window": window, "window_start": window_start,
        "window_end": window_end, "value": value, "numerator": numerator, "denominator": denominator,
    })


class ModelHealth(_Model):
    """One evaluated model-health check on ``hospital.model-health`` (keyed by ``check_id``).

    Every evaluation is sent, warning or not (``level`` ``ok``), so dashboards can draw the
    value against its thresholds; the last message per ``check_id`` is its state (a later
    ``ok`` withdraws a warning that late data disproved). All times are event time.
    """

    schema_version: Literal[1] = 1
    check_id: str  # f"{check}|{facility_id}|{subject}|{window_end:%Y-%m-%d}": derived, never random
    check: HealthCheck
    facility_id: str
    subject: str  # what was measured: "score", a feature name, "sex=F", "partition 2"
    level: HealthLevel
    value: float  # PSI, recall difference (subgroup - facility), O/E, or the error-mean change
    watch_at: float | None  # threshold of a "watch" (None when the check has one level only)
    act_at: float  # threshold of an "act" warning
    baseline: float | None  # what value is compared with (facility recall, earlier error mean)
    n: int  # observations behind value (the smaller window for PSI)
    window_start: AwareDatetime
    window_end: AwareDatetime
    message: str  # plain words: what moved and by how much; no patient data


class DeadLetter(_Model):
    schema_version: Literal[1] = 1
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    raw: str
    raw_encoding: Literal["utf-8", "base64"] = "utf-8"
    failed_at: AwareDatetime


def raw_text(raw: bytes | None) -> tuple[str, Literal["utf-8", "base64"]]:
    """The original bytes as text, or base64 when they are not UTF-8 (DLQ contract)."""
    if raw is None:
        return "", "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


# --------------------------------------------------------------------------- reference data


class ProviderRef(_Model):
    """Extension: one provider's reference record (capacity = patients they can carry)."""

    schema_version: Literal[1] = 1
    kind: Literal["provider"] = "provider"
    provider_id: str
    facility_id: str
    department: str
    capacity: int = Field(gt=0)


class FacilityRef(_Model):
    """Extension: one facility's reference record (beds per department)."""

    schema_version: Literal[1] = 1
    kind: Literal["facility"] = "facility"
    facility_id: str
    name: str
    beds: int = Field(gt=0)
    department_beds: dict[str, int]


ReferenceRecord = Annotated[Union[ProviderRef, FacilityRef], Field(discriminator="kind")]
_REF = TypeAdapter(ReferenceRecord)


def parse_reference(raw: bytes | str) -> ProviderRef | FacilityRef:
    return _REF.validate_json(raw)


class TruthRecord(_Model):
    """Simulator truth file line (``--truth-out``); never part of the events."""

    encounter_id: str
    p_readmit: float = Field(ge=0, le=1)
    readmitted: bool
