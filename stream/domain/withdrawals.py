"""What a cancellation (A11 / A12 / A13) withdraws: pure transitions of the patient state.

HL7 names no event id: a cancellation names the encounter and the kind of event, and cancels
the encounter's latest one not cancelled yet (``contracts.events.CancellationEvent``). The
patient state remembers what that takes (``patient.OpenEncounter.moves`` / ``resolved``,
``patient.PatientState.closed``), so each withdrawal is a function of (state, event):

* **A13, discharge**: the stay opens again as it ended (the discharge's department and
  attending); the discharge's KPI contributions are reverted; its score and alert are sent again
  marked withdrawn; its pending label is dropped (no label, the model never learns from it);
  the alert budget and the model-health histograms forget it.
* **A11, admission**: the stay is withdrawn as if it never happened: the admission's and every
  move's KPI contributions are reverted on their days; the readmissions it caused are undone
  (their true labels reverted: false at once when their 30 days have passed, else withdrawn
  and pending again).
* **A12, transfer**: the stay's time in the transfer's destination, until its next move in that
  dimension, is attributed back to where it was before (census moves back on the transfer's
  day, and again at that next move, if any); the stay is back there when no move followed.

The caller (``stream.adt_flow``) sends the messages, reverts and adds the contributions, emits
the labels and files the discharges pending again in its due index.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from contracts.events import Alert, CancellationEvent, DischargeEvent, DischargeScore, ReadmissionLabel
from stream.domain import kpis
from stream.domain.patient import (
    LabelOutcome,
    OpenEncounter,
    PatientState,
    PendingDischarge,
    touched,
)

Withdrawn = DischargeScore | Alert | ReadmissionLabel


@dataclass
class Withdrawal:
    """What the caller does for a cancellation besides saving the new state."""

    revert: list[kpis.Contribution] = field(default_factory=list)  # taken back out
    add: list[kpis.Contribution] = field(default_factory=list)  # added (a re-attributed stay)
    withdrawn: list[Withdrawn] = field(default_factory=list)  # sent again, marked withdrawn
    labels: list[LabelOutcome] = field(default_factory=list)  # known now (learn, emit, count)
    pending: list[PendingDischarge] = field(default_factory=list)  # waiting for a label again
    unlabelled: list[LabelOutcome] = field(default_factory=list)  # counted labels taken back
    # a withdrawn discharge as remembered (PatientState.closed): out of the alert budget's
    # window and the model-health histograms
    discharge: dict[str, Any] | None = None


def cancel(state: PatientState, ev: CancellationEvent, now: datetime) -> tuple[PatientState, Withdrawal]:
    """Apply a cancellation that ``patient.check`` accepted; ``now`` is event time (the
    partition watermark), which decides whether an undone readmission's 30 days have passed."""
    if ev.cancelled_event_type == "discharge":
        return cancel_discharge(state, ev)
    if ev.cancelled_event_type == "admission":
        return cancel_admission(state, ev, now)
    return cancel_transfer(state, ev)


def _without(times: list[datetime], t: datetime) -> list[datetime]:
    """``times`` without the last occurrence of ``t``."""
    out = list(times)
    if t in out:
        del out[len(out) - 1 - out[::-1].index(t)]
    return out


def cancel_discharge(state: PatientState, ev: CancellationEvent) -> tuple[PatientState, Withdrawal]:
    closed = state.closed
    assert closed is not None  # patient.cancellation_check
    dis = DischargeEvent.model_validate(closed["discharge"])
    withdrawn: list[Withdrawn] = [DischargeScore.model_validate(closed["score"]).withdrawn_copy(ev.occurred_at)]
    if closed["alert"] is not None:
        withdrawn.append(Alert.model_validate(closed["alert"]).withdrawn_copy(ev.occurred_at))
    new = replace(
        touched(state, ev), open=OpenEncounter.from_dict(closed["open"]), closed=None,
        pending=[p for p in state.pending if p.encounter_id != dis.encounter_id],
        discharges=_without(state.discharges, dis.occurred_at),
    )
    return new, Withdrawal(revert=kpis.for_discharge(dis, bool(closed["high_risk"])), withdrawn=withdrawn,
                           discharge=closed)


