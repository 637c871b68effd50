"""A simulation as a realistic HL7 v2 ADT feed (pure): the simulated A01 / A02 / A03, and the
messages a real feed mixes in (``wardstream mllp`` maps them to contract v1.1 events).

Per simulated event, :meth:`Hl7Feed.for_event` returns the extra messages due before it, then the
event's own message (:func:`producers.hl7_encode.encode_event`). The extras:

- **A08 update** (~45% of all messages): 1-3 per stay within 36 h of the admission (those after
  the discharge are dropped) and, for 30% of stays, one 1-5 days after the discharge (final
  coding). Each carries the visit as it stands (PID, PV1 with its current location), its
  diagnoses with, in 60% of updates, one secondary code added, and in 25% another attending of
  the department (the simulated A02 / A03 that follow still carry the simulator's attending).
- **A11 / A12 / A13 cancel admit / transfer / discharge** (~1.5%): 3% of admissions, 5% of
  transfers and 3% of discharges are cancelled 10 min-4 h later (dropped when another event of
  the encounter comes first). The simulated events go on as simulated: a cancelled admission
  still gets its discharge.
- **A40 merge** (~0.1%): for 0.4% of admissions, a duplicate registration (MRG-1, an MRN
  ``D...`` that has no encounter) is merged into the patient within 3 days.
- **A07 change to outpatient** (~0.2%): 1% of admissions are made observation visits (PV1-2
  ``O``) 2-12 h later (dropped when another event of the encounter comes first); as with a
  cancelled admission, the simulated events of the visit go on as simulated.

The extras draw from their own ``Random(f"hl7-extras-{seed}")`` (the A07s from
``Random(f"hl7-class-{seed}")``, so the other extras are the same with or without them): the
simulated events are the same, byte for byte, with or without them. :attr:`Hl7Message.target`
says what an A11 / A12 / A13 cancels and an A07 reclassifies (the event_id) and an A40 merges
(the prior MRN), for an oracle that applies them.
Extras at or after the period's end are not sent.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterator
from random import Random
from typing import NamedTuple

from producers import hl7_encode as enc
from producers.simulator import Emitted, Simulation

HOUR = 3600
DAY = 86_400
A08_PER_STAY = ((1, 0.40), (2, 0.80), (3, 1.00))  # cumulative weights of 1, 2, 3 updates
A08_WITHIN = 36 * HOUR
A08_AFTER_DISCHARGE_P = 0.30
A08_NEW_CODE_P = 0.60
A08_NEW_ATTENDING_P = 0.25
CANCEL_P = {"A01": 0.03, "A02": 0.05, "A03": 0.03}
CANCEL_OF = {"A01": "A11", "A02": "A12", "A03": "A13"}
MERGE_P = 0.004
OUTPATIENT_P = 0.01  # admissions an A07 makes observation visits
# secondary diagnoses an update adds (ICD-10-CM): hyponatremia, anemia, AKI, dehydration,
# hypokalemia, UTI, delirium, pressure ulcer, malnutrition, pneumonia
SECONDARY = ("E87.1", "D64.9", "N17.9", "E86.0", "E87.6", "N39.0", "R41.0", "L89.90", "E44.0", "J18.9")
SIMULATED = frozenset({"A01", "A02", "A03"})  # the triggers that carry a simulated event
MAPPED = frozenset({*SIMULATED, "A07", "A08", "A11", "A12", "A13", "A40"})  # every trigger of the feed


class Hl7Message(NamedTuple):
    t: int  # event time, epoch seconds
    key: str  # patient_id
    trigger: str  # MSH-9.2
    control_id: str  # MSH-10
    text: str  # segments joined by \r
    event: dict | None  # the simulated event of an A01 / A02 / A03, else None
    target: str | None = None  # A07, A11-A13: the event_id it acts on; A40: the merged (prior) MRN


class _Visit:
    __slots__ = ("admission", "dept", "prior_dept", "provider", "dx", "last", "discharge")

    def __init__(self, admission: dict) -> None:
        self.admission = admission
        self.dept = admission["department"]
        self.prior_dept: str | None = None
        self.provider = admission["attending_provider_id"]
        self.dx = list(admission["diagnosis_codes"])
        self.last = admission  # the encounter's latest simulated event
        self.discharge: dict | None = None

    def current(self) -> dict:
        """The visit as it stands (department, attending), as an event without discharge fields."""
        return {**self.admission, "department": self.dept, "attending_provider_id": self.provider,
                "event_type": "transfer"}


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Hl7Feed:
    """Turns a simulation's events, in order, into HL7 messages (see the module doc)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.counts: Counter[str] = Counter()
        self._rng = Random(f"hl7-extras-{sim.config.seed}")
        self._class_rng = Random(f"hl7-class-{sim.config.seed}")
        self._end = sim.config.end_epoch
        self._visits: dict[str, _Visit] = {}
        self._pending: list[tuple[int, int, str, _Visit, object]] = []
        self._seq = 0
        self._providers: dict[tuple[str, str], list[str]] = {}

    # ------------------------------------------------------------------ public

    def for_event(self, item: Emitted) -> list[Hl7Message]:
        """The extras due at or before ``item``, then ``item``'s own message."""
        out = self._due(item.t)
        out.append(self._own(item))
        return out

    def finish(self) -> list[Hl7Message]:
        """The extras still pending before the period's end."""
        return self._due(self._end - 1)

    # ------------------------------------------------------------------ simulated events

    def _own(self, item: Emitted) -> Hl7Message:
        ev = item.event
        trigger = ev["hl7_trigger"]
        rng = self._rng
        visit = self._visits.get(ev["encounter_id"])
        prior = None
        if trigger == "A01":
            visit = self._visits[ev["encounter_id"]] = _Visit(ev)
            u = rng.random()
            n = next(k for k, c in A08_PER_STAY if u < c)
            for _ in range(n):
                self._push(item.t + int(HOUR / 4 + rng.random() * A08_WITHIN), "A08", visit, None)
            if rng.random() < MERGE_P:
                self._push(item.t + int(HOUR + rng.random() * 3 * DAY), "A40", visit,
                           f"D{rng.randrange(10**7):07d}")
            if self._class_rng.random() < OUTPATIENT_P:
                self._push(item.t + int(2 * HOUR + self._class_rng.random() * 10 * HOUR), "A07", visit, ev)
        elif visit is not None:
            if trigger == "A02":
                prior = visit.dept
                visit.prior_dept, visit.dept = visit.dept, ev["department"]
                visit.provider = ev["attending_provider_id"]
            else:
                visit.discharge = ev
                del self._visits[ev["encounter_id"]]
                if rng.random() < A08_AFTER_DISCHARGE_P:
                    self._push(item.t + int(DAY + rng.random() * 4 * DAY), "A08", visit, "final")
            visit.last = ev
        if visit is not None and rng.random() < CANCEL_P[trigger]:
            self._push(item.t + int(600 + rng.random() * 4 * HOUR), CANCEL_OF[trigger], visit, ev)
        text = enc.encode_event(ev, admission=visit.admission if visit else None,
                                prior_department=prior)
        self.counts[trigger] += 1
        return Hl7Message(item.t, item.key, trigger, enc.control_id(ev["event_id"]), text, ev)

    # ------------------------------------------------------------------ extras

    def _push(self, t: int, trigger: str, visit: _Visit, payload: object) -> None:
        if t < self._end:
            self._seq += 1
            heapq.heappush(self._pending, (t, self._seq, trigger, visit, payload))

    def _due(self, until: int) -> list[Hl7Message]:
        out: list[Hl7Message] = []
        pending = self._pending
        while pending and pending[0][0] <= until:
            t, _, trigger, visit, payload = heapq.heappop(pending)
            msg = self._extra(t, trigger, visit, payload)
            if msg is not None:
                self.counts[trigger] += 1
                out.append(msg)
        return out

    def _extra(self, t: int, trigger: str, visit: _Visit, payload: object) -> Hl7Message | None:
        adm = visit.admission
        if trigger == "A08" and payload is None and visit.discharge is not None:
            return None  # the stay ended before this update
        if trigger in ("A07", "A11", "A12", "A13") and visit.last is not payload:
            return None  # another event of the encounter came first
        at = _iso(t)
        fac, pid = adm["facility_id"], adm["patient_id"]
        control = "%020x" % (self._class_rng if trigger == "A07" else self._rng).getrandbits(80)
        head = [enc.msh(trigger, fac, at, control), enc.evn(trigger, at),
                enc.pid(fac, pid, adm["patient"], adm["occurred_at"])]
        target = None
        if trigger == "A08":
            body = self._update(visit, payload == "final", at)
        elif trigger == "A40":
            target = str(payload)
            body = [enc.segment("MRG", {1: f"{target}^^^{fac}^MR"})]
        elif trigger == "A07":
            target = adm["event_id"]
            body = [self._pv1(visit, visit.current(), patient_class="O")]
        else:
            ev = payload  # the cancelled event
            assert isinstance(ev, dict)
            target = ev["event_id"]
            state = {**ev, "event_type": "transfer"}  # PV1 without the discharge fields
            if trigger == "A12":
                state["department"] = visit.prior_dept or ev["department"]
            pv1 = enc.pv1(state, admission=adm, payer=adm["patient"]["payer"],
                          prior_department=ev["department"] if trigger == "A12" else None)
            body = [pv1]
        return Hl7Message(t, pid, trigger, control, "\r".join(head + body), None, target)

    def _update(self, visit: _Visit, final: bool, at: str) -> list[str]:
        """An A08's PV1 and DG1s: the visit as it stands, maybe a new code or attending."""
        rng = self._rng
        adm = visit.admission
        if rng.random() < A08_NEW_CODE_P:
            code = SECONDARY[int(rng.random() * len(SECONDARY))]
            if code not in visit.dx:
                visit.dx.append(code)
        if not final and rng.random() < A08_NEW_ATTENDING_P:
            others = [p for p in self._providers_of(adm["facility_id"], visit.dept) if p != visit.provider]
            if others:
                visit.provider = others[int(rng.random() * len(others))]
        state = visit.discharge if final and visit.discharge is not None else visit.current()
        return [self._pv1(visit, state), *enc.dg1(visit.dx, at, "F" if final else "W")]

    @staticmethod
    def _pv1(visit: _Visit, state: dict, patient_class: str = "I") -> str:
        """A PV1 of the visit's encounter for ``state`` (an event dict), with its admission's fields."""
        adm = visit.admission
        return enc.pv1(state, admission=adm, payer=adm["patient"]["payer"], patient_class=patient_class)

    def _providers_of(self, facility: str, dept: str) -> list[str]:
        key = (facility, dept)
        if key not in self._providers:
            self._providers[key] = [p.provider_id for p in self.sim.reference.providers_of(facility, dept)]
        return self._providers[key]


def hl7_messages(sim: Simulation) -> Iterator[Hl7Message]:
    """Every message of ``sim``'s feed, in time order (iterates ``sim.stream()``)."""
    feed = Hl7Feed(sim)
    for item in sim.stream():
        yield from feed.for_event(item)
    yield from feed.finish()


def file_bytes(msg: Hl7Message) -> bytes:
    """A message in the file format of ``wardstream simulate --format hl7``: one segment per
    line, then a blank line (what HAPI's and most engines' file readers take)."""
    return (msg.text.replace("\r", "\n") + "\n\n").encode()


def read_file(data: bytes) -> list[str]:
    """The messages (segments joined by ``\\r``) of a file written with :func:`file_bytes`.

    >>> read_file(b"MSH|a\\nPID|1\\n\\nMSH|b\\n\\n")
    ['MSH|a\\rPID|1', 'MSH|b']
    """
    return ["\r".join(block.split("\n")) for block in data.decode().split("\n\n") if block.strip()]
