"""Per-patient state and its transitions: validation, history, open encounter, pending labels.

The state is a plain dataclass that round-trips through JSON-able dicts (``to_dict`` /
``from_dict``) so the Faust ``patients`` table can store it. Every transition is a pure function
of (state, event): it returns a new state and never reads a clock, so a replay of the same
per-patient event sequence gives the same states, contexts and labels.

Readmission rule (DESIGN.md, as CMS counts it): a discharge is an *index* discharge unless the
patient expired. It is readmitted when the same patient has a non-elective admission in
``(discharged_at, discharged_at + 30 days]``; that label is known at the admission. Otherwise the
label is *false*, known at ``due_at = discharged_at + 30 days``, and emitted once event time (the
partition watermark) has moved strictly past ``due_at``: an admission at exactly ``due_at`` still
counts as a readmission, so expiry must not fire at ``now == due_at``.

History windows: "12 months" = 365 days and "6 months" = 183 days, counted strictly before the
admission of the encounter being discharged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from contracts.events import (
    AdmissionEvent,
    AnyAdtEvent,
    CancellationEvent,
    ClassChangeEvent,
    DischargeEvent,
    MergeEvent,
    ReadmissionLabel,
    RegistrationEvent,
    TransferEvent,
    UpdateEvent,
)
from stream.domain.charlson import charlson_index

READMISSION_WINDOW = timedelta(days=30)
ADMISSION_HISTORY = timedelta(days=365)
ED_HISTORY = timedelta(days=183)
# An event more than this ahead of its partition's watermark is a clock error, not news: accepting it
# would move event time forward and expire every pending discharge early. Wide enough that a quiet
# partition of a small hospital (no event for days) is not mistaken for one.
FAR_FUTURE = timedelta(days=7)
RECENT_EVENT_IDS = 64
LOS_TOLERANCE_DAYS = 0.05

AdtEvent = AdmissionEvent | DischargeEvent | TransferEvent | RegistrationEvent | UpdateEvent


def nonzero(features: dict[str, float]) -> dict[str, float]:
    """A discharge's features as the state stores them: the zeros left out (they were half a
    patient's stored state, written and read at every event of the patient).

    >>> nonzero({"age": 70.0, "age_80_plus": 0.0, "sex_male": 1.0})
    {'age': 70.0, 'sex_male': 1.0}
    """
    return {name: value for name, value in features.items() if value}


def _ts(value: datetime) -> str:
    return value.isoformat()


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --------------------------------------------------------------------------- records


@dataclass
class OpenEncounter:
    """What the admission told us, kept until the discharge (features need it)."""

    encounter_id: str
    facility_id: str
    department: str
    attending_provider_id: str
    admitted_at: datetime
    admission_type: str
    admit_source: str
    age: int
    sex: str
    race: str
    payer: str
    chronic_conditions: list[str]
    diagnosis_codes: list[str]
    vitals: dict[str, float]
    # what a cancellation needs (stream/README.md "Withdrawals"): the stay's moves in order
    # (``{"at", "kind", "from": [department, attending], "to": [...]}``; kind transfer, update
    # or discharge) and the pending index discharges this admission labelled readmitted
    moves: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    # A01, or A06 for a stay a class change opened (the visit began before it, as ED / outpatient)
    opened_by: str = "A01"

    @property
    def admitted_in(self) -> tuple[str, str]:
        """(department, attending) at the admission: where the first move left from."""
        if self.moves:
            return self.moves[0]["from"][0], self.moves[0]["from"][1]
        return self.department, self.attending_provider_id

    def moved_to(self, at: datetime, kind: str, department: str, provider: str) -> "OpenEncounter":
        """The stay in ``department`` / with ``provider`` from ``at`` on; the move is recorded
        when it changes either, and a transfer always (an A12 cancels the latest transfer)."""
        if kind != "transfer" and (department, provider) == (self.department, self.attending_provider_id):
            return self
        move = {"at": _ts(at), "kind": kind, "from": [self.department, self.attending_provider_id],
                "to": [department, provider]}
        return replace(self, department=department, attending_provider_id=provider,
                       moves=[*self.moves, move])

    @classmethod
    def from_admission(cls, adm: AdmissionEvent) -> "OpenEncounter":
        return cls(
            encounter_id=adm.encounter_id,
            facility_id=adm.facility_id,
            department=adm.department,
            attending_provider_id=adm.attending_provider_id,
            admitted_at=adm.occurred_at,
            admission_type=adm.admission_type,
            admit_source=adm.admit_source,
            age=adm.patient.age,
            sex=adm.patient.sex,
            race=adm.patient.race,
            payer=adm.patient.payer,
            chronic_conditions=list(adm.patient.chronic_conditions),
            diagnosis_codes=list(adm.diagnosis_codes),
            vitals=_known_vitals(adm),
            opened_by=adm.hl7_trigger,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "encounter_id": self.encounter_id,
            "facility_id": self.facility_id,
            "department": self.department,
            "attending_provider_id": self.attending_provider_id,
            "admitted_at": _ts(self.admitted_at),
            "admission_type": self.admission_type,
            "admit_source": self.admit_source,
            "age": self.age,
            "sex": self.sex,
            "race": self.race,
            "payer": self.payer,
            "chronic_conditions": list(self.chronic_conditions),
            "diagnosis_codes": list(self.diagnosis_codes),
            "vitals": dict(self.vitals),
            "moves": [dict(m) for m in self.moves],
            "resolved": [dict(r) for r in self.resolved],
            "opened_by": self.opened_by,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpenEncounter":
        return cls(**{**d, "admitted_at": _dt(d["admitted_at"]),
                      "chronic_conditions": list(d["chronic_conditions"]),
                      "diagnosis_codes": list(d["diagnosis_codes"]),
                      "vitals": {k: float(v) for k, v in d["vitals"].items()},
                      "moves": [dict(m) for m in d.get("moves", ())],
                      "resolved": [dict(r) for r in d.get("resolved", ())]})


def _known_vitals(adm: AdmissionEvent) -> dict[str, float]:
    """The vitals the admission carries (v1.1: any may be null; features read absent as normal)."""
    if adm.vitals is None:
        return {}
    return {k: float(v) for k, v in adm.vitals.model_dump().items() if v is not None}


@dataclass
class PendingDischarge:
    """An index discharge waiting for its label; keeps what scoring and learning need."""

    encounter_id: str
    patient_id: str
    facility_id: str
    department: str
    attending_provider_id: str
    discharged_at: datetime
    # stored without its zeros (most of them are one-hots; ``features.dense`` restores them)
    features: dict[str, float]
    score: float
    lace: int
    threshold: float
    high_risk: bool
    # equity attributes (health.subgroups: sex, race, payer, age band), counted at the label
    subgroups: dict[str, str] = field(default_factory=dict)
    # it came with a merge (A40) from another partition: its label is not learned (what moved
    # depends on when the merge reached the prior's partition; stream/domain/merges.py)
    moved: bool = False

    @property
    def due_at(self) -> datetime:
        return self.discharged_at + READMISSION_WINDOW

    def to_dict(self) -> dict[str, Any]:
        return {
            "encounter_id": self.encounter_id,
            "patient_id": self.patient_id,
            "facility_id": self.facility_id,
            "department": self.department,
            "attending_provider_id": self.attending_provider_id,
            "discharged_at": _ts(self.discharged_at),
            "features": nonzero(self.features),
            "score": self.score,
            "lace": self.lace,
            "threshold": self.threshold,
            "high_risk": self.high_risk,
            "subgroups": dict(self.subgroups),
            **({"moved": True} if self.moved else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PendingDischarge":
        return cls(**{**d, "discharged_at": _dt(d["discharged_at"]),
                      "features": {k: float(v) for k, v in d["features"].items()},
                      "subgroups": dict(d.get("subgroups") or {})})


@dataclass
class DischargeContext:
    """Everything known at a discharge; the input of features and LACE."""

    open: OpenEncounter
    discharge: DischargeEvent
    prior_admissions_12m: int
    ed_visits_6m: int
    charlson: int
    # extensions (history that proxies frailty): readmissions in the 12 months before this
    # admission, and days from the previous discharge to this admission (None: no earlier stay)
    readmissions_12m: int = 0
    days_since_last_discharge: float | None = None


@dataclass
class LabelOutcome:
    pending: PendingDischarge
    readmitted: bool
    readmission_encounter_id: str | None
    known_at: datetime

    def to_label(self) -> ReadmissionLabel:
        return ReadmissionLabel(
            encounter_id=self.pending.encounter_id,
            patient_id=self.pending.patient_id,
            discharged_at=self.pending.discharged_at,
            readmitted=self.readmitted,
            readmission_encounter_id=self.readmission_encounter_id,
            known_at=self.known_at,
        )


@dataclass
class PatientState:
    patient_id: str
    last_event_at: datetime | None = None
    recent_event_ids: list[str] = field(default_factory=list)
    admissions: list[datetime] = field(default_factory=list)
    ed_visits: list[datetime] = field(default_factory=list)
    open: OpenEncounter | None = None
    pending: list[PendingDischarge] = field(default_factory=list)
    # extension: discharge times and readmission (admission) times, 12 months, for history features
    discharges: list[datetime] = field(default_factory=list)
    readmissions: list[datetime] = field(default_factory=list)
    # the last discharge as a cancellation (A13) withdraws it, until the next admission:
    # {"open": the stay at its end, "discharge": the event, "high_risk", "score", "alert",
    # "features"}
    closed: dict[str, Any] | None = None
    # merges (A40, stream/domain/merges.py): the MRN this one was merged into (a retired MRN takes
    # no more events), and the merge event ids whose history this patient took in
    merged_into: str | None = None
    absorbed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "last_event_at": None if self.last_event_at is None else _ts(self.last_event_at),
            "recent_event_ids": list(self.recent_event_ids),
            "admissions": [_ts(t) for t in self.admissions],
            "ed_visits": [_ts(t) for t in self.ed_visits],
            "open": None if self.open is None else self.open.to_dict(),
            "pending": [p.to_dict() for p in self.pending],
            "discharges": [_ts(t) for t in self.discharges],
            "readmissions": [_ts(t) for t in self.readmissions],
            "closed": self.closed,
            **({"merged_into": self.merged_into} if self.merged_into else {}),
            **({"absorbed": list(self.absorbed)} if self.absorbed else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatientState":
        return cls(
            patient_id=d["patient_id"],
            last_event_at=None if d["last_event_at"] is None else _dt(d["last_event_at"]),
            recent_event_ids=list(d["recent_event_ids"]),
            admissions=[_dt(t) for t in d["admissions"]],
            ed_visits=[_dt(t) for t in d["ed_visits"]],
            open=None if d["open"] is None else OpenEncounter.from_dict(d["open"]),
            pending=[PendingDischarge.from_dict(p) for p in d["pending"]],
            discharges=[_dt(t) for t in d.get("discharges", [])],
            readmissions=[_dt(t) for t in d.get("readmissions", [])],
            closed=d.get("closed"),
            merged_into=d.get("merged_into"),
            absorbed=list(d.get("absorbed") or ()),
        )


# --------------------------------------------------------------------------- validation


def check(state: PatientState | None, event: AnyAdtEvent, watermark: datetime | None) -> str | None:
    """Why this (contract-valid) event cannot be applied to the patient, or None if it can.

    Reasons are short and carry no patient data (they go to the DLQ and to logs).
    """
    if state is not None and state.merged_into is not None:
        return "patient merged into another (A40)"
    if isinstance(event, ClassChangeEvent):  # an A06 that contracts.events.applied_as could not apply
        return "class change to inpatient without the admission's type, source, patient and diagnoses"
    if state is not None:
        if str(event.event_id) in state.recent_event_ids:
            return "duplicate event_id"
        if state.last_event_at is not None and event.occurred_at < state.last_event_at:
            return "out of order for patient"
    if watermark is not None and event.occurred_at > watermark + FAR_FUTURE:
        return "far future"
    open_ = None if state is None else state.open
    if isinstance(event, CancellationEvent):
        return cancellation_check(state, event)
    if isinstance(event, AdmissionEvent):
        if open_ is not None:
            return f"{_what(event)} while an encounter is open"
        return None
    if isinstance(event, (RegistrationEvent, MergeEvent)):
        return None  # a visit without a bed, a merge: with or without an inpatient stay open
    if open_ is None:
        return f"{event.event_type} without open admission"
    if event.encounter_id != open_.encounter_id:
        return "encounter_id does not match the open encounter"
    if isinstance(event, DischargeEvent):
        # a stay an A06 opened may have begun earlier, as the ED or outpatient visit it was
        early = (open_.admitted_at - event.admitted_at).total_seconds() / 86400
        if abs(early) > LOS_TOLERANCE_DAYS and not (open_.opened_by == "A06" and early > 0):
            return "admitted_at does not match the open encounter"
        actual = (event.occurred_at - event.admitted_at).total_seconds() / 86400
        if abs(event.length_of_stay_days - actual) > LOS_TOLERANCE_DAYS:
            return "length_of_stay_days inconsistent with admitted_at"
    return None


def cancellation_check(state: PatientState | None, ev: CancellationEvent) -> str | None:
    """Why a cancellation cannot withdraw what it names, or None (stream/domain/withdrawals.py).

    An admission or transfer is cancelled on the open stay; a discharge is cancelled while the
    patient has no stay open and it is the last discharge, before its label is known (a label
    known already, or the patient's next admission, came first: the DLQ keeps the message).
    """
    kind = ev.cancelled_event_type
    open_ = None if state is None else state.open
    if kind == "discharge":
        if open_ is not None:
            return "discharge cancellation while an encounter is open"
        closed = None if state is None else state.closed
        if closed is None or closed["discharge"]["encounter_id"] != ev.encounter_id:
            return "discharge cancellation without a discharge of the encounter"
        index = closed["discharge"]["discharge_disposition"] != "expired"
        if index and not any(p.encounter_id == ev.encounter_id for p in state.pending):
            return "discharge cancellation after its label is known"
        return None
    if open_ is None:
        return f"{_what(ev)} without open admission"
    if ev.encounter_id != open_.encounter_id:
        return "encounter_id does not match the open encounter"
    if kind == "transfer" and not any(m["kind"] == "transfer" for m in open_.moves):
        return "transfer cancellation without a transfer"
    return None


def _what(event: AdmissionEvent | CancellationEvent) -> str:
    """How a reason names the event: an A06 / A07 acts as an admission / its cancellation
    (``contracts.events.applied_as``) but is named as what was sent."""
    if event.hl7_trigger in ("A06", "A07"):
        return f"class change ({event.hl7_trigger})"
    if isinstance(event, CancellationEvent):
        return f"{event.cancelled_event_type} cancellation"
    return "admission"


def is_index(dis: DischargeEvent) -> bool:
    """An index discharge unless the patient expired (DESIGN.md, CMS)."""
    return dis.discharge_disposition != "expired"


# --------------------------------------------------------------------------- transitions


def touched(state: PatientState, event: AdtEvent | CancellationEvent) -> PatientState:
    """The event is recorded on the patient: its id (duplicates) and its time (order)."""
    ids = [*state.recent_event_ids, str(event.event_id)][-RECENT_EVENT_IDS:]
    last = event.occurred_at if state.last_event_at is None else max(state.last_event_at, event.occurred_at)
    return replace(state, recent_event_ids=ids, last_event_at=last)


def _sorted_outcomes(outcomes: list[LabelOutcome]) -> list[LabelOutcome]:
    return sorted(outcomes, key=lambda o: (o.pending.discharged_at, o.pending.encounter_id))


def apply_admission(
    state: PatientState | None, adm: AdmissionEvent
) -> tuple[PatientState, list[LabelOutcome]]:
    """Open the encounter and resolve pending discharges this admission decides.

    A non-elective admission in ``(discharged_at, due_at]`` makes a pending discharge readmitted.
    Pending discharges already past due at the admission time get their false label here too, so
    the result is right even when the caller has not expired them first.
    """
    if state is None:
        state = PatientState(patient_id=adm.patient_id)
    state, outcomes = expire(state, adm.occurred_at)
    keep: list[PendingDischarge] = []
    for p in state.pending:
        if adm.admission_type != "elective" and p.discharged_at < adm.occurred_at <= p.due_at:
            outcomes.append(LabelOutcome(p, True, adm.encounter_id, adm.occurred_at))
        else:
            keep.append(p)
    t = adm.occurred_at
    readmissions = [r for r in state.readmissions if r > t - ADMISSION_HISTORY]
    if len(keep) < len(state.pending):
        readmissions.append(t)
    admissions = [a for a in state.admissions if a > t - ADMISSION_HISTORY] + [t]
    ed_visits = [e for e in state.ed_visits if e > t - ED_HISTORY]
    if adm.admit_source == "ed":
        ed_visits.append(t)
    resolved = [o.pending.to_dict() for o in outcomes if o.readmitted]
    new = replace(
        touched(state, adm),
        admissions=admissions,
        ed_visits=ed_visits,
        open=replace(OpenEncounter.from_admission(adm), resolved=resolved),
        pending=keep,
        readmissions=readmissions,
        discharges=[x for x in state.discharges if x > t - ADMISSION_HISTORY],
        closed=None,
    )
    return new, _sorted_outcomes(outcomes)


def apply_transfer(state: PatientState, tr: TransferEvent) -> PatientState:
    """Move the open encounter to the new department / attending provider."""
    if state.open is None:
        raise ValueError("transfer without open admission")
    moved = state.open.moved_to(tr.occurred_at, "transfer", tr.department, tr.attending_provider_id)
    return replace(touched(state, tr), open=moved)


def apply_update(state: PatientState, upd: UpdateEvent) -> PatientState:
    """The open encounter as the update (A08) says it now stands.

    Department and attending always replace (a move, like a transfer); diagnoses replace when
    the update carries any; each demographic the update carries replaces. What it does not
    carry stays: an empty list or a null means "not sent", not "removed".
    """
    if state.open is None:
        raise ValueError("update without open admission")
    o, p = state.open, upd.patient
    moved = replace(
        o.moved_to(upd.occurred_at, "update", upd.department, upd.attending_provider_id),
        diagnosis_codes=list(upd.diagnosis_codes) or o.diagnosis_codes,
        age=o.age if p is None or p.age is None else p.age,
        sex=o.sex if p is None or p.sex is None else p.sex,
        race=o.race if p is None or p.race is None else p.race,
        payer=o.payer if p is None or p.payer is None else p.payer,
    )
    return replace(touched(state, upd), open=moved)


def apply_registration(state: PatientState | None, reg: RegistrationEvent) -> PatientState:
    """A visit without an inpatient bed (A04): the patient's event record only (its id guards
    against a duplicate, its time orders later events); no stay opens, no history changes."""
    return touched(state or PatientState(patient_id=reg.patient_id), reg)


def apply_discharge(state: PatientState, dis: DischargeEvent) -> tuple[PatientState, DischargeContext]:
    """Close the open encounter; the context counts history strictly before its admission."""
    open_ = state.open
    if open_ is None:
        raise ValueError("discharge without open admission")
    t0 = open_.admitted_at
    prior = sum(1 for a in state.admissions if t0 - ADMISSION_HISTORY <= a < t0)
    ed = sum(1 for e in state.ed_visits if t0 - ED_HISTORY <= e < t0)
    readmitted = sum(1 for r in state.readmissions if t0 - ADMISSION_HISTORY <= r < t0)
    last = max((x for x in state.discharges if x <= t0), default=None)
    ctx = DischargeContext(
        open=open_,
        discharge=dis,
        prior_admissions_12m=prior,
        ed_visits_6m=ed,
        charlson=charlson_index([*open_.diagnosis_codes, *dis.diagnosis_codes]),
        readmissions_12m=readmitted,
        days_since_last_discharge=None if last is None else (t0 - last).total_seconds() / 86400,
    )
    return replace(touched(state, dis), open=None, discharges=[*state.discharges, dis.occurred_at]), ctx


def remember_discharge(state: PatientState, stay: OpenEncounter, dis: DischargeEvent, high_risk: bool,
                       score: dict[str, Any], alert: dict[str, Any] | None,
                       features: dict[str, float]) -> PatientState:
    """Keep what a cancellation of this discharge (A13) withdraws: the stay as it ended (moved
    to the discharge's department and attending), the event, its score and alert messages, and
    its features (counted in the model-health histograms)."""
    ended = stay.moved_to(dis.occurred_at, "discharge", dis.department, dis.attending_provider_id)
    return replace(state, closed={"open": ended.to_dict(), "discharge": dis.model_dump(mode="json"),
                                  "high_risk": high_risk, "score": score, "alert": alert,
                                  "features": nonzero(features)})


def add_pending(state: PatientState, pending: PendingDischarge) -> PatientState:
    """Keep an index discharge until its label is known (callers skip ``not is_index``).

    Idempotent by encounter_id: a re-added discharge replaces the earlier copy.
    """
    others = [p for p in state.pending if p.encounter_id != pending.encounter_id]
    return replace(state, pending=[*others, pending])


def expire(state: PatientState, now: datetime) -> tuple[PatientState, list[LabelOutcome]]:
    """False labels for pending discharges whose 30 days have passed (``due_at < now``).

    ``now`` is event time (the partition watermark). ``known_at`` is ``due_at``, not ``now``, so
    the label does not depend on when the watermark happened to move.
    """
    done = [p for p in state.pending if p.due_at < now]
    if not done:
        return state, []
    keep = [p for p in state.pending if not p.due_at < now]
    outcomes = [LabelOutcome(p, False, None, p.due_at) for p in done]
    closed = state.closed
    if closed is not None and any(p.encounter_id == closed["discharge"]["encounter_id"] for p in done):
        closed = labelled(closed)
    return replace(state, pending=keep, closed=closed), _sorted_outcomes(outcomes)


LABELLED_DISCHARGE = ("encounter_id", "occurred_at", "discharge_disposition")


def labelled(closed: dict[str, Any]) -> dict[str, Any]:
    """The last discharge as kept once its label is known: an A13 of it is dead-lettered then
    (:func:`cancellation_check` reads the event's encounter and disposition), and a merge reads
    only the stay and the time. Its score, alert, features and the rest of the event (two
    thirds of a patient's state) were kept for a withdrawal that can no longer come.

    >>> labelled({"open": {"encounter_id": "E1"}, "score": {}, "alert": None, "features": {},
    ...           "high_risk": False, "discharge": {"encounter_id": "E1", "occurred_at": "t",
    ...           "discharge_disposition": "home", "diagnosis_codes": ["I50.9"]}})
    {'open': {'encounter_id': 'E1'}, 'discharge': {'encounter_id': 'E1', 'occurred_at': 't', 'discharge_disposition': 'home'}}
    """
    return {"open": closed["open"], "discharge": {k: closed["discharge"][k] for k in LABELLED_DISCHARGE}}


def next_due(state: PatientState) -> datetime | None:
    """When the earliest pending discharge falls due (for the app's ``due`` index)."""
    return min((p.due_at for p in state.pending), default=None)
