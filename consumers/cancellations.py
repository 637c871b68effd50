"""Cancellations (A11 / A12 / A13) in the ADT fact tables: pure, from an encounter's stored events.

The stream forwards each cancellation it applied on ``hospital.adt-accepted``. HL7 names no
event id: a cancellation names the encounter and a kind of event, and cancels the encounter's
latest not yet cancelled event of that kind (``contracts.events.CancellationEvent``; the stream
applies it on the open stay, ``stream/domain/withdrawals.py``). The sink stores the events the
stream applied, so the same rule over the encounter's stored events, in their ``hospital.adt``
order, finds the same event.

:func:`resolve` derives everything a cancellation changes in the fact tables from the
encounter's events alone: which event each cancellation cancelled, which stay an A11 withdrew,
the encounter row as its live events give it, and which charge / diagnosis / procedure rows no
longer count. Being a function of the stored events (not of the order batches arrived in), a
re-delivered message, a batch replayed after a crash and a cancellation in the same batch as
its event all give the same rows (``consumers.tables.apply_cancellations`` writes them after
every batch that touches an encounter with a cancellation). Nothing is deleted (V009): rows are
marked with the cancellation and views filter (V013).

A stay is an admission and the encounter's events up to its next admission (an A11'd visit may
be admitted again under the same visit number). A cancelled transfer drops out (the bed before
it goes on, and the moves after it up to the next move go back there, by the stream's own rule:
:func:`bed_places`); a cancelled discharge leaves the stay open where it left it (the stream
reopens the stay in the discharge's department and attending); an A11 withdraws its whole stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from consumers.rows import Batch, Row
from contracts.events import AnyAdtEvent, CancellationEvent
from stream.domain.withdrawals import drop_latest_transfer

BED_TYPES = frozenset({"admission", "transfer", "update", "discharge"})  # events of a stay's bed timeline
CODED = (("diagnoses", "admission", "admission"), ("diagnoses", "discharge", "discharge"),
         ("procedures", None, "discharge"))  # (table, coded_at, event type that codes the rows)


class Stored(NamedTuple):
    """An ``adt_events`` row as the resolver needs it: the event and its ``hospital.adt`` place."""

    event: AnyAdtEvent
    partition: int
    offset: int

    @property
    def id(self) -> str:
        return str(self.event.event_id)


class Mark(NamedTuple):
    """What withdrew an event: its own cancellation, and the A11 of its stay (event ids)."""

    cancelled_by: str | None = None
    cancelled_at: datetime | None = None
    stay_cancelled_by: str | None = None


LIVE = Mark()


@dataclass
class CodeRows:
    """One coded set of an encounter (``table``, ``coded_at``): the rows that count (positions
    0..n-1) and the cancellation that withdrew the rest (None: nothing withdrew any)."""

    table: str
    coded_at: str | None
    live: list[Row]
    withdrawn_by: tuple[str, datetime] | None


@dataclass
class Resolution:
    """The fact rows of one encounter with cancellations, derived from its events."""

    encounter_id: str
    marks: dict[str, Mark] = field(default_factory=dict)  # event_id -> mark, every event
    places: dict[str, tuple[str, str]] = field(default_factory=dict)  # event_id -> bed, where not its own
    encounter: Row | None = None  # the encounters row (+ cancelled_by / cancelled_at); None: no stay
    charge: Row | None = None  # the charge that counts, if any
    charge_withdrawn_by: tuple[str, datetime] | None = None  # else: what withdrew the stored one
    codes: list[CodeRows] = field(default_factory=list)


def _ordered(events: Sequence[Stored]) -> list[Stored]:
    """``hospital.adt`` order: a patient's events are on one partition, applied by offset."""
    return sorted(events, key=lambda s: (s.partition, s.offset))


def stays(events: Sequence[Stored]) -> list[list[Stored]]:
    """The encounter's events split at each admission (events before the first form a stay too)."""
    out: list[list[Stored]] = []
    for s in _ordered(events):
        if s.event.event_type == "admission" or not out:
            out.append([])
        out[-1].append(s)
    return out


