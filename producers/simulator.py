"""Deterministic generator of ADT events (contract v1) over a simulated period. Pure: no I/O.

Public API (used by ``wardstream simulate``, ``make demo``, the benches and other tests)::

    from producers.simulator import SimConfig, Simulation, generate

    cfg = SimConfig(seed=42, start=date(2025, 1, 1), days=7, beds=300, facilities=1)
    for event in generate(cfg):             # dicts in contract field order, occurred_at ascending
        ...
    sim = Simulation(cfg)                   # same stream, plus the reference data and the truth
    for item in sim.stream():               # Emitted(t=epoch seconds, key=patient_id, event=dict)
        ...
    sim.reference                           # facilities / providers (contracts.FacilityRef / ProviderRef)
    sim.truth_records()                     # one dict per discharge: encounter_id, p_readmit, readmitted
    sim.counts                              # events by type so far

Same config => the same events, byte for byte (``orjson.dumps``). Every random draw comes from one
``random.Random(seed)`` in a fixed order; event ids come from a second seeded stream so they never
shift the simulation. A discrete-event loop (a heap of (time, sequence, kind, payload)) yields events
in non-decreasing ``occurred_at`` order; nothing at or after ``start + days`` is emitted, so stays
still open at the end have no discharge. The first ``WARMUP_DAYS`` before ``start`` are simulated but
not emitted, so former patients' returns arrive from day one (no ramp that would flatten the
seasonal peaks); the hospital opens empty at ``start`` (every discharge has its admission).

Readmission (DESIGN.md, CMS): at each discharge the true probability ``p_readmit`` is drawn into a
non-elective readmission within 30 days, or else an unrelated later admission (elective within 30
days, or any type after 30 days). ``readmitted`` in the truth is then measured on the emitted events
(a non-elective admission within 30 days after the discharge), so it also sees chains of stays and
the period end. A patient is in at most one stay or scheduled admission at a time.

Drift (``SimConfig.shift_at``, ``shift``): from that day on, new arrivals follow a shifted case mix
and/or discharges are coded completely (:mod:`producers.drift`). Everything before the day is the
same as without a shift, and without ``shift_at`` no draw changes.
"""

from __future__ import annotations

import calendar
import heapq
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from random import Random
from typing import NamedTuple

from producers import drift, rules
from producers.hospital import MIN_BEDS, Reference, build_reference
from producers.population import Patient, new_patient
from contracts.events import DEPARTMENTS

DAY = 86_400
READMIT_WINDOW = 30 * DAY
TARGET_OCCUPANCY = 0.80
RETURN_LOAD = 1.45  # admissions per new arrival (readmissions + later returns), measured
BOARDING = 1.10  # a full department boards new non-elective arrivals up to 10% over its beds
TRANSFER_P = 0.25  # stays with at least one transfer
SECOND_TRANSFER_P = 0.15