def _stay_contributions(o: OpenEncounter) -> list[kpis.Contribution]:
    """Every KPI contribution an open stay made: its admission and its moves."""
    out = kpis.admitted(o.facility_id, *o.admitted_in, o.admitted_at)
    for m in o.moves:
        out += kpis.moved(o.facility_id, datetime.fromisoformat(m["at"]), m["from"], m["to"])
    return out


def cancel_admission(state: PatientState, ev: CancellationEvent,
                     now: datetime) -> tuple[PatientState, Withdrawal]:
    o = state.open
    assert o is not None  # patient.cancellation_check
    w = Withdrawal(revert=_stay_contributions(o))
    for d in o.resolved:
        p = PendingDischarge.from_dict(d)
        readmitted = LabelOutcome(p, True, o.encounter_id, o.admitted_at)
        w.revert += kpis.for_label(readmitted)
        w.unlabelled.append(readmitted)
        if p.due_at < now:
            w.labels.append(LabelOutcome(p, False, None, p.due_at))
        else:
            w.pending.append(p)
            w.withdrawn.append(readmitted.to_label().withdrawn_copy(ev.occurred_at))
    t = o.admitted_at
    new = replace(
        touched(state, ev), open=None, pending=[*state.pending, *w.pending],
        admissions=_without(state.admissions, t),
        ed_visits=_without(state.ed_visits, t) if o.admit_source == "ed" else state.ed_visits,
        readmissions=_without(state.readmissions, t) if o.resolved else state.readmissions,
    )
    return new, w


def drop_latest_transfer(moves: list[dict[str, Any]], current: list[str]) -> tuple[
        list[dict[str, Any]], list[str], list[tuple[str, str, str, str]]]:
    """A stay's moves without its latest transfer, and where the stay is then: in each dimension
    the transfer changed, the moves after it up to the next move in that dimension are made from
    where it was before (the next move now leaves from there). Returns the new moves (copies;
    other keys kept), the new (department, attending) and the census re-attributions
    ``(dimension, from, to, at)``. Pure: the sink follows the same rule (consumers/cancellations.py)."""
    k = max(i for i, m in enumerate(moves) if m["kind"] == "transfer")
    moves = [{**m, "from": list(m["from"]), "to": list(m["to"])} for m in moves]
    cancelled = moves.pop(k)
    current = list(current)
    shifts: list[tuple[str, str, str, str]] = []
    for i, dim in enumerate(kpis.MOVE_DIMENSIONS):
        before, dest = cancelled["from"][i], cancelled["to"][i]
        if before == dest:
            continue
        shifts.append((dim, dest, before, cancelled["at"]))
        following = moves[k:]
        nxt = next((m for m in following if m["from"][i] != m["to"][i]), None)
        for m in following[:following.index(nxt) if nxt else len(following)]:
            m["from"][i] = m["to"][i] = before  # moves in the other dimension, made from ``before``
        if nxt is None:
            current[i] = before
        else:  # the next move leaves from ``before`` now: correct the census it moved
            shifts.append((dim, before, dest, nxt["at"]))
            nxt["from"][i] = before
    return moves, current, shifts


def cancel_transfer(state: PatientState, ev: CancellationEvent) -> tuple[PatientState, Withdrawal]:
    o = state.open
    assert o is not None  # patient.cancellation_check
    moves, current, shifts = drop_latest_transfer(o.moves, [o.department, o.attending_provider_id])
    w = Withdrawal(add=[c for dim, a, b, at in shifts
                        for c in kpis.moved_in(dim, a, b, o.facility_id, datetime.fromisoformat(at))])
    stay = replace(o, department=current[0], attending_provider_id=current[1], moves=moves)
    return replace(touched(state, ev), open=stay), w
