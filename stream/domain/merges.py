"""Patient merges (A40): one MRN's history becomes another's, across partitions.

A merge names the surviving MRN (``patient_id``, the message's key, so it arrives on the
survivor's ``hospital.adt`` partition) and the prior one (``prior_patient_id``), whose state
lives on the partition its own key gives, maybe on another worker. So it takes three steps, each
applied by the ADT flow of the partition that owns the patient (``stream.adt_flow``), the records
between them travelling ``hospital.adt-merges`` (keyed by patient_id, partitioned like
``hospital.adt``):

1. the A40 on the survivor's partition (:func:`start`): recorded on the survivor like any
   event; a *retire* record keyed by the prior goes out. Until the merge lands, the
   partition's later messages, every patient's, are set aside unapplied and read back from
   Kafka when it lands (``AdtFlow.read_backs``);
2. :func:`retire` on the prior's partition: the prior's state is packed for the survivor and
   the prior is retired: its later events are dead-lettered ("patient merged into another
   (A40)"), and its pending discharges leave with it, so that partition labels none of them;
   an *absorb* record keyed by the survivor goes out, empty when there is nothing to move;
3. :func:`absorb` on the survivor's partition: the survivor takes the prior's history in and
   what of it is past due expires; then the messages set aside are applied, in order.

What a merge changes is what one patient's history decides: the 12-month admission, ED and
readmission counts of later discharges, and the 30-day labels of discharges still pending on
either side, which an unplanned stay of the other side can now make readmissions. The stays a
merge can find for that are the ones each side's state keeps with their admission type: the
open stay and the last discharged one. A stay open on both sides cannot be one: the survivor's
stays open, the prior's is dropped from the state (its events so far stay counted).

Where the hops land among the prior partition's messages depends on timing (two hops through
Kafka, usually well under a second). The survivor's partition waits for them, so everything it
sends (scores, alerts, labels, KPIs, dead letters) is what it would be if the hops took no time,
and a replay gives the same. The labels decided by the absorb (and those of the discharges it
moved) are sent and counted but never learned, so each partition's model stays a function of
its own ``hospital.adt`` order. On the prior's side, the retire record takes effect where it
lands: in a backlog (a replay, a worker that was down) the prior's partition may have applied
the prior's events of after the merge (they then move with it) or labelled a discharge of the
prior that fell due (the merge then moves no pending discharge), or, lagging behind, may
dead-letter the prior's events of before the merge. A live feed, whose messages come further
apart than the hops take, sees none of that, nor does a merge of an MRN with no history (a
duplicate registration).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from contracts.events import MergeEvent
from stream.domain.patient import (
    LabelOutcome,
    OpenEncounter,
    PatientState,
    PendingDischarge,
    touched,
)


def start(state: PatientState | None, merge: MergeEvent) -> PatientState:
    """Step 1 on the survivor: the A40 recorded like any event (the caller sends the retire
    record, and sets the partition's later messages aside until the absorb lands)."""
    return touched(state or PatientState(patient_id=merge.patient_id), merge)


def retire(state: PatientState | None, prior_id: str, survivor_id: str
           ) -> tuple[PatientState, dict[str, Any] | None]:
    """The prior's state as it leaves (None: it has none, or left with an earlier merge) and the
    retired state that stays. The caller sends the absorb record either way: the survivor waits
    for it.

    >>> retired, moved = retire(None, "D1", "M1")
    >>> (retired.merged_into, moved)
    ('M1', None)
    >>> retire(retired, "D1", "M2")[1] is None
    True
    """
    if state is not None and state.merged_into is not None:
        return state, None
    moved = None if state is None else state.to_dict()
    kept = PatientState(patient_id=prior_id, merged_into=survivor_id)
    if state is not None:
        kept = replace(kept, last_event_at=state.last_event_at, recent_event_ids=list(state.recent_event_ids))
    return kept, moved


def _stays(state: PatientState) -> list[tuple[datetime, str, str]]:
    """(admitted_at, admission_type, encounter_id) of the stays the state keeps with their type:
    the open stay and the last discharged one."""
    stays = [] if state.open is None else [_stay(state.open)]
    if state.closed is not None:
        stays.append(_stay(OpenEncounter.from_dict(state.closed["open"])))
    return stays


def _stay(o: OpenEncounter) -> tuple[datetime, str, str]:
    return o.admitted_at, o.admission_type, o.encounter_id


def _resolve(pending: list[PendingDischarge], stays: list[tuple[datetime, str, str]]
             ) -> tuple[list[PendingDischarge], list[LabelOutcome]]:
    """The readmission rule (stream.domain.patient) over another side's stays: the earliest
    unplanned admission in ``(discharged_at, due_at]`` makes a pending discharge readmitted."""
    keep, outcomes = [], []
    for p in pending:
        hits = sorted(s for s in stays if s[1] != "elective" and p.discharged_at < s[0] <= p.due_at)
        if hits:
            outcomes.append(LabelOutcome(p, True, hits[0][2], hits[0][0]))
        else:
            keep.append(p)
    return keep, outcomes


def absorb(state: PatientState | None, survivor_id: str, moved: dict[str, Any] | None, merge_id: str
           ) -> tuple[PatientState, list[LabelOutcome], list[PendingDischarge]]:
    """The survivor with the prior's history taken in, the labels that decides, and the moved
    discharges still pending (the caller files them under their due day, then expires what
    is past due).

    Idempotent by ``merge_id``: an absorb record delivered twice changes nothing the second time.
    """
    state = state or PatientState(patient_id=survivor_id)
    if merge_id in state.absorbed:
        return state, [], []
    state = replace(state, absorbed=[*state.absorbed, merge_id])
    if moved is None:
        return state, [], []
    prior = PatientState.from_dict(moved)
    open_ = state.open or prior.open
    closed = max((c for c in (state.closed, prior.closed) if c is not None),
                 key=lambda c: c["discharge"]["occurred_at"], default=None)
    merged = replace(state, open=open_, closed=closed)
    # each side's pending discharges against the other side's stays (those the merged state keeps)
    kept_prior = replace(prior, open=prior.open if open_ is prior.open else None)
    own, outcomes = _resolve(state.pending, _stays(kept_prior))
    theirs, more = _resolve([replace(p, moved=True) for p in prior.pending], _stays(state))
    outcomes += more
    readmitted = {o.known_at for o in outcomes}
    if merged.open is not None:  # an A11 of the open stay undoes the readmissions it decided
        decided = [o.pending.to_dict() for o in outcomes if o.readmission_encounter_id == merged.open.encounter_id]
        merged = replace(merged, open=replace(merged.open, resolved=[*merged.open.resolved, *decided]))
    merged = replace(
        merged,
        admissions=sorted({*state.admissions, *prior.admissions}),
        ed_visits=sorted({*state.ed_visits, *prior.ed_visits}),
        discharges=sorted({*state.discharges, *prior.discharges}),
        readmissions=sorted({*state.readmissions, *prior.readmissions, *readmitted}),
        pending=own + theirs,
        last_event_at=max((t for t in (state.last_event_at, prior.last_event_at) if t is not None), default=None),
    )
    return merged, outcomes, theirs