def _target(stay: list[Stored], upto: int, kind: str, marks: dict[str, Mark]) -> Stored | None:
    """The stay's latest event of ``kind`` before position ``upto`` not cancelled yet."""
    for s in reversed(stay[:upto]):
        if s.event.event_type == kind and marks[s.id].cancelled_by is None:
            return s
    return None


def _mark_stay(stay: list[Stored], marks: dict[str, Mark]) -> None:
    """Each cancellation marks its target; an A11 then withdraws every other event of its stay."""
    for i, s in enumerate(stay):
        if isinstance(s.event, CancellationEvent):
            target = _target(stay, i, s.event.cancelled_event_type, marks)
            if target is not None:
                marks[target.id] = Mark(s.id, s.event.occurred_at)
    a11 = marks[stay[0].id].cancelled_by if stay[0].event.event_type == "admission" else None
    if a11 is not None:
        for s in stay:
            if not isinstance(s.event, CancellationEvent):
                marks[s.id] = marks[s.id]._replace(stay_cancelled_by=a11)


def bed_places(stay: list[Stored], marks: dict[str, Mark]) -> dict[str, list[str]]:
    """(department, attending) of the stay after each of its bed events, as the stream has it:
    the moves it records (a transfer always, another event when it changes either), each A12
    dropping the latest transfer and re-attributing the moves after it
    (:func:`stream.domain.withdrawals.drop_latest_transfer`). An A08 sent between a transfer
    and its A12 names the transfer's department: the stream, and so this, puts it back where
    the stay was before. Cancelled transfers have no place."""
    head = stay[0].event
    if head.event_type != "admission":
        return {}
    current, moves = [head.department, head.attending_provider_id], []
    for s in stay[1:]:
        e = s.event
        if isinstance(e, CancellationEvent):
            if e.cancelled_event_type == "transfer" and any(m["kind"] == "transfer" for m in moves):
                moves, current, _ = drop_latest_transfer(moves, current)
        elif e.event_type in BED_TYPES and (e.event_type == "transfer"
                                             or [e.department, e.attending_provider_id] != current):
            moves.append({"id": s.id, "at": e.occurred_at.isoformat(), "kind": e.event_type,
                          "from": current, "to": [e.department, e.attending_provider_id]})
            current = moves[-1]["to"]
    to = {m["id"]: m["to"] for m in moves}
    places, here = {}, [head.department, head.attending_provider_id]
    for s in stay:
        if s.event.event_type in BED_TYPES and not (s.event.event_type == "transfer" and marks[s.id].cancelled_by):
            here = to.get(s.id, here)
            places[s.id] = here
    return places


def withdrawer(mark: Mark, at: dict[str, datetime]) -> tuple[str, datetime] | None:
    """The cancellation that took an event out of the facts: its own, else its stay's A11."""
    by = mark.cancelled_by or mark.stay_cancelled_by
    return None if by is None else (by, at[by])


def _mark_columns(by: tuple[str, datetime] | None) -> dict[str, Any]:
    """``cancelled_by`` / ``cancelled_at`` of a row ``by`` withdrew (both None: it counts)."""
    return {"cancelled_by": by[0] if by else None, "cancelled_at": by[1] if by else None}


def resolve(encounter_id: str, events: Sequence[Stored]) -> Resolution:
    """Marks and fact rows of one encounter from all its stored events (any order)."""
    ordered = _ordered(events)
    res = Resolution(encounter_id, marks={s.id: LIVE for s in ordered})
    all_stays = stays(ordered)
    for stay in all_stays:
        _mark_stay(stay, res.marks)
    places: dict[str, list[str]] = {}
    for stay in all_stays:
        if not res.marks[stay[0].id].stay_cancelled_by:
            places.update(bed_places(stay, res.marks))
    res.places = {s.id: (places[s.id][0], places[s.id][1]) for s in ordered
                  if s.id in places and places[s.id] != [s.event.department, s.event.attending_provider_id]}
    at = {s.id: s.event.occurred_at for s in ordered}
    if all_stays:
        _derive(res, all_stays[-1], at)
    _withdrawn_codes(res, ordered, at)
    return res