WARMUP_DAYS = 180  # simulated, not emitted: returning patients flow from day one
_DAY_TICK, _ARRIVE, _RETURN, _TRANSFER, _DISCHARGE, _OPEN = range(6)


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``beds`` are per facility."""

    seed: int = 42
    start: date = date(2025, 1, 1)
    days: int = 7
    beds: int = 300
    facilities: int = 1
    shift_at: date | None = None  # a drift scenario from this day on (producers.drift)
    shift: str = "both"  # its kind: case-mix, coding or both

    def validate(self) -> None:
        """Raise ValueError with a plain message when an option cannot work."""
        if self.days <= 0:
            raise ValueError("days must be at least 1")
        if self.days > 3660:
            raise ValueError("days must be at most 3660 (10 years)")
        if self.beds < MIN_BEDS:
            raise ValueError(f"beds must be at least {MIN_BEDS} (4 per department, 8 departments, x2)")
        if not 1 <= self.facilities <= 99:
            raise ValueError("facilities must be between 1 and 99")
        drift.Shift.parse(self.shift)
        end = self.start + timedelta(days=self.days)
        if self.shift_at is not None and not self.start <= self.shift_at < end:
            raise ValueError(f"shift date {self.shift_at} is outside the simulated period "
                             f"{self.start} .. {end - timedelta(days=1)}")

    @property
    def start_epoch(self) -> int:
        return calendar.timegm(self.start.timetuple())

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.days * DAY


class Emitted(NamedTuple):
    t: int  # occurred_at, epoch seconds
    key: str  # patient_id (the Kafka key)
    event: dict  # contract v1 fields, in contract order


class _Stay:
    __slots__ = ("encounter_id", "patient", "fac", "dept", "provider", "admit_t", "admitted_at",
                 "emergent", "dx", "void")


def _poisson(rng: Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _whole(v: float, lo: float, hi: float) -> float:
    """A vital sign: clamped to a plausible range, whole units, as a float (contract type)."""
    return float(lo) if v < lo else float(hi) if v > hi else float(int(v + 0.5))


def _uuid4(bits: int) -> str:
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)
    h = "%032x" % bits
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_HMS = [f"T{h:02d}:{m:02d}:{s:02d}Z" for h in range(24) for m in range(60) for s in range(60)]


class Simulation:
    """One run of the simulator; iterate :meth:`stream` once."""

    def __init__(self, config: SimConfig) -> None:
        config.validate()
        self.config = config
        self.reference: Reference = build_reference(config.seed, config.facilities, config.beds)
        self.counts: Counter[str] = Counter()
        self.sim_time = config.start_epoch  # event time of the last emitted event
        self._truth: list[list] = []  # [encounter_id, p_readmit, readmitted]
        self._open: dict[str, list[tuple[int, int]]] = {}  # patient -> [(discharge t, truth index)]
        self._rng = Random(config.seed)
        self._ids = Random(f"event-ids-{config.seed}")
        self._start = config.start_epoch
        self._end = config.end_epoch
        self._t0 = self._start - WARMUP_DAYS * DAY  # day index 0 of the tables below
        first = datetime(config.start.year, config.start.month, config.start.day,
                         tzinfo=timezone.utc) - timedelta(days=WARMUP_DAYS)
        span = range(WARMUP_DAYS + config.days)
        self._day_prefix = [(first + timedelta(days=d)).strftime("%Y-%m-%d") for d in span]
        self._day_month = [(first + timedelta(days=d)).month for d in span]
        self._day_dow = [(first + timedelta(days=d)).weekday() for d in span]
        self._active: set[_Stay] = set()
        self._emitting = False
        self._fac_ids = [f.facility_id for f in self.reference.facilities]
        self._beds = [dict(f.department_beds) for f in self.reference.facilities]
        self._census = [{d: 0 for d in DEPARTMENTS} for _ in self.reference.facilities]
        self._occupied = [0 for _ in self.reference.facilities]
        self._total_beds = [f.beds for f in self.reference.facilities]
        self._providers = [
            {d: [p.provider_id for p in self.reference.providers_of(fid, d)] for d in DEPARTMENTS}
            for fid in self._fac_ids
        ]
        self._load: dict[str, int] = {p.provider_id: 0 for p in self.reference.providers}
        mean_los = sum(rules.DEPT[d].share * rules.mean_los_days(d) for d in DEPARTMENTS) * 1.08
        self._daily_new = config.beds * TARGET_OCCUPANCY / (mean_los * RETURN_LOAD)
        self._patients = 0
        self._encounters = 0
        self._seq = 0
        self._heap: list[tuple] = []
        shift = drift.Shift.parse(config.shift) if config.shift_at else drift.Shift(False, False)
        self._case_mix, self._coding = shift.case_mix, shift.coding
        self._shift_t = calendar.timegm(config.shift_at.timetuple()) if config.shift_at else self._end

    # ------------------------------------------------------------------ helpers

    def _ts(self, t: int) -> str:
        d, s = divmod(t - self._t0, DAY)
        return self._day_prefix[d] + _HMS[s]

    def _push(self, t: int, kind: int, payload: object) -> None:
        if t < self._end:
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def _event_id(self) -> str:
        return _uuid4(self._ids.getrandbits(128))

    def _pick_provider(self, fac: int, dept: str) -> str:
        provs = self._providers[fac][dept]
        rng = self._rng
        a, b = provs[int(rng.random() * len(provs))], provs[int(rng.random() * len(provs))]
        chosen = a if self._load[a] <= self._load[b] else b
        self._load[chosen] += 1
        return chosen

    def _bed_for(self, fac: int, preferred: str, elective: bool) -> str | None:
        """Where a new arrival goes, or None (elective postponed / diverted to another hospital).

        Its department, boarding up to ``BOARDING`` over its beds when full; a non-elective adult
        then goes to Internal Medicine if it has a bed. A full hospital diverts every new arrival.
        Former patients coming back are always admitted to their department (see ``_return``).
        """
        census, beds = self._census[fac], self._beds[fac]
        if self._occupied[fac] >= self._total_beds[fac]:
            return None
        if census[preferred] < beds[preferred] * (1.0 if elective else BOARDING):
            return preferred
        if elective or preferred == "Pediatrics":
            return None
        im = "Internal Medicine"
        return im if census[im] < beds[im] else None

    # ------------------------------------------------------------------ the loop

    def stream(self) -> Iterator[Emitted]:
        """Yield every event of the period in non-decreasing occurred_at order."""
        for d in range(WARMUP_DAYS + self.config.days):
            self._push(self._t0 + d * DAY, _DAY_TICK, d)
        heapq.heappush(self._heap, (self._start, -1, _OPEN, None))  # before anything at start
        heap = self._heap
        pop = heapq.heappop
        while heap:
            t, _, kind, payload = pop(heap)
            if kind == _DAY_TICK:
                self._day(t, payload)
                continue
            if kind == _OPEN:
                self._open_period()
                continue
            if kind == _DISCHARGE:
                out = self._discharge(t, payload)
            elif kind == _TRANSFER:
                out = self._transfer(t, payload)
            elif kind == _ARRIVE:
                out = self._arrive(t, *payload)
            else:
                out = self._return(t, *payload)
            if out is not None and self._emitting:
                self.sim_time = t
                yield out

    def _open_period(self) -> None:
        """End of the warm-up: the hospital opens empty, with its former patients' returns booked.

        Stays still open are forgotten (those patients never come back): every emitted discharge
        has its emitted admission. Warm-up discharges are no index discharges of the truth.
        """
        for stay in self._active:
            stay.void = True
        self._active.clear()
        for census in self._census:
            for d in census:
                census[d] = 0
        self._occupied = [0 for _ in self._occupied]
        for p in self._load:
            self._load[p] = 0
        self._truth.clear()
        self._open.clear()
        self._emitting = True

    def _day(self, t: int, d: int) -> None:
        rng = self._rng
        month, weekend = self._day_month[d], self._day_dow[d] >= 5
        elective_x = drift.ELECTIVE_X if self._case_mix and t >= self._shift_t else 1.0
        for fac in range(len(self._fac_ids)):
            for dept in DEPARTMENTS:
                spec = rules.DEPT[dept]
                lam = self._daily_new * spec.share * spec.season[month - 1]
                elective = spec.elective * elective_x
                n_el = _poisson(rng, lam * elective * (0.3 if weekend else 1.28))
                n_ne = _poisson(rng, lam * (1.0 - elective))
                for _ in range(n_el):
                    self._push(t + 7 * 3600 + int(rng.random() * 5 * 3600), _ARRIVE, (fac, dept, True))
                for _ in range(n_ne):
                    self._push(t + int(rng.random() * DAY), _ARRIVE, (fac, dept, False))

    def _arrive(self, t: int, fac: int, dept: str, elective: bool) -> Emitted | None:
        rng = self._rng
        where = self._bed_for(fac, dept, elective)
        if where is None:
            return None
        self._patients += 1
        shifted = self._case_mix and t >= self._shift_t
        patient = new_patient(rng, self._patients, dept, fac, shifted)
        if elective:
            return self._admit(t, patient, where, "elective", "referral", dept)
        u = rng.random()
        if dept == "Emergency" or u < (drift.ED_SHARE if shifted else 0.70):
            return self._admit(t, patient, where, "emergency", "ed", dept)
        return self._admit(t, patient, where, "urgent", "referral" if u < 0.95 else "transfer", dept)

    def _return(self, t: int, patient: Patient, dept: str, admission_type: str, source: str) -> Emitted | None:
        patient.busy = False
        return self._admit(t, patient, dept, admission_type, source, dept)

    def _admit(self, t: int, patient: Patient, dept: str, admission_type: str, source: str,
               reason_dept: str) -> Emitted | None:
        rng = self._rng
        fac = patient.facility
        self._census[fac][dept] += 1
        self._occupied[fac] += 1
        patient.busy = True
        emergent = admission_type != "elective"
        pid = patient.patient_id
        if emergent:  # resolve this patient's open index discharges (CMS readmission)
            opened = self._open.pop(pid, None)
            if opened:
                for dis_t, idx in opened:
                    if t - dis_t <= READMIT_WINDOW:
                        self._truth[idx][2] = True
        patient.adm_times.append(t)
        if source == "ed":
            patient.ed_times.append(t)
        stay = _Stay()
        stay.void = False
        self._active.add(stay)
        stay.patient, stay.fac, stay.dept = patient, fac, dept
        stay.provider = self._pick_provider(fac, dept)
        stay.admit_t = t
        stay.emergent = emergent
        los = rules.sample_los_days(rng, reason_dept, patient.age, patient.frailty, emergent)
        dur = max(4 * 3600, int(los * DAY))
        self._push(t + dur, _DISCHARGE, stay)
        if not self._emitting:  # warm-up: only what decides who comes back, no event
            return None
        if rng.random() < TRANSFER_P:
            n = 2 if rng.random() < SECOND_TRANSFER_P else 1
            for k in range(n):
                frac = (k + 0.15 + 0.7 * rng.random()) / n
                self._push(t + int(dur * frac), _TRANSFER, stay)
        self._encounters += 1
        stay.encounter_id = f"E{self._encounters:08d}"
        d, sec = divmod(t - self._t0, DAY)
        stay.admitted_at = self._day_prefix[d] + _HMS[sec]
        spec = rules.DEPT[reason_dept]
        if reason_dept == "Oncology" and "cancer" in patient.conds:
            primary = patient.codes[patient.info["chronic_conditions"].index("cancer")]
        else:
            primary = spec.primary_codes[int(rng.random() * len(spec.primary_codes))]
        stay.dx = [primary] + [c for c in patient.codes if c != primary]
        htn, diab = "hypertension" in patient.conds, "diabetes" in patient.conds
        gauss = rng.gauss
        vitals = {
            "systolic_bp": _whole(gauss(124 + 12 * htn, 17), 70, 230),
            "diastolic_bp": _whole(gauss(76 + 5 * htn, 10), 40, 140),
            "heart_rate": _whole(gauss(80 + 10 * emergent + (25 if patient.age < 2 else 0), 13), 35, 190),
            "glucose_mg_dl": _whole(gauss(175, 55) if diab else gauss(104, 18), 50, 600),
        }
        self.counts["admission"] += 1
        return Emitted(t, pid, {
            "schema_version": 1, "event_id": self._event_id(), "hl7_trigger": "A01",
            "occurred_at": stay.admitted_at, "facility_id": self._fac_ids[fac], "patient_id": pid,
            "encounter_id": stay.encounter_id, "department": dept,
            "attending_provider_id": stay.provider, "event_type": "admission",
            "admission_type": admission_type, "admit_source": source, "patient": patient.info,
            "diagnosis_codes": stay.dx, "vitals": vitals,
        })

    def _transfer(self, t: int, stay: _Stay) -> Emitted | None:
        if stay.void:
            return None
        rng = self._rng
        fac, old = stay.fac, stay.dept
        census, beds = self._census[fac], self._beds[fac]
        new = old
        if rng.random() < 0.7:
            options = [d for d in DEPARTMENTS if d != old and census[d] < beds[d]
                       and (d == "Pediatrics") == (stay.patient.age < 18)]
            if options:
                new = options[int(rng.random() * len(options))]
        census[old] -= 1
        census[new] += 1
        self._load[stay.provider] -= 1
        stay.dept = new
        stay.provider = self._pick_provider(fac, new)
        if not self._emitting:
            return None
        self.counts["transfer"] += 1
        pid = stay.patient.patient_id
        return Emitted(t, pid, {
            "schema_version": 1, "event_id": self._event_id(), "hl7_trigger": "A02",
            "occurred_at": self._ts(t), "facility_id": self._fac_ids[fac], "patient_id": pid,
            "encounter_id": stay.encounter_id, "department": new,
            "attending_provider_id": stay.provider, "event_type": "transfer",
        })

    def _discharge(self, t: int, stay: _Stay) -> Emitted | None:
        if stay.void:
            return None
        self._active.discard(stay)
        rng = self._rng
        p, fac, dept = stay.patient, stay.fac, stay.dept
        self._census[fac][dept] -= 1
        self._occupied[fac] -= 1
        self._load[stay.provider] -= 1
        p.busy = False
        los = round((t - stay.admit_t) / DAY, 2)
        dispo = rules.sample_disposition(rng, p.age, p.frailty, dept, p.n_chronic, p.payer)
        a = stay.admit_t  # visits before this admission (the lists are in time order)
        prior_ed = bisect_left(p.ed_times, a) - bisect_left(p.ed_times, a - 182 * DAY)
        prior_adm = bisect_left(p.adm_times, a) - bisect_left(p.adm_times, a - 365 * DAY)
        prob = rules.p_readmit_fast(p.age, p.n_chronic, p.conds, los, stay.emergent, prior_ed,
                                    prior_adm, dept, dispo, p.payer, p.frailty)
        if dispo == "expired":
            p.alive = False
        else:
            self._schedule_next(t, p, dept, prob)
        if not self._emitting:
            return None
        truth = self._truth
        truth.append([stay.encounter_id, round(prob, 6), False])
        if dispo != "expired":
            self._open.setdefault(p.patient_id, []).append((t, len(truth) - 1))
        month = self._day_month[(t - self._t0) // DAY]
        spec = rules.DEPT[dept]  # procedures, cost and survey: only for emitted discharges
        n_proc = int(rng.random() * 3.0) + (1 if dept in ("Orthopedics", "Surgery") else 0)
        procs: list[str] = []
        for _ in range(n_proc):
            code = spec.procedures[int(rng.random() * len(spec.procedures))]
            if code not in procs:
                procs.append(code)
        cost = rules.sample_cost(rng, dept, los, len(procs))
        sat = rules.satisfaction(rng, dept, month, los, dispo)
        self.counts["discharge"] += 1
        pid = p.patient_id
        d, sec = divmod(t - self._t0, DAY)
        codes = stay.dx
        if self._coding and t >= self._shift_t:  # coded at discharge, to full specificity
            codes = drift.complete_codes(self.config.seed, pid, p.conds, codes)
        return Emitted(t, pid, {
            "schema_version": 1, "event_id": self._event_id(), "hl7_trigger": "A03",
            "occurred_at": self._day_prefix[d] + _HMS[sec], "facility_id": self._fac_ids[fac], "patient_id": pid,
            "encounter_id": stay.encounter_id, "department": dept,
            "attending_provider_id": stay.provider, "event_type": "discharge",
            "admitted_at": stay.admitted_at, "length_of_stay_days": float(los),
            "discharge_disposition": dispo, "diagnosis_codes": codes, "procedure_codes": procs,
            "total_cost": cost, "payer": p.payer, "satisfaction_score": sat,
        })

    def _schedule_next(self, t: int, p: Patient, dept: str, prob: float) -> None:
        """The patient's next admission, if any: a readmission (prob) or an unrelated return."""
        rng = self._rng
        pediatric = p.age < 18
        if rng.random() < prob:
            when = t + int(rules.readmission_delay_days(rng) * DAY)
            u = rng.random()
            back = dept if u < 0.55 else ("Emergency" if u < 0.85 or pediatric else "Internal Medicine")
            if rng.random() < 0.75:
                self._push(when, _RETURN, (p, back, "emergency", "ed"))
            else:
                self._push(when, _RETURN, (p, back, "urgent", "referral"))
            p.busy = True
            return
        later = rules.later_admission(rng, dept, p.frailty, p.n_chronic, "diabetes" in p.conds)
        if later is None:
            return
        delay, elective = later
        when = t + int(delay * DAY)
        if elective:
            self._push(when, _RETURN, (p, dept, "elective", "referral"))
        else:
            back = "Pediatrics" if pediatric else ("Emergency" if rng.random() < 0.5 else "Internal Medicine")
            self._push(when, _RETURN, (p, back, "emergency", "ed"))
        p.busy = True

    # ------------------------------------------------------------------ truth

    def withdraw(self, item: Emitted) -> None:
        """Forget the last yielded event (a caller stopped before sending it); then stop iterating."""
        kind = item.event["event_type"]
        self.counts[kind] -= 1
        if kind == "discharge" and self._truth and self._truth[-1][0] == item.event["encounter_id"]:
            self._truth.pop()

    def truth_records(self) -> list[dict]:
        """One record per emitted discharge (in discharge order), measured on the emitted events."""
        return [{"encounter_id": e, "p_readmit": p, "readmitted": r} for e, p, r in self._truth]


def generate(config: SimConfig) -> Iterator[dict]:
    """The events of ``config`` as dicts (contract v1 field order), occurred_at ascending."""
    for item in Simulation(config).stream():
        yield item.event