def _derive(res: Resolution, stay: list[Stored], at: dict[str, datetime]) -> None:
    """The encounter row, charge and codes of its latest stay, from the events that count in it
    (a withdrawn stay is described as admitted, marked cancelled, and codes nothing)."""
    marks = res.marks
    basis = [s for s in stay if s.event.event_type in BED_TYPES
             and (s.event.event_type == "admission" or marks[s.id].cancelled_by is None)]
    if not basis:
        return
    rows = Batch()
    for s in basis:
        rows.add_adt(s.event, s.partition, s.offset)
    encounter = rows.rows("encounters")[0]
    withdrawn = withdrawer(marks[stay[0].id], at) if stay[0].event.event_type == "admission" else None
    # where the stay is: after its latest bed event, a cancelled discharge included (it moved the stay)
    last = [s for s in stay if s.event.event_type in BED_TYPES and (
        s.event.event_type in ("admission", "discharge") or marks[s.id].cancelled_by is None)][-1]
    department, attending = res.places.get(last.id, (last.event.department, last.event.attending_provider_id))
    encounter.update(department=department, attending_provider_id=attending,
                     last_event_at=last.event.occurred_at, last_event_offset=last.offset)
    encounter.update(_mark_columns(withdrawn))
    res.encounter = encounter
    if withdrawn is None:
        charges = rows.rows("charges")
        res.charge = charges[0] if charges else None
        res.codes = [CodeRows(table, coded_at, [r for r in rows.rows(table) if r.get("coded_at") == coded_at], None)
                     for table, coded_at, _ in CODED]


def _withdrawn_codes(res: Resolution, events: list[Stored], at: dict[str, datetime]) -> None:
    """What withdrew the stored rows that no longer count: per coded set, the latest withdrawn
    event that codes it (a cancelled discharge, a withdrawn admission)."""
    latest: dict[str, tuple[str, datetime]] = {}
    for s in events:
        w = withdrawer(res.marks[s.id], at)
        if w is not None:
            latest[s.event.event_type] = w
    live = {(c.table, c.coded_at): c for c in res.codes}
    res.codes = [CodeRows(table, coded_at, live[(table, coded_at)].live if (table, coded_at) in live else [],
                          latest.get(kind)) for table, coded_at, kind in CODED]
    if res.charge is None:
        res.charge_withdrawn_by = latest.get("discharge")


def _bed_columns(place: tuple[str, str] | None) -> dict[str, str | None]:
    """``bed_department`` / ``bed_attending_provider_id``: the place, when the stream has the
    stay elsewhere than the event says (both None: where the event says)."""
    return {"bed_department": place[0] if place else None,
            "bed_attending_provider_id": place[1] if place else None}


def mark_rows(resolutions: Sequence[Resolution]) -> dict[str, list[dict[str, Any]]]:
    """The resolutions as plain rows per target, for ``jsonb_populate_recordset`` updates:
    ``adt_events`` marks, ``encounters`` rows, ``charges`` marks and code marks (positions from
    ``live_count`` on are withdrawn)."""
    out: dict[str, list[dict[str, Any]]] = {"adt_events": [], "encounters": [], "charges": [], "codes": []}
    for r in resolutions:
        out["adt_events"] += [{"event_id": eid, **m._asdict(), **_bed_columns(r.places.get(eid))}
                              for eid, m in r.marks.items()]
        if r.encounter is not None:
            out["encounters"].append(r.encounter)
        out["charges"].append({"encounter_id": r.encounter_id, **_mark_columns(r.charge_withdrawn_by)})
        out["codes"] += [{"table": c.table, "encounter_id": r.encounter_id, "coded_at": c.coded_at,
                          "live_count": len(c.live), **_mark_columns(c.withdrawn_by)} for c in r.codes]
    return out
